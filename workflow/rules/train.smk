# Train every model of the profile for every seed, and summarise the training curves.


rule train:
    output:
        weights=f"{RESULTS}/models/{{model}}/seed{{seed}}/model.safetensors",
        config=f"{RESULTS}/models/{{model}}/seed{{seed}}/config.json",
        history=f"{RESULTS}/models/{{model}}/seed{{seed}}/history.csv",
    log:
        f"{RESULTS}/logs/train/{{model}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{model}}/seed{{seed}}.tsv"
    params:
        model_cfg=lambda wc: config["models"][wc.model],
        data_cfg=lambda wc: dataset_cfg(wc.model),
    threads: model_resource("threads")
    priority: PRIORITY["train"]
    resources:
        mem_mb=model_resource("mem_mb"),
        runtime=model_resource("runtime"),
        gpu=model_resource("gpu"),
    script:
        "../scripts/train.py"


rule training_report:
    input:
        [f"{RESULTS}/models/{m}/seed{s}/history.csv" for m in config["models"] for s in model_seeds(m)],
    output:
        table=f"{RESULTS}/tables/training.csv",
        figure=report(
            f"{RESULTS}/figures/training_curves.png",
            caption="../report/training_curves.rst",
            category="Training",
        ),
    log:
        f"{RESULTS}/logs/training_report.log",
    benchmark:
        f"{RESULTS}/benchmarks/training_report.tsv"
    params:
        profile=config["profile"],
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
        gpu=0,
    script:
        "../scripts/training_report.py"
