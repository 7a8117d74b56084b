from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench.experiments.ace import nbody_data_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    nbody_data_job(dict(snakemake.output.items()), snakemake.params.cfg)
