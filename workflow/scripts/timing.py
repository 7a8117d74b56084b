from lmcbench.numerics import apply

apply(snakemake.config.get("numerics"))   # first, before torch and numpy load: pinned CPU kernels and threads

from lmcbench.runner import job_context
from lmcbench.timing import timing_table

with job_context(snakemake.log[0]):
    timing_table(snakemake.input, snakemake.output[0], results=snakemake.params.results)
