from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench import plots
from lmcbench.tables import read_csv
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    curves, barriers = read_csv(snakemake.input.curves), read_csv(snakemake.input.barriers)
    profile = snakemake.params.profile
    plots.interpolation_curves(curves[curves["experiment"] == "pairwise"], snakemake.output.curves, profile=profile)
    plots.barrier_summary(barriers[barriers["experiment"] == "pairwise"], snakemake.output.summary, profile=profile)
    plots.simplex_heatmap(read_csv(snakemake.input.simplex), snakemake.output.simplex, profile=profile)
    plots.interpolation_curves(curves[curves["experiment"] == "width_hetero"], snakemake.output.hetero,
                               profile=profile, title="Width-heterogeneous interpolation")
