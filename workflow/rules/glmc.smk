# GLMC: align every pair of seeds with every registered matcher, a narrow model with a wide one,
# and three models to a universe; interpolate; tabulate; plot.

GLMC = config["glmc"]
GLMC_MODELS = GLMC["models"] or list(config["models"])   # null = all; every key read with [...] has its value in the default profile
HETERO = GLMC["width_hetero"]
MULTI = GLMC["multi_model"]
NARROW_OF = {p["wide"]: p["narrow"] for p in HETERO["pairs"]}
for _m in GLMC_MODELS + list(NARROW_OF) + list(NARROW_OF.values()) + MULTI["models"]:
    _require_model(_m, "a model named in glmc")

GLMC_OUTPUTS = (
    [f"{RESULTS}/glmc/pairwise/{m}/{method}/barriers.csv" for m in GLMC_MODELS for method in GLMC["methods"]]
    + [f"{RESULTS}/glmc/width_hetero/{wide}/{method}/barriers.csv" for wide in NARROW_OF for method in HETERO["methods"]]
    + [f"{RESULTS}/glmc/multi_model/{m}/{method}/barriers.csv" for m in MULTI["models"] for method in MULTI["methods"]]
)


def matcher_cfg(matchers, model, method):
    """A matcher's options: the experiment's block, then the model's own `matchers.<method>` overrides."""
    return {**matchers.get(method, {}), **config["models"][model].get("matchers", {}).get(method, {})}


def seed_pairs(model):
    """All pairs of the model's seeds, as (A, B) checkpoints."""
    return [(checkpoint(model, a), checkpoint(model, b)) for a, b in combinations(model_seeds(model), 2)]


def hetero_pairs(wide):
    """Every wide seed with every narrow seed, as (wide, narrow) checkpoints."""
    narrow = NARROW_OF[wide]
    return [(checkpoint(wide, a), checkpoint(narrow, b)) for a in model_seeds(wide) for b in model_seeds(narrow)]


def pair_labels(experiment):
    return lambda wc: {
        "track": "glmc",
        "experiment": experiment,
        "model": wc.model,
        "dataset": dataset_cfg(wc.model)["name"],
    }


rule glmc_pairwise:
    input:
        lambda wc: [c for pair in seed_pairs(wc.model) for c in pair],
    output:
        barriers=f"{RESULTS}/glmc/pairwise/{{model}}/{{method}}/barriers.csv",
        curve=f"{RESULTS}/glmc/pairwise/{{model}}/{{method}}/curve.csv",
    log:
        f"{RESULTS}/logs/glmc_pairwise/{{model}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_pairwise/{{model}}/{{method}}.tsv"
    params:
        pairs=lambda wc: seed_pairs(wc.model),
        experiment="pairwise",
        data_cfg=lambda wc: dataset_cfg(wc.model),
        barrier_cfg=lambda wc: barrier_cfg(wc.model),
        matcher_cfg=lambda wc: matcher_cfg(GLMC["matchers"], wc.model, wc.method),
        labels=pair_labels("pairwise"),
        export=GLMC["export_aligned"],
    threads: model_resource("threads")
    priority: PRIORITY["glmc_pairwise"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/glmc_pairs.py"


rule glmc_width_hetero:
    input:
        lambda wc: [c for pair in hetero_pairs(wc.model) for c in pair],
    output:
        barriers=f"{RESULTS}/glmc/width_hetero/{{model}}/{{method}}/barriers.csv",
        curve=f"{RESULTS}/glmc/width_hetero/{{model}}/{{method}}/curve.csv",
    log:
        f"{RESULTS}/logs/glmc_width_hetero/{{model}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_width_hetero/{{model}}/{{method}}.tsv"
    params:
        pairs=lambda wc: hetero_pairs(wc.model),
        experiment="width_hetero",
        data_cfg=lambda wc: dataset_cfg(wc.model),
        barrier_cfg=lambda wc: barrier_cfg(wc.model),
        matcher_cfg=lambda wc: matcher_cfg(HETERO["matchers"], wc.model, wc.method),
        labels=pair_labels("width_hetero"),
        export=False,
    threads: model_resource("threads")
    priority: PRIORITY["glmc_width_hetero"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/glmc_pairs.py"


rule glmc_multi_model:
    input:
        lambda wc: [checkpoint(wc.model, s) for s in model_seeds(wc.model)[: MULTI["n_models"]]],
    output:
        barriers=f"{RESULTS}/glmc/multi_model/{{model}}/{{method}}/barriers.csv",
        surface=f"{RESULTS}/glmc/multi_model/{{model}}/{{method}}/surface.csv",
    log:
        f"{RESULTS}/logs/glmc_multi_model/{{model}}/{{method}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/glmc_multi_model/{{model}}/{{method}}.tsv"
    params:
        data_cfg=lambda wc: dataset_cfg(wc.model),
        simplex_cfg={
            "resolution": MULTI["resolution"],
            "splits": MULTI["splits"],
            "max_examples": MULTI["max_examples"],
            "batch_size": MULTI["batch_size"],
        },
        matcher_cfg=MULTI["matcher"],
        labels=pair_labels("multi_model"),
    threads: model_resource("threads")
    priority: PRIORITY["glmc_multi_model"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/glmc_multi_model.py"


rule glmc_tables:
    input:
        GLMC_OUTPUTS,
    output:
        barriers=f"{RESULTS}/tables/glmc_barriers.csv",
        curves=f"{RESULTS}/tables/glmc_curves.csv",
        simplex=f"{RESULTS}/tables/glmc_simplex.csv",
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
        simplex=rules.glmc_tables.output.simplex,
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
        simplex=report(
            f"{RESULTS}/figures/glmc_simplex.png",
            caption="../report/glmc_simplex.rst",
            category="GLMC",
        ),
        hetero=report(
            f"{RESULTS}/figures/glmc_width_hetero.png",
            caption="../report/glmc_width_hetero.rst",
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
