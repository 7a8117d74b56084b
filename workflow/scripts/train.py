from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.train import train_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    train_job(Path(snakemake.output.weights).parent, snakemake.wildcards.model, snakemake.params.model_cfg,
              snakemake.params.data_cfg, int(snakemake.wildcards.seed))
