from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench import plots
from lmcbench.tables import read_csv
from lmcbench.runner import snakemake_job


def with_variant(frame):
    """Panels per (variant, gating): the plots facet on `gating`, so the recipe name goes into it."""
    if "variant" not in frame or frame.empty:
        return frame
    return frame.assign(gating=frame["variant"].fillna("paper") + " · " + frame["gating"].astype(str))


with snakemake_job(snakemake):
    profile = snakemake.params.profile
    curves, barriers = read_csv(snakemake.input.curves), read_csv(snakemake.input.barriers)
    plots.moe_curves(with_variant(curves[curves["experiment"] == "sweep"]), snakemake.output.curves, profile=profile)
    plots.moe_ratio_heatmap(with_variant(barriers[barriers["experiment"] == "sweep"]), snakemake.output.ratio,
                            profile=profile)
    plots.moe_rank_hist(read_csv(snakemake.input.order_ranks), snakemake.output.ranks, profile=profile)
