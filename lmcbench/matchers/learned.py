"""Learned matching (GLMC §3.3): latent matrices projected onto the group at every step and trained
on the task loss of the interpolated model at random λ.

Projections: the polar factor U Vᵀ of SVD(Z) for orthogonal spaces (differentiable), and the
Hungarian permutation of Z with a straight-through estimator for permutation spaces (forward: the
hard permutation; backward: the identity, so ∂L/∂Z = ∂L/∂P) [official code `GPTMerger._project`].
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmcbench.barrier import BoundModel
from lmcbench.canonical import circuit_form, circuit_state_dict
from lmcbench.matchers import Alignment, MatchContext, register
from lmcbench.matchers.assignment import match_units
from lmcbench.matchers.weight_matching import _state, ensure_canonical, finish, glmc_weight_matching_states
from lmcbench.symmetry import apply, layout_for, perm_matrix, spec_for
from lmcbench.tasks import autocast
from lmcbench.training import default_device

log = logging.getLogger(__name__)


def polar(z: Tensor) -> Tensor:
    """The orthogonal matrix nearest to z (Frobenius): U Vᵀ from z = U S Vᵀ."""
    u, _, vh = torch.linalg.svd(z)
    return u @ vh


def ste_permutation(z: Tensor) -> Tensor:
    """Hard permutation matrix maximising ⟨P, z⟩, with the straight-through gradient of z."""
    # perm_matrix(idx) has ones at (idx[j], j), so ⟨P, z⟩ = Σ_j z[idx[j], j]: assign on zᵀ
    hard = perm_matrix(match_units(z.T), dtype=z.dtype).to(z.device)
    return hard + (z - z.detach())


def project(latents: dict[str, Tensor], groups: dict[str, str]) -> dict[str, Tensor]:
    return {name: polar(z) if groups[name] == "orth" else ste_permutation(z) for name, z in latents.items()}


def uniform_pair(lo: float = 0.4, hi: float = 0.6):
    """Weights (c, 1 − c) for (A, B), c ~ U(lo, hi): GLMC's `narrow_uniform` sampler [official code]."""
    def sample(rng: np.random.Generator) -> np.ndarray:
        c = rng.uniform(lo, hi)
        return np.array([c, 1.0 - c])
    return sample


def dirichlet(alpha: float, n: int):
    """Weights λ ~ Dirichlet(α·1_n) over n models: GLMC's multi-model refinement (α = 0.1) [secondary]."""
    return lambda rng: rng.dirichlet(np.full(n, alpha))


def learn_alignment(canon_a: nn.Module, states_b: list[dict[str, Tensor]], task, cfg: dict, seed: int,
                    residual: str = "orth", sampler=None, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Train latents for the residual (orthogonal or permutation), heads and MLP units of each
    canonical B_k so that the mixture w_0·θ_A + Σ_k w_k·π_k(θ_B_k), w ~ `sampler`, has low task loss.
    A is the fixed gauge. Returns the aligned states of the B_k (hard projections) and the loss history."""
    spec = spec_for(canon_a).subset("residual", "blocks.*.heads", "blocks.*.mlp")
    groups = {s.name: ("orth" if (s.name == "residual" and residual == "orth") else "perm") for s in spec}
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sampler = sampler or uniform_pair(*cfg.get("lambda_range", (0.4, 0.6)))
    device = default_device()  # the latents, both states and the batches live on the GPU when there is one
    latents = [{s.name: (torch.eye(s.dim) + 0.01 * torch.randn(s.dim, s.dim, generator=generator))
                .to(device).requires_grad_() for s in spec} for _ in states_b]
    template = circuit_form(canon_a) if cfg.get("circuits", True) else canon_a
    layout, circuit_layout = layout_for(canon_a), layout_for(template)
    to_space = (lambda sd: circuit_state_dict(sd, layout, circuit_layout)) if template is not canon_a else (lambda sd: sd)
    state_a = {k: v.to(device) for k, v in _state(template).items()}
    states_b = [{k: v.to(device) for k, v in sb.items()} for sb in states_b]
    template.to(device)
    floats = [k for k, v in state_a.items() if v.is_floating_point()]
    params = [z for group in latents for z in group.values()]
    optimizer = torch.optim.AdamW(params, lr=cfg.get("lr", 1e-3), weight_decay=cfg.get("weight_decay", 0.0))
    history = []
    template.train(cfg.get("dropout", False))
    for step in tqdm(range(cfg.get("steps", 200)), desc="learned matching", disable=not progress, mininterval=2.0):
        weights = sampler(rng)
        aligned = [to_space(apply(spec, sb, project(z, groups))) for sb, z in zip(states_b, latents)]
        mixed = dict(state_a)
        for k in floats:
            mixed[k] = weights[0] * state_a[k] + sum(w * sd[k] for w, sd in zip(weights[1:], aligned))
        x, y = task.train_batch(step, cfg.get("batch_size", 32), seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss_sum, _, n = task.score(BoundModel(template, mixed), x, y)
        loss = loss_sum / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step, "weights": weights.round(4).tolist(), "loss": loss.item()})
        if step % 50 == 0:
            log.info("learned matching step %d: loss %.4f at weights %s", step, loss.item(), weights.round(3))
    template.cpu()
    with torch.no_grad():
        aligned = [apply(spec, sb, {n: p.detach() for n, p in project(z, groups).items()})
                   for sb, z in zip(states_b, latents)]
    return [{k: v.cpu() for k, v in sd.items()} for sd in aligned], history


def _learned(model_a: nn.Module, model_b: nn.Module, context: MatchContext, residual: str, init: str) -> Alignment:
    if context.task is None:
        raise ValueError("learned matching trains on data: pass a task in the MatchContext")
    cfg = context.config
    if init == "weight_matching":
        canon_a, aligner = glmc_weight_matching_states(model_a, model_b, cfg.get("iterations", 15), residual,
                                                       cfg.get("mlp_cost", "l1"))
        state_b = aligner.state_b
    else:
        canon_a, state_b = ensure_canonical(model_a), _state(ensure_canonical(model_b))
    (state_b,), history = learn_alignment(canon_a, [state_b], context.task, cfg, context.seed, residual)
    final = history[-1]["loss"] if history else None
    return finish(canon_a, state_b, cfg.get("circuits", True), {"init": init, "residual": residual,
                                                                 "final_train_loss": final})


@register("learned_full")
def learned_full(model_a, model_b, context):
    """GLMC learned matching: orthogonal residual, STE head/MLP permutations, from the WM solution."""
    return _learned(model_a, model_b, context, "orth", "weight_matching")


@register("learned_perm_only")
def learned_perm_only(model_a, model_b, context):
    """Ablation: learned matching restricted to permutations (residual included)."""
    return _learned(model_a, model_b, context, "perm", "weight_matching")


@register("learned_identity_init")
def learned_identity_init(model_a, model_b, context):
    """Ablation: learned matching started from the identity instead of the WM solution."""
    return _learned(model_a, model_b, context, "orth", "identity")
