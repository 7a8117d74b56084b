from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.glmc import pairs_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    pairs_job([(Path(a).parent, Path(b).parent) for a, b in snakemake.params.pairs],
              Path(snakemake.output.barriers).parent, snakemake.wildcards.method, snakemake.params.data_cfg,
              snakemake.params.barrier_cfg, snakemake.params.matcher_cfg, snakemake.params.labels,
              experiment=snakemake.params.experiment, export=snakemake.params.export)
