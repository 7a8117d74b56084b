import pandas as pd

from lmcbench import plots
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    profile = snakemake.params.profile
    curves, barriers = pd.read_csv(snakemake.input.curves), pd.read_csv(snakemake.input.barriers)
    plots.moe_curves(curves[curves["experiment"] == "sweep"], snakemake.output.curves, profile=profile)
    plots.moe_ratio_heatmap(barriers[barriers["experiment"] == "sweep"], snakemake.output.ratio, profile=profile)
    plots.moe_rank_hist(pd.read_csv(snakemake.input.order_ranks), snakemake.output.ranks, profile=profile)
