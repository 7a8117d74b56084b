"""Data-free weight matching: Git Re-Basin's permutation matcher and GLMC's generalised one.

Both are block-coordinate descents over the spaces of a `SymmetrySpec`: each step solves one
space's alignment with the others fixed and applies it to B at once, so later steps see it.
"""
from __future__ import annotations

import copy
import ctypes
import ctypes.util
import logging
import math
import sys
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmcbench.symmetry.canonical import canonicalize, circuit_form, head_factors
from lmcbench.matchers import Alignment, MatchContext, register
from lmcbench.matchers.assignment import (action_rows, cover_units, l1_distances, match_many, match_units,
                                         orthogonal_from_gram, unit_features)
from lmcbench.symmetry import apply, layout_for, perm_matrix, spec_for
from lmcbench.symmetry.spec import Action, AttentionSite, Layout, Space, SymmetrySpec

log = logging.getLogger(__name__)
_MALLOC_TRIM = getattr(ctypes.CDLL(ctypes.util.find_library("c")), "malloc_trim", None) \
    if sys.platform.startswith("linux") else None
Phase = Callable[[str], AbstractContextManager]  # phase(name): a context timing one phase


def detached_state(model: nn.Module) -> dict[str, Tensor]:
    """A copy of the model's tensors, detached from autograd (so callers may keep or change them)."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _compose(total: Tensor | None, step: Tensor) -> Tensor:
    """The element 'total, then step' (apply(total) followed by apply(step))."""
    if total is None:
        return step
    if step.is_floating_point():  # matrices: x -> x T S
        return (total if total.is_floating_point() else perm_matrix(total.to(step.device), step.dtype)) @ step
    if total.is_floating_point():  # a matrix (e.g. a semi-permutation), then a permutation of its columns
        return total[:, step]
    return total[step]  # indices: new j = old total[step[j]]


def _is_identity(step: Tensor) -> bool:
    if step.is_floating_point():
        return step.shape[0] == step.shape[1] and torch.allclose(
            step, torch.eye(step.shape[0], dtype=step.dtype, device=step.device), atol=1e-7)
    return bool((step == torch.arange(step.numel(), device=step.device)).all())


def release_freed_heap() -> None:
    """Return the C heap's free pages to the OS (glibc `malloc_trim`; a no-op without it). Matching
    frees a weight-sized tensor at every step; glibc keeps such pages mapped (about 0.5–0.8 GB more
    peak RSS at GPT-2 small, README "Performance"). The call costs milliseconds."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def apply_in_place(space: Space, state: dict[str, Tensor], step: Tensor, batch: int = 2 ** 24) -> None:
    """`apply` of one space's element, replacing `state`'s entries a few parameters (up to `batch`
    elements) at a time: the old tensors are freed as their successors are made, so the moved weights
    never exist twice (0.34 GB at GPT-2 small for a residual step); batches, not single parameters,
    because `apply` checks the element each call (an O O^T per call for an orthogonal one).
    The same tensors as `apply` computes."""
    params = list(dict.fromkeys(a.param for a in space.actions))
    while params:
        group, size = [], 0
        while params and (not group or size + state[params[0]].numel() <= batch):
            size += state[params[0]].numel()
            group.append(params.pop(0))
        part = replace(space, actions=tuple(a for a in space.actions if a.param in group))
        state.update({k: v for k, v in apply(SymmetrySpec((part,)), state, {space.name: step}).items() if k in group})


class Aligner:
    """B's state, the element applied to it so far, and a one-space update."""

    def __init__(self, spec: SymmetrySpec, state_a: dict[str, Tensor], state_b: dict[str, Tensor]):
        self.spec, self.state_a, self.state_b = spec, state_a, dict(state_b)
        self.element: dict[str, Tensor] = {}
        self.rounds = 0  # rounds (sweeps) run: fewer than allowed when one changed nothing
        self.changes: dict[str, int] = {}  # per space, how many steps changed B (what a cache of B's features checks)

    def update(self, space: Space, step: Tensor) -> bool:
        """Apply `step` on `space` to B; returns whether anything changed."""
        if _is_identity(step):
            return False
        apply_in_place(space, self.state_b, step)
        self.element[space.name] = _compose(self.element.get(space.name), step)
        self.changes[space.name] = self.changes.get(space.name, 0) + 1
        if step.shape[-1] != space.dim:  # a semi-permutation widened the space: B now has A's shapes there
            self.spec = SymmetrySpec(tuple(s if s.name != space.name else Space(s.name, s.group, step.shape[-1],
                                                                              s.actions, s.block)
                                           for s in self.spec))
        return True


# --------------------------------------------------------------------------------------------- Git Re-Basin
def permutation_weight_matching(spec: SymmetrySpec, state_a: dict, state_b: dict, max_sweeps: int = 50,
                                seed: int = 0) -> Aligner:
    """Git Re-Basin weight matching (Ainsworth et al. 2023): maximise Σ⟨W_A, π(W_B)⟩ one permutation
    at a time, in a random order each sweep, until a whole sweep changes nothing."""
    aligner = Aligner(spec, state_a, state_b)
    generator = torch.Generator().manual_seed(seed)
    for sweep in range(max_sweeps):
        aligner.rounds, changed = sweep + 1, False
        for k in torch.randperm(len(spec), generator=generator).tolist():
            space = spec.spaces[k]
            score = unit_features(space, aligner.state_a) @ unit_features(space, aligner.state_b).T
            changed |= aligner.update(space, match_units(score))
        if not changed:
            log.info("permutation weight matching converged after %d sweeps", sweep + 1)
            break
    return aligner


def permutation_spec(model: nn.Module) -> SymmetrySpec:
    """Residual stream, heads and MLP units as permutations: the classes a LayerNorm model has."""
    spec = spec_for(model).subset("residual", "blocks.*.heads", "blocks.*.mlp")
    return SymmetrySpec(tuple(Space(s.name, "perm", s.dim, s.actions, s.block) for s in spec))


@dataclass(frozen=True)
class PermWeightMatchingOptions:
    max_sweeps: int = 50  # sweeps over all permutations; stops earlier once a sweep changes nothing


@register("perm_weight_matching", options=PermWeightMatchingOptions)
def perm_weight_matching(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """Git Re-Basin weight matching over the residual stream, heads and MLP units (permutations only)."""
    spec = permutation_spec(model_a)
    aligner = permutation_weight_matching(spec, detached_state(model_a), detached_state(model_b),
                                          context.options.max_sweeps, context.seed)
    return Alignment(model_a, detached_state(model_a), aligner.state_b,
                     {"spaces": sorted(aligner.element), "rounds": aligner.rounds})


# --------------------------------------------------------------------------------------------- GLMC
def ensure_canonical(model: nn.Module) -> nn.Module:
    """The canonical form of `model`; a model already in it (gain-free RMSNorms) is returned as is."""
    return model if layout_for(model).residual_group == "orth" else canonicalize(model)


def active_tokens(task, enabled: bool = True) -> Tensor | None:
    """Ids of the tokens that occur in a text task's train split (None: use every vocabulary row).

    [official code `compute_token_freqs.py`] GLMC's residual step compares embedding and unembedding
    rows only of tokens with train frequency > 0: rows of tokens training never saw keep their
    random initialisation, which differs between seeds and would pull the residual map towards noise
    (with GPT-2's 50257-token BPE, Tiny Shakespeare uses about 11 k). A no-op when every token occurs."""
    dataset = getattr(task, "dataset", None)
    if not enabled or dataset is None or dataset.kind != "text":
        return None
    return torch.unique(torch.as_tensor(dataset.train))


def _raw_residual_params(spec: SymmetrySpec, layout: Layout) -> tuple[set[str], set[str]]:
    """Parameters whose residual-indexed slices the residual step reads as they are stored:
    (first round, later rounds).

    First round [official code]: only those no other space touches (embeddings, positions,
    unembedding, norm offsets, output biases), because inner-layer rows are comparable only once
    heads and neurons are roughly matched. Later rounds: also the MLP in/out weights (c_fc,
    mlp c_proj). Never the raw attention weights W_QKV, W_O: they carry each head's arbitrary GL(d)
    gauge; the attention enters through its circuits instead (`_circuit_gram`)."""
    residual = {a.param for a in spec["residual"].actions}
    inner = {a.param for s in spec if s.name != "residual" for a in s.actions}
    attention = {ref.param for att in layout.attentions for ref in (att.qkv, att.proj)}
    return residual - inner, residual - attention


def _circuit_gram(state_a: dict, att_a: AttentionSite, state_b: dict, att_b: AttentionSite, width: int) -> Tensor:
    """(D, D) cross-Gram of the residual coordinates' attention features, F_A F_B^T, as the
    [official code] builds them from the circuit form (heads of size D+1, x~ = [x, 1]):
      c_attn row r = per head [QK_h[r, :] s | e_r | e_r] (the Q-map QK_h s, s = sqrt((D+1)/d), and the
                     identity K- and V-maps), 3 H (D+1) columns;
      c_proj column r = per head OV_h[:, r], H (D+1) columns;
    each block divided by sqrt(its columns), as `actions_gram` weights stored parameters.
    QK_h = W~_Q W~_K^T and OV_h = W~_V W_O are invariant to the per-head GL(d) maps, so is this Gram.
    It is computed from the factors (H d x d products), never materialising the D+1-wide heads, and
    from B's current weights at every call: that is the official re-projection after each step.
    A may itself be in circuit form (the universe of `universe_matching`): then s = 1 and the
    factors' products are the same circuits."""
    qa, ka, va, oa = (t.double() for t in head_factors(state_a, att_a))
    qb, kb, vb, ob = (t.double() for t in head_factors(state_b, att_b))
    h_n, e = att_a.num_heads, width + 1
    scale = math.sqrt(e / att_a.head_dim) * math.sqrt(e / att_b.head_dim)
    # Σ_h QK_A,h[:D] QK_B,h[:D]^T = Σ_h W_Q,A (W~_K,A^T W~_K,B) W_Q,B^T
    qk = torch.einsum("hrd,hsd->rs", qa[:, :width] @ (ka.transpose(1, 2) @ kb), qb[:, :width]) * scale
    identity = 2 * h_n * torch.eye(width, dtype=qk.dtype, device=qk.device)  # the K and V identity maps of both models
    # Σ_h OV_A,h^T OV_B,h = Σ_h W_O,A^T (W~_V,A^T W~_V,B) W_O,B
    ov = torch.einsum("hrd,hds->rs", oa.transpose(1, 2) @ (va.transpose(1, 2) @ vb), ob)
    return (qk + identity) / (3 * h_n * e) + ov / (h_n * e)


def actions_gram(space: Space, actions, state_a: dict, state_b: dict, chunk: int = 8192) -> Tensor:
    """(D, D) float64 Σ over `actions` of F_A F_B^T / columns: the rows each action moves (`action_rows`),
    compared coordinate by coordinate, each action weighted by 1/its columns so that wide parameters do
    not drown narrow ones (GLMC's residual alignment, [official code] `ortho_residual`). Chunked over
    columns, so the float64 copies of the vocabulary matrices are never whole."""
    gram = torch.zeros(space.size, space.size, dtype=torch.float64, device=state_b[space.actions[0].param].device)
    for action in actions:
        xa, xb = (action_rows(space, action, sd) for sd in (state_a, state_b))
        for c in range(0, xa.shape[1], chunk):
            gram += xa[:, c:c + chunk].double() @ xb[:, c:c + chunk].double().T / xa.shape[1]
    return gram


def static_residual_gram(space: Space, params: set[str], state_a: dict, layout_a: Layout, state_b: dict,
                         layout_b: Layout, tokens: Tensor | None) -> Tensor:
    """(D, D) float64 cross-Gram (`actions_gram`) over the residual actions on `params` (vocabulary rows
    restricted to `tokens`, see `active_tokens`), computed once per match: these parameters
    (embeddings, unembedding, positions, norm offsets, output biases) are moved by the residual space
    only, whose action on B's features is F_B -> M^T F_B (M the residual element so far, a matrix or a
    permutation's matrix), so their Gram at any later point is this one times M."""
    states = []
    for sd, layout in ((state_a, layout_a), (state_b, layout_b)):
        if tokens is not None:  # only rows of tokens seen in training (`active_tokens`)
            sd = {**sd, **{r.param: sd[r.param].index_select(r.axis, tokens.to(sd[r.param].device))
                           for r in layout.vocab}}
        states.append(sd)
    return actions_gram(space, [a for a in space.actions if a.param in params], *states)


class ResidualBlocks:
    """The residual step's cross-Gram of the stored parameters other spaces also move (the MLP
    weights), by block of parameters with the same other spaces, carried between residual steps
    instead of recomputed.

    In such a parameter the residual space acts on one axis only and its features are the slices
    along the others (for an MLP weight, the units' weights). So B's features in a block change in two
    ways: a residual step S moves them all alike (F_B -> S^T F_B, so the block's Gram G -> G S, one
    D x D product), and a step of one of the block's own spaces (its MLP units) changes them
    arbitrarily. A block is therefore recomputed from B's weights only after such a step changed B
    (`Aligner.changes`) and is otherwise carried: at GPT-2 small 0.9 GFLOP against 7.2 and the float64
    copies of the weights. The same Gram up to rounding (B's weights are rotated in their own dtype,
    the carried Gram in float64). Not the attention circuits: their features have residual
    coordinates on both sides (QK's columns, OV's rows), so they are recomputed at every step
    (`_circuit_gram`). `static_residual_gram` is the case of the parameters no other space moves."""

    def __init__(self, spec: SymmetrySpec, params: set[str]):
        residual = spec["residual"]
        self.blocks: dict[frozenset[str], list[Action]] = {}   # the other spaces on the params -> residual actions
        for action in residual.actions:
            if action.param in params:
                if sum(a.param == action.param for a in residual.actions) != 1:
                    raise ValueError(f"{action.param}: the residual space acts on it more than once; its Gram "
                                     "cannot be carried by the residual steps")
                owners = frozenset(s.name for s in spec if s.name != "residual"
                                   and any(a.param == action.param for a in s.actions))
                self.blocks.setdefault(owners, []).append(action)
        self.grams: dict[frozenset[str], tuple[Tensor, list[int]]] = {}   # -> (Gram now, owners' changes then)

    def gram(self, aligner: Aligner) -> Tensor:
        """Σ of the blocks' Grams at B's current weights; recomputes those whose spaces changed B since."""
        total = 0
        for owners, actions in self.blocks.items():
            changes = [aligner.changes.get(name, 0) for name in sorted(owners)]
            if owners not in self.grams or self.grams[owners][1] != changes:
                self.grams[owners] = (actions_gram(aligner.spec["residual"], actions, aligner.state_a,
                                                   aligner.state_b), changes)
            total = total + self.grams[owners][0]
        return total

    def carry(self, step: Tensor) -> None:
        """After B's residual coordinates moved by `step` (x -> x S): every block's Gram G -> G S."""
        for owners, (gram, changes) in self.grams.items():
            self.grams[owners] = (gram @ _as_matrix(step, gram), changes)


def _as_matrix(element: Tensor, like: Tensor) -> Tensor:
    """A residual element as the matrix M of x -> x M, in `like`'s dtype and device."""
    if element.is_floating_point():
        return element.to(like)
    return perm_matrix(element.to(like.device), like.dtype)


def _residual_step(aligner: Aligner, layout_a: Layout, layout_b: Layout, group: str, static_gram: Tensor,
                   blocks: ResidualBlocks | None, phase: Phase) -> bool:
    """Residual map from the cross-Gram G = F_A F_B^T of residual-coordinate features [official code
    `weight_matching`]: the rows of the residual-only parameters (`static_residual_gram`, moved by
    the residual element so far) and, after the first round, the stored rows of the MLP weights
    (`blocks`, carried between steps: `ResidualBlocks`) and every layer's attention circuits
    (`_circuit_gram`, from B's current weights). Orthogonal: Procrustes
    O = U V^T; "perm": the assignment maximising tr(P^T G), i.e. minimising squared Euclidean row
    distances (GLMC's permutation-only mode). Every feature is invariant to the per-head GL(d) maps."""
    space = aligner.spec["residual"]
    total = aligner.element.get("residual")
    gram = static_gram if total is None else static_gram @ _as_matrix(total, static_gram)
    if blocks is not None:   # after the first round: the MLP weights and the attention circuits
        gram = gram + blocks.gram(aligner)
        for att_a, att_b in zip(layout_a.attentions, layout_b.attentions, strict=True):
            gram = gram + _circuit_gram(aligner.state_a, att_a, aligner.state_b, att_b, layout_b.width)
    if group == "orth":
        step = orthogonal_from_gram(gram).to(aligner.state_b[space.actions[0].param].dtype)
    else:
        with phase("assignment"):
            step = match_units(gram)
    changed = aligner.update(space, step)
    if changed and blocks is not None:
        blocks.carry(step)
    return changed


def _factor_products(x: Tensor, y: Tensor) -> Tensor:
    """(H_x, H_y, d_x, d_y) products x_i^T y_j of per-head factors x (H_x, R, d_x), y (H_y, R, d_y): one matrix product."""
    return (x.transpose(0, 1).flatten(1).T @ y.transpose(0, 1).flatten(1)).unflatten(0, x.shape[::2]) \
        .unflatten(-1, y.shape[::2]).transpose(1, 2)


def head_distances(state_a: dict, att_a: AttentionSite, state_b: dict, att_b: AttentionSite, width: int) -> Tensor:
    """(H_A, H_B) cost ‖QK_A,i − QK_B,j‖_F + ‖OV_A,i − OV_B,j‖_F [official code], QK scaled as the circuit
    form stores it (QK s, s = sqrt((D+1)/d)), so that a circuit-form A and a canonical B compare the same
    bilinear form. Invariant to the per-head GL(d) maps. In float64 from the factors, never materialising
    the circuits (H (D+1)² per model and layer): ‖X − Y‖² = ‖X‖² + ‖Y‖² − 2 <X, Y> with
    <W~_Q,i W~_K,i^T, W~_Q,j W~_K,j^T> = Σ (W~_Q,i^T W~_Q,j) ∘ (W~_K,i^T W~_K,j) and likewise
    <W~_V,i W_O,i, W~_V,j W_O,j> = Σ (W~_V,i^T W~_V,j) ∘ (W_O,i W_O,j^T)."""
    qa, ka, va, oa = (t.double() for t in head_factors(state_a, att_a))
    qb, kb, vb, ob = (t.double() for t in head_factors(state_b, att_b))
    oa, ob = oa.transpose(1, 2), ob.transpose(1, 2)   # (H, D, d): the same form as the other factors
    s_a, s_b = ((width + 1) / att_a.head_dim, (width + 1) / att_b.head_dim)   # squared QK scales

    def norms(x: Tensor, y: Tensor) -> Tensor:   # ‖x_i y_i^T‖²_F per head
        return ((x.transpose(1, 2) @ x) * (y.transpose(1, 2) @ y)).sum((-2, -1))

    cost = 0
    for (xa, ya, xb, yb, sa, sb) in ((qa, ka, qb, kb, s_a, s_b), (va, oa, vb, ob, 1.0, 1.0)):
        inner = (_factor_products(xa, xb) * _factor_products(ya, yb)).sum((-2, -1)) * math.sqrt(sa * sb)
        squared = norms(xa, ya)[:, None] * sa + norms(xb, yb)[None] * sb - 2 * inner
        cost = cost + squared.clamp_min(0).sqrt()
    return cost


def _heads_step(aligner: Aligner, space: Space, att_a: AttentionSite, att_b: AttentionSite, width: int,
                phase: Phase) -> bool:
    """Head assignment on circuit distances (`head_distances`) of A's and B's current heads."""
    cost = head_distances(aligner.state_a, att_a, aligner.state_b, att_b, width)
    with phase("assignment"):
        step = match_units(cost, maximize=False)
    return aligner.update(space, step)


def _split_features(space: Space, state: dict[str, Tensor]) -> Tensor:
    """Per unit [w_in, b_in] / its norm and w_out / its norm: the same for a ReLU unit and each of its
    split copies (which keep the direction of the incoming and the outgoing weights)."""
    parts = [unit_features(space, state, {a.param for a in space.actions if a.role == role}) for role in
             ("writer", "reader")]
    return torch.cat([torch.nn.functional.normalize(p, dim=1) for p in parts], 1)


def _split_step(aligner: Aligner, space_a: Space, space_b: Space) -> bool:
    """B's MLP narrower than A's (n < m units) and positively homogeneous (ReLU): the semi-permutation
    S (n x m) that splits B's units onto A's [inferred, glmc.md section 2: relu(z) = Σ_k relu(α_k z),
    Σ α_k = 1]. Each A unit i is assigned a B unit src[i] (`cover_units` on cosine similarities of
    `_split_features`, every B unit used); the widened B's unit i is B's src[i] with incoming weights
    scaled by α_i = |in_A,i| / Σ_{k: src[k] = src[i]} |in_A,k| and outgoing weights copied. Exact on a
    planted split; afterwards B has A's MLP width and the usual permutation steps continue."""
    fa, fb = _split_features(space_a, aligner.state_a), _split_features(space_b, aligner.state_b)
    src = cover_units(fa @ fb.T)
    writers = {a.param for a in space_a.actions if a.role == "writer"}
    norms = unit_features(space_a, aligner.state_a, writers).norm(dim=1).clamp_min(1e-12)  # every unit gets a share
    src = src.to(norms.device)
    alpha = norms / torch.zeros(space_b.dim, dtype=norms.dtype, device=norms.device).index_add_(0, src, norms)[src]
    like = aligner.state_b[space_b.actions[0].param]
    split = torch.zeros(space_b.dim, space_a.dim, dtype=like.dtype, device=like.device)
    split[src, torch.arange(space_a.dim, device=like.device)] = alpha.to(split.dtype)
    return aligner.update(space_b, split)


def mlp_features(space: Space, state: dict[str, Tensor], cost: str) -> Tensor:
    """L2-normalised [w_in, b_in, w_out] rows of an MLP space, normalised in float64 and returned in
    float32 for both costs: the L1 cost compares them so [official code]; the cosine cost takes their
    products in float32 (`_mlp_steps`), a GEMM about twice as fast as float64 on a CPU."""
    if cost not in ("l1", "cosine"):
        raise ValueError(f"unknown mlp_cost {cost!r}; expected 'l1' or 'cosine'")
    return torch.nn.functional.normalize(unit_features(space, state), dim=1).float()


def _mlp_steps(aligner: Aligner, spaces_a: list[Space], features_a: list[Tensor], cost: str, phase: Phase) -> bool:
    """A round's neuron assignments, layer by layer, on distances of L2-normalised [w_in, b_in, w_out]
    vectors (`mlp_features`; A's, `features_a`, are fixed and computed once): L1 as in the [official
    code] (`l1_distances`), or "cosine" (the same ranking as L2 on the sphere), a float32 matrix product.
    Float32, not float64: at GPT-2 small (random pair of `lmcbench bench matching`, 15 rounds) the
    float32 score's assignment equalled the float64 one's at all 180 MLP steps, every unit (scores within
    1.8e-7), so the matching is the same, and its products took 49 CPU-s against 91 in float64; the
    pinned elements of tests/test_perf.py hold. The assignments are solved in float64 (`match_units`),
    the cosine one as the minimisation of -score (the same problem, exactly).
    These weights carry no head gauge; the residual map acts on both sides of the distance alike.
    The steps are independent (each reads and moves only its own layer's MLP weights, and the residual
    map is fixed meanwhile), so the cost matrices of as many layers as torch has threads are computed
    first (with those threads) and their assignments then solved at once (`match_many`): the same
    steps as one at a time, the single-threaded solver no longer holding up the other core.
    If B's MLP is narrower than A's, a ReLU MLP is split onto A's units (`_split_step`)."""
    changed, names = False, [f"blocks.{i}.mlp" for i in range(len(spaces_a))]
    group = max(1, torch.get_num_threads())
    for start in range(0, len(names), group):
        costs = {}   # float64 costs to minimise, made here so that each float32 matrix is freed at once and
        # scipy solves on them without a copy: for each problem in flight one n x n float64 matrix (peak memory)
        with phase("mlp_cost"):
            for name, space_a, fa in zip(names[start:start + group], spaces_a[start:start + group],
                                         features_a[start:start + group]):
                space = aligner.spec[name]
                if space_a.dim == space.dim:
                    fb = mlp_features(space, aligner.state_b, cost)
                    costs[name] = (l1_distances(fa, fb) if cost == "l1" else (fa @ fb.T).neg_()).double()
                elif space_a.dim > space.dim and space.group == "semiperm":
                    changed |= _split_step(aligner, space_a, space)
                else:
                    raise ValueError(f"{name}: A has {space_a.dim} MLP units and B {space.dim}; weight matching can "
                                     "split a narrower B when its activation is positively homogeneous (ReLU), "
                                     "otherwise embed the narrower model first (lmcbench.symmetry.canonical.embed_like)")
        with phase("assignment"):
            steps = match_many(list(costs.values()), maximize=False)
        with phase("mlp_cost"):
            for name, step in zip(costs, steps):
                changed |= aligner.update(aligner.spec[name], step)
    return changed


def default_device() -> torch.device:
    """Where matching runs unless told: the GPU when there is one (cost matrices, Procrustes, the
    application of each step; the assignment problems are solved on the CPU)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _untimed(name: str) -> AbstractContextManager:
    return nullcontext()


def _with_actions(spec: SymmetrySpec, name: str, keep: Callable[[Action], bool]) -> SymmetrySpec:
    return SymmetrySpec(tuple(replace(s, actions=tuple(a for a in s.actions if keep(a))) if s.name == name else s
                              for s in spec))


def glmc_weight_matching_states(model_a: nn.Module, model_b: nn.Module, iterations: int = 15,
                                residual: str = "orth", mlp_cost: str = "l1",
                                tokens: Tensor | None = None, device: str | torch.device | None = None,
                                phase: Phase = _untimed) -> tuple[nn.Module, Aligner]:
    """GLMC's data-free matcher [official code `weight_matching`] on the canonical forms of A and B:
    alternate residual alignment (orthogonal Procrustes, or a permutation with residual="perm"),
    head assignment on circuit distances and MLP assignment, for `iterations` rounds or until a
    round changes nothing. Every step reads only quantities invariant to the per-head GL(d) maps
    (see each step), so the result does not depend on B's gauge: the group searched is
    O(D) x heads x MLP permutations (and semi-permutations that split a narrower ReLU MLP of B onto
    A's units), quotiented by per-head GL(d) on QK and OV.
    `tokens`: vocabulary rows the residual step compares (`active_tokens`); None = all.
    `device`: where the tensors live while matching (default `default_device`); the results are
    returned on the CPU. `phase(name)`: a context manager around each phase (`lmcbench bench matching`
    times them): canonicalise, residual_once (the static Gram), residual, heads, mlp_cost, assignment
    (nested in the others).
    A may be in circuit form (a universe of averaged circuits); B is canonicalised.
    Work done once, not per round: the residual Gram of the residual-only parameters
    (`static_residual_gram`) and A's MLP features (head costs need no circuits: `head_distances`); those
    parameters of B are moved by the residual element once, at the end. Work done only when something
    changed: the Grams of the MLP weights (`ResidualBlocks`). Returns (canonical A, aligner
    holding the aligned canonical B, the element found and the rounds run)."""
    device = torch.device(device) if device is not None else default_device()
    with phase("canonicalise"):
        canon_a, canon_b = ensure_canonical(model_a), ensure_canonical(model_b)
        layout_a, layout_b = layout_for(canon_a), layout_for(canon_b)
        spec_a, spec_b = spec_for(canon_a), spec_for(canon_b)
        # not cloned: nothing below writes into a tensor (`apply` returns new ones)
        state_a, state_b = ({k: v.detach().to(device) for k, v in m.state_dict().items()} for m in (canon_a, canon_b))
        del canon_b, model_b  # B's tensors live on in state_b only, so each is freed once a step replaces it
    first, later = _raw_residual_params(spec_b, layout_b)
    with phase("residual_once"):
        static_gram = static_residual_gram(spec_b["residual"], first, state_a, layout_a, state_b, layout_b, tokens)
    # while matching, the residual steps move only the parameters other steps or the Gram read
    aligner = Aligner(_with_actions(spec_b, "residual", lambda a: a.param not in first), state_a, state_b)
    blocks = ResidualBlocks(aligner.spec, later - first)
    del state_b  # the aligner's copy of the dict is the only one: B's replaced tensors are freed
    with phase("mlp_cost"):
        spaces_a_mlp = [spec_a[f"blocks.{i}.mlp"] for i in range(len(layout_a.mlps))]
        features_a = [mlp_features(space, state_a, mlp_cost) for space in spaces_a_mlp]
    for it in tqdm(range(iterations), desc="GLMC weight matching", mininterval=5.0):
        aligner.rounds = it + 1
        with phase("residual"):
            changed = _residual_step(aligner, layout_a, layout_b, residual, static_gram, blocks if it else None, phase)
            release_freed_heap()   # once per round: its float64 features were the largest temporaries
        # heads and MLPs move disjoint weights, so all heads first, then all MLPs: the same steps
        for i, (att_a, att_b) in enumerate(zip(layout_a.attentions, layout_b.attentions, strict=True)):
            with phase("heads"):
                changed |= _heads_step(aligner, aligner.spec[f"blocks.{i}.heads"], att_a, att_b, layout_b.width, phase)
        changed |= _mlp_steps(aligner, spaces_a_mlp, features_a, mlp_cost, phase)
        if not changed and it > 0:
            log.info("GLMC weight matching converged after %d rounds", it + 1)
            break
    with phase("residual"):
        if "residual" in aligner.element:  # the residual-only parameters, moved once by the whole residual element
            apply_in_place(_with_actions(spec_b, "residual", lambda a: a.param in first)["residual"], aligner.state_b,
                           aligner.element["residual"])
        aligner.spec = SymmetrySpec(tuple(spec_b["residual"] if s.name == "residual" else s for s in aligner.spec))
        cpu = torch.device("cpu")
        aligner.state_a, aligner.state_b = ({k: v.to(cpu) for k, v in sd.items()}
                                            for sd in (aligner.state_a, aligner.state_b))
        aligner.element = {k: v.to(cpu) for k, v in aligner.element.items()}
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
        return Alignment(canon_a, detached_state(canon_a), state_b, info, form="canonical")
    circuit_a = circuit_form(canon_a)
    circuit_b = circuit_form(as_model(canon_a, state_b))
    return Alignment(circuit_a, detached_state(circuit_a), detached_state(circuit_b), info, form="circuit")


@dataclass(frozen=True)
class GLMCWeightMatchingOptions:
    iterations: int = 15                    # rounds of the alternating optimisation [official code]
    residual: Literal["orth", "perm"] = "orth"
    mlp_cost: Literal["l1", "cosine"] = "l1"
    circuits: bool = True                   # interpolate in the attention circuit form
    # compare embedding/unembedding rows only of tokens seen in the task's train split [official code];
    # a no-op when every token occurs (the char and local BPE vocabularies), see `active_tokens`
    token_freqs: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"   # where matching runs; auto: the GPU when there is one


@register("glmc_weight_matching", options=GLMCWeightMatchingOptions)
def glmc_weight_matching(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """GLMC data-free weight matching: orthogonal residual, head and MLP permutations, circuits."""
    opts = context.options
    tokens = active_tokens(context.task, opts.token_freqs)
    canon_a, aligner = glmc_weight_matching_states(model_a, model_b, opts.iterations, opts.residual, opts.mlp_cost,
                                                   tokens, None if opts.device == "auto" else opts.device)
    info = {"spaces": sorted(aligner.element), "vocab_rows_compared": None if tokens is None else len(tokens),
            "rounds": aligner.rounds}
    return finish(canon_a, aligner.state_b, opts.circuits, info)
