from lmcbench.runner import job_context
from lmcbench.timing import timing_table

with job_context(snakemake.log[0]):
    timing_table(snakemake.input, snakemake.output[0], results=snakemake.params.results)
