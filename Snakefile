"""lmcbench: every experiment, table and figure.  snakemake --cores all

Profiles: lmcbench/profiles/{default,smoke,paper,gpu_check}.yaml, package data (pass another with
--configfile; it is merged over the default). The config is validated against
lmcbench/schemas/config.schema.yaml before any job starts, dry runs included (lmcbench.config).
Rules are thin: each calls an `lmcbench` function through a shim in workflow/scripts.
"""
from snakemake.utils import min_version

from lmcbench.config import DEFAULT_PROFILE, check_config

min_version("9.0")


configfile: str(DEFAULT_PROFILE)   # the installed package's copy: one default for the CLI and the workflow


# at parse time, so a dry run fails too: schema (one line naming the key), plugins loaded and every
# matcher and matcher option checked against the registry, cross-key rules (lmcbench.config)
check_config(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/glmc.smk"
include: "workflow/rules/moe.smk"
include: "workflow/rules/ace.smk"
include: "workflow/rules/claims.smk"


rule all:
    default_target: True
    input:
        rules.training_report.output,
        rules.glmc_tables.output,
        rules.glmc_figures.output,
        rules.moe_tables.output,
        rules.moe_figures.output,
        rules.ace_tables.output,
        rules.ace_figures.output,
        rules.claims.output,
        rules.timing.output,
