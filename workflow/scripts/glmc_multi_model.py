from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.glmc import multi_model_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    multi_model_job([Path(p).parent for p in snakemake.input], Path(snakemake.output.barriers).parent,
                    snakemake.wildcards.method, snakemake.params.data_cfg, snakemake.params.simplex_cfg,
                    snakemake.params.matcher_cfg, snakemake.params.labels)
