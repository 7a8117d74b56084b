from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench import tables
from lmcbench.runner import snakemake_job

with snakemake_job(snakemake):
    tables.glmc_tables(snakemake.input, snakemake.output, reference=snakemake.params.reference)
