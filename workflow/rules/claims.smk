# The claims ledger: every testable claim of the three papers (results/reference/claims.yaml), evaluated
# on this run's tables with a paired t interval over seeds or seed pairs (lmcbench.claims).
from lmcbench.claims import load_claims

CLAIMS_REGISTRY = "results/reference/claims.yaml"
load_claims(CLAIMS_REGISTRY)   # at parse time: a broken registry stops the run (and a dry run) before any job


rule claims:
    input:
        rules.glmc_tables.output.barriers,
        rules.moe_tables.output.barriers,
        rules.moe_tables.output.order_ranks,
        rules.ace_tables.output.results,
        rules.ace_tables.output.trajectories,
        rules.ace_tables.output.curves,
        registry=CLAIMS_REGISTRY,
    output:
        csv=report(
            f"{RESULTS}/tables/claims.csv",
            caption="../report/claims.rst",
            category="Claims",
        ),
        tex=f"{RESULTS}/tables/claims.tex",
    log:
        f"{RESULTS}/logs/claims.log",
    benchmark:
        f"{RESULTS}/benchmarks/claims.tsv"
    params:
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
        gpu=0,
    script:
        "../scripts/claims.py"


# Wall-clock seconds of the jobs that time themselves (ACE training runs, MoE fine-tuning and alignment),
# kept out of the result tables (lmcbench.timing); per-rule times are in benchmarks/ (`lmcbench bench rules`).
rule timing:
    input:
        ACE_RECORDS,
        MOE_OUTPUTS,
    output:
        f"{RESULTS}/tables/timing.csv",
    log:
        f"{RESULTS}/logs/timing.log",
    benchmark:
        f"{RESULTS}/benchmarks/timing.tsv"
    params:
        results=RESULTS,
    threads: 1
    resources:
        mem_mb=1000,
        runtime=5,
        gpu=0,
    script:
        "../scripts/timing.py"
