"""Declarative description of a model's weight-space symmetries.

Two layers, both plain frozen data:

* A `Layout` says *where* things live in one model: which parameters write into the residual
  stream, which norms feed which readers, how each fused attention projection and each MLP is laid
  out. Architecture modules (`specs/vit.py`, `specs/gpt2.py`) read it off the module tree; the
  shared `prenorm_blocks` helper does the part every pre-norm transformer has in common.
* A `SymmetrySpec` says *how* groups act: a collection of named `Space`s, each with a group class
  and the list of parameter axes (`Action`s) it moves. `spec_from_layout` derives it.

This is git-re-basin's permutation spec (parameter -> axes) generalised with mergekit-style named
spaces and head structure, as suggested in anchors.md section 5.1 [inferred]. Group elements are
plain dicts space name -> tensor; `groups.apply` turns them into parameter transforms.
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Iterator, Literal

from torch import nn

Group = Literal["perm", "semiperm", "orth", "invertible"]
Role = Literal["writer", "reader", "offset", "scale"]
GROUPS: tuple[Group, ...] = ("perm", "semiperm", "orth", "invertible")


@dataclass(frozen=True)
class Action:
    """One parameter axis, or a contiguous slice of it, that a space acts on.

    role (in the row-vector convention of glmc.md section 1, G the group element):
      "writer"  the parameter produces vectors of the space:   coordinates x -> x G
      "reader"  the parameter consumes them:                   x -> x G^{-T}
      "offset"  a norm bias living in the space; moves like a writer, but is kept separate because
                mean-centring skips it and the width embedding rescales it
      "scale"   a per-coordinate gain (LayerNorm gamma); only permutations preserve it
    offset: first coordinate of the slice along `axis`; the slice is `space.size` long. Non-zero
      for the blocks of a fused projection (timm `qkv`, GPT-2 `c_attn`: [q | k | v] x heads x head_dim).
    """

    param: str
    axis: int
    role: Role
    offset: int = 0


@dataclass(frozen=True)
class Space:
    """A named vector space inside the network and the group acting on it.

    group: the most general class under which the model's function is exactly invariant; every
      smaller class is admitted too (see `groups.ADMITS`).
    dim: number of units the group acts on (heads for a heads space, coordinates otherwise).
    block: coordinates per unit, contiguous along each acted-on axis (head_dim for a heads space).
    """

    name: str
    group: Group
    dim: int
    actions: tuple[Action, ...]
    block: int = 1

    @property
    def size(self) -> int:
        return self.dim * self.block


@dataclass(frozen=True)
class SymmetrySpec:
    """All symmetry spaces of one model, in the order `groups.apply` composes them."""

    spaces: tuple[Space, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.spaces]
        if len(set(names)) != len(names):
            raise ValueError("space names must be unique")

    def __iter__(self) -> Iterator[Space]:
        return iter(self.spaces)

    def __len__(self) -> int:
        return len(self.spaces)

    def __getitem__(self, name: str) -> Space:
        for space in self.spaces:
            if space.name == name:
                return space
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.spaces]

    def subset(self, *patterns: str) -> SymmetrySpec:
        """The spaces whose name matches any glob pattern, e.g. `subset("blocks.*.mlp")`."""
        keep = [s for s in self.spaces if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
        return SymmetrySpec(tuple(keep))


# ---------------------------------------------------------------------------------------------
# Layout: where the residual stream, the norms, the attention and the MLPs live in one model.


@dataclass(frozen=True)
class Ref:
    """A parameter and the axis of it that a site uses."""

    param: str
    axis: int


@dataclass(frozen=True)
class NormSite:
    """A norm in front of residual readers (pre-norm transformers read the stream only via norms)."""

    module: str               # dotted module path
    weight: str | None        # gain parameter (LayerNorm gamma); None for a gain-free RMSNorm
    bias: str | None
    centres: bool             # subtracts the mean (LayerNorm): breaks orthogonal invariance
    readers: tuple[Ref, ...]  # weights reading the norm output; axis = their input axis


@dataclass(frozen=True)
class AttentionSite:
    qkv: Ref                  # fused q|k|v projection; axis = output axis, [q | k | v] x heads x head_dim
    qkv_bias: str | None
    proj: Ref                 # output projection; axis = input axis, heads x head_dim
    num_heads: int
    head_dim: int


@dataclass(frozen=True)
class MlpSite:
    fc1: Ref                  # axis = output (hidden) axis
    fc1_bias: str | None
    fc2: Ref                  # axis = input (hidden) axis
    hidden: int
    splittable: bool          # ReLU: positively homogeneous, so units may be split (semi-permutations)


@dataclass(frozen=True)
class Layout:
    width: int
    writers: tuple[Ref, ...]  # parameters added into the residual stream; axis = residual axis
    norms: tuple[NormSite, ...]
    attentions: tuple[AttentionSite, ...]  # one per block, same order as `mlps`
    mlps: tuple[MlpSite, ...]
    vocab: tuple[Ref, ...] = ()  # residual parameters with one row per token (axis = the token axis)

    @property
    def residual_group(self) -> Group:
        """Orthogonal once every norm is a gain-free RMSNorm (the canonical form of glmc.md section 1):
        RMSNorm(x O) = RMSNorm(x) O. LayerNorm (centring, per-coordinate gain) only commutes with
        permutations, which permute gamma and beta along [inferred]."""
        rms = all(not n.centres and n.weight is None for n in self.norms)
        return "orth" if rms else "perm"


@dataclass(frozen=True)
class BlockNames:
    """Module paths inside one pre-norm block: x + proj(attn(norm1 x)), then x + fc2(act(fc1(norm2 x)))."""

    norm1: str
    attn: str
    qkv: str
    proj: str
    norm2: str
    fc1: str
    fc2: str
    act: str


def _bias_name(model: nn.Module, path: str) -> str | None:
    return f"{path}.bias" if getattr(model.get_submodule(path), "bias", None) is not None else None


def norm_site(model: nn.Module, path: str, readers: list[Ref]) -> NormSite:
    norm = model.get_submodule(path)
    weight = f"{path}.weight" if getattr(norm, "weight", None) is not None else None
    return NormSite(path, weight, _bias_name(model, path), isinstance(norm, nn.LayerNorm), tuple(readers))


def prenorm_blocks(model: nn.Module, prefix: str, names: BlockNames, in_axis: int, out_axis: int):
    """Writers, norms, attention and MLP sites of every block under `prefix` (shared by all archs).

    in_axis/out_axis: which axis of a stored linear weight is its input/output (nn.Linear 1/0,
    HF Conv1D 0/1). Returns (writers, norms, attentions, mlps) as lists.
    """
    writers, norms, attentions, mlps = [], [], [], []
    for i, block in enumerate(model.get_submodule(prefix)):
        p = f"{prefix}.{i}"
        w = {k: f"{p}.{getattr(names, k)}" for k in ("qkv", "proj", "fc1", "fc2")}
        norms.append(norm_site(model, f"{p}.{names.norm1}", [Ref(f"{w['qkv']}.weight", in_axis)]))
        norms.append(norm_site(model, f"{p}.{names.norm2}", [Ref(f"{w['fc1']}.weight", in_axis)]))
        for out in ("proj", "fc2"):
            writers.append(Ref(f"{w[out]}.weight", out_axis))
            if (bias := _bias_name(model, w[out])) is not None:
                writers.append(Ref(bias, 0))
        attn = block.get_submodule(names.attn)
        attentions.append(AttentionSite(
            Ref(f"{w['qkv']}.weight", out_axis), _bias_name(model, w["qkv"]),
            Ref(f"{w['proj']}.weight", in_axis), attn.num_heads, attn.head_dim))
        fc1 = model.get_submodule(w["fc1"])
        hidden = fc1.weight.shape[out_axis]
        act = block.get_submodule(names.act)
        mlps.append(MlpSite(Ref(f"{w['fc1']}.weight", out_axis), _bias_name(model, w["fc1"]),
                            Ref(f"{w['fc2']}.weight", in_axis), hidden, isinstance(act, nn.ReLU)))
    return writers, norms, attentions, mlps


# ---------------------------------------------------------------------------------------------
# Layout -> spaces


def _residual_space(layout: Layout) -> Space:
    actions = [Action(r.param, r.axis, "writer") for r in layout.writers]
    for norm in layout.norms:
        if norm.weight is not None:
            actions.append(Action(norm.weight, 0, "scale"))
        if norm.bias is not None:
            actions.append(Action(norm.bias, 0, "offset"))
        actions += [Action(r.param, r.axis, "reader") for r in norm.readers]
    return Space("residual", layout.residual_group, layout.width, tuple(actions))


def _qkv_slice(att: AttentionSite, offset: int, role: Role) -> list[Action]:
    acts = [Action(att.qkv.param, att.qkv.axis, role, offset)]
    if att.qkv_bias is not None:
        acts.append(Action(att.qkv_bias, 0, role, offset))
    return acts


def _attention_spaces(prefix: str, att: AttentionSite) -> list[Space]:
    """Heads (permutation of whole heads) and per-head QK / OV (GL(head_dim)) spaces.

    Per head h with A in GL(d): W_Q -> W_Q A (writer), W_K -> W_K A^{-T} (reader), so Q K^T is
    unchanged; with B: W_V -> W_V B (writer), W_O -> B^{-1} W_O (reader) [inferred, glmc.md section 2].
    """
    h_n, d = att.num_heads, att.head_dim
    width = h_n * d  # of each of q, k, v
    heads = Space(
        f"{prefix}.heads", "perm", h_n,
        tuple(_qkv_slice(att, 0, "writer") + _qkv_slice(att, width, "writer")
              + _qkv_slice(att, 2 * width, "writer") + [Action(att.proj.param, att.proj.axis, "reader")]),
        block=d)
    qk = [Space(f"{prefix}.head{h}.qk", "invertible", d,
                tuple(_qkv_slice(att, h * d, "writer") + _qkv_slice(att, width + h * d, "reader")))
          for h in range(h_n)]
    ov = [Space(f"{prefix}.head{h}.ov", "invertible", d,
                tuple(_qkv_slice(att, 2 * width + h * d, "writer")
                      + [Action(att.proj.param, att.proj.axis, "reader", h * d)]))
          for h in range(h_n)]
    return [heads, *qk, *ov]


def _mlp_space(name: str, mlp: MlpSite) -> Space:
    acts = [Action(mlp.fc1.param, mlp.fc1.axis, "writer")]
    if mlp.fc1_bias is not None:
        acts.append(Action(mlp.fc1_bias, 0, "writer"))
    acts.append(Action(mlp.fc2.param, mlp.fc2.axis, "reader"))
    return Space(name, "semiperm" if mlp.splittable else "perm", mlp.hidden, tuple(acts))


def spec_from_layout(layout: Layout) -> SymmetrySpec:
    """Spaces `residual`, then per block i: `blocks.i.heads`, `blocks.i.head{h}.qk`,
    `blocks.i.head{h}.ov`, `blocks.i.mlp`. Names are the same for every architecture."""
    spaces = [_residual_space(layout)]
    for i, (att, mlp) in enumerate(zip(layout.attentions, layout.mlps, strict=True)):
        spaces += _attention_spaces(f"blocks.{i}", att)
        spaces.append(_mlp_space(f"blocks.{i}.mlp", mlp))
    return SymmetrySpec(tuple(spaces))
