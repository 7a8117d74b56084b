import pandas as pd

from lmcbench import plots
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    profile = snakemake.params.profile
    plots.moe_curves(pd.read_csv(snakemake.input.curves), snakemake.output.curves, profile=profile)
    plots.moe_ratio_heatmap(pd.read_csv(snakemake.input.barriers), snakemake.output.ratio, profile=profile)
    plots.moe_rank_hist(pd.read_csv(snakemake.input.order_ranks), snakemake.output.ranks, profile=profile)
