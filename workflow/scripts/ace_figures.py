from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

import pandas as pd

from lmcbench.ace.report import ace_figures
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    ace_figures(pd.read_csv(snakemake.input.results), pd.read_csv(snakemake.input.trajectories), snakemake.output,
                profile=snakemake.params.profile)
