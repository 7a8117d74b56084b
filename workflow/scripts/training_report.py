from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench import plots, tables
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    table = tables.concat_csv(snakemake.input, snakemake.output.table)
    plots.training_curves(table, snakemake.output.figure, profile=snakemake.params.profile)
