"""Benchmarks measured with the project's own code (`lmcbench bench {rules,matching,matching-scale,throughput}`).

`rules`: per-rule wall time of a finished DAG, from Snakemake's benchmark files (`lmcbench.timing.bench_rules`).
`matching`: GLMC weight matching on a pair of randomly initialised GPT-2 models (`SIZES`: the
paper's Tiny-Shakespeare size "ts" or GPT-2 small), CPU and wall seconds per phase, peak RSS, and
whether the aligned model still computes B's function.
`matching-scale`: the same against width, n_embd 128 → 768 (head size 64, as in GPT-2).
`throughput`: training samples/s and tokens/s of a profile's models, through the real training loop.
"""
from __future__ import annotations

import os
import resource
import time
from contextlib import contextmanager

import pandas as pd
import torch

from lmcbench.symmetry.canonical import circuit_form
from lmcbench.matchers.weight_matching import as_model, default_device, ensure_canonical, glmc_weight_matching_states
from lmcbench.models import build_model
from lmcbench.numerics import cpu_info
from lmcbench.numerics import state as numerics_state


# Model sizes of `bench matching --size`: the paper's Tiny-Shakespeare GPT-2 [paper, glmc.md] and GPT-2 small.
SIZES = {
    "ts": {"n_embd": 256, "n_layer": 6, "n_head": 4, "n_inner": 1024, "vocab_size": 50257, "n_positions": 256},
    "small": {"n_embd": 768, "n_layer": 12, "n_head": 12, "n_inner": 3072, "vocab_size": 50257, "n_positions": 1024},
}
PHASES = ("canonicalise", "residual_once", "residual", "heads", "mlp_cost", "assignment", "circuits")


class PhaseTimer:
    """`timer(name)`: a context charging CPU seconds (process time, all threads) and wall seconds to
    `name`, exclusively: time spent in a nested phase is charged to it, not to the enclosing one.
    On CUDA, the device is synchronised at each switch so kernels are charged to their phase.
    `peak_phase`: the phase during which the process's peak RSS was last raised."""

    def __init__(self, device: torch.device):
        self.cpu, self.wall, self.stack = dict.fromkeys(PHASES, 0.0), dict.fromkeys(PHASES, 0.0), []
        self.peak, self.peak_phase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.last = (time.process_time(), time.perf_counter())

    def _switch(self) -> None:
        self.sync()
        now = (time.process_time(), time.perf_counter())
        if self.stack:
            self.cpu[self.stack[-1]] += now[0] - self.last[0]
            self.wall[self.stack[-1]] += now[1] - self.last[1]
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            if peak > self.peak:
                self.peak, self.peak_phase = peak, self.stack[-1]
        self.last = now

    @contextmanager
    def __call__(self, name: str):
        self._switch()
        self.stack.append(name)
        try:
            yield
        finally:
            self._switch()
            self.stack.pop()


def _logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(tokens).logits.double()


def bench_matching(n_embd: int = 768, n_layer: int = 12, n_head: int = 12, vocab_size: int = 50257,
                   n_positions: int = 1024, iterations: int = 15, mlp_cost: str = "l1", n_inner: int | None = None,
                   device: str | None = None) -> dict:
    """GLMC weight matching of two randomly initialised GPT-2 models (seeds 0 and 1): CPU seconds
    and wall seconds per phase (`PhaseTimer`), the peak RSS of the process, and a function check:
    the aligned B in circuit form (the matcher's output) computes B's logits on random tokens."""
    arch = {"n_embd": n_embd, "n_layer": n_layer, "n_head": n_head, "n_inner": n_inner or 4 * n_embd,
            "n_positions": n_positions}
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model({"family": "gpt2", "arch": arch}, {"vocab_size": vocab_size}).eval())
    tokens = torch.randint(vocab_size, (2, min(64, n_positions)), generator=torch.Generator().manual_seed(0))
    expected = _logits(models[1], tokens)
    parameters = sum(p.numel() for p in models[0].parameters())
    device = torch.device(device) if device else default_device()
    timer = PhaseTimer(device)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    with timer("canonicalise"):  # one model at a time, each original dropped once canonical (peak memory)
        canonical = []
        while models:
            canonical.append(ensure_canonical(models.pop(0)))
    # popped, not passed from the list: the matcher drops its reference to B once B's state is taken
    canon_a, aligner = glmc_weight_matching_states(canonical.pop(0), canonical.pop(0), iterations=iterations,
                                                   mlp_cost=mlp_cost, device=device, phase=timer)
    rss_match, rss_match_phase = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, timer.peak_phase
    with timer("circuits"):  # what `finish` returns: both models in circuit form (D+1-wide heads)
        circuit_form(canon_a)
        aligned = circuit_form(as_model(canon_a, aligner.state_b))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    error = ((_logits(aligned, tokens) - expected).abs().max() / expected.abs().max()).item()
    return {
        "model": f"GPT-2 n_embd {n_embd}, {n_layer} layers, {n_head} heads, n_inner {arch['n_inner']}, "
                 f"vocab {vocab_size}",
        "parameters": parameters,
        "iterations": iterations,
        "rounds_run": aligner.rounds,   # fewer than iterations when a round changed nothing
        "mlp_cost": mlp_cost,
        "device": str(device),
        **{f"cpu_s.{name}": round(timer.cpu[name], 2) for name in PHASES},
        "cpu_s.total": round(cpu, 2),
        **{f"wall_s.{name}": round(timer.wall[name], 2) for name in PHASES},
        "wall_s.total": round(wall, 2),
        "peak_rss_gb.match": round(rss_match / 2 ** 20, 2),   # the process up to the end of matching
        "peak_rss_phase.match": rss_match_phase,   # the phase in which matching's peak RSS was reached
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2),   # incl. circuits
        "function_rel_error": f"{error:.2e}",   # aligned B (circuit form) vs B, max |Δ logits| / max |logits|
        "function_preserved": error <= 1e-4,
        "torch_threads": torch.get_num_threads(),
        "numerics": numerics_state()["mode"],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_info()["model"],
        "load_average_1min": round(os.getloadavg()[0], 2),
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
        batch = TrainConfig.from_dict(model_cfg["train"]).batch_size   # TrainConfig holds the default
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
