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
    """Holds the models' floating-point entries as the rows of one (models × parameters) matrix, so
    any mixture Σ w_i θ_i (two-model λ paths, multi-model simplex points) is one matrix product."""

    def __init__(self, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                 *more: dict[str, torch.Tensor], device="cpu"):
        states = (state_a, state_b, *more)
        for i, other in enumerate(states[1:], start=1):
            if other.keys() != state_a.keys():
                only_a, only_b = sorted(state_a.keys() - other.keys()), sorted(other.keys() - state_a.keys())
                raise ValueError(f"models 0 and {i} have different parameters (only in 0: {only_a[:5]}, "
                                 f"only in {i}: {only_b[:5]}); interpolation needs one architecture")
            mismatched = [k for k in state_a if state_a[k].shape != other[k].shape]
            if mismatched:
                k = mismatched[0]
                raise ValueError(f"shape mismatch for {k}: {tuple(state_a[k].shape)} vs {tuple(other[k].shape)} "
                                 f"({len(mismatched)} parameters differ); interpolation needs one architecture")
        self.float_keys = [k for k, v in state_a.items() if v.is_floating_point()]
        self.fixed = {k: v.to(device) for k, v in state_a.items() if not v.is_floating_point()}
        self.shapes = [state_a[k].shape for k in self.float_keys]
        self.sizes = [state_a[k].numel() for k in self.float_keys]
        self.flat = torch.stack([torch.cat([sd[k].reshape(-1).float() for k in self.float_keys])
                                 for sd in states]).to(device)

    def mix(self, weights) -> dict[str, torch.Tensor]:
        """Σ_i weights[i]·θ_i as a state dict (views into one flat vector)."""
        w = torch.as_tensor(weights, dtype=self.flat.dtype, device=self.flat.device)
        flat = w @ self.flat
        params = dict(zip(self.float_keys, (t.view(s) for t, s in zip(flat.split(self.sizes), self.shapes))))
        return {**params, **self.fixed}

    def at(self, lam: float) -> dict[str, torch.Tensor]:
        """λ·θ_A + (1−λ)·θ_B (two-model path)."""
        return self.mix([float(lam), 1.0 - float(lam)] + [0.0] * (len(self.flat) - 2))


class BoundModel(nn.Module):
    """`model` with its tensors replaced by a given dict (possibly carrying gradients to something
    else, as in learned matching), so `Task.score` can call it unchanged."""

    def __init__(self, model: nn.Module, tensors: dict[str, torch.Tensor]):
        super().__init__()
        self.model, self.tensors = model, tensors

    def forward(self, *args, **kwargs):
        return functional_call(self.model, self.tensors, args, kwargs, tie_weights=False, strict=False)


def _evaluate_mixtures(model, task, states, weight_rows, splits, max_examples, batch_size, device, progress, label):
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    path = Interpolator(*states, device=device)
    data = {split: task.eval_tensors(split, max_examples) for split in splits}
    rows = []
    for weights in tqdm(weight_rows, desc=label, disable=not progress):
        bound = BoundModel(model, path.mix(weights))
        for split, tensors in data.items():
            for metric, value in evaluate(bound, task, tensors, batch_size, device).items():
                rows.append({"weights": tuple(float(w) for w in weights), "split": split, "metric": metric,
                             "value": value})
    return pd.DataFrame(rows)


def interpolation_curve(model: nn.Module, task: Task, state_a: dict, state_b: dict, lambdas=None,
                        splits=("train", "test"), max_examples: int | None = None, batch_size: int = 256,
                        device=None, progress: bool = False) -> pd.DataFrame:
    """Long table (lambda, split, metric, value) of loss and accuracy along the linear path."""
    lambdas = default_grid() if lambdas is None else np.asarray(lambdas, dtype=float)
    curve = _evaluate_mixtures(model, task, [state_a, state_b], [(lam, 1 - lam) for lam in lambdas], splits,
                               max_examples, batch_size, device, progress, "interpolate")
    curve.insert(0, "lambda", curve.pop("weights").map(lambda w: w[0]))
    return curve


def simplex_grid(n_models: int, resolution: int) -> np.ndarray:
    """All weight vectors on the simplex with coordinates in {0, 1/r, …, 1} (vertices included)."""
    if n_models < 2 or resolution < 1:
        raise ValueError("a simplex grid needs at least 2 models and resolution >= 1")
    def compositions(total, parts):
        if parts == 1:
            yield (total,)
            return
        for first in range(total, -1, -1):
            for rest in compositions(total - first, parts - 1):
                yield (first, *rest)
    return np.array(list(compositions(resolution, n_models)), dtype=float) / resolution


def simplex_surface(model: nn.Module, task: Task, states: list[dict], resolution: int = 6,
                    splits=("test",), max_examples: int | None = None, batch_size: int = 256,
                    device=None, progress: bool = False) -> pd.DataFrame:
    """Long table (w0, …, w_{n−1}, split, metric, value) over the simplex of n models' mixtures."""
    surface = _evaluate_mixtures(model, task, states, simplex_grid(len(states), resolution), splits,
                                 max_examples, batch_size, device, progress, "simplex")
    weights = np.array(surface.pop("weights").tolist())
    for i in range(weights.shape[1]):
        surface.insert(i, f"w{i}", weights[:, i])
    return surface


def simplex_barriers(surface: pd.DataFrame) -> pd.DataFrame:
    """Multi-model barrier per (split, metric): max over the grid of L(Σ w_i θ_i) − Σ w_i L(θ_i) (for
    accuracy, the dip below the weighted endpoint accuracies), with the vertex values as endpoints."""
    wcols = [c for c in surface.columns if c.startswith("w") and c[1:].isdigit()]
    rows = []
    for (split, metric), group in surface.groupby(["split", "metric"], sort=True):
        w = group[wcols].to_numpy()
        values = group["value"].to_numpy()
        vertices = np.array([values[np.isclose(w[:, i], 1.0)][0] for i in range(len(wcols))])
        plane = w @ vertices
        excess = (plane - values) if HIGHER_IS_BETTER[metric] else (values - plane)
        i = int(np.argmax(excess))
        centre = np.argmin(np.abs(w - 1.0 / len(wcols)).sum(1))
        rows.append({"split": split, "metric": metric, "barrier": float(excess[i]),
                     "barrier_midpoint": float(excess[centre]),
                     "argmax_weights": " ".join(f"{x:.3f}" for x in w[i])})
    return pd.DataFrame(rows)


def _with_endpoints(lambdas, values) -> tuple[np.ndarray, np.ndarray]:
    """The grid sorted by λ; both barrier definitions are relative to the values at λ=0 and λ=1."""
    lambdas, values = np.asarray(lambdas, float), np.asarray(values, float)
    order = np.argsort(lambdas)
    lambdas, values = lambdas[order], values[order]
    if not (np.isclose(lambdas[0], 0.0) and np.isclose(lambdas[-1], 1.0)):
        raise ValueError("a barrier needs both endpoints λ=0 and λ=1 on the grid")
    return lambdas, values


def chord_barrier(lambdas, values, higher_is_better: bool = False) -> tuple[float, float]:
    """(barrier, λ at the max) relative to the chord between the values at λ=0 and λ=1."""
    lambdas, values = _with_endpoints(lambdas, values)
    chord = values[0] + lambdas * (values[-1] - values[0])
    excess = (chord - values) if higher_is_better else (values - chord)
    i = int(np.argmax(excess))
    return float(excess[i]), float(lambdas[i])


def midpoint_barrier(lambdas, values, higher_is_better: bool = False) -> float:
    """Value at λ=½ relative to the endpoints' mean (Git Re-Basin); ½ is interpolated if off-grid."""
    lambdas, values = _with_endpoints(lambdas, values)
    mid = float(np.interp(0.5, lambdas, values))
    mean_ends = 0.5 * (values[0] + values[-1])
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


# ------------------------------------------------- curve summaries beyond the barrier (MoE-LMC §4, §6.3)
def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def chord_auc(lambdas, values, higher_is_better: bool = False) -> float:
    """∫₀¹ (metric − chord) dλ (loss) or ∫ (chord − metric) dλ (accuracy), trapezoid on the grid."""
    lambdas, values = np.asarray(lambdas, float), np.asarray(values, float)
    order = np.argsort(lambdas)
    lambdas, values = lambdas[order], values[order]
    chord = values[0] + (lambdas - lambdas[0]) / (lambdas[-1] - lambdas[0]) * (values[-1] - values[0])
    return _trapezoid((chord - values) if higher_is_better else (values - chord), lambdas)


def curve_metrics(curve: pd.DataFrame) -> pd.DataFrame:
    """`lmcbench.barrier.barriers` (chord and midpoint barriers) plus the chord AUC per (split, metric)."""
    table = barriers(curve)
    aucs = {key: chord_auc(g.sort_values("lambda")["lambda"], g.sort_values("lambda")["value"],
                           HIGHER_IS_BETTER[key[1]]) for key, g in curve.groupby(["split", "metric"])}
    table["auc"] = [aucs[(s, m)] for s, m in zip(table["split"], table["metric"])]
    return table


def add_ratios(table: pd.DataFrame, keys=("seed_a", "seed_b", "split", "metric")) -> pd.DataFrame:
    """ratio_to_naive and auc_ratio_to_naive: each row's barrier (AUC) over the naive row of the same pair."""
    keys = list(keys)
    naive = table[table["method"] == "naive"].set_index(keys)
    joined = table.join(naive[["barrier", "auc"]].rename(columns={"barrier": "_nb", "auc": "_na"}), on=keys)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = table.assign(ratio_to_naive=np.where(joined["_nb"] > 0, joined["barrier"] / joined["_nb"], np.nan),
                             auc_ratio_to_naive=np.where(joined["_na"] > 0, joined["auc"] / joined["_na"], np.nan))
    return table


def scaled_excess(l_method: float, l_best: float, l_naive: float) -> float:
    """L̂ = (L_method − L_best)/(L_naive − L_best) × 100 [paper §6.3]; NaN when naive is already best."""
    gap = l_naive - l_best
    return float((l_method - l_best) / gap * 100) if gap > 0 else float("nan")
