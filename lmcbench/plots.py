"""Figures drawn from tidy tables only (seaborn), so they rebuild without retraining."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lmcbench.io import atomic_path  # noqa: E402


def save_figure(grid, path: str | Path, title: str) -> None:
    grid.figure.suptitle(title, y=1.02)
    with atomic_path(path) as tmp:
        grid.figure.savefig(tmp, dpi=120, bbox_inches="tight")
    matplotlib.pyplot.close(grid.figure)


def _empty(path: str | Path, message: str) -> None:
    """A placeholder figure for an experiment the profile does not run, so the report still lists it."""
    fig = matplotlib.pyplot.figure(figsize=(5, 2))
    fig.text(0.5, 0.5, message, ha="center", va="center")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120)
    matplotlib.pyplot.close(fig)


def training_curves(history: pd.DataFrame, path: str | Path, profile: str = "") -> None:
    """Validation loss against step, one line per seed, one panel per model."""
    grid = sns.relplot(data=history, x="step", y="val_loss", hue="seed", col="model", kind="line",
                       facet_kws={"sharey": False, "sharex": False}, height=3, aspect=1.3, palette="tab10")
    save_figure(grid, path, f"Training: validation loss ({profile} profile, {history['seed'].nunique()} seeds)")


def interpolation_curves(curves: pd.DataFrame, path: str | Path, profile: str = "",
                         title: str = "Linear interpolation") -> None:
    """Loss and accuracy along λ per method (mean ± sd over seed pairs: a bootstrap CI of three pairs says
    little, is random, and cost ~15 s a figure), per model and split."""
    if curves.empty:
        _empty(path, f"{title}: not run in the {profile} profile")
        return
    curves = curves.assign(panel=curves["model"] + " · " + curves["split"])
    grid = sns.relplot(data=curves, x="lambda", y="value", hue="method", row="metric", col="panel", kind="line",
                       marker="o", errorbar="sd", facet_kws={"sharey": False}, height=2.8, aspect=1.2)
    grid.set_axis_labels("λ (1 = model A, 0 = aligned model B)", "")
    n_pairs = curves.groupby(["model", "method"])[["seed_a", "seed_b"]].apply(lambda f: len(f.drop_duplicates())).max()
    save_figure(grid, path, f"{title} ({profile} profile, {n_pairs} seed pairs per method)")


def barrier_summary(barriers: pd.DataFrame, path: str | Path, profile: str = "", split: str = "test") -> None:
    """Bar chart of the chord barrier per method (mean ± std over pairs) for loss and accuracy."""
    part = barriers[barriers["split"] == split]
    if part.empty:
        _empty(path, f"no pairwise barriers on the {split} split in the {profile} profile")
        return
    grid = sns.catplot(data=part, x="method", y="barrier", col="model", row="metric", kind="bar",
                       errorbar="sd", sharey=False, height=2.8, aspect=1.4)
    grid.set_xticklabels(rotation=30, ha="right")
    save_figure(grid, path, f"Chord barrier on the {split} split ({profile} profile)")


def simplex_heatmap(surface: pd.DataFrame, path: str | Path, profile: str = "", split: str = "test",
                    metric: str = "loss") -> None:
    """Three-model mixtures drawn in barycentric coordinates, coloured by the metric, one panel per method."""
    if surface.empty:
        _empty(path, f"multi-model alignment: not run in the {profile} profile")
        return
    part = surface[(surface["split"] == split) & (surface["metric"] == metric)]
    part = part.assign(x=part["w1"] + part["w2"] / 2, y=part["w2"] * 3 ** 0.5 / 2)
    grid = sns.relplot(data=part, x="x", y="y", hue="value", col="method", row="model", palette="viridis",
                       s=220, marker="h", height=3, aspect=1.1, facet_kws={"sharex": True, "sharey": True})
    for ax in grid.axes.flat:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for (vx, vy), label in zip([(0, 0), (1, 0), (0.5, 3 ** 0.5 / 2)], ["θ₀", "θ₁", "θ₂"]):
            ax.annotate(label, (vx, vy), textcoords="offset points", xytext=(0, -14 if vy == 0 else 8), ha="center")
    grid.set_axis_labels("", "")
    save_figure(grid, path, f"Three-model {split} {metric} over the simplex ({profile} profile)")


# --------------------------------------------------------------------------------------------- MoE-LMC
def moe_curves(curves: pd.DataFrame, path: str | Path, profile: str = "", split: str = "test",
               metric: str = "loss"):
    """Loss along λ per method (every method in the table; mean ± sd over seed pairs), one panel per gating
    variant, one row per model."""
    part = curves[(curves["split"] == split) & (curves["metric"] == metric)]
    part = part.assign(panel=part["model"] + " · " + part["gating"])
    grid = sns.relplot(data=part, x="lambda", y="value", hue="method", col="panel", col_wrap=3, kind="line",
                       marker="o", errorbar="sd", facet_kws={"sharey": False}, height=2.8, aspect=1.2)
    grid.set_axis_labels("λ (1 = model A, 0 = aligned model B)", f"{split} {metric}")
    save_figure(grid, path, f"MoE-LMC: {split} {metric} along the linear path ({profile} profile)")
    return grid


def moe_ratio_heatmap(barriers: pd.DataFrame, path: str | Path, profile: str = "", split: str = "test",
                      metric: str = "loss"):
    """Heat map of the barrier ratio to naive (placement × experts), one panel per (model, gating), one row
    per method other than naive (every method in the table, in its order)."""
    part = barriers[(barriers["method"] != "naive") & (barriers["split"] == split) & (barriers["metric"] == metric)]
    if part.empty:
        _empty(path, "no aligned rows")
        return None
    mean = part.groupby(["method", "model", "gating", "placement", "n_experts"], as_index=False,
                        sort=False)["ratio_to_naive"].mean()
    mean["panel"] = mean["model"] + " · " + mean["gating"]

    def draw(data, **kw):
        table = data.pivot(index="placement", columns="n_experts", values="ratio_to_naive")
        sns.heatmap(table, annot=True, fmt=".2f", cmap="viridis_r", vmin=0, vmax=max(1.0, mean["ratio_to_naive"].max()),
                    cbar=False, ax=matplotlib.pyplot.gca())

    grid = sns.FacetGrid(mean, row="method", col="panel", height=2.6, aspect=1.1)
    grid.map_dataframe(draw)
    save_figure(grid, path, f"MoE-LMC: {split} {metric} barrier, method / naive ({profile} profile)")
    return grid


def moe_rank_hist(ranks: pd.DataFrame, path: str | Path, profile: str = ""):
    """Histogram of the rank of each method's expert order among all n! orders."""
    if ranks.empty:
        _empty(path, "no configuration small enough to rank all expert orders")
        return
    grid = sns.displot(data=ranks, x="rank", hue="method", col="n_orders", multiple="dodge", discrete=True,
                       shrink=0.8, height=2.8, aspect=1.3, facet_kws={"sharex": False, "sharey": False})
    save_figure(grid, path, f"MoE-LMC: rank of the chosen expert order among all orders ({profile} profile)")
    return grid
