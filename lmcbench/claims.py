"""The claims ledger: every testable claim of the three papers, evaluated on a finished run's tables.

A claim (results/reference/claims.yaml, schema lmcbench/schemas/claims.schema.yaml) selects rows of one
result table, forms one or two arms, pairs them on a unit key (a seed, a seed pair, seed × sweep value),
computes a statistic per unit (the value, the difference a − b or the ratio a / b) and compares the mean
with a threshold.

Statistic: the mean over units with a two-sided 95 % Student t interval (mean ± t₀.₉₇₅,ₙ₋₁ · s/√n) of
the per-unit statistic; for two arms this is the paired-difference (or paired-ratio) t interval. It is
deterministic. Seed pairs that share a seed are not independent, so with pairs as units the interval is
optimistic; with 3 seeds there are only 3 pairs. Verdicts: `holds` when the whole interval lies on the
claimed side of the threshold, `does not hold` when it lies wholly on the other side, `inconclusive` when
it spans the threshold or n = 1 (no interval), `not run` when the run has no rows for an arm.

pandas / numpy / scipy only: the claims job never imports torch.
"""
from __future__ import annotations

import operator
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from lmcbench.tables import read_csv, write_csv, write_text

REGISTRY = Path("results") / "reference" / "claims.yaml"   # the project's registry, beside the published numbers
SCHEMA = Path(files("lmcbench") / "schemas" / "claims.schema.yaml")   # package data
LEVEL = 0.95
VERDICTS = ("holds", "does not hold", "inconclusive", "not run")
COLUMNS = ["claim", "paper", "where", "statement", "profile", "scope", "metric", "comparison", "ours_mean",
           "ours_ci_low", "ours_ci_high", "n", "interval", "paper_value", "paper_source", "verdict", "note",
           "table", "rows", "units", "basis"]
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "!=": operator.ne}
REDUCE = {"max_abs": lambda s: s.abs().max(), "max": "max", "min": "min", "mean": "mean"}


# --------------------------------------------------------------------------------------------- registry
def load_claims(path: str | Path = REGISTRY) -> list[dict]:
    """The registry, validated: a schema error or an inconsistent claim stops here with its id named."""
    import jsonschema

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"claims registry {path} does not exist: run from the project folder, which "
                                f"has {REGISTRY}, or pass the registry's path")
    data = yaml.safe_load(path.read_text())
    try:
        jsonschema.validate(data, yaml.safe_load(SCHEMA.read_text()))
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path)
        claim = ""
        if len(err.absolute_path) >= 2 and isinstance(data, dict):
            claim = f" (claim {data['claims'][err.absolute_path[1]].get('id', '?')})"
        raise ValueError(f"{path}: {where}{claim}: {err.message}") from None
    claims, seen = data["claims"], set()
    for claim in claims:
        cid = claim["id"]
        if cid in seen:
            raise ValueError(f"{path}: claim id {cid} appears twice")
        seen.add(cid)
        if (claim["stat"] == "value") != ("b" not in claim):
            raise ValueError(f"{path}: claim {cid}: stat {claim['stat']!r} needs "
                             f"{'one arm (a)' if claim['stat'] == 'value' else 'two arms (a and b)'}")
    return claims


# --------------------------------------------------------------------------------------------- statistics
def t_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): the Student t interval of the mean; NaN bounds for fewer than two values."""
    from scipy import stats

    values = np.asarray(values, float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(values.mean())
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))
    return mean, mean - half, mean + half


def verdict(low: float, high: float, n: int, op: str, threshold: float) -> str:
    """`holds` if the whole interval satisfies `op threshold`, `does not hold` if none of it does,
    else `inconclusive`; `not run` without units."""
    if n == 0:
        return "not run"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    side = OPS[op]
    near, far = (high, low) if op in ("<", "<=") else (low, high)   # the bound that must pass, the other one
    if side(near, threshold):
        return "holds"
    if not side(far, threshold):
        return "does not hold"
    return "inconclusive"


# --------------------------------------------------------------------------------------------- rows
def select(frame: pd.DataFrame, rows: dict | None, where: str) -> pd.DataFrame:
    """Rows matching every condition: a scalar is equality, a list membership, {op: v} a comparison."""
    mask = pd.Series(True, index=frame.index)
    for column, cond in (rows or {}).items():
        if column not in frame:
            raise KeyError(f"{where}: the table has no column {column!r} (columns: {list(frame.columns)})")
        col = frame[column]
        if isinstance(cond, dict):
            for op, value in cond.items():
                mask &= OPS[op](col, value)
        elif isinstance(cond, list):
            mask &= col.isin(cond)
        else:
            mask &= col == cond
    return frame[mask]


def _describe(rows: dict | None) -> str:
    parts = []
    for column, cond in (rows or {}).items():
        if isinstance(cond, dict):
            parts += [f"{column}{op}{v}" for op, v in cond.items()]
        else:
            parts.append(f"{column}={cond}" if not isinstance(cond, list) else f"{column}∈{{{','.join(map(str, cond))}}}")
    return ", ".join(parts)


def _arm_label(arm: dict) -> str:
    return ",".join(str(v) for v in arm.values()) if len(arm) == 1 else _describe(arm)


def metric_text(claim: dict) -> str:
    """E.g. `barrier(glmc_weight_matching) - barrier(perm_weight_matching)`, `max abs gamma, at last step`;
    the generic ACE column `value` is named by the claim's `metric` filter."""
    metric = claim.get("filter", {}).get("metric")
    name = metric if claim["value"] == "value" and isinstance(metric, str) else claim["value"]
    name = {"max_abs": f"max abs {name}", None: name}.get(claim.get("reduce"), f"{claim.get('reduce')} {name}")
    a = f"{name}({_arm_label(claim['a'])})" if claim["a"] else name
    text = a if claim["stat"] == "value" else \
        f"{a} {'-' if claim['stat'] == 'difference' else '/'} {name}({_arm_label(claim['b'])})"
    return text + (f", at {claim['pick']['which']} {claim['pick']['column']}" if "pick" in claim else "")


def arm_values(frame: pd.DataFrame, claim: dict, arm: str) -> pd.Series:
    """One value per unit (per + pair_on) of one arm, after `pick` and `reduce`."""
    where = f"claim {claim['id']} ({claim['table']}, arm {arm})"
    keys = list(claim.get("per", [])) + list(claim["pair_on"])
    part = select(select(frame, claim.get("filter"), where), claim[arm], where)
    if part.empty:   # the run has no such rows; columns of absent experiments may be absent too
        return pd.Series(dtype=float)
    for column in keys + [claim["value"]]:
        if column not in part:
            raise KeyError(f"{where}: the table has no column {column!r} (columns: {list(frame.columns)})")
    if "pick" in claim and len(part):
        col = claim["pick"]["column"]
        best = part.groupby(keys, dropna=False)[col].transform("max" if claim["pick"]["which"] == "last" else "min")
        part = part[part[col] == best]
    grouped = part.groupby(keys, dropna=False, sort=True)[claim["value"]]
    if "reduce" in claim:
        return grouped.agg(REDUCE[claim["reduce"]]).astype(float)
    sizes = grouped.size()
    if (sizes > 1).any():
        unit = sizes[sizes > 1].index[0]
        raise ValueError(f"{where}: {int(sizes.max())} rows for the unit {dict(zip(keys, _key(unit)))}; "
                         f"add a filter (or `reduce`) so each unit has one row")
    return grouped.first().astype(float)


def _key(index_value) -> tuple:
    """A groupby index value as a tuple (a single key is a scalar), types kept."""
    return index_value if isinstance(index_value, tuple) else (index_value,)


def _scope_key(values) -> str:
    """'vit', 'vit/dense/4/first', '0/1': integral floats (a column with NaNs elsewhere) printed as integers."""
    return "/".join(str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values)


def evaluate_claim(claim: dict, table: pd.DataFrame, profile: str) -> list[dict]:
    """The ledger rows of one claim: one per value of `per` present in the run (one `not run` row if none)."""
    per = list(claim.get("per", []))
    base = {"claim": claim["id"], "paper": claim["paper"], "where": claim["where"], "statement": claim["statement"],
            "profile": profile, "metric": metric_text(claim), "comparison": f"{claim['op']} {claim['threshold']:g}",
            "paper_source": claim.get("paper_source", ""), "table": claim["table"], "basis": claim.get("basis", "")}
    arms = "; ".join(f"{arm}: {_describe(claim[arm]) or 'all rows'}" for arm in ("a", "b") if arm in claim)
    filter_text = _describe(claim.get("filter"))

    def rows_text(scope_text: str = "") -> str:
        return f"{', '.join(t for t in (filter_text, scope_text) if t)}; {arms}; paired on {', '.join(claim['pair_on'])}"
    if len(table) == 0:
        return [{**base, "scope": "", "n": 0, "verdict": "not run", "rows": rows_text(),
                 "note": f"{claim['table']} is empty or absent in this run"}]
    a = arm_values(table, claim, "a")
    b = arm_values(table, claim, "b") if "b" in claim else None
    if b is None:
        units = a.to_frame("stat")
    else:
        joined = pd.concat({"a": a, "b": b}, axis=1, join="inner")
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = joined["a"] - joined["b"] if claim["stat"] == "difference" else joined["a"] / joined["b"]
        units = stat.replace([np.inf, -np.inf], np.nan).to_frame("stat")
    scopes = sorted({_scope_key(_key(k)[:len(per)]) for k in
                     list(a.index) + (list(b.index) if b is not None else [])}) or [""]
    out = []
    for scope in scopes:
        mine = units.loc[np.array([_scope_key(_key(k)[:len(per)]) == scope for k in units.index], bool)]
        dropped = int(mine["stat"].isna().sum())
        values = mine["stat"].dropna()
        mean, low, high = t_interval(values.to_numpy())
        n = len(values)
        unit_names = [_scope_key(_key(k)[len(per):]) for k in values.index]
        paper = claim.get("paper_value")
        paper = paper.get(scope) if isinstance(paper, dict) else paper
        notes, judged = [], verdict(low, high, n, claim["op"], claim["threshold"])
        if n == 0 and dropped:   # the rows exist, the statistic does not (e.g. a ratio to a zero barrier)
            notes.append(f"none of the {dropped} unit(s) has a finite value")
            judged = "inconclusive"
        elif n == 0:
            notes.append(f"{'an arm has' if b is not None else 'there are'} no rows for this scope in this run")
        elif n == 1:
            notes.append("one unit: no interval")
        if dropped and n:
            notes.append(f"{dropped} unit(s) without a finite value left out")
        scope_text = ", ".join(f"{k}={v}" for k, v in zip(per, scope.split("/"))) if per and scope else ""
        out.append({**base, "scope": scope_text, "ours_mean": mean, "ours_ci_low": low, "ours_ci_high": high, "n": n,
                    "interval": f"t {LEVEL:.0%} over {n} {'+'.join(claim['pair_on'])} unit(s)" if n else "",
                    "paper_value": paper if paper is not None else float("nan"),
                    "verdict": judged,
                    "note": "; ".join(notes),
                    "rows": rows_text(scope_text),
                    "units": " ".join(unit_names)})
    return out


def evaluate(claims: list[dict], tables: dict[str, pd.DataFrame], profile: str) -> pd.DataFrame:
    """The whole ledger; `tables` maps a table file name (e.g. glmc_barriers.csv) to its frame."""
    missing = sorted({c["table"] for c in claims} - set(tables))
    if missing:
        raise KeyError(f"claims need tables that were not given: {missing}")
    rows = [row for claim in claims for row in evaluate_claim(claim, tables[claim["table"]], profile)]
    return pd.DataFrame(rows).reindex(columns=COLUMNS)


# --------------------------------------------------------------------------------------------- outputs
def _fmt(x: float) -> str:
    if not np.isfinite(x):
        return "–"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.1e}"


def interval_text(row) -> str:
    if row["n"] == 0:
        return "–"
    if not np.isfinite(row["ours_ci_low"]):
        return _fmt(row["ours_mean"])
    return f"{_fmt(row['ours_mean'])} [{_fmt(row['ours_ci_low'])}, {_fmt(row['ours_ci_high'])}]"


def latex_ledger(ledger: pd.DataFrame) -> str:
    """claim × scope table: the test, ours (mean [95 % CI]), n, the published value and the verdict."""
    part = pd.DataFrame({
        "claim": ledger["claim"], "scope": ledger["scope"].fillna(""),
        "test": ledger["metric"] + " " + ledger["comparison"],
        "ours": ledger.apply(interval_text, axis=1), "n": ledger["n"].astype(int),
        "paper": ledger["paper_value"].map(_fmt), "verdict": ledger["verdict"]})
    caption = ("Claims ledger: each claim's statistic over paired units (mean and 95 \\% t interval), the "
               "published value where one exists, and the verdict.")
    return part.to_latex(index=False, escape=True, caption=caption, label="tab:claims", longtable=True)


def claims_job(table_paths, outputs, profile: str, registry: str | Path = REGISTRY) -> pd.DataFrame:
    """Read the run's tables (by file name), evaluate the registry, write claims.csv and claims.tex."""
    claims = load_claims(registry)
    paths = {Path(p).name: Path(p) for p in table_paths}
    tables = {name: read_csv(path) if path.exists() else pd.DataFrame() for name, path in paths.items()}
    ledger = evaluate(claims, tables, profile)
    write_csv(ledger, outputs["csv"] if isinstance(outputs, dict) else outputs.csv)
    write_text(latex_ledger(ledger), outputs["tex"] if isinstance(outputs, dict) else outputs.tex)
    return ledger
