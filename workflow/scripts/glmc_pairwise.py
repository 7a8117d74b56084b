from pathlib import Path

from lmcbench.jobs import pairwise_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    pairwise_job(Path(snakemake.input.a).parent, Path(snakemake.input.b).parent,
                 Path(snakemake.output.barriers).parent, snakemake.wildcards.method, snakemake.params.data_cfg,
                 snakemake.params.barrier_cfg, snakemake.params.matcher_cfg, snakemake.params.labels)
