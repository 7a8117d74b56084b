"""The MoE symmetry group G(n) = R^d × R × S_n and the per-expert hidden-unit permutations.

Eq. 5 [paper]: g = (c_W, c_b, τ) acts by (W_{τ(i)} + c_W, b_{τ(i)} + c_b, θ_{τ(i)}); the same c_W is
added to every gate row and the same c_b to every gate bias. Index convention (as everywhere in
lmcbench, `match_units`): new expert i = old expert τ[i]. The expert permutation is expressed as a
GLMC `Space` (group "perm", axis 0 of the router rows/biases and of every stacked expert tensor), so
it is applied by `lmcbench.symmetry.apply`; the translation and the per-expert hidden permutations
(A_i ← P_i A_i, u_i ← P_i u_i, B_i ← B_i P_iᵀ, moe.md §2.3 [inferred]) act on one slice of axis 0
each, which the spec's single-axis actions cannot express, so they are gathers here.

All functions are pure: they return a new state dict and never modify their input.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from lmcbench.models.moe import moe_modules
from lmcbench.symmetry import apply
from lmcbench.symmetry.spec import Action, Space, SymmetrySpec

EXPERT_TENSORS = ("w1", "b1", "w2", "b2")
SHARED_TENSORS = tuple(f"shared_{t}" for t in EXPERT_TENSORS)


def moe_prefixes(model_or_state) -> list[str]:
    """Dotted paths of the MoE layers of a model, or of a state dict (keys ending in `.router.weight`
    next to a `.w1`)."""
    if isinstance(model_or_state, nn.Module):
        return list(moe_modules(model_or_state))
    return [k[: -len(".router.weight")] for k in model_or_state
            if k.endswith(".router.weight") and f"{k[:-len('.router.weight')]}.w1" in model_or_state]


def n_experts(state: dict[str, Tensor], prefix: str) -> int:
    return state[f"{prefix}.w1"].shape[0]


def has_shared(state: dict[str, Tensor], prefix: str) -> bool:
    return f"{prefix}.shared_w1" in state


def expert_space(prefix: str, n: int) -> Space:
    """The routed experts of one layer as a permutation space: gate rows and biases move with them."""
    params = [f"{prefix}.router.weight", f"{prefix}.router.bias"] + [f"{prefix}.{t}" for t in EXPERT_TENSORS]
    return Space(f"{prefix}.experts", "perm", n, tuple(Action(p, 0, "writer") for p in params))


def moe_spec(model_or_state) -> SymmetrySpec:
    """One `<layer>.experts` permutation space per MoE layer (shared experts have no gate row and stay)."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    return SymmetrySpec(tuple(expert_space(p, n_experts(state, p)) for p in moe_prefixes(state)))


def permute_experts(state: dict[str, Tensor], prefix: str, tau: Tensor) -> dict[str, Tensor]:
    """New expert i = old expert tau[i], gate row and bias included."""
    tau = torch.as_tensor(tau, dtype=torch.long)
    return apply(SymmetrySpec((expert_space(prefix, n_experts(state, prefix)),)), state, {f"{prefix}.experts": tau})


def translate_gate(state: dict[str, Tensor], prefix: str, c_w: Tensor | None = None,
                   c_b: float | Tensor | None = None) -> dict[str, Tensor]:
    """Add the common vector c_W to every gate row and the common scalar c_b to every gate bias."""
    out = dict(state)
    w, b = f"{prefix}.router.weight", f"{prefix}.router.bias"
    if c_w is not None:
        out[w] = state[w] + torch.as_tensor(c_w, dtype=state[w].dtype)[None, :]
    if c_b is not None:
        out[b] = state[b] + torch.as_tensor(c_b, dtype=state[b].dtype)
    return out


def _permute_hidden(state: dict, names: tuple[str, ...], perms: Tensor) -> dict:
    w1, b1, w2, b2 = names
    perms = torch.as_tensor(perms, dtype=torch.long, device=state[w1].device)  # gather: index on the states' device
    out = dict(state)
    d = state[w1].shape[-1]
    out[w1] = state[w1].gather(1, perms[:, :, None].expand(-1, -1, d))
    out[b1] = state[b1].gather(1, perms)
    out[w2] = state[w2].gather(2, perms[:, None, :].expand(-1, state[w2].shape[1], -1))
    return out


def permute_hidden(state: dict[str, Tensor], prefix: str, perms: Tensor, shared: bool = False) -> dict[str, Tensor]:
    """Hidden unit j of expert i becomes old unit perms[i, j] (rows of A_i, u_i; columns of B_i).
    With shared=True, the shared experts' hidden units instead."""
    names = SHARED_TENSORS if shared else EXPERT_TENSORS
    return _permute_hidden(state, tuple(f"{prefix}.{t}" for t in names), perms)


def act(state: dict[str, Tensor], prefix: str, tau: Tensor | None = None, c_w: Tensor | None = None,
        c_b: float | Tensor | None = None) -> dict[str, Tensor]:
    """The G(n) element (c_W, c_b, τ) applied to one layer (Eq. 5)."""
    out = permute_experts(state, prefix, tau) if tau is not None else dict(state)
    return translate_gate(out, prefix, c_w, c_b)


def random_element(state: dict[str, Tensor], prefix: str, generator: torch.Generator | None = None,
                   scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(τ, c_W, c_b) drawn at random for one layer."""
    n, d = state[f"{prefix}.router.weight"].shape
    dtype = state[f"{prefix}.router.weight"].dtype
    return (torch.randperm(n, generator=generator), scale * torch.randn(d, generator=generator).to(dtype),
            scale * torch.randn((), generator=generator).to(dtype))


def random_hidden_perms(state: dict[str, Tensor], prefix: str, generator: torch.Generator | None = None,
                        shared: bool = False) -> Tensor:
    w1 = state[f"{prefix}.{'shared_w1' if shared else 'w1'}"]
    return torch.stack([torch.randperm(w1.shape[1], generator=generator) for _ in range(w1.shape[0])])
