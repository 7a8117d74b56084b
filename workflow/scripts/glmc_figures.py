import pandas as pd

from lmcbench import plots
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    curves, barriers = pd.read_csv(snakemake.input.curves), pd.read_csv(snakemake.input.barriers)
    plots.interpolation_curves(curves, snakemake.output.curves, profile=snakemake.params.profile)
    plots.barrier_summary(barriers, snakemake.output.summary, profile=snakemake.params.profile)
