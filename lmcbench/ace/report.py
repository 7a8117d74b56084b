"""ACE tables and figures, built from the per-job record files only (seaborn)."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from lmcbench.tables import concat_csv, versus_published, write_csv

TASK_METRIC = {"image": "accuracy", "nbody": "mse"}
# per-run diagnostics (records of every run): the final max |γ| (is the equality constraint met?), the gain of
# the best validation metric over the last quarter of the epochs and whether that gain makes a plateau
DIAGNOSTICS = ("max_abs_gamma", "val_gain_last_quarter", "plateau")
# A run is on its plateau when the best validation metric of the last quarter of its epochs improves on the best
# before it by no more than the validation noise: one binomial standard error √(p(1 − p)/n) of the validation
# accuracy (n validation examples), or, for an MSE (no per-example errors in the curve), PLATEAU_MSE_TOL of the
# MSE itself. Issue 11: strict's validation accuracy "stops improving over the last quarter of its epochs" [inferred].
PLATEAU_MSE_TOL = 0.05


def plateau_diagnostics(curves: list[dict], epochs: int, metric: str, n_val: int) -> dict[str, float]:
    """{"val_gain_last_quarter": g, "plateau": 1.0 | 0.0} from a run's validation curve (dicts with epoch, split,
    metric, value) on `n_val` examples. g: how much the best validation metric of the last quarter of the epochs
    improved on the best before it (accuracy: higher is better, MSE: lower; improvement positive); plateau: g
    within the validation noise (see PLATEAU_MSE_TOL). Both NaN when no evaluation falls on one side of 0.75·epochs."""
    boundary = 0.75 * epochs
    vals = [(c["epoch"], c["value"]) for c in curves if c["split"] == "val" and c["metric"] == metric]
    before = [v for e, v in vals if e <= boundary]
    last = [v for e, v in vals if e > boundary]
    if not before or not last:
        return {"val_gain_last_quarter": float("nan"), "plateau": float("nan")}
    if metric == "accuracy":
        gain, p = max(last) - max(before), max(before)
        noise = math.sqrt(p * (1 - p) / n_val)
    else:
        gain, noise = min(before) - min(last), PLATEAU_MSE_TOL * min(before)
    return {"val_gain_last_quarter": gain, "plateau": float(gain <= noise)}


def ace_tables(record_files, outputs, reference: str | Path) -> pd.DataFrame:
    """ace_results.csv, ace_trajectories.csv, ace_curves.csv, ace_summary.csv (mean ± std and max over seeds
    of the headline test metric, the output equivariance error and the per-run `DIAGNOSTICS`) and
    ace_vs_paper.csv (the published numbers beside ours, accuracy experiment)."""
    record_files = [Path(p) for p in record_files]
    results = concat_csv(record_files, outputs.results)
    concat_csv([p.with_name("trajectories.csv") for p in record_files], outputs.trajectories)
    concat_csv([p.with_name("curves.csv") for p in record_files], outputs.curves)
    layer = results["layer"].fillna("").isin(["", "output"])
    head = results[results["headline"] & layer & ((results["split"] == "test") | results["metric"].isin(DIAGNOSTICS))]
    keys = ["experiment", "task", "regime", "method", "n_train", "perturbation", "dual_lr", "metric"]
    summary = head.groupby(keys, dropna=False)["value"].agg(["mean", "std", "count", "max"]).reset_index()
    write_csv(summary.fillna({"std": 0.0}), outputs.summary)
    accuracy = head[(head["experiment"] == "accuracy") & (head["split"] == "test")]
    write_csv(versus_published(pd.read_csv(reference), {"mse": (accuracy, "value"), "accuracy": (accuracy, "value")},
                               ("task", "method", "metric")), outputs.vs_paper)
    return summary


def ace_figures(results: pd.DataFrame, trajectories: pd.DataFrame, outputs, profile: str = "") -> None:
    import seaborn as sns

    from lmcbench.plots import save_figure

    # γ and λ trajectories of the ACE runs in the accuracy / partial-symmetry experiments
    # runs with a dual step (λ recorded), whatever the method is called
    dual = trajectories.groupby("method")["lambda"].transform(lambda v: v.notna().any())
    traj = trajectories[dual & trajectories["experiment"].isin(["accuracy", "partial_symmetry"])]
    long = traj.melt(id_vars=["task", "regime", "method", "seed", "step", "layer"], value_vars=["gamma", "lambda"],
                     var_name="variable", value_name="v")
    long = long.assign(panel=long["task"] + " · " + long["regime"] + " · " + long["method"])
    grid = sns.relplot(data=long, x="step", y="v", hue="layer", row="variable", col="panel", kind="line",
                       facet_kws={"sharey": False, "sharex": False}, height=2.6, aspect=1.2, errorbar=None)
    save_figure(grid, outputs.trajectories, f"ACE γ and λ per mixed layer ({profile} profile)")

    head = results[results["headline"] & (results["split"] == "test")]
    perf = head[head["metric"].isin(["accuracy", "mse"])]
    se = perf[perf["experiment"] == "sample_efficiency"]
    grid = sns.relplot(data=se, x="n_train", y="value", hue="method", col="task", kind="line", marker="o",
                       facet_kws={"sharey": False, "sharex": False}, height=3, aspect=1.2)
    grid.set_axis_labels("training examples", "test metric (accuracy ↑ / MSE ↓)")
    save_figure(grid, outputs.sample_efficiency, f"Sample efficiency ({profile} profile)")

    eq = head[(head["metric"] == "equiv_err") & (head["layer"] == "output")]
    keys = ["experiment", "task", "regime", "method", "seed", "n_train", "perturbation", "dual_lr"]
    both = perf.merge(eq[keys + ["value"]], on=keys, suffixes=("", "_equiv"))
    both = both.assign(equiv_err=both["value_equiv"].clip(lower=1e-9))
    grid = sns.relplot(data=both, x="equiv_err", y="value", hue="method", style="regime", col="task",
                       facet_kws={"sharey": False, "sharex": False}, height=3, aspect=1.2, s=50)
    for ax in grid.axes.flat:
        ax.set_xscale("log")
    grid.set_axis_labels("relative equivariance error at the output (reported model)", "test metric")
    save_figure(grid, outputs.equivariance, f"Equivariance error against task metric ({profile} profile)")
