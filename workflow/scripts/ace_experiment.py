from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.ace import task_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    task_job(snakemake.wildcards.ace_task, snakemake.params.cfg, Path(snakemake.output.records).parent,
             snakemake.params.nbody, snakemake.params.experiments)
