"""Benchmarks measured with the project's own code (run: `lmcbench bench matching`).

`matching`: wall time of GLMC weight matching on a pair of randomly initialised GPT-2 models,
GPT-2-small-sized by default (n_embd 768, 12 layers, 12 heads, vocab 50257), split into
canonicalisation, the matching rounds, and the circuit-form conversion.
"""
from __future__ import annotations

import platform
import time

import torch

from lmcbench.canonical import circuit_form
from lmcbench.matchers.weight_matching import as_model, glmc_weight_matching_states
from lmcbench.models import build_model


def bench_matching(n_embd: int = 768, n_layer: int = 12, n_head: int = 12, vocab_size: int = 50257,
                   n_positions: int = 1024, iterations: int = 15, mlp_cost: str = "l1",
                   threads: int | None = None) -> dict:
    if threads:
        torch.set_num_threads(threads)
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
