"""README numbers from results, not from typing: render a run's summary tables and claims ledger as markdown.

A run folder is either a finished `results/` directory or a committed snapshot of one
(`results/reference/<profile>_run/`: `tables/` with the files in SNAPSHOT_TABLES, and `run.json`, the
provenance summary). The README holds the rendering of each snapshot between the markers

    <!-- BEGIN GENERATED: <name> -->  …  <!-- END GENERATED -->

and tests/test_claims.py fails when a block differs from rendering `results/reference/<name>_run/`.
Workflow:  lmcbench readme --results results --snapshot results/reference/default_run
           lmcbench readme --results results/reference/default_run --splice README.md --name default
pandas only (no torch).
"""
from __future__ import annotations

import json
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from lmcbench.claims import interval_text
from lmcbench.tables import read_csv, write_csv, write_text
from lmcbench.timing import bench_rules, dag_span_s

SNAPSHOT_TABLES = ("glmc_summary.csv", "moe_summary.csv", "moe_testability.csv", "ace_summary.csv", "claims.csv")
RULES_TABLE = "rules.csv"   # per-rule wall/CPU seconds of the run: in a snapshot only, never golden (not reproducible)
ACE_METRICS = ("accuracy", "mse", "equiv_err", "max_abs_gamma")   # the README's ACE columns (ace_summary.csv has more)
BEGIN = "<!-- BEGIN GENERATED: {name} -->"
END = "<!-- END GENERATED -->"
BLOCK = re.compile(r"<!-- BEGIN GENERATED: (?P<name>[\w-]+) -->\n(?P<body>.*?)<!-- END GENERATED -->", re.S)


def snapshot_dir(name: str, root: str | Path = ".") -> Path:
    """The committed snapshot of profile `name` in the project folder `root` (default: the CWD)."""
    return Path(root) / "results" / "reference" / f"{name}_run"


def placeholder(name: str) -> str:
    """The block's text while no snapshot of that profile is committed."""
    return (f"*Not generated yet: no committed run in `results/reference/{name}_run/`. Make one with "
            f"`lmcbench readme --results results --snapshot results/reference/{name}_run`, then "
            f"`lmcbench readme --results results/reference/{name}_run --splice README.md --name {name}`.*\n")


# --------------------------------------------------------------------------------------------- provenance
def run_info(results: str | Path) -> dict:
    """Commit, profile, date and machine of a run: `run.json` of a snapshot, else a summary of the run's
    provenance.json files (the date is the newest one's modification time, UTC) and claims.csv's profile."""
    results = Path(results)
    if (results / "run.json").exists():
        return json.loads((results / "run.json").read_text())
    files = sorted(results.rglob("provenance.json"))
    if not files:
        raise FileNotFoundError(f"{results}: no run.json and no provenance.json files; is this a finished run?")
    provs = [json.loads(p.read_text()) for p in files]
    claims = read_csv(results / "tables" / "claims.csv") if (results / "tables" / "claims.csv").exists() else None
    profiles = sorted(set(claims["profile"])) if claims is not None and len(claims) else ["unknown"]

    def values(key):
        return sorted({str(p.get(key, "unknown")) for p in provs})

    def nested(*keys):
        out = set()
        for p in provs:
            for key in keys:
                p = p.get(key, {}) if isinstance(p, dict) else {}
            out.add(str(p) if p != {} else "unknown")
        return ", ".join(sorted(out))

    newest = max(p.stat().st_mtime for p in files)
    return {"profile": ", ".join(profiles), "commit": ", ".join(values("git_commit")),
            "cpu": nested("numerics", "cpu", "model"), "numerics": nested("numerics", "mode"),
            "date": datetime.fromtimestamp(newest, timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": ", ".join(values("platform")), "device": ", ".join(values("device")),
            "python": ", ".join(values("python")),
            "torch": ", ".join(sorted({str(p.get("versions", {}).get("torch", "unknown")) for p in provs})),
            "provenance_files": len(files)}


def snapshot(results: str | Path, dest: str | Path) -> Path:
    """Copy a run's summary tables and claims ledger into `dest`/tables and its provenance summary into
    `dest`/run.json: the committed reference the README is rendered from."""
    results, dest = Path(results), Path(dest)
    missing = [n for n in SNAPSHOT_TABLES if not (results / "tables" / n).exists()]
    if missing:
        raise FileNotFoundError(f"{results}/tables lacks {missing}: run the workflow (rule all) first")
    info = run_info(results)
    (dest / "tables").mkdir(parents=True, exist_ok=True)
    for name in SNAPSHOT_TABLES:
        shutil.copyfile(results / "tables" / name, dest / "tables" / name)
    if (results / "benchmarks").is_dir():
        jobs, rules = bench_rules(results)
        write_csv(rules, dest / "tables" / RULES_TABLE)
        info["dag_span_s"] = round(dag_span_s(jobs))
    write_text(json.dumps(info, indent=2, sort_keys=True) + "\n", dest / "run.json")
    return dest


# --------------------------------------------------------------------------------------------- rendering
def _pm(mean, std, digits: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if pd.notna(std) else f"{mean:.{digits}f}"


def _md(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False) + "\n"


def glmc_section(summary: pd.DataFrame) -> str:
    if summary.empty:
        return ""
    test = summary[summary["split"] == "test"]
    pair = test[test["experiment"] == "pairwise"]
    wide = pair.assign(cell=[_pm(m, s, 3 if metric == "accuracy" else 2) for m, s, metric in
                             zip(pair["barrier_mean"], pair["barrier_std"], pair["metric"])],
                       column=pair["model"] + " " + pair["metric"])
    order = list(dict.fromkeys(pair["method"]))
    table = wide.pivot(index="method", columns="column", values="cell").reindex(order)
    if "paper_mean" in pair:   # GLMC Table 1 on the paper's dataset of the model family (glmc_summary.csv)
        for model, part in pair[pair["metric"] == "loss"].groupby("model", sort=True):
            col = part.set_index("method").reindex(order)
            table[f"paper {model} loss"] = [_pm(m, s, 2) for m, s in zip(col["paper_mean"], col["paper_std"])]
    n = ", ".join(f"{m}: {k}" for m, k in pair.groupby("model")["n_pairs"].max().items())
    out = [f"**GLMC** — test-split chord barriers, mean ± std over seed pairs ({n} pairs); paper: GLMC Table 1 "
           "on the paper's dataset for the model family (`paper_dataset` in glmc_summary.csv).\n",
           _md(table.reset_index())]
    if "moved_mlp_mean" in pair:   # learned matching: how far the discrete assignments moved from their start
        moved = pair[(pair["metric"] == "loss") & pair["moved_mlp_mean"].notna()]
        if len(moved):
            out += ["\nLearned matching, mean over pairs: head and MLP units whose assignment moved from the start "
                    "(WM solution or identity), the residual map's distance from its start, and the validation "
                    "loss of the chosen step:\n",
                    _md(moved[["model", "method", "moved_heads_mean", "moved_mlp_mean", "residual_shift_mean",
                               "matching_val_loss_mean"]].round(3))]
    other = test[(test["experiment"] != "pairwise") & (test["metric"] == "loss")]
    if len(other):
        rows = other.assign(barrier=[_pm(m, s, 2) for m, s in zip(other["barrier_mean"], other["barrier_std"])])
        out += ["\nWidth-heterogeneous and multi-model experiments (test loss barrier):\n",
                _md(rows[["experiment", "model", "method", "n_pairs", "barrier"]])]
    return "\n".join(out)


def moe_section(summary: pd.DataFrame) -> str:
    if summary.empty:
        return ""
    part = summary[(summary["split"] == "test") & (summary["metric"] == "loss")]
    keys = [k for k in ("experiment", "variant", "model", "gating", "n_experts", "placement") if k in part]
    cells = [f"{m:.3f}" if pd.isna(r) or meth == "naive" else f"{m:.3f} ({r:.2f})" for m, r, meth in
             zip(part["barrier_mean"], part["ratio_to_naive_mean"], part["method"])]
    table = part.assign(cell=cells).pivot(index=keys, columns="method", values="cell")
    methods = list(dict.fromkeys(part["method"]))
    return ("**MoE-LMC** — test-loss chord barrier, mean over seed pairs (ratio to naive in brackets).\n\n"
            + _md(table[methods].reset_index().fillna("–")))


def moe_testability_section(testability: pd.DataFrame) -> str:
    """Whether each MoE configuration can test the expert-order claim (routing and cross-seed expert diagnostics)."""
    if testability.empty:
        return ""
    cols = ["variant", "model", "gating", "n_experts", "placement", "routing_entropy", "sim_unmatched",
            "sim_matched", "sim_gate_wm_at_init", "rank_gate_wm", "rank_expert_wm", "lhat_gate_wm", "lhat_expert_wm", "testable"]
    part = testability[testability["experiment"] == "sweep"][[c for c in cols if c in testability]]
    return ("MoE testability (`moe_testability.csv`): normalised routing entropy, cross-seed correlation of expert "
            "outputs unmatched and after the best Step-1 order, the same correlation before fine-tuning under gate_wm's "
            "order (`sim_gate_wm_at_init`: near 0 means the similarity was learned, not inherited), mean rank among all expert orders and L̂ (scaled "
            "excess over the best order, %); `testable` = entropy ≤ 0.8 and matched correlation ≥ 0.5.\n\n"
            + _md(part.round(3).fillna("–")))


def rules_section(rules: pd.DataFrame, info: dict) -> str:
    """Per-rule cost of the run (Snakemake benchmarks): wall-clock, so a snapshot's only non-reproducible table."""
    if rules.empty:
        return ""
    span = f", {info['dag_span_s'] / 60:.1f} min from the first job's start to the last job's end" \
        if "dag_span_s" in info else ""
    return (f"Run cost per rule (Snakemake benchmarks; wall and CPU seconds summed over jobs{span}):\n\n"
            + _md(rules))


def ace_section(summary: pd.DataFrame) -> str:
    if summary.empty:
        return ""
    acc = summary[(summary["experiment"] == "accuracy") & summary["metric"].isin(ACE_METRICS)]
    cells = acc.assign(cell=[_pm(m, s, 3 if metric == "accuracy" else 4) for m, s, metric in
                             zip(acc["mean"], acc["std"], acc["metric"])],
                       column=acc["task"] + " " + acc["metric"])
    order = list(dict.fromkeys(acc["method"]))
    table = cells.pivot_table(index="method", columns="column", values="cell", aggfunc="first").reindex(order)
    seeds = int(acc["count"].max()) if len(acc) else 0
    return (f"**ACE** — accuracy experiment, reported model per method, mean ± std over {seeds} seed(s).\n\n"
            + _md(table.reset_index().fillna("–")))


def claims_section(ledger: pd.DataFrame) -> str:
    if ledger.empty:
        return ""
    counts = ledger.groupby(["paper", "verdict"], sort=False).size().unstack(fill_value=0)
    summary = "; ".join(f"{paper}: " + ", ".join(f"{int(counts.loc[paper, v])} {v}" for v in counts.columns
                                                 if counts.loc[paper, v]) for paper in dict.fromkeys(ledger["paper"]))
    table = pd.DataFrame({
        "claim": ledger["claim"], "scope": ledger["scope"].fillna(""),
        "test": "`" + ledger["metric"] + " " + ledger["comparison"] + "`",
        "ours (mean [95 % CI])": ledger.apply(interval_text, axis=1), "n": ledger["n"].astype(int),
        "paper": [("–" if pd.isna(v) else f"{v:g}") for v in ledger["paper_value"]],
        "verdict": ledger["verdict"]})
    return (f"**Claims ledger** (`results/tables/claims.csv`; statements and rows used are in the CSV) — {summary}.\n\n"
            + _md(table))


def render(results: str | Path) -> str:
    """Markdown of a run folder (a results directory or a snapshot): provenance line, the three tracks'
    summary tables and the claims ledger."""
    results = Path(results)
    info = run_info(results)
    tables = {name: read_csv(results / "tables" / name) if (results / "tables" / name).exists() else pd.DataFrame()
              for name in SNAPSHOT_TABLES}
    commits = [c.strip()[:12] for c in info["commit"].split(",")]
    commit = f"commit `{commits[0]}`" if len(commits) == 1 else \
        f"commits {', '.join(f'`{c}`' for c in commits)} (the code changed during the run)"
    head = (f"Generated by `lmcbench readme` — profile `{info['profile']}`, {commit}, run of {info['date']}, "
            f"{info['machine']} ({info.get('cpu', 'unknown')}, {info['device']}, numerics "
            f"{info.get('numerics', 'unknown')}, Python {info['python']}, torch {info['torch']}).\n")
    rules = pd.DataFrame()
    if (results / "benchmarks").is_dir():   # a finished run
        jobs, rules = bench_rules(results)
        info["dag_span_s"] = round(dag_span_s(jobs))
    elif (results / "tables" / RULES_TABLE).exists():   # a snapshot
        rules = read_csv(results / "tables" / RULES_TABLE)
    parts = [head, glmc_section(tables["glmc_summary.csv"]), moe_section(tables["moe_summary.csv"]),
             moe_testability_section(tables["moe_testability.csv"]), ace_section(tables["ace_summary.csv"]),
             claims_section(tables["claims.csv"]), rules_section(rules, info)]
    return "\n".join(p for p in parts if p)


# --------------------------------------------------------------------------------------------- README blocks
def blocks(text: str) -> dict[str, str]:
    """name -> body of every generated block of a README."""
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


def splice(text: str, name: str, body: str) -> str:
    """`text` with the block `name` replaced by `body`; an error if the markers are missing."""
    matches = [m for m in BLOCK.finditer(text) if m["name"] == name]
    if len(matches) != 1:
        raise ValueError(f"expected one '{BEGIN.format(name=name)}' … '{END}' block, found {len(matches)}; "
                         "add the two marker lines where the generated text belongs")
    m = matches[0]
    body = body if body.endswith("\n") else body + "\n"
    return text[:m.start("body")] + body + text[m.end("body"):]


def expected_block(name: str, root: str | Path = ".") -> str:
    """What the README block `name` must hold: the rendering of its snapshot, or the placeholder."""
    folder = snapshot_dir(name, root)
    return render(folder) if folder.exists() else placeholder(name)
