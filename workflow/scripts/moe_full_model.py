from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.moe import moe_full_model_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    moe_full_model_job(Path(snakemake.output.barriers).parent, [Path(c).parent for c in snakemake.input], p.moe_cfg,
                       p.train_cfg, p.data_cfg, p.barrier_cfg, p.methods, p.labels, options=p.options)
