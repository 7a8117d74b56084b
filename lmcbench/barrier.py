"""The barrier engine: evaluate λ·θ_A + (1−λ)·θ_B along a grid and measure the bump.

Conventions (GLMC §4 and MoE-LMC): λ = 1 is model A (the reference), λ = 0 is model B (usually the
aligned one). Two barrier definitions are reported side by side, because the literature uses both:

* chord barrier — max over the grid of L(λ) minus the straight line between the endpoint values
  (GLMC, MoE-LMC). For accuracy a dip below the chord counts positive. The endpoints are on the
  grid, so the chord barrier is ≥ 0 even when the interior lies below the chord.
* midpoint barrier — L(½) minus the mean of the endpoint values (Git Re-Basin); may be negative.

The parameters of both models are flattened once into two vectors; each λ is a single `lerp` over
that vector, and the model is evaluated through `torch.func.functional_call` on data that was
materialised once per split. Nothing is reloaded per λ.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from lmcbench.tasks import Task, evaluate

HIGHER_IS_BETTER = {"loss": False, "accuracy": True}


def default_grid(points: int = 11) -> np.ndarray:
    if points < 2:
        raise ValueError(f"an interpolation grid needs at least 2 points, got {points}")
    return np.linspace(0.0, 1.0, points)


class Interpolator:
    """Holds θ_A and θ_B as flat vectors over the floating-point entries of one architecture."""

    def __init__(self, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor], device="cpu"):
        if state_a.keys() != state_b.keys():
            only_a, only_b = sorted(state_a.keys() - state_b.keys()), sorted(state_b.keys() - state_a.keys())
            raise ValueError(f"the two models have different parameters (only in A: {only_a[:5]}, only in B: {only_b[:5]}); "
                             "interpolation needs one architecture")
        mismatched = [k for k in state_a if state_a[k].shape != state_b[k].shape]
        if mismatched:
            k = mismatched[0]
            raise ValueError(f"shape mismatch for {k}: {tuple(state_a[k].shape)} vs {tuple(state_b[k].shape)} "
                             f"({len(mismatched)} parameters differ); interpolation needs one architecture")
        self.float_keys = [k for k, v in state_a.items() if v.is_floating_point()]
        self.fixed = {k: v.to(device) for k, v in state_a.items() if not v.is_floating_point()}
        self.shapes = [state_a[k].shape for k in self.float_keys]
        self.sizes = [state_a[k].numel() for k in self.float_keys]
        self.flat_a = torch.cat([state_a[k].reshape(-1).float() for k in self.float_keys]).to(device)
        self.flat_b = torch.cat([state_b[k].reshape(-1).float() for k in self.float_keys]).to(device)

    def at(self, lam: float) -> dict[str, torch.Tensor]:
        flat = torch.lerp(self.flat_b, self.flat_a, float(lam))
        params = dict(zip(self.float_keys, (t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes))))
        return {**params, **self.fixed}


class BoundModel(nn.Module):
    """`model` with its tensors replaced by a given dict (possibly carrying gradients to something
    else, as in learned matching), so `Task.score` can call it unchanged."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.tensors = model, tensors

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.tensors, args, kwargs, tie_weights=False, strict=False)


def interpolation_curve(model: nn.Module, task: Task, state_a: dict, state_b: dict, lambdas=None,
                        splits=("train", "test"), max_examples: int | None = None, batch_size: int = 256,
                        device=None, progress: bool = False) -> pd.DataFrame:
    """Long table (lambda, split, metric, value) of loss and accuracy along the linear path."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    lambdas = default_grid() if lambdas is None else np.asarray(lambdas, dtype=float)
    model = model.to(device).eval()
    path = Interpolator(state_a, state_b, device)
    data = {split: task.eval_tensors(split, max_examples) for split in splits}
    rows = []
    for lam in tqdm(lambdas, desc="interpolate", disable=not progress):
        bound = BoundModel(model, path.at(lam))
        for split, tensors in data.items():
            for metric, value in evaluate(bound, task, tensors, batch_size, device).items():
                rows.append({"lambda": float(lam), "split": split, "metric": metric, "value": value})
    return pd.DataFrame(rows)


def chord_barrier(lambdas, values, higher_is_better: bool = False) -> tuple[float, float]:
    """(barrier, λ at the max) relative to the chord between the values at λ=0 and λ=1."""
    lambdas, values = np.asarray(lambdas, float), np.asarray(values, float)
    order = np.argsort(lambdas)
    lambdas, values = lambdas[order], values[order]
    if not (np.isclose(lambdas[0], 0.0) and np.isclose(lambdas[-1], 1.0)):
        raise ValueError("the chord barrier needs both endpoints λ=0 and λ=1 on the grid")
    chord = values[0] + lambdas * (values[-1] - values[0])
    excess = (chord - values) if higher_is_better else (values - chord)
    i = int(np.argmax(excess))
    return float(excess[i]), float(lambdas[i])


def midpoint_barrier(lambdas, values, higher_is_better: bool = False) -> float:
    """Value at λ=½ relative to the endpoints' mean (Git Re-Basin); ½ is interpolated if off-grid."""
    lambdas, values = np.asarray(lambdas, float), np.asarray(values, float)
    order = np.argsort(lambdas)
    mid = float(np.interp(0.5, lambdas[order], values[order]))
    mean_ends = 0.5 * (values[order][0] + values[order][-1])
    return (mean_ends - mid) if higher_is_better else (mid - mean_ends)


def barriers(curve: pd.DataFrame) -> pd.DataFrame:
    """One row per (split, metric) of a curve table: chord and midpoint barriers, argmax λ, endpoints."""
    rows = []
    for (split, metric), group in curve.groupby(["split", "metric"], sort=True):
        group = group.sort_values("lambda")
        hib = HIGHER_IS_BETTER[metric]
        barrier, lam_max = chord_barrier(group["lambda"], group["value"], hib)
        rows.append({
            "split": split, "metric": metric, "barrier": barrier,
            "barrier_midpoint": midpoint_barrier(group["lambda"], group["value"], hib),
            "argmax_lambda": lam_max,
            "value_b": float(group["value"].iloc[0]), "value_a": float(group["value"].iloc[-1]),
        })
    return pd.DataFrame(rows)
