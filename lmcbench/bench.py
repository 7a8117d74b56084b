"""Benchmarks measured with the project's own code (`lmcbench bench {rules,matching,matching-scale,throughput}`).

`rules`: per-rule wall time of a finished DAG, from Snakemake's benchmark files.
`matching`: wall time of GLMC weight matching on a pair of randomly initialised GPT-2 models,
GPT-2-small-sized by default (n_embd 768, 12 layers, 12 heads, vocab 50257), split into
canonicalisation, the matching rounds, and the circuit-form conversion.
`matching-scale`: the same against width, n_embd 128 → 768 (head size 64, as in GPT-2).
`throughput`: training samples/s and tokens/s of a profile's models, through the real training loop.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path

import pandas as pd
import torch

from lmcbench.canonical import circuit_form
from lmcbench.matchers.weight_matching import as_model, glmc_weight_matching_states
from lmcbench.models import build_model
from lmcbench.numerics import state as numerics_state


def bench_rules(results: str | Path = "results") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every job's benchmark record (rule, job, wall s, peak RSS MB) and a per-rule summary."""
    root = Path(results) / "benchmarks"
    files = sorted(root.rglob("*.tsv"))
    if not files:
        raise FileNotFoundError(f"no Snakemake benchmark files under {root}: run the workflow first")
    jobs = []
    for path in files:
        record = pd.read_csv(path, sep="\t").iloc[-1]
        parts = path.relative_to(root).with_suffix("").parts
        jobs.append({"rule": parts[0], "job": "/".join(parts[1:]) or parts[0], "wall_s": float(record["s"]),
                     "max_rss_mb": float(record["max_rss"]) if record["max_rss"] != "-" else float("nan")})
    jobs = pd.DataFrame(jobs)
    summary = (jobs.groupby("rule")
               .agg(jobs=("job", "size"), total_s=("wall_s", "sum"), mean_s=("wall_s", "mean"), max_s=("wall_s", "max"),
                    max_rss_mb=("max_rss_mb", "max"))
               .sort_values("total_s", ascending=False).round(1).reset_index())
    return jobs, summary


def bench_matching(n_embd: int = 768, n_layer: int = 12, n_head: int = 12, vocab_size: int = 50257,
                   n_positions: int = 1024, iterations: int = 15, mlp_cost: str = "l1") -> dict:
    arch = {"n_embd": n_embd, "n_layer": n_layer, "n_head": n_head, "n_inner": 4 * n_embd,
            "n_positions": n_positions}
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model({"family": "gpt2", "arch": arch}, {"vocab_size": vocab_size}).eval())
    start = time.perf_counter()
    canon_a, aligner = glmc_weight_matching_states(*models, iterations=iterations, mlp_cost=mlp_cost)
    matched = time.perf_counter()
    circuit_form(canon_a), circuit_form(as_model(canon_a, aligner.state_b))
    done = time.perf_counter()
    return {
        "model": f"GPT-2 n_embd {n_embd}, {n_layer} layers, {n_head} heads, vocab {vocab_size}",
        "parameters": sum(p.numel() for p in models[0].parameters()),
        "iterations": iterations,
        "mlp_cost": mlp_cost,
        "canonicalise_and_match_s": round(matched - start, 2),
        "circuit_form_both_s": round(done - matched, 2),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }


def bench_matching_scale(widths=(128, 256, 384, 512, 768), n_layer: int = 12, iterations: int = 3,
                         mlp_cost: str = "l1", vocab_size: int = 50257) -> pd.DataFrame:
    """GLMC weight matching time against width at GPT-2 depth and head size 64 (n_head = n_embd / 64)."""
    rows = [bench_matching(w, n_layer, max(1, w // 64), vocab_size, iterations=iterations, mlp_cost=mlp_cost)
            for w in widths]
    return pd.DataFrame([{"n_embd": w, **row} for w, row in zip(widths, rows)])


def bench_throughput(config: dict, models=("vit", "gpt2"), steps: int = 20, warmup: int = 3,
                     device: str | None = None) -> pd.DataFrame:
    """Training throughput of a profile's models: `train` for warmup and for warmup + steps steps;
    the difference is `steps` optimiser steps (data, forward, backward, AdamW) without set-up or evaluation."""
    from lmcbench.data import load_dataset
    from lmcbench.tasks import make_task
    from lmcbench.training import TrainConfig, default_device, train

    device = torch.device(device) if device else default_device()
    rows = []
    for name in models:
        model_cfg = config["models"][name]
        data = load_dataset(config["datasets"][model_cfg["dataset"]])
        task = make_task(data, model_cfg)
        batch = model_cfg["train"].get("batch_size", 32)
        elapsed = []
        for n in (warmup, warmup + steps):
            cfg = TrainConfig.from_dict({**model_cfg["train"], "steps": n, "eval_every": n + 1, "eval_examples": batch,
                                         "patience": None})
            model = build_model(model_cfg, data.meta)
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            train(model, task, cfg, seed=0, device=device, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed.append(time.perf_counter() - start)
        seconds = max(elapsed[1] - elapsed[0], 1e-9)
        tokens = batch * model_cfg["arch"]["n_positions"] if model_cfg["family"] == "gpt2" else None
        rows.append({"model": name, "family": model_cfg["family"], "device": str(device),
                     "torch_threads": torch.get_num_threads(), "numerics": numerics_state()["mode"],
                     "cpu_capability": torch.backends.cpu.get_cpu_capability(), "batch_size": batch, "steps": steps,
                     "s_per_step": round(seconds / steps, 4), "samples_per_s": round(steps * batch / seconds, 1),
                     "tokens_per_s": round(steps * tokens / seconds, 1) if tokens else None,
                     "parameters": sum(p.numel() for p in model.parameters())})
    return pd.DataFrame(rows)
