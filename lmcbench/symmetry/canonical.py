"""Function-preserving reparameterisations that GLMC works in (glmc.md sections 1 and 2).

* `canonicalize`: LayerNorm -> gain-free RMSNorm, gains folded into the readers, residual writers
  mean-centred. Afterwards the residual stream admits orthogonal maps.
* `circuit_form`: every head rebuilt from its QK and OV circuits (head size D+1), which quotients
  out the per-head GL(d) symmetries.
* `apply_head_gl`: the explicit per-head GL(d) maps that keep the head size.
* `embed_width` / `embed_like`: exact embedding of a width-N canonical model into width M > N
  (and a wider MLP), with the same norm eps.

All take a model and return a new one (or a new state dict); inputs are never modified. They are
driven by the architecture's `Layout`, so they work for every registered architecture.
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmcbench.symmetry.groups import apply, random_orthogonal
from lmcbench.symmetry.spec import AttentionSite, Layout, MlpSite, SymmetrySpec, spec_from_layout
from lmcbench.symmetry.specs import architecture_for, layout_for


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) + bias: no gain, because canonicalisation folds it into the readers.

    [official code] `utils.RMSNorm` (there with a weight pinned to 1). Without a gain,
    RMSNorm(x O) = RMSNorm(x) O for orthogonal O, with the bias mapped to bias O.
    (torch.nn.RMSNorm has a gain and no bias, hence this module.)
    """

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) + self.bias

    def extra_repr(self) -> str:
        return f"{self.bias.shape[0]}, eps={self.eps}"


def _along(v: Tensor, axis: int, ndim: int) -> Tensor:
    """v shaped to broadcast along `axis` of an ndim-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def _untie(model: nn.Module) -> None:
    """Give every parameter registered under several names its own copy (HF ties lm_head to wte)."""
    seen = set()
    for name, p in list(model.named_parameters(remove_duplicate=False)):
        if id(p) in seen:
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, nn.Parameter(p.detach().clone(), p.requires_grad))
        seen.add(id(p))
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False  # keep HF from re-tying on save/load


def _rebuild(model: nn.Module, layout: Layout, width: int, head_dim: int, qkv_bias: bool,
             hidden: int | None = None) -> nn.Module:
    """A module of `model`'s family with new shapes (MLP width `hidden`, default: the same) and the
    same kind of norms with the same eps, on the meta device: nothing is allocated or randomly
    initialised (at GPT-2 small that initialisation took 3 of circuit_form's 6 CPU-s), since the
    caller gives it every tensor (`_load`)."""
    hidden = layout.mlps[0].hidden if hidden is None else hidden
    with torch.device("meta"):
        new = architecture_for(model).resize(model, width, head_dim, qkv_bias, hidden)
        for site in layout.norms:
            old = model.get_submodule(site.module)
            if isinstance(old, RMSNorm):
                _set_module(new, site.module, RMSNorm(width, eps=old.eps))
            else:
                new.get_submodule(site.module).eps = old.eps
    return new.train(model.training)


def _load(new: nn.Module, sd: dict[str, Tensor], source: nn.Module) -> nn.Module:
    """`new` (from `_rebuild`) holding the tensors of `sd` as they are, except those sharing memory
    with `source`'s (the same tensor or a view of one), which are cloned: the modules never alias."""
    shared = {t.untyped_storage().data_ptr() for t in source.state_dict().values()}
    new.load_state_dict({k: v.clone() if v.untyped_storage().data_ptr() in shared else v for k, v in sd.items()},
                        assign=True)
    left = [name for name, t in [*new.named_parameters(), *new.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(new).__name__}: {left[0]} is not in its state dict (a non-persistent buffer?); "
                           "lmcbench.symmetry.canonical._rebuild cannot rebuild this module")
    return new


def norm_eps(model: nn.Module) -> list[float]:
    """The eps of every norm site, in layout order."""
    return [model.get_submodule(site.module).eps for site in layout_for(model).norms]


def _state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# LayerNorm -> RMSNorm


def canonicalize(model: nn.Module, eps_guard: float = 1e-6) -> nn.Module:
    """GLMC's canonical form [official code `GPTMerger._absorb`]: for every LayerNorm,
    fold gamma into its readers (W -> diag(gamma) W on the input axis) and keep beta as
    beta / gamma in a gain-free RMSNorm with the same eps; right-multiply every residual writer
    (embeddings, positions, cls token, patch embedding, attention and MLP output weights and
    biases) by M = I - 11^T/D. The stream is then zero-mean, so LayerNorm(x) = RMSNorm(x) exactly.
    Tied lm_head/wte are untied (the reader gets gamma, the writer gets M).

    Guard for |gamma| ~ 0 (choice: beta/gamma with a clamp, as in the official code, rather than
    folding beta into the readers' biases, which would create biases the architecture lacks, e.g.
    lm_head): gamma is replaced by sign(gamma) max(|gamma|, eps_guard) in both the reader fold
    and the division. This is exact when no |gamma| < eps_guard; otherwise the error on a reader
    input coordinate is at most eps_guard |normalised x_j| [inferred].
    """
    layout = layout_for(model)
    if not all(site.centres for site in layout.norms):
        raise ValueError("canonicalize expects a LayerNorm at every norm site (is it already canonical?)")
    # not cloned: every tensor canonicalisation changes is replaced by a new one; the few it keeps are
    # cloned at the end (peak memory: the model, its canonical state and one writer's temporaries)
    original = {k: v.detach() for k, v in model.state_dict().items()}
    sd = dict(original)
    for w in layout.writers:   # x M = x - mean(x) along the residual axis (not a D x D product), in float64
        t = sd[w.param].double()
        sd[w.param] = (t - t.mean(w.axis, keepdim=True)).to(sd[w.param].dtype)
    like = sd[layout.writers[0].param]
    norms = {}
    for site in layout.norms:
        norm = model.get_submodule(site.module)
        if site.weight and not site.readers and not torch.all(sd[site.weight] == 1):
            raise ValueError(f"canonicalize: the gain of {site.module!r} has no reader to fold into (its output is "
                             "the model's output, e.g. a timm ViT with num_classes=0), so the canonical form cannot "
                             "keep it; give the model a head (num_classes > 0) or a unit gain")
        gamma = sd.pop(site.weight) if site.weight else like.new_ones(layout.width)
        beta = sd[site.bias] if site.bias else like.new_zeros(layout.width)
        gamma = torch.where(gamma < 0, -1.0, 1.0).to(gamma) * gamma.abs().clamp_min(eps_guard)
        for r in site.readers:
            sd[r.param] = sd[r.param] * _along(gamma, r.axis, sd[r.param].ndim)
        sd[f"{site.module}.bias"] = beta / gamma
        norms[site.module] = RMSNorm(layout.width, eps=norm.eps, device=gamma.device, dtype=gamma.dtype)
    sd = {k: v.clone() if k in original and v is original[k] else v for k, v in sd.items()}
    # the module is copied without its parameters (memo: meta placeholders), which then take sd's tensors
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad) for p in model.parameters()}
    new = copy.deepcopy(model, memo)
    _untie(new)
    for path, norm in norms.items():
        _set_module(new, path, norm)
    new.load_state_dict(sd, assign=True)
    return new


# ---------------------------------------------------------------------------------------------
# Attention circuits


def _rows(t: Tensor, axis: int) -> Tensor:
    """A stored 2-D weight in the row-vector convention (in, out), given its output axis."""
    return t.movedim(axis, -1)


def head_factors(sd: dict[str, Tensor], att: AttentionSite) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-head factors with the bias as an extra input coordinate x~ = [x, 1], row-vector convention:
    W~_Q, W~_K, W~_V (each (H, D+1, d)) and W_O (H, d, D). Their products are the circuits."""
    h_n, d = att.num_heads, att.head_dim
    w = _rows(sd[att.qkv.param], att.qkv.axis)                            # (D, 3 H d)
    b = sd[att.qkv_bias] if att.qkv_bias else w.new_zeros(w.shape[1])
    q, k, v = torch.cat([w, b[None]], 0).unflatten(1, (3, h_n, d)).permute(1, 2, 0, 3)  # each (H, D+1, d)
    w_o = sd[att.proj.param].movedim(att.proj.axis, 0).unflatten(0, (h_n, d))  # (H, d, D)
    return q, k, v, w_o


def head_circuits(sd: dict[str, Tensor], att: AttentionSite) -> tuple[Tensor, Tensor]:
    """Per-head circuits with the bias as an extra input coordinate x~ = [x, 1], row-vector convention:
    QK_h = W~_Q,h W~_K,h^T (H, D+1, D+1) and OV_h = W~_V,h W_O,h (H, D+1, D). Differentiable."""
    q, k, v, w_o = head_factors(sd, att)
    return q @ k.transpose(1, 2), v @ w_o


def _circuit_params(sd: dict[str, Tensor], att: AttentionSite, new: AttentionSite, width: int) -> None:
    """Rewrite one attention site of `sd` (keys of `att`) into circuit form (keys of `new`,
    which has a qkv bias even where `att` has none)."""
    h_n, e = att.num_heads, width + 1
    qk, ov = head_circuits(sd, att)
    qk = qk * math.sqrt(e / att.head_dim)
    eye = torch.eye(e, dtype=qk.dtype, device=qk.device).expand(h_n, e, e)
    fused = torch.stack([qk, eye, eye]).permute(2, 0, 1, 3).flatten(1)      # (D+1, 3 H (D+1))
    sd[new.qkv.param] = fused[:width].movedim(-1, new.qkv.axis).contiguous()
    sd[new.qkv_bias] = fused[width].contiguous()
    sd[new.proj.param] = ov.flatten(0, 1).movedim(0, new.proj.axis).contiguous()


def circuit_state_dict(sd: dict[str, Tensor], layout: Layout, circuit_layout: Layout) -> dict[str, Tensor]:
    """`sd` (a model with `layout`) rewritten into the circuit form whose layout is `circuit_layout`.
    Pure tensor code, so gradients flow through it (learned matching interpolates circuits)."""
    out = dict(sd)
    for att, new_att in zip(layout.attentions, circuit_layout.attentions, strict=True):
        _circuit_params(out, att, new_att, layout.width)
    return out


def circuit_form(model: nn.Module) -> nn.Module:
    """Every head h rebuilt from its circuits, with head size D+1 [official code
    `project_to_attn_circuits`]. With x~ = [x, 1] (bias as an extra input coordinate):
    QK_h = W~_Q,h W~_K,h^T (D+1 x D+1), OV_h = W~_V,h W_O,h (D+1 x D) in row-vector convention;
    new Q-map = QK_h sqrt((D+1)/d) (compensates the 1/sqrt(head_dim) score scaling), K- and V-maps
    = identity on x~ (weight [I; 0], bias e_{D+1}), O-map = OV_h. Attention weights sum to 1, so
    the V bias reaches the output as b_V W_O exactly as before.

    The result is a stock module of the same family: timm's `Attention` takes `attn_head_dim`
    (the blocks get a new one); HF's GPT2Attention derives head_dim from n_embd, so its head_dim,
    split_size, scaling and Conv1Ds are set directly (as the official code does).
    """
    layout = layout_for(model)
    width = layout.width
    new = _rebuild(model, layout, width, width + 1, qkv_bias=True)
    return _load(new, circuit_state_dict({k: v.detach() for k, v in model.state_dict().items()}, layout,
                                         layout_for(new)), model)


def apply_head_gl(state_dict: dict[str, Tensor], spec: SymmetrySpec, A: Tensor, B: Tensor) -> dict[str, Tensor]:
    """Per-head invertible maps that keep the head size: for block i, head h,
    W_Q -> W_Q A, W_K -> W_K A^{-T} (QK circuit unchanged) with A = A[i, h], and
    W_V -> W_V B, W_O -> B^{-1} W_O (OV circuit unchanged) with B = B[i, h]; biases of Q, K, V
    follow their weights [inferred, glmc.md section 2]. A, B: (blocks, heads, d, d)."""
    element = {}
    for i in range(A.shape[0]):
        for h in range(A.shape[1]):
            element[f"blocks.{i}.head{h}.qk"] = A[i, h]
            element[f"blocks.{i}.head{h}.ov"] = B[i, h]
    return apply(spec, state_dict, element)


# ---------------------------------------------------------------------------------------------
# Width embedding


def _pad_units(t: Tensor, axis: int, units: tuple[int, ...], size: int, new_size: int,
               scale: Tensor | None = None) -> Tensor:
    """Zero-pad each run of `size` coordinates along `axis` to `new_size` (runs indexed by `units`),
    optionally scaling the runs by `scale` (broadcast over `units`)."""
    x = t.movedim(axis, -1).unflatten(-1, (*units, size))
    x = F.pad(x, (0, new_size - size))
    if scale is not None:
        x = x * scale.to(x)
    return x.flatten(-1 - len(units)).movedim(-1, axis).contiguous()


def _pad_attention(sd: dict[str, Tensor], att: AttentionSite, new: AttentionSite) -> None:
    """Heads keep their count and grow d -> d' with zeros; q is scaled by sqrt(d'/d) so the
    scores, divided by sqrt(d') instead of sqrt(d), are unchanged."""
    h_n, d, d2 = att.num_heads, att.head_dim, new.head_dim
    q_scale = torch.tensor([math.sqrt(d2 / d), 1.0, 1.0]).reshape(3, 1, 1)
    sd[att.qkv.param] = _pad_units(sd[att.qkv.param], att.qkv.axis, (3, h_n), d, d2, q_scale)
    if att.qkv_bias:
        sd[att.qkv_bias] = _pad_units(sd[att.qkv_bias], 0, (3, h_n), d, d2, q_scale)
    sd[att.proj.param] = _pad_units(sd[att.proj.param], att.proj.axis, (h_n,), d, d2)


def _pad_mlp(sd: dict[str, Tensor], mlp: MlpSite, new: MlpSite) -> None:
    """Extra hidden units with zero in- and out-weights contribute nothing, whatever act(0) is."""
    sd[mlp.fc1.param] = _pad_units(sd[mlp.fc1.param], mlp.fc1.axis, (), mlp.hidden, new.hidden)
    if mlp.fc1_bias:
        sd[mlp.fc1_bias] = _pad_units(sd[mlp.fc1_bias], 0, (), mlp.hidden, new.hidden)
    sd[mlp.fc2.param] = _pad_units(sd[mlp.fc2.param], mlp.fc2.axis, (), mlp.hidden, new.hidden)


def embed_width(model: nn.Module, width: int, O: Tensor | None = None,
                generator: torch.Generator | None = None, hidden: int | None = None) -> nn.Module:
    """Exact embedding of a width-N canonical model into a stock model of width M = `width` and MLP
    width `hidden` (default: the model's own, as in the official setting D = 256 -> 512 with n_inner
    1024 in both). The result computes exactly what `model` computes, with the same norm eps.

    Residual, with O (N x M, O O^T = I_N; Haar-random if None) and c = sqrt(N/M): writers
    W -> W O / c, readers W -> c O^T W, RMSNorm offsets beta -> beta O / c, eps unchanged.
    The stream x O / c has the mean square of x over its N coordinates (|x|^2 / (c^2 M) = |x|^2 / N),
    so every RMSNorm outputs (norm(x) + beta) O / c with the same eps, and readers see the old input.
    [inferred] The official `expand` keeps the writers and scales eps by N/M instead; in a
    shared template (the wide model's module, whose eps both endpoints use) that makes the λ = 0
    endpoint differ from the narrow model (max |Δlogit| 7e-3 measured). Scaling the writers keeps it
    exact; `embed_like` checks that the two models' eps agree.

    Heads and MLP [inferred; the official code keeps d and F and patches HF's attention attributes]:
    the result has exactly the shapes of a natively built width-M model (same head count, head
    size M/H, MLP width `hidden`), so it can be interpolated with one. Heads are zero-padded
    d -> M/H with q scaled by sqrt(d'/d); hidden units are zero-padded to `hidden` (zero in- and
    out-weights contribute nothing whatever the activation), which needs `hidden` >= the model's.
    """
    layout = layout_for(model)
    if layout.residual_group != "orth":
        raise ValueError("embed_width needs a canonical model (gain-free RMSNorms); call canonicalize first")
    n = layout.width
    if any(att.num_heads * att.head_dim != n for att in layout.attentions):
        raise ValueError("embed_width expects heads of size width/num_heads (embed before circuit_form)")
    if width < n or any(width % att.num_heads for att in layout.attentions):
        raise ValueError(f"width {width} must be >= {n} and divisible by the head count")
    hidden = layout.mlps[0].hidden if hidden is None else hidden
    if any(mlp.hidden > hidden for mlp in layout.mlps):
        raise ValueError(f"MLP width {hidden} is narrower than the model's {max(m.hidden for m in layout.mlps)}: "
                         "zero-padding can only widen (merging units would need semi-permutations)")
    O = random_orthogonal(n, generator, m=width) if O is None else O
    c = math.sqrt(n / width)
    sd = apply(spec_from_layout(layout).subset("residual"), _state(model), {"residual": O})
    for w in layout.writers:
        sd[w.param] = sd[w.param] / c
    for site in layout.norms:
        for r in site.readers:
            sd[r.param] = sd[r.param] * c
        sd[site.bias] = sd[site.bias] / c
    qkv_bias = all(att.qkv_bias is not None for att in layout.attentions)
    new = _rebuild(model, layout, width, width // layout.attentions[0].num_heads, qkv_bias, hidden)
    target = layout_for(new)
    for att, new_att in zip(layout.attentions, target.attentions, strict=True):
        _pad_attention(sd, att, new_att)
    for mlp, new_mlp in zip(layout.mlps, target.mlps, strict=True):
        _pad_mlp(sd, mlp, new_mlp)
    return _load(new, sd, model)


def embed_like(model: nn.Module, like: nn.Module, O: Tensor | None = None,
               generator: torch.Generator | None = None) -> nn.Module:
    """`model` (canonical, narrow) embedded exactly into the shapes of `like` (canonical, wide):
    its width and MLP width. Clear errors when that cannot give `like`'s exact shapes or norm eps
    (different depth or head count, a wider MLP, another eps), since the pair is then interpolated
    in `like`'s module."""
    layout, target = layout_for(model), layout_for(like)
    if len(layout.attentions) != len(target.attentions) or any(
            a.num_heads != b.num_heads for a, b in zip(layout.attentions, target.attentions)):
        raise ValueError("the narrow model needs the wide model's depth and head count (heads are padded, not split)")
    if norm_eps(model) != norm_eps(like):
        raise ValueError(f"the two models' norm eps differ ({norm_eps(model)[0]} vs {norm_eps(like)[0]}): the "
                         "interpolation uses the wide model's modules, so the narrow endpoint would not be exact")
    embedded = embed_width(model, target.width, O, generator, hidden=target.mlps[0].hidden)
    shapes = {k: tuple(v.shape) for k, v in embedded.state_dict().items()}
    shapes_like = {k: tuple(v.shape) for k, v in like.state_dict().items()}
    if shapes != shapes_like:
        bad = sorted(k for k in shapes_like.keys() | shapes.keys() if shapes_like.get(k) != shapes.get(k))[:3]
        raise ValueError(f"after embedding into width {target.width} the shapes still differ at {bad}")
    return embedded
