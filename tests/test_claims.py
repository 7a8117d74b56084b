"""Claims ledger (verdicts on synthetic tables), README rendering, and the golden smoke numbers."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from conftest import ROOT
from lmcbench import claims as C
from lmcbench.config import PROFILES

REGISTRY = ROOT / C.REGISTRY   # the project's registry, whatever the CWD

PAIRS = [(0, 1), (0, 2), (1, 2)]


def barrier_table(values: dict[str, list[float]], model: str = "vit", experiment: str = "pairwise") -> pd.DataFrame:
    """glmc_barriers.csv-shaped rows: method -> test-loss barrier of each seed pair (PAIRS order)."""
    rows = []
    for method, per_pair in values.items():
        for (a, b), value in zip(PAIRS, per_pair):
            for split, metric in itertools.product(("train", "test"), ("loss", "accuracy")):
                own = value if (split, metric) == ("test", "loss") else value + 10   # other rows must not leak in
                rows.append({"experiment": experiment, "model": model, "dataset": "mnist5k", "method": method,
                             "seed_a": a, "seed_b": b, "split": split, "metric": metric, "barrier": own,
                             "barrier_midpoint": own, "run_id": "r"})
    return pd.DataFrame(rows)


def claim(**over) -> dict:
    base = {"id": "glmc.C99", "paper": "GLMC", "where": "Table 1", "statement": "a beats b",
            "table": "glmc_barriers.csv", "filter": {"experiment": "pairwise", "split": "test", "metric": "loss"},
            "per": ["model"], "value": "barrier", "a": {"method": "wm"}, "b": {"method": "vanilla"},
            "pair_on": ["seed_a", "seed_b"], "stat": "difference", "op": "<", "threshold": 0}
    return {**base, **over}


def ledger(claim_: dict, table: pd.DataFrame) -> pd.DataFrame:
    return C.evaluate([claim_], {claim_["table"]: table}, profile="test")


# ----------------------------------------------------------------------------- statistic and verdict
def test_t_interval_is_scipys_student_t_interval():
    values = np.array([0.3, -0.1, 0.5, 0.2])
    mean, low, high = C.t_interval(values)
    want = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    assert mean == pytest.approx(values.mean()) and (low, high) == pytest.approx(want)
    assert C.t_interval([1.0])[0] == 1.0 and np.isnan(C.t_interval([1.0])[1])
    assert C.t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(("low", "high", "op", "want"), [
    (-0.5, -0.1, "<", "holds"), (0.1, 0.5, "<", "does not hold"), (-0.1, 0.2, "<", "inconclusive"),
    (0.0, 0.3, "<", "does not hold"), (-0.3, 0.0, "<=", "holds"), (-0.3, 0.0, "<", "inconclusive"),
    (0.1, 0.5, ">", "holds"), (-0.5, -0.1, ">", "does not hold"), (-0.1, 0.2, ">=", "inconclusive"),
    (0.0, 0.2, ">=", "holds"), (-0.2, 0.0, ">", "does not hold"),
])
def test_verdict_against_the_interval(low, high, op, want):
    assert C.verdict(low, high, 3, op, 0.0) == want


def test_verdict_without_units_or_interval():
    assert C.verdict(np.nan, np.nan, 0, "<", 0) == "not run"
    assert C.verdict(np.nan, np.nan, 1, "<", 0) == "inconclusive"


# ----------------------------------------------------------------------------- claims on synthetic tables
def test_difference_claim_holds_fails_and_is_inconclusive():
    vanilla = [1.0, 1.2, 0.9]
    cases = {"holds": [0.2, 0.3, 0.25], "does not hold": [1.5, 1.6, 1.4], "inconclusive": [0.5, 1.7, 0.6]}
    for want, wm in cases.items():
        row = ledger(claim(), barrier_table({"wm": wm, "vanilla": vanilla})).iloc[0]
        diffs = np.subtract(wm, vanilla)
        assert row["verdict"] == want
        assert row["n"] == 3 and row["ours_mean"] == pytest.approx(diffs.mean())
        assert (row["ours_ci_low"], row["ours_ci_high"]) == pytest.approx(C.t_interval(diffs)[1:])
        assert row["scope"] == "model=vit" and row["units"] == "0/1 0/2 1/2"
        assert row["metric"] == "barrier(wm) - barrier(vanilla)" and row["comparison"] == "< 0"
    # the inconclusive case: the mean is on the claimed side but the interval spans the threshold
    row = ledger(claim(), barrier_table({"wm": cases["inconclusive"], "vanilla": vanilla})).iloc[0]
    assert row["ours_mean"] < 0 < row["ours_ci_high"] and row["ours_ci_low"] < 0


def test_pairing_is_by_unit_not_by_position():
    """Shuffled rows and a unit that only one arm has: the statistic pairs equal seed pairs."""
    table = barrier_table({"wm": [0.1, 0.2, 0.3], "vanilla": [1.0, 2.0, 3.0]})
    table = table.sample(frac=1.0, random_state=0)
    table = table[~((table["method"] == "vanilla") & (table["seed_b"] == 2) & (table["seed_a"] == 1))]
    row = ledger(claim(), table).iloc[0]
    assert row["n"] == 2 and row["ours_mean"] == pytest.approx(np.mean([0.1 - 1.0, 0.2 - 2.0]))


def test_ratio_and_single_arm_threshold_claims():
    table = barrier_table({"wm": [0.2, 0.3, 0.1], "vanilla": [1.0, 1.0, 0.5]})
    row = ledger(claim(stat="ratio", op="<=", threshold=0.5), table).iloc[0]
    assert row["ours_mean"] == pytest.approx(np.mean([0.2, 0.3, 0.2])) and row["verdict"] == "holds"
    one = claim(stat="value", op=">", threshold=0.1, a={"method": "vanilla"})
    del one["b"]
    row = ledger(one, table).iloc[0]
    assert row["verdict"] == "holds" and row["metric"] == "barrier(vanilla)" and row["n"] == 3


def test_not_run_when_the_profile_lacks_the_experiment_or_an_arm():
    table = barrier_table({"vanilla": [1.0, 1.2, 0.9]})
    row = ledger(claim(), table).iloc[0]
    assert row["verdict"] == "not run" and row["n"] == 0 and "arm" in row["note"]
    row = ledger(claim(), pd.DataFrame()).iloc[0]
    assert row["verdict"] == "not run" and "empty" in row["note"]
    row = ledger(claim(filter={"experiment": "width_hetero"}), barrier_table({"wm": [0, 0, 0], "vanilla": [1, 1, 1]}))
    assert list(row["verdict"]) == ["not run"]


def test_one_row_per_scope_and_one_unit_is_inconclusive():
    table = pd.concat([barrier_table({"wm": [0.1, 0.2, 0.1], "vanilla": [1.0, 1.1, 1.2]}, model="vit"),
                       barrier_table({"wm": [0.9, 1.2, 1.1], "vanilla": [0.5, 0.6, 0.4]}, model="gpt2")])
    out = ledger(claim(), table).set_index("scope")
    assert out.loc["model=vit", "verdict"] == "holds" and out.loc["model=gpt2", "verdict"] == "does not hold"
    single = table[(table["seed_a"] == 0) & (table["seed_b"] == 1)]
    out = ledger(claim(), single)
    assert set(out["verdict"]) == {"inconclusive"} and set(out["n"]) == {1}
    assert out["note"].str.contains("no interval").all()


def test_pick_and_reduce_read_the_final_max_abs_gamma():
    rows = [{"experiment": "accuracy", "task": "nbody", "method": "ace_equality", "seed": s, "step": step,
             "layer": layer, "gamma": g}
            for s in (0, 1, 2) for step, scale in ((0, 1.0), (10, 0.001 * (s + 1)))
            for layer, g in (("l0", -scale), ("l1", scale / 2))]
    gamma = {"id": "ace.C98", "paper": "ACE", "where": "x", "statement": "γ ends near 0",
             "table": "ace_trajectories.csv", "filter": {"method": "ace_equality"}, "per": ["task"],
             "value": "gamma", "a": {}, "pair_on": ["seed"], "pick": {"column": "step", "which": "last"},
             "reduce": "max_abs", "stat": "value", "op": "<=", "threshold": 0.01}
    row = ledger(gamma, pd.DataFrame(rows)).iloc[0]
    assert row["ours_mean"] == pytest.approx(np.mean([0.001, 0.002, 0.003])) and row["verdict"] == "holds"


def test_spec_errors_name_the_claim_and_the_column(tmp_path):
    table = barrier_table({"wm": [0.1, 0.2, 0.1], "vanilla": [1.0, 1.1, 1.2]})
    with pytest.raises(KeyError, match="glmc.C99.*methd"):
        ledger(claim(a={"methd": "wm"}), table)
    with pytest.raises(ValueError, match="glmc.C99.*unit"):   # two rows per unit: the split filter is missing
        ledger(claim(filter={"experiment": "pairwise", "metric": "loss"}), table)
    bad = tmp_path / "claims.yaml"
    bad.write_text(yaml.safe_dump({"claims": [claim(op="≪")]}))
    with pytest.raises(ValueError, match="glmc.C99"):
        C.load_claims(bad)
    one_arm = claim(stat="value")
    bad.write_text(yaml.safe_dump({"claims": [one_arm]}))
    with pytest.raises(ValueError, match="glmc.C99.*one arm"):
        C.load_claims(bad)


# ----------------------------------------------------------------------------- the shipped registry
RULE_TABLES = {"glmc_barriers.csv", "moe_barriers.csv", "moe_order_ranks.csv", "ace_results.csv",
               "ace_trajectories.csv", "ace_curves.csv"}


def test_shipped_registry_is_valid_and_covers_every_track():
    claims = C.load_claims(REGISTRY)
    assert {c["table"] for c in claims} <= RULE_TABLES
    for track in ("glmc", "moe", "ace"):
        assert len({c["id"] for c in claims if c["id"].startswith(track + ".")}) >= 4, track
    for c in claims:   # a published value is documented by its source
        assert ("paper_value" in c) == ("paper_source" in c), c["id"]


def test_claims_job_writes_every_column_and_the_tex(tmp_path):
    table = barrier_table({"vanilla": [1.0, 1.2, 0.9], "glmc_weight_matching": [0.2, 0.3, 0.25],
                           "perm_weight_matching": [1.1, 1.3, 1.0]})
    paths = []
    for name in sorted(RULE_TABLES):
        paths.append(tmp_path / name)
        (table if name == "glmc_barriers.csv" else pd.DataFrame()).to_csv(paths[-1], index=False)
    out = {"csv": tmp_path / "claims.csv", "tex": tmp_path / "claims.tex"}
    C.claims_job(paths, out, profile="synthetic", registry=REGISTRY)
    written = pd.read_csv(out["csv"])
    required = ["claim", "paper", "statement", "profile", "metric", "ours_mean", "ours_ci_low", "ours_ci_high", "n",
                "paper_value", "verdict", "table", "rows"]
    assert set(required) <= set(written.columns)
    assert set(written["verdict"]) <= set(C.VERDICTS) and set(written["profile"]) == {"synthetic"}
    assert written["claim"].nunique() == len(C.load_claims(REGISTRY))
    by_id = written.set_index("claim")
    assert by_id.loc["glmc.C2c", "verdict"] == "holds" and by_id.loc["glmc.C1", "verdict"] == "holds"
    assert by_id.loc["moe.C6a", "verdict"] == "not run"
    tex = out["tex"].read_text()
    assert "glmc.C2c" in tex and "holds" in tex and "\\begin{longtable}" in tex


# ----------------------------------------------------------------------------- README rendering
def synthetic_run(root) -> "Path":
    """A finished-run folder in miniature: the summary tables built by the real table code from synthetic
    records, the claims ledger, and two provenance.json files."""
    import json

    from lmcbench.tables import summarise_barriers, summarise_moe

    tables = root / "tables"
    tables.mkdir(parents=True)
    glmc = barrier_table({"vanilla": [1.0, 1.2, 0.9], "glmc_weight_matching": [0.2, 0.3, 0.25],
                          "perm_weight_matching": [1.1, 1.3, 1.0]})
    summarise_barriers(glmc, keys=("experiment", "model", "dataset", "method", "split", "metric")).assign(
        paper_dataset="cifar10", paper_mean=1.69, paper_std=0.07).to_csv(tables / "glmc_summary.csv", index=False)
    moe = glmc.assign(experiment="sweep", gating="dense", n_experts=4, placement="first", auc=0.1,
                      method=glmc["method"].replace({"vanilla": "naive", "glmc_weight_matching": "expert_wm",
                                                     "perm_weight_matching": "gate_wm"}))
    moe = moe.assign(ratio_to_naive=moe["barrier"] / moe.groupby(["seed_a", "seed_b", "split", "metric"])["barrier"]
                     .transform("max"), auc_ratio_to_naive=1.0)
    summarise_moe(moe).to_csv(tables / "moe_summary.csv", index=False)
    pd.DataFrame([{"experiment": "accuracy", "task": "nbody", "regime": "symmetric", "method": m, "n_train": 64,
                   "perturbation": 0.0, "dual_lr": 0.1, "metric": "mse", "mean": v, "std": 0.001, "count": 3}
                  for m, v in (("strict", 0.0143), ("ace_equality", 0.0139))]).to_csv(tables / "ace_summary.csv",
                                                                                      index=False)
    pd.DataFrame([{"experiment": "sweep", "variant": "paper", "model": "vit", "gating": "dense", "n_experts": 4,
                   "placement": "first", "routing_entropy": 0.5, "sim_unmatched": 0.1, "sim_matched": 0.6,
                   "rank_gate_wm": 1.0, "rank_expert_wm": 2.0, "lhat_gate_wm": 0.0, "lhat_expert_wm": 3.0,
                   "testable": True}]).to_csv(tables / "moe_testability.csv", index=False)
    bench = root / "benchmarks" / "train" / "vit"
    bench.mkdir(parents=True)
    (bench / "seed0.tsv").write_text("s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
                                     "12.5\t0:00:12\t512.0\t1\t1\t1\t0\t0\t90\t11.5\n")
    ledger = C.evaluate(C.load_claims(REGISTRY), {n: glmc if n == "glmc_barriers.csv" else pd.DataFrame()
                                          for n in RULE_TABLES}, profile="tiny")
    ledger.to_csv(tables / "claims.csv", index=False)
    for job in ("glmc/pairwise/vit/vanilla", "ace/nbody"):
        (root / job).mkdir(parents=True)
        (root / job / "provenance.json").write_text(json.dumps(
            {"git_commit": "0123456789abcdef", "platform": "Linux-x86_64", "device": "cpu", "python": "3.11.2",
             "versions": {"torch": "2.14.1"}, "numerics": {"mode": "pinned", "cpu": {"model": "Test CPU"}}}))
    return root


def test_render_a_run_and_its_snapshot(tmp_path):
    from lmcbench import readme

    run = synthetic_run(tmp_path / "results")
    text = readme.render(run)
    assert "profile `tiny`" in text and "commit `0123456789ab`" in text
    assert "Linux-x86_64 (Test CPU, cpu, numerics pinned, Python 3.11.2, torch 2.14.1)" in text
    assert "| glmc_weight_matching |" in text and "0.25 ± 0.05" in text      # mean ± std of 0.2, 0.3, 0.25
    assert "1.69 ± 0.07" in text                                             # the published column
    assert "0.0139 ± 0.0010" in text and "| ace_equality |" in text
    assert "| glmc.C2c " in text and "holds" in text and "not run" in text
    assert "| True " in text and "0.2 min from the first job's start" in text   # MoE testability, run cost
    snap = readme.snapshot(run, tmp_path / "reference" / "tiny_run")
    assert sorted(p.name for p in (snap / "tables").iterdir()) == sorted([*readme.SNAPSHOT_TABLES, readme.RULES_TABLE])
    assert readme.render(snap) == text                                       # the snapshot renders the same


def test_splice_replaces_only_its_block():
    from lmcbench import readme

    text = ("# t\nbefore\n<!-- BEGIN GENERATED: a -->\nold a\n<!-- END GENERATED -->\nmiddle\n"
            "<!-- BEGIN GENERATED: b -->\nold b\n<!-- END GENERATED -->\nafter\n")
    out = readme.splice(text, "a", "new a\nline 2")
    assert readme.blocks(out) == {"a": "new a\nline 2\n", "b": "old b\n"}
    assert out.startswith("# t\nbefore\n") and out.endswith("middle\n<!-- BEGIN GENERATED: b -->\nold b\n"
                                                             "<!-- END GENERATED -->\nafter\n")
    with pytest.raises(ValueError, match="BEGIN GENERATED: c"):
        readme.splice(text, "c", "x")


def test_readme_generated_blocks_match_the_committed_runs():
    """Every generated README block is the rendering of results/reference/<name>_run/ (or, while no run is
    committed, the placeholder), and every committed run has its block."""
    from lmcbench import readme

    blocks = readme.blocks((ROOT / "README.md").read_text())
    assert "default" in blocks
    for name, body in blocks.items():
        assert body == readme.expected_block(name, ROOT), (
            f"README block {name!r} differs from rendering results/reference/{name}_run: run "
            f"`lmcbench readme --results results/reference/{name}_run --splice README.md --name {name}`")
    committed = {p.name[:-len("_run")] for p in (ROOT / "results" / "reference").glob("*_run")}
    assert committed <= set(blocks)


# ----------------------------------------------------------------------------- golden smoke numbers
@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_smoke_run_matches_the_golden_tables(smoke_run):
    """The smoke run's summaries and claims ledger equal tests/golden/smoke/ byte for byte (pinned CPU
    numerics). LMCBENCH_UPDATE_GOLDEN=1 rewrites the golden files from this run instead."""
    from lmcbench import golden

    results = smoke_run / "results"
    if os.environ.get("LMCBENCH_UPDATE_GOLDEN") == "1":
        golden.update_golden(results, ROOT / golden.SMOKE_GOLDEN)
    problems = golden.check(results, ROOT / golden.SMOKE_GOLDEN)
    assert not problems, "\n".join(problems[:30])


# ----------------------------------------------------------------------------- wall-clock seconds
def test_timing_table_collects_both_provenance_forms(tmp_path):
    import json

    from lmcbench.timing import COLUMNS, timing_table

    ace, moe = tmp_path / "ace" / "nbody", tmp_path / "moe" / "sweep" / "vit" / "dense" / "n2" / "first"
    for folder in (ace, moe):
        folder.mkdir(parents=True)
    (ace / "records.csv").write_text("x\n")
    (moe / "barriers.csv").write_text("x\n")
    (ace / "provenance.json").write_text(json.dumps({"run_id": "a1", "timing": [
        {"experiment": "accuracy", "task": "nbody", "method": "strict", "seed": s, "metric": "train_seconds",
         "value": 1.5 + s} for s in (0, 1)]}))
    (moe / "provenance.json").write_text(json.dumps({"run_id": "m1", "timing": {"finetune_s": 3.0, "align_s": 2.0}}))
    table = timing_table([ace / "records.csv", moe / "barriers.csv"], tmp_path / "timing.csv", results=tmp_path)
    assert list(table.columns) == COLUMNS and len(table) == 4
    got = {(r.source, r.what, None if pd.isna(r.seed) else int(r.seed)): r.seconds for r in table.itertuples()}
    assert got == {("ace/nbody", "train", 0): 1.5, ("ace/nbody", "train", 1): 2.5,
                   ("moe/sweep/vit/dense/n2/first", "align", None): 2.0,
                   ("moe/sweep/vit/dense/n2/first", "finetune", None): 3.0}


def test_shipped_ace_and_moe_claims_on_tables_shaped_like_the_runs(tmp_path):
    """Records with the columns the ACE and MoE jobs write, through a CSV round trip (bool and NaN cells):
    every ACE and MoE claim finds its units."""
    rng = np.random.default_rng(0)
    methods = ("strict", "triangle_schedule", "ace_equality", "ace_resilient")
    rows = []
    for (exp, regime, n_trains, pert), task, method, seed in itertools.product(
            [("accuracy", "sym", [64], 0.0), ("sample_efficiency", "sym", [32, 64], 0.0),
             ("partial_symmetry", "part", [64], 0.0), ("robustness", "sym", [64], 0.5)],
            ("image", "nbody"), methods, (0, 1, 2)):
        for n_train in n_trains:
            head = "eq" if method in ("strict", "triangle_schedule", "ace_equality") else "mixed"
            for ev in ({"eq", head} if method.startswith("ace") else {head}):
                base = {"experiment": exp, "task": task, "regime": regime, "perturbation": pert, "dual_lr": 0.1,
                        "run_id": "r", "method": method, "seed": seed, "n_train": n_train, "eval": ev,
                        "headline": ev == head}
                metric = "accuracy" if task == "image" else "mse"
                rows += [{**base, "split": "test", "metric": metric, "layer": "", "value": rng.uniform(0.1, 0.9)},
                         {**base, "split": "test", "metric": "equiv_err", "layer": "output",
                          "value": 0.0 if ev == "eq" else 0.1}]
    results_path = tmp_path / "ace_results.csv"
    pd.DataFrame(rows).to_csv(results_path, index=False)
    traj = pd.DataFrame([{"experiment": exp, "task": t, "method": m, "seed": s, "step": step, "layer": layer,
                          "gamma": 1.0 / (1 + step), "lambda": 0.0, "u": np.nan}
                         for exp, m in (("accuracy", "ace_equality"), ("partial_symmetry", "ace_resilient"))
                         for t in ("image", "nbody") for s in (0, 1, 2) for step in (0, 50, 99)
                         for layer in ("l0", "l1")])
    curves = pd.DataFrame([{"experiment": "accuracy", "task": "nbody", "method": m, "seed": s, "step": 6 * e,
                            "epoch": e, "eval": "eq", "split": "val", "metric": "mse", "value": rng.uniform()}
                           for m in ("strict", "ace_equality") for s in (0, 1, 2) for e in (1, 2, 3)])
    moe = barrier_table({"naive": [1.0, 1.2, 0.9], "expert_wm": [0.2, 0.3, 0.25], "gate_wm": [0.3, 0.2, 0.4],
                         "skip_order": [0.8, 0.9, 1.0]}).assign(experiment="sweep", variant="paper", gating="dense",
                                                                 n_experts=4, placement="first")
    moe = moe.assign(ratio_to_naive=moe["barrier"] / moe.groupby(["seed_a", "seed_b", "split", "metric"])["barrier"]
                     .transform("max"))
    ranks = moe[moe["method"].isin(["expert_wm", "gate_wm"]) & (moe["split"] == "test")].assign(
        rank=2, n_orders=24, scaled_excess=3.0)
    tables = {"ace_results.csv": pd.read_csv(results_path), "ace_trajectories.csv": traj, "ace_curves.csv": curves,
              "moe_barriers.csv": moe, "moe_order_ranks.csv": ranks, "glmc_barriers.csv": pd.DataFrame()}
    out = C.evaluate(C.load_claims(REGISTRY), tables, profile="shaped").set_index(["claim", "scope"])
    ace = out[out["paper"] == "ACE"]
    assert (ace["verdict"] != "not run").all(), ace[["verdict", "note"]]
    assert len(out.loc["ace.C1"]) == 2   # per task
    assert out.loc[("ace.C5a", "task=image"), "n"] == 6 and out.loc[("ace.C3b", "task=nbody"), "n"] == 3
    assert out.loc[("ace.C7", "task=image"), "n"] == 3
    for task in ("image", "nbody"):
        assert out.loc[("ace.C2", f"task={task}"), "verdict"] == "holds"
        assert out.loc[("ace.C2", f"task={task}"), "ours_mean"] == 0.0
        assert out.loc[("ace.C1", f"task={task}"), "ours_mean"] == pytest.approx(0.01)   # |γ| at step 99
    scope = "model=vit, variant=paper, gating=dense, n_experts=4, placement=first"
    assert out.loc[("moe.C6a", scope), "verdict"] == "holds" and out.loc[("moe.C9", scope), "verdict"] == "holds"
    assert out.loc[("moe.C8c", "model=vit, variant=paper, gating=dense, n_experts=4"), "n"] == 3
    assert out.loc["moe.C7", "verdict"].tolist() == ["not run"]   # no last-layer rows


def test_units_print_as_integers_when_other_experiments_leave_nan_seeds():
    table = barrier_table({"wm": [0.1, 0.2, 0.1], "vanilla": [1.0, 1.1, 1.2]})
    multi = table.iloc[:1].assign(experiment="multi_model", seed_a=np.nan, seed_b=np.nan, seeds="0-1-2")
    row = ledger(claim(), pd.concat([table, multi], ignore_index=True)).iloc[0]
    assert row["units"] == "0/1 0/2 1/2" and row["n"] == 3


# ----------------------------------------------------------------------------- the commands
def test_cli_claims_readme_and_golden(tmp_path, capsys):
    from lmcbench import cli, readme

    run = synthetic_run(tmp_path / "results")
    barrier_table({"vanilla": [1.0, 1.2, 0.9], "glmc_weight_matching": [0.2, 0.3, 0.25]}).to_csv(
        run / "tables" / "glmc_barriers.csv", index=False)
    assert cli.main(["claims", "--results", str(run), "--profile", "cli", "--registry", str(REGISTRY)]) == 0
    ledger = pd.read_csv(run / "tables" / "claims.csv")
    assert set(ledger["profile"]) == {"cli"} and (run / "tables" / "claims.tex").exists()
    assert ledger.set_index("claim").loc["glmc.C1", "verdict"] == "holds"

    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- BEGIN GENERATED: tiny -->\nold\n<!-- END GENERATED -->\nend\n")
    assert cli.main(["readme", "--results", str(run), "--splice", str(page), "--name", "tiny"]) == 0
    assert readme.blocks(page.read_text())["tiny"] == readme.render(run)
    assert cli.main(["readme", "--results", str(run), "--out", str(tmp_path / "run.md")]) == 0
    assert (tmp_path / "run.md").read_text() == readme.render(run)

    gold = tmp_path / "golden"
    assert cli.main(["golden", "--results", str(run), "--golden", str(gold), "--update"]) == 0
    assert cli.main(["golden", "--results", str(run), "--golden", str(gold)]) == 0
    moved = pd.read_csv(gold / "claims.csv")
    moved.loc[0, "ours_mean"] += 1e-9   # any moved number is a difference
    moved.to_csv(gold / "claims.csv", index=False)
    capsys.readouterr()
    assert cli.main(["golden", "--results", str(run), "--golden", str(gold)]) == 1
    assert "claims.csv" in capsys.readouterr().out


def test_units_without_a_finite_statistic_are_inconclusive_not_missing():
    """A ratio to a zero barrier: the experiment ran, the statistic is undefined."""
    table = barrier_table({"wm": [0.0, 0.0, 0.1], "vanilla": [0.0, 0.0, 0.0]})
    row = ledger(claim(stat="ratio", op="<=", threshold=0.5), table).iloc[0]
    assert row["verdict"] == "inconclusive" and row["n"] == 0 and "finite" in row["note"]
    table = barrier_table({"wm": [0.1, 0.2, 0.1], "vanilla": [1.0, 0.0, 1.2]})
    row = ledger(claim(stat="ratio", op="<=", threshold=0.5), table).iloc[0]
    assert row["n"] == 2 and "1 unit(s) without a finite value" in row["note"]


def test_a_broken_registry_stops_the_dry_run(tmp_path):
    from conftest import copy_workflow, run_snakemake

    copy_workflow(tmp_path)
    registry = tmp_path / "results" / "reference" / "claims.yaml"
    registry.write_text(registry.read_text().replace("    stat: ratio\n", "    stat: quotient\n", 1))
    result = run_snakemake("-n", "--cores", "1", "--configfile", str(PROFILES / "smoke.yaml"), cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "quotient" in out and "glmc.C2a" in out, out[-2000:]
    assert "Job stats:" not in out
