# MoE-LMC: fine-tune MoE layers on the frozen dense backbone (the `train` rule's checkpoint of seed
# `backbone_seed`) for every seed, align every pair of seeds with Algorithm 1 and its baselines,
# interpolate; tabulate; plot. One job per (model, variant, gating, n_experts, placement) does all seeds.
# A variant is a named MoE recipe (moe.variants): `paper` is the paper's protocol; others override the
# MoE layer options (`moe`), the fine-tuning schedule (`train`) and may restrict the grid.
# moe_full_model (beyond the paper): MoEs on independently trained backbones, whole-model alignment.
from types import SimpleNamespace

MOE = config["moe"]   # every key read with [...] has its value in the default profile (lmcbench/profiles)
MOE_MODELS = MOE["models"]
for _m in MOE_MODELS:
    _require_model(_m, "a model named in moe.models")


def moe_setting(model, key):
    """A per-model override of moe.<key>, else the track-wide value."""
    return MOE_MODELS[model].get(key, MOE[key])


MOE_VARIANTS = MOE["variants"]


def moe_variant_setting(model, variant, key):
    """A variant's restriction of the grid key, else the model's / track-wide value."""
    return MOE_VARIANTS[variant].get(key, moe_setting(model, key))


MOE_CONFIGS = [
    (m, v, g, n, p)
    for m in MOE_MODELS
    for v in MOE_VARIANTS
    if m in MOE_VARIANTS[v].get("models", MOE_MODELS)
    for g in moe_variant_setting(m, v, "gatings")
    for n in moe_variant_setting(m, v, "n_experts")
    for p in moe_variant_setting(m, v, "placements")
]
MOE_FULL = MOE["full_model"]
for _m in MOE_FULL["models"]:
    _require_model(_m, "a model named in moe.full_model")
    if _m not in MOE_MODELS:
        raise ValueError(f"config error: moe.full_model model {_m!r} needs a moe.models.{_m} section (its schedule)")
MOE_OUTPUTS = [f"{RESULTS}/moe/sweep/{m}/{v}/{g}/n{n}/{p}/barriers.csv" for m, v, g, n, p in MOE_CONFIGS] + [
    f"{RESULTS}/moe/full_model/{m}/barriers.csv" for m in MOE_FULL["models"]
]


wildcard_constraints:
    gating="dense|topk|shared",
    n_experts=r"\d+",
    placement="first|last|all",
    variant=r"[A-Za-z0-9_]+",


def moe_layer_cfg(wc, variant="paper"):
    return {
        "n_experts": int(wc.n_experts),
        "gating": wc.gating,
        "k": MOE["k"],
        "n_shared": MOE["n_shared"],
        "hidden": MOE["hidden"],
        "activation": MOE["activation"],
        "aux_loss_coef": MOE["aux_loss_coef"],
        **MOE_VARIANTS.get(variant, {}).get("moe", {}),
        "placement": wc.placement,
    }


def moe_train_cfg(model, variant):
    return {**MOE_MODELS[model]["train"], **MOE_VARIANTS[variant].get("train", {})}


def moe_barrier_cfg(model):
    return {**barrier_cfg(model), **MOE["barrier"], **MOE_MODELS[model].get("barrier", {})}


rule moe_sweep:
    input:
        lambda wc: checkpoint(wc.model, MOE["backbone_seed"]),
    output:
        barriers=f"{RESULTS}/moe/sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}/barriers.csv",
        curve=f"{RESULTS}/moe/sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}/curve.csv",
        ranks=f"{RESULTS}/moe/sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}/ranks.csv",
        diagnostics=f"{RESULTS}/moe/sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}/diagnostics.csv",
    log:
        f"{RESULTS}/logs/moe_sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/moe_sweep/{{model}}/{{variant}}/{{gating}}/n{{n_experts}}/{{placement}}.tsv"
    params:
        moe_cfg=lambda wc: moe_layer_cfg(wc, wc.variant),
        train_cfg=lambda wc: moe_train_cfg(wc.model, wc.variant),
        data_cfg=lambda wc: dataset_cfg(wc.model),
        seeds=MOE["seeds"],
        barrier_cfg=lambda wc: moe_barrier_cfg(wc.model),
        methods=MOE["methods"],
        options=MOE.get("options", {}),
        max_orders=MOE["max_orders"],
        train_backbone=MOE["train_backbone"],
        save_models=MOE["save_models"],
        labels=lambda wc: {
            "track": "moe",
            "experiment": "sweep",
            "variant": wc.variant,
            "model": wc.model,
            "dataset": dataset_cfg(wc.model)["name"],
            "gating": wc.gating,
            "n_experts": int(wc.n_experts),
            "placement": wc.placement,
        },
    threads: model_resource("threads")
    priority: PRIORITY["moe"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/moe_sweep.py"


rule moe_full_model:
    input:
        lambda wc: [checkpoint(wc.model, s) for s in model_seeds(wc.model)[: MOE_FULL["n_models"]]],
    output:
        barriers=f"{RESULTS}/moe/full_model/{{model}}/barriers.csv",
        curve=f"{RESULTS}/moe/full_model/{{model}}/curve.csv",
    log:
        f"{RESULTS}/logs/moe_full_model/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/moe_full_model/{{model}}.tsv"
    params:
        moe_cfg=lambda wc: moe_layer_cfg(
            SimpleNamespace(
                n_experts=MOE_FULL["n_experts"],
                gating=MOE_FULL["gating"],
                placement=MOE_FULL["placement"],
            )
        ),
        train_cfg=lambda wc: MOE_MODELS[wc.model]["train"],
        data_cfg=lambda wc: dataset_cfg(wc.model),
        barrier_cfg=lambda wc: moe_barrier_cfg(wc.model),
        methods=MOE_FULL["methods"],
        options=MOE_FULL.get("options", {}),
        labels=lambda wc: {
            "track": "moe",
            "experiment": "full_model",
            "variant": "paper",
            "model": wc.model,
            "dataset": dataset_cfg(wc.model)["name"],
            "gating": MOE_FULL["gating"],
            "n_experts": MOE_FULL["n_experts"],
            "placement": MOE_FULL["placement"],
        },
    threads: model_resource("threads")
    priority: PRIORITY["moe"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/moe_full_model.py"


rule moe_tables:
    input:
        MOE_OUTPUTS,
    output:
        barriers=f"{RESULTS}/tables/moe_barriers.csv",
        curves=f"{RESULTS}/tables/moe_curves.csv",
        order_ranks=f"{RESULTS}/tables/moe_order_ranks.csv",
        diagnostics=f"{RESULTS}/tables/moe_diagnostics.csv",
        testability=report(
            f"{RESULTS}/tables/moe_testability.csv",
            caption="../report/moe_testability.rst",
            category="MoE-LMC",
        ),
        summary=report(
            f"{RESULTS}/tables/moe_summary.csv",
            caption="../report/moe_summary.rst",
            category="MoE-LMC",
        ),
        vs_paper=report(
            f"{RESULTS}/tables/moe_vs_paper.csv",
            caption="../report/moe_vs_paper.rst",
            category="MoE-LMC",
        ),
    log:
        f"{RESULTS}/logs/moe_tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/moe_tables.tsv"
    params:
        reference="results/reference/moe_published.csv",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/moe_tables.py"


rule moe_figures:
    input:
        barriers=rules.moe_tables.output.barriers,
        curves=rules.moe_tables.output.curves,
        order_ranks=rules.moe_tables.output.order_ranks,
    output:
        curves=report(
            f"{RESULTS}/figures/moe_curves.png",
            caption="../report/moe_curves.rst",
            category="MoE-LMC",
        ),
        ratio=report(
            f"{RESULTS}/figures/moe_ratio_heatmap.png",
            caption="../report/moe_ratio_heatmap.rst",
            category="MoE-LMC",
        ),
        ranks=report(
            f"{RESULTS}/figures/moe_rank_hist.png",
            caption="../report/moe_rank_hist.rst",
            category="MoE-LMC",
        ),
    log:
        f"{RESULTS}/logs/moe_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/moe_figures.tsv"
    params:
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/moe_figures.py"
