"""Algorithm 1 of MoE-LMC ("Weight Matching for MoE") and its baselines, per MoE layer, data-free.

Step 1, expert order (moe.md §3.1 [paper]), an n×n cost minimised by the Hungarian method
(`match_units(cost, maximize=False)`):
  * gate_wm   — Euclidean distance of the *centred* gate rows and biases (Eq. 10): centring removes
                the translation part of G(n). Centring is used only for the cost; the uncentred
                parameters are interpolated (moe.md §3.2 item 6 [inferred], Prop D.1 [paper]).
  * expert_wm — distance of the experts' Gram matrices ÃᵀÃ ((d+1)², Ã = [A, u]) and B̃B̃ᵀ (d²,
                B̃ = [B, v]) (Eq. 11), invariant to hidden-unit permutations (App. D.2 [paper]).
Step 2, for each matched pair, Git Re-Basin weight matching of the hidden units: one LAP maximising
⟨S, P⟩ with S = A_i A'_iᵀ + u_i u'_iᵀ + B_iᵀ B'_i (moe.md §3.2 item 5; one hidden layer ⇒ one LAP is
optimal, no coordinate descent needed [inferred]).

Baselines (moe.md §3.2 item 9): naive (no alignment), skip_order (Step 2 with the identity order
[inferred]), best_order (all n! orders per layer, each followed by Step 2; the lowest test-loss
barrier, chosen by the caller, which evaluates the orders).

Each is an `ExpertOrder` registered in track "moe_order" of `lmcbench.methods` (`order_method`), so a
plugin adds an ordering method the same way (README "Add a method"). Shared experts (DeepSeekMoE) have no
gate row and are matched only among themselves: Step 2 for s = 1, the Gram cost + Step 2 for s > 1
(the paper's handling is unknown, moe.md §3.2 item 7 [inferred]). Layers are matched independently:
the frozen shared backbone fixes the residual basis ([secondary], moe.md §3.2 item 1).
"""
from __future__ import annotations

import functools
import itertools
from typing import Callable

import torch
from torch import Tensor

from lmcbench import methods
from lmcbench.matchers.assignment import match_units
from lmcbench.methods import NoOptions
from lmcbench.moe.symmetry import (
    EXPERT_TENSORS,
    SHARED_TENSORS,
    has_shared,
    moe_prefixes,
    n_experts,
    permute_experts,
    permute_hidden,
)

class ExpertOrder:
    """A registered Step-1 method. `layer_order(state_a, state_b, prefix, options)` gives τ for one MoE
    layer (aligned B's expert i = B's expert τ[i]; Step 2 follows), or None to leave the layer as B has
    it (no Step 2). `evaluates_all_orders`: the method chooses among all orders by their barrier, which
    the caller evaluates (it has the data); `layer_order` is then None."""

    def __init__(self, layer_order: Callable | None, evaluates_all_orders: bool = False, doc: str | None = None):
        if layer_order is not None:
            functools.update_wrapper(self, layer_order)
        self.__doc__ = doc or self.__doc__
        self.layer_order = layer_order
        self.evaluates_all_orders = evaluates_all_orders


def order_method(name: str, options: type = NoOptions):
    """Decorator: register `layer_order(state_a, state_b, prefix, options) -> τ | None` as MoE Step-1
    method `name` (track "moe_order"); `options` is its options dataclass (config moe.options.<name>)."""
    def add(layer_order):
        methods.register("moe_order", name, options)(ExpertOrder(layer_order))
        return layer_order
    return add


def _expert(state: dict, prefix: str, shared: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    names = SHARED_TENSORS if shared else EXPERT_TENSORS
    return tuple(state[f"{prefix}.{t}"].detach().double() for t in names)


def gate_cost(state_a: dict, state_b: dict, prefix: str) -> Tensor:
    """Eq. 10: C_ij = ‖(Ŵ_i, b̂_i) − (Ŵ'_j, b̂'_j)‖₂ with gates centred over the experts."""
    def centred(state):
        g = torch.cat([state[f"{prefix}.router.weight"], state[f"{prefix}.router.bias"][:, None]], 1).double()
        return g - g.mean(0, keepdim=True)
    return torch.cdist(centred(state_a), centred(state_b))


def gram_features(state: dict, prefix: str, shared: bool = False) -> Tensor:
    """(n, (d+1)² + d²): the flattened ÃᵀÃ and B̃B̃ᵀ of every expert (Eq. 11)."""
    w1, b1, w2, b2 = _expert(state, prefix, shared)
    a = torch.cat([w1, b1[..., None]], -1)            # Ã_i = [A_i, u_i]  (n, h, d+1)
    b = torch.cat([w2, b2[..., None]], -1)            # B̃_i = [B_i, v_i]  (n, d, h+1)
    return torch.cat([(a.mT @ a).flatten(1), (b @ b.mT).flatten(1)], 1)


def expert_cost(state_a: dict, state_b: dict, prefix: str, shared: bool = False) -> Tensor:
    """Eq. 11: C_ij = (‖ÃᵢᵀÃᵢ − Ã'ⱼᵀÃ'ⱼ‖²_F + ‖B̃ᵢB̃ᵢᵀ − B̃'ⱼB̃'ⱼᵀ‖²_F)^½."""
    return torch.cdist(gram_features(state_a, prefix, shared), gram_features(state_b, prefix, shared))


@order_method("naive")
def naive(state_a: dict, state_b: dict, prefix: str, options) -> None:
    """No alignment: the two MoEs interpolated as they are, the reference of every ratio."""
    return None


@order_method("skip_order")
def skip_order(state_a: dict, state_b: dict, prefix: str, options) -> Tensor:
    """Step 2 only: experts in their own order (the identity τ), hidden units matched [inferred]."""
    return torch.arange(n_experts(state_b, prefix))


@order_method("gate_wm")
def gate_wm(state_a: dict, state_b: dict, prefix: str, options) -> Tensor:
    """Algorithm 1: experts ordered by their centred gate rows (Eq. 10), then Step 2."""
    return match_units(gate_cost(state_a, state_b, prefix), maximize=False)


@order_method("expert_wm")
def expert_wm(state_a: dict, state_b: dict, prefix: str, options) -> Tensor:
    """Algorithm 1: experts ordered by their weights' Gram matrices (Eq. 11), then Step 2."""
    return match_units(expert_cost(state_a, state_b, prefix), maximize=False)


methods.register("moe_order", "best_order")(ExpertOrder(None, evaluates_all_orders=True, doc=(
    "Oracle: every expert order of every layer (each + Step 2), the lowest test-loss barrier (moe.max_orders caps them).")))


def layer_order(method: str, options: dict | None = None) -> Callable:
    """`(state_a, state_b, prefix) -> τ | None` of a registered order method with its options checked."""
    registered = methods.get("moe_order", method)
    if registered.obj.evaluates_all_orders:
        raise ValueError(f"moe_order method {method!r} evaluates all orders: lmcbench.experiments.moe.align_pair chooses "
                         f"its order from their barriers")
    checked = registered.parse(options, f"moe.options.{method}")
    return lambda state_a, state_b, prefix: registered.obj.layer_order(state_a, state_b, prefix, checked)


def expert_order(state_a: dict, state_b: dict, prefix: str, method: str, options: dict | None = None) -> Tensor | None:
    """τ of one MoE layer by a registered order method (None: the method leaves the layer unaligned)."""
    return layer_order(method, options)(state_a, state_b, prefix)


def hidden_similarity(state_a: dict, state_b: dict, prefix: str, shared: bool = False) -> Tensor:
    """(n, h, h): S_i = A_i A'_iᵀ + u_i u'_iᵀ + B_iᵀ B'_i for expert i of A and expert i of B."""
    w1a, b1a, w2a, _ = _expert(state_a, prefix, shared)
    w1b, b1b, w2b, _ = _expert(state_b, prefix, shared)
    return w1a @ w1b.mT + b1a[:, :, None] * b1b[:, None, :] + w2a.mT @ w2b


def hidden_perms(state_a: dict, state_b: dict, prefix: str, shared: bool = False) -> Tensor:
    """Step 2: (n, h) per-expert hidden permutations (one LAP per expert; the loop is over experts)."""
    sim = hidden_similarity(state_a, state_b, prefix, shared)
    return torch.stack([match_units(s) for s in sim])


def align_layer(state_a: dict, state_b: dict, prefix: str, tau: Tensor | None) -> tuple[dict, dict]:
    """B's layer reordered by τ (None = identity), then Step 2 on routed and shared experts.
    Returns (aligned B state, info with the permutations found)."""
    n = n_experts(state_b, prefix)
    tau = torch.arange(n) if tau is None else torch.as_tensor(tau, dtype=torch.long)
    out = permute_experts(state_b, prefix, tau)
    perms = hidden_perms(state_a, out, prefix)
    out = permute_hidden(out, prefix, perms)
    info = {"tau": tau.tolist()}
    if has_shared(state_b, prefix):
        s = state_b[f"{prefix}.shared_w1"].shape[0]
        if s > 1:  # reorder shared experts among themselves by the Gram cost [inferred]
            sigma = match_units(expert_cost(state_a, out, prefix, shared=True), maximize=False)
            out = {**out, **{f"{prefix}.{t}": out[f"{prefix}.{t}"][sigma] for t in SHARED_TENSORS}}
            info["shared_order"] = sigma.tolist()
        out = permute_hidden(out, prefix, hidden_perms(state_a, out, prefix, shared=True), shared=True)
    return out, info


def align_with_orders(state_a: dict, state_b: dict, taus: dict[str, Tensor | None]) -> dict:
    """Step 2 after the given expert order of every MoE layer."""
    out = dict(state_b)
    for prefix, tau in taus.items():
        out, _ = align_layer(state_a, out, prefix, tau)
    return out


def method_orders(state_a: dict, state_b: dict, method: str, options: dict | None = None) -> dict[str, Tensor]:
    """The expert order per MoE layer a registered method gives; layers it leaves unaligned are absent
    (naive: none)."""
    order = layer_order(method, options)
    taus = {p: order(state_a, state_b, p) for p in moe_prefixes(state_a)}
    return {p: tau for p, tau in taus.items() if tau is not None}


def align(state_a: dict, state_b: dict, method: str, options: dict | None = None) -> tuple[dict, dict]:
    """(aligned B state, per-layer orders) for a registered order method (not one that evaluates all orders)."""
    taus = method_orders(state_a, state_b, method, options)
    return align_with_orders(state_a, state_b, taus), taus


def all_orders(state: dict, max_orders: int) -> list[dict[str, Tensor]] | None:
    """Every combination of expert orders over the MoE layers ((n!)^L of them), or None if more than
    `max_orders` (best_order and ranks are then skipped)."""
    prefixes = moe_prefixes(state)
    counts = [n_experts(state, p) for p in prefixes]
    total = 1
    for n in counts:
        for i in range(2, n + 1):
            total *= i
    if total > max_orders:
        return None
    per_layer = [list(itertools.permutations(range(n))) for n in counts]
    return [{p: torch.tensor(o) for p, o in zip(prefixes, combo)} for combo in itertools.product(*per_layer)]


def order_key(taus: dict[str, Tensor]) -> str:
    """A readable, hashable name of a per-layer order: layer orders joined by '|'."""
    return "|".join("".join(str(int(i)) if len(t) <= 10 else f"{int(i)}," for i in t) for t in taus.values())
