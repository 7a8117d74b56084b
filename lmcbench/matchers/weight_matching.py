"""Data-free weight matching: Git Re-Basin's permutation matcher and GLMC's generalised one.

Both are block-coordinate descents over the spaces of a `SymmetrySpec`: each step solves one
space's alignment with the others fixed and applies it to B at once, so later steps see it.
"""
from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmcbench.canonical import canonicalize, circuit_form, head_circuits
from lmcbench.matchers import Alignment, MatchContext, register
from lmcbench.matchers.assignment import match_units, procrustes, unit_features
from lmcbench.symmetry import apply, layout_for, spec_for
from lmcbench.symmetry.spec import Space, SymmetrySpec

log = logging.getLogger(__name__)


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _compose(total: Tensor | None, step: Tensor) -> Tensor:
    """The element 'total, then step' (apply(total) followed by apply(step))."""
    if total is None:
        return step
    if step.is_floating_point():  # matrices: x -> x T S
        return total @ step
    return total[step]  # indices: new j = old total[step[j]]


def _is_identity(step: Tensor) -> bool:
    if step.is_floating_point():
        return torch.allclose(step, torch.eye(step.shape[0], dtype=step.dtype), atol=1e-7)
    return bool((step == torch.arange(step.numel())).all())


class Aligner:
    """B's state, the element applied to it so far, and a one-space update."""

    def __init__(self, spec: SymmetrySpec, state_a: dict[str, Tensor], state_b: dict[str, Tensor]):
        self.spec, self.state_a, self.state_b = spec, state_a, dict(state_b)
        self.element: dict[str, Tensor] = {}

    def update(self, space: Space, step: Tensor) -> bool:
        """Apply `step` on `space` to B; returns whether anything changed."""
        if _is_identity(step):
            return False
        self.state_b = apply(SymmetrySpec((space,)), self.state_b, {space.name: step})
        self.element[space.name] = _compose(self.element.get(space.name), step)
        return True


# --------------------------------------------------------------------------------------------- Git Re-Basin
def permutation_weight_matching(spec: SymmetrySpec, state_a: dict, state_b: dict, max_sweeps: int = 50,
                                seed: int = 0) -> Aligner:
    """Git Re-Basin weight matching (Ainsworth et al. 2023): maximise Σ⟨W_A, π(W_B)⟩ one permutation
    at a time, in a random order each sweep, until a whole sweep changes nothing."""
    aligner = Aligner(spec, state_a, state_b)
    generator = torch.Generator().manual_seed(seed)
    for sweep in range(max_sweeps):
        changed = False
        for k in torch.randperm(len(spec), generator=generator).tolist():
            space = spec.spaces[k]
            score = unit_features(space, aligner.state_a) @ unit_features(space, aligner.state_b).T
            changed |= aligner.update(space, match_units(score))
        if not changed:
            log.info("permutation weight matching converged after %d sweeps", sweep + 1)
            break
    return aligner


def _permutation_spec(model: nn.Module) -> SymmetrySpec:
    """Residual stream, heads and MLP units as permutations: the classes a LayerNorm model has."""
    spec = spec_for(model).subset("residual", "blocks.*.heads", "blocks.*.mlp")
    return SymmetrySpec(tuple(Space(s.name, "perm", s.dim, s.actions, s.block) for s in spec))


@register("perm_weight_matching")
def perm_weight_matching(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """Git Re-Basin weight matching over the residual stream, heads and MLP units (permutations only)."""
    spec = _permutation_spec(model_a)
    aligner = permutation_weight_matching(spec, _state(model_a), _state(model_b),
                                          context.config.get("max_sweeps", 50), context.seed)
    return Alignment(model_a, _state(model_a), aligner.state_b, {"spaces": sorted(aligner.element)})


# --------------------------------------------------------------------------------------------- GLMC
def ensure_canonical(model: nn.Module) -> nn.Module:
    """The canonical form of `model`; a model already in it (gain-free RMSNorms) is returned as is."""
    return model if layout_for(model).residual_group == "orth" else canonicalize(model)


def _residual_only_params(spec: SymmetrySpec) -> set[str]:
    """Parameters no other space touches: embeddings, positions, unembedding, norm offsets. GLMC's
    first residual step uses only these, because inner-layer rows are comparable only once heads
    and neurons are roughly matched [official code, first iteration of `weight_matching`]."""
    inner = {a.param for s in spec if s.name != "residual" for a in s.actions}
    return {a.param for a in spec["residual"].actions} - inner


def _residual_step(aligner: Aligner, space: Space, group: str, params: set[str] | None) -> bool:
    fa = unit_features(space, aligner.state_a, params, normalise_blocks=True)
    fb = unit_features(space, aligner.state_b, params, normalise_blocks=True)
    if group == "orth":
        step = procrustes(fa, fb).to(aligner.state_b[space.actions[0].param].dtype)
    else:  # permutation of residual coordinates (GLMC's permutation-only mode)
        step = match_units(fa @ fb.T)
    return aligner.update(space, step)


def _heads_step(aligner: Aligner, space: Space, attention) -> bool:
    """Head assignment on circuit distances ‖QK_A,i − QK_B,j‖_F + ‖OV_A,i − OV_B,j‖_F [official code]."""
    qk_a, ov_a = head_circuits(aligner.state_a, attention)
    qk_b, ov_b = head_circuits(aligner.state_b, attention)
    cost = torch.cdist(qk_a.flatten(1), qk_b.flatten(1)) + torch.cdist(ov_a.flatten(1), ov_b.flatten(1))
    return aligner.update(space, match_units(cost, maximize=False))


def _mlp_step(aligner: Aligner, space: Space, cost: str = "l1") -> bool:
    """Neuron assignment on distances of L2-normalised [w_in, b_in, w_out] vectors: L1 as in the
    [official code], or "cosine" (the same ranking as L2 on the sphere), which is a matrix product and
    so ~15× faster at GPT-2-small width, where the L1 distance matrix dominates the run time."""
    fa = torch.nn.functional.normalize(unit_features(space, aligner.state_a), dim=1)
    fb = torch.nn.functional.normalize(unit_features(space, aligner.state_b), dim=1)
    if cost == "l1":
        return aligner.update(space, match_units(torch.cdist(fa.float(), fb.float(), p=1), maximize=False))
    if cost == "cosine":
        return aligner.update(space, match_units(fa @ fb.T))
    raise ValueError(f"unknown mlp_cost {cost!r}; expected 'l1' or 'cosine'")


def glmc_weight_matching_states(model_a: nn.Module, model_b: nn.Module, iterations: int = 15,
                                residual: str = "orth", mlp_cost: str = "l1") -> tuple[nn.Module, Aligner]:
    """GLMC's data-free matcher on the canonical forms of A and B: alternate residual alignment
    (orthogonal Procrustes, or a permutation with residual="perm"), head assignment on circuit
    distances and MLP assignment, for `iterations` rounds or until a round changes nothing.
    Returns (canonical A, aligner holding the aligned canonical B and the element found)."""
    canon_a, canon_b = ensure_canonical(model_a), ensure_canonical(model_b)
    spec = spec_for(canon_a)
    layout = layout_for(canon_a)
    aligner = Aligner(spec, _state(canon_a), _state(canon_b))
    first_params = _residual_only_params(spec)
    for it in tqdm(range(iterations), desc="GLMC weight matching", mininterval=5.0):
        changed = _residual_step(aligner, spec["residual"], residual, first_params if it == 0 else None)
        for i, attention in enumerate(layout.attentions):
            changed |= _heads_step(aligner, spec[f"blocks.{i}.heads"], attention)
            changed |= _mlp_step(aligner, spec[f"blocks.{i}.mlp"], mlp_cost)
        if not changed and it > 0:
            log.info("GLMC weight matching converged after %d rounds", it + 1)
            break
    return canon_a, aligner


def as_model(template: nn.Module, state: dict[str, Tensor]) -> nn.Module:
    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model


def finish(canon_a: nn.Module, state_b: dict[str, Tensor], circuits: bool, info: dict) -> Alignment:
    """The alignment in the space the barrier is measured in: canonical form, and with circuits=True
    the attention circuit form, where interpolation merges QK/OV circuits (GLMC's invertible class,
    as the official code does)."""
    if not circuits:
        return Alignment(canon_a, _state(canon_a), state_b, info, form="canonical")
    circuit_a = circuit_form(canon_a)
    circuit_b = circuit_form(as_model(canon_a, state_b))
    return Alignment(circuit_a, _state(circuit_a), _state(circuit_b), info, form="circuit")


@register("glmc_weight_matching")
def glmc_weight_matching(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """GLMC data-free weight matching: orthogonal residual, head and MLP permutations, circuits."""
    cfg = context.config
    canon_a, aligner = glmc_weight_matching_states(model_a, model_b, cfg.get("iterations", 15),
                                                   cfg.get("residual", "orth"), cfg.get("mlp_cost", "l1"))
    return finish(canon_a, aligner.state_b, cfg.get("circuits", True), {"spaces": sorted(aligner.element)})
