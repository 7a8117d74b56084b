"""`moe_full_model` (beyond the paper): whole-model alignment of MoE Transformers whose *backbones* were
trained independently, so the residual stream, heads and dense MLPs must be aligned as well.

The symmetry spec is GLMC's permutation classes of the dense architecture (residual stream, heads and
MLP units as permutations, as Git Re-Basin / `perm_weight_matching` use them for LayerNorm models),
with each replaced FFN's MLP space removed and its residual actions rewired to the MoE layer: the
router and every expert's A_i read the stream (axis of size d), every B_i and v_i write it. Expert
order and hidden units are MoE-internal and handled by Algorithm 1 ([inferred] composition: the
paper permutes nothing outside the MoE layer, moe.md §3.2 item 8).

Alignment alternates, for `rounds` rounds: Git Re-Basin weight matching over the backbone spaces
(`lmcbench.matchers.weight_matching.permutation_weight_matching`), then Algorithm 1 on every MoE
layer in the now-shared residual basis. Methods (track "moe_full" of `lmcbench.methods`, options at
moe.full_model.options.<name>): naive; backbone_only (the backbone spaces, experts in their own order
and hidden units unmatched); full_gate_wm / full_expert_wm (backbone + Algorithm 1 with that Step 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lmcbench import methods as registry
from lmcbench.matchers.weight_matching import permutation_spec, permutation_weight_matching
from lmcbench.methods import NoOptions
from lmcbench.models import build_model
from lmcbench.moe.matching import align
from lmcbench.moe.symmetry import has_shared, moe_prefixes
from lmcbench.symmetry.spec import Action, Space, SymmetrySpec

log = logging.getLogger(__name__)


def moe_residual_actions(prefix: str, shared: bool) -> list[Action]:
    """How the residual permutation acts on one MoE layer (stacked tensors: router (n, d), w1 (n, h, d),
    w2 (n, d, h), b2 (n, d))."""
    acts = [Action(f"{prefix}.router.weight", 1, "reader"), Action(f"{prefix}.w1", 2, "reader"),
            Action(f"{prefix}.w2", 1, "writer"), Action(f"{prefix}.b2", 1, "writer")]
    if shared:
        acts += [Action(f"{prefix}.shared_w1", 2, "reader"), Action(f"{prefix}.shared_w2", 1, "writer"),
                 Action(f"{prefix}.shared_b2", 1, "writer")]
    return acts


def moe_backbone_spec(model: torch.nn.Module, model_cfg: dict, meta: dict) -> SymmetrySpec:
    """Permutation spec of an MoE model's backbone (see the module docstring)."""
    dense_cfg = {k: v for k, v in model_cfg.items() if k != "moe"}
    spec = permutation_spec(build_model(dense_cfg, meta))
    state = model.state_dict()
    prefixes = moe_prefixes(model)

    def in_moe(param: str) -> bool:
        return any(param.startswith(p + ".") for p in prefixes)

    spaces = []
    for space in spec:
        if space.name == "residual":
            actions = [a for a in space.actions if not in_moe(a.param)]
            for p in prefixes:
                actions += moe_residual_actions(p, has_shared(state, p))
            spaces.append(Space(space.name, space.group, space.dim, tuple(actions), space.block))
        elif not all(in_moe(a.param) for a in space.actions):
            spaces.append(space)
    return SymmetrySpec(tuple(spaces))


@dataclass(frozen=True)
class FullGateOptions:
    """Options of full-model alignment with Algorithm 1 in the MoE layers."""
    rounds: int = 3            # alternations of backbone weight matching and Algorithm 1 [inferred]
    order: str = "gate_wm"     # the moe_order method of Step 1 in every MoE layer

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds = {self.rounds}: expected at least 1")
        if registry.get("moe_order", self.order).obj.evaluates_all_orders:
            raise ValueError(f"order = {self.order!r} evaluates all orders by their barrier, which needs the data; "
                             f"name a data-free moe_order method")


@dataclass(frozen=True)
class FullExpertOptions(FullGateOptions):
    order: str = "expert_wm"


def full_method(name: str, options: type = NoOptions):
    """Register `fn(spec, state_a, state_b, options, seed) -> aligned B state` in track "moe_full"."""
    return registry.register("moe_full", name, options)


@full_method("naive")
def naive(spec: SymmetrySpec, state_a: dict, state_b: dict, options, seed: int = 0) -> dict:
    """No alignment: the two whole models interpolated as they are."""
    return dict(state_b)


@full_method("backbone_only")
def backbone_only(spec: SymmetrySpec, state_a: dict, state_b: dict, options, seed: int = 0) -> dict:
    """Backbone spaces only (one weight-matching run); experts in their own order, hidden units unmatched."""
    return permutation_weight_matching(spec, state_a, dict(state_b), seed=seed).state_b


def backbone_and_moe(spec: SymmetrySpec, state_a: dict, state_b: dict, options, seed: int = 0) -> dict:
    """Backbone weight matching and Algorithm 1 (Step 1 by `order`) alternated for `rounds` rounds."""
    state = dict(state_b)
    for _ in range(options.rounds):
        state = permutation_weight_matching(spec, state_a, state, seed=seed).state_b
        state, _ = align(state_a, state, options.order)
    return state


full_method("full_gate_wm", FullGateOptions)(backbone_and_moe)
full_method("full_expert_wm", FullExpertOptions)(backbone_and_moe)


def align_full(spec: SymmetrySpec, state_a: dict, state_b: dict, method: str, options: dict | None = None,
               seed: int = 0) -> dict:
    """B aligned to A by registered moe_full `method` with `options` (config moe.full_model.options.<method>)."""
    registered = registry.get("moe_full", method)
    return registered.obj(spec, state_a, state_b, registered.parse(options, f"moe.full_model.options.{method}"), seed)
