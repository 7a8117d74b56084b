from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench.claims import claims_job
from lmcbench.runner import job_context

with job_context(snakemake.log[0]):   # no torch, no plugins: the ledger reads tables only
    tables = [p for p in snakemake.input if p != snakemake.input.registry]
    claims_job(tables, snakemake.output, snakemake.params.profile, registry=snakemake.input.registry)
