from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from pathlib import Path

from lmcbench.experiments.moe import moe_sweep_job
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    p = snakemake.params
    moe_sweep_job(Path(snakemake.output.barriers).parent, Path(snakemake.input[0]).parent, p.moe_cfg, p.train_cfg,
                  p.data_cfg, list(p.seeds), p.barrier_cfg, p.methods, p.labels, max_orders=p.max_orders,
                  train_backbone=p.train_backbone, save_models=p.save_models, options=p.options)
