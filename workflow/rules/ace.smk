# ACE: approximately equivariant training by constrained optimisation (lmcbench.ace).
# One job per task (image, nbody) runs every configured experiment sequentially: start-up (torch, escnn,
# sklearn/scipy pulled in by escnn: ~3–10 s) and data loading are paid once per task, not per experiment.
# The N-body pools are simulated once and cached.

ACE = config["ace"]
ACE_TASKS = ACE["tasks"]
ACE_EXPERIMENTS = list(ACE["experiments"])
ACE_NBODY = {v: f"{RESULTS}/ace/data/nbody_{v}.npz" for v in ("symmetric", "field")}
ACE_RECORDS = [f"{RESULTS}/ace/{t}/records.csv" for t in ACE_TASKS]


def ace_plan(wildcards):
    """The registered methods each experiment trains on this task (plugins' too): the job's line in `snakemake -n`."""
    from lmcbench.experiments.ace import experiment_methods

    return "; ".join(f"{e}: {', '.join(experiment_methods(e, wildcards.ace_task, ACE))}" for e in ACE_EXPERIMENTS)


wildcard_constraints:
    ace_task="image|nbody",


rule ace_nbody_data:
    output:
        **ACE_NBODY,
    log:
        f"{RESULTS}/logs/ace/nbody_data.log",
    benchmark:
        f"{RESULTS}/benchmarks/ace_nbody_data.tsv"
    params:
        cfg=ACE,
    threads: 1
    priority: PRIORITY["ace"]
    resources:
        mem_mb=2000,
        runtime=30,
        gpu=0,
    script:
        "../scripts/ace_nbody_data.py"


rule ace_experiment:
    input:
        lambda wc: list(ACE_NBODY.values()) if wc.ace_task == "nbody" else [],
    output:
        records=f"{RESULTS}/ace/{{ace_task}}/records.csv",
        trajectories=f"{RESULTS}/ace/{{ace_task}}/trajectories.csv",
        curves=f"{RESULTS}/ace/{{ace_task}}/curves.csv",
    log:
        f"{RESULTS}/logs/ace/{{ace_task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ace_experiment/{{ace_task}}.tsv"
    params:
        cfg=ACE,
        nbody=ACE_NBODY,
        experiments=ACE_EXPERIMENTS,
        plan=ace_plan,
    message:
        "rule ace_experiment ({wildcards.ace_task}) -> {output.records}; methods per experiment: {params.plan}"
    threads: resource("threads")  # ACE trains on the CPU (small models); more threads on bigger machines
    priority: PRIORITY["ace"]   # the image job is the longest single job: first, beside the rest of the DAG
    resources:
        mem_mb=3000,
        runtime=ACE["runtime"],
        gpu=0,
    script:
        "../scripts/ace_experiment.py"


rule ace_tables:
    input:
        ACE_RECORDS,
    output:
        results=f"{RESULTS}/tables/ace_results.csv",
        trajectories=f"{RESULTS}/tables/ace_trajectories.csv",
        curves=f"{RESULTS}/tables/ace_curves.csv",
        summary=report(
            f"{RESULTS}/tables/ace_summary.csv",
            caption="../report/ace_summary.rst",
            category="ACE",
        ),
        vs_paper=report(
            f"{RESULTS}/tables/ace_vs_paper.csv",
            caption="../report/ace_vs_paper.rst",
            category="ACE",
        ),
    log:
        f"{RESULTS}/logs/ace/tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/ace_tables.tsv"
    params:
        reference="results/reference/ace_published.csv",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/ace_tables.py"


rule ace_figures:
    input:
        results=rules.ace_tables.output.results,
        trajectories=rules.ace_tables.output.trajectories,
    output:
        trajectories=report(
            f"{RESULTS}/figures/ace_trajectories.png",
            caption="../report/ace_trajectories.rst",
            category="ACE",
        ),
        sample_efficiency=report(
            f"{RESULTS}/figures/ace_sample_efficiency.png",
            caption="../report/ace_sample_efficiency.rst",
            category="ACE",
        ),
        equivariance=report(
            f"{RESULTS}/figures/ace_equivariance_accuracy.png",
            caption="../report/ace_equivariance_accuracy.rst",
            category="ACE",
        ),
    log:
        f"{RESULTS}/logs/ace/figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/ace_figures.tsv"
    params:
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/ace_figures.py"
