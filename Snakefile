"""lmcbench: every experiment, table and figure.  snakemake --cores all

Profiles: workflow/config/{default,smoke,paper}.yaml (pass another with --configfile; it is merged
over the default). The config is validated against workflow/schemas/config.schema.yaml before any
job starts. Rules are thin: each calls an `lmcbench` function through a shim in workflow/scripts.
"""
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "workflow/config/default.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


onstart:
    # before the first job (not on a dry run): load plugins, then every GLMC method must name a matcher
    from lmcbench.plugins import check_methods

    check_methods(config)


include: "workflow/rules/common.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/glmc.smk"
include: "workflow/rules/moe.smk"
include: "workflow/rules/ace.smk"


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
