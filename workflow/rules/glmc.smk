# GLMC: align every pair of seeds with every registered matcher, interpolate, tabulate, plot.

GLMC_MODELS = config["glmc"].get("models") or list(config["models"])
GLMC_PAIRWISE = expand(
    f"{RESULTS}/glmc/pairwise/{{model}}/{{method}}/s{{pair}}/barriers.csv",
    model=GLMC_MODELS,
    method=config["glmc"]["methods"],
    pair=[f"{a}-s{b}" for a, b in SEED_PAIRS],
)


rule glmc_pairwise:
    input:
        a=f"{RESULTS}/models/{{model}}/seed{{seed_a}}/model.safetensors",
        b=f"{RESULTS}/models/{{model}}/seed{{seed_b}}/model.safetensors",
    output:
        barriers=f"{RESULTS}/glmc/pairwise/{{model}}/{{method}}/s{{seed_a}}-s{{seed_b}}/barriers.csv",
        curve=f"{RESULTS}/glmc/pairwise/{{model}}/{{method}}/s{{seed_a}}-s{{seed_b}}/curve.csv",
    log:
        f"{RESULTS}/logs/glmc_pairwise/{{model}}/{{method}}/s{{seed_a}}-s{{seed_b}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_pairwise/{{model}}/{{method}}/s{{seed_a}}-s{{seed_b}}.tsv"
    params:
        data_cfg=lambda wc: dataset_cfg(wc.model),
        barrier_cfg=config["barrier"],
        matcher_cfg=lambda wc: config["glmc"].get("matchers", {}).get(wc.method, {}),
        labels=lambda wc: {
            "track": "glmc",
            "experiment": "pairwise",
            "model": wc.model,
            "dataset": dataset_cfg(wc.model)["name"],
        },
    threads: model_resource("threads")
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/glmc_pairwise.py"


rule glmc_tables:
    input:
        GLMC_PAIRWISE,
    output:
        barriers=f"{RESULTS}/tables/glmc_barriers.csv",
        curves=f"{RESULTS}/tables/glmc_curves.csv",
        summary=report(
            f"{RESULTS}/tables/glmc_summary.csv",
            caption="../report/glmc_summary.rst",
            category="GLMC",
        ),
        latex=f"{RESULTS}/tables/glmc_summary.tex",
    log:
        f"{RESULTS}/logs/glmc_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_tables.tsv"
    params:
        reference="results/reference/glmc_table1.csv",
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/glmc_tables.py"


rule glmc_figures:
    input:
        barriers=rules.glmc_tables.output.barriers,
        curves=rules.glmc_tables.output.curves,
    output:
        curves=report(
            f"{RESULTS}/figures/glmc_curves.png",
            caption="../report/glmc_curves.rst",
            category="GLMC",
        ),
        summary=report(
            f"{RESULTS}/figures/glmc_summary.png",
            caption="../report/glmc_summary_figure.rst",
            category="GLMC",
        ),
    log:
        f"{RESULTS}/logs/glmc_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_figures.tsv"
    params:
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/glmc_figures.py"
