"""Symmetry specs and group actions on real timm ViTs and HF GPT-2 (glmc.md section 9, U3).

Every symmetry class must leave the outputs unchanged; negative controls show the checks can fail.
The tiny-model factories here are shared with test_canonical.py.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import perturb
from lmcbench.symmetry.canonical import canonicalize
from lmcbench.symmetry import (
    Action,
    Space,
    SymmetrySpec,
    apply,
    layout_for,
    perm_matrix,
    random_invertible,
    random_orthogonal,
    random_semiperm,
    sample_element,
    spec_for,
)

RTOL = 1e-4  # max abs diff <= RTOL * max(1, output scale)

VIT_CONFIGS = [
    dict(depth=1, embed_dim=32, num_heads=2, mlp_ratio=4.0, qkv_bias=True, global_pool="token"),
    dict(depth=3, embed_dim=48, num_heads=4, mlp_ratio=2.0, qkv_bias=False, global_pool="avg"),
    dict(depth=3, embed_dim=32, num_heads=4, mlp_ratio=2.0, qkv_bias=True, global_pool="avg"),
    dict(depth=1, embed_dim=48, num_heads=2, mlp_ratio=4.0, qkv_bias=False, global_pool="token"),
]
GPT2_CONFIGS = [
    dict(n_layer=1, n_embd=32, n_head=2, n_inner=None, tie_word_embeddings=True),
    dict(n_layer=3, n_embd=48, n_head=4, n_inner=96, tie_word_embeddings=False),
    dict(n_layer=3, n_embd=32, n_head=4, n_inner=None, tie_word_embeddings=False),
    dict(n_layer=1, n_embd=48, n_head=2, n_inner=96, tie_word_embeddings=True),
]


def tiny_vit(**cfg) -> VisionTransformer:
    return perturb(VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=5, **cfg)).eval()


def tiny_gpt2(**cfg) -> GPT2LMHeadModel:
    config = GPT2Config(vocab_size=40, n_positions=16, bos_token_id=0, eos_token_id=0, **cfg)
    return perturb(GPT2LMHeadModel(config)).eval()


@dataclass
class Case:
    """A model factory and a fixed input; `run` returns the output tensor (logits)."""

    make: Callable[[], nn.Module]
    inputs: torch.Tensor

    def run(self, model: nn.Module) -> torch.Tensor:
        with torch.no_grad():
            out = model(self.inputs)
        return getattr(out, "logits", out)


def _cases() -> list:
    gen = torch.Generator().manual_seed(0)
    vit_x = torch.randn(2, 3, 8, 8, generator=gen)
    gpt_x = torch.randint(0, 40, (2, 7), generator=gen)
    cases = [pytest.param(Case(lambda c=c: tiny_vit(**c), vit_x),
                          id=f"vit-d{c['depth']}-w{c['embed_dim']}-h{c['num_heads']}-r{c['mlp_ratio']:g}"
                             f"-qkvb{int(c['qkv_bias'])}-{c['global_pool']}") for c in VIT_CONFIGS]
    cases += [pytest.param(Case(lambda c=c: tiny_gpt2(**c), gpt_x),
                           id=f"gpt2-d{c['n_layer']}-w{c['n_embd']}-h{c['n_head']}-i{c['n_inner']}"
                              f"-{'tied' if c['tie_word_embeddings'] else 'untied'}") for c in GPT2_CONFIGS]
    return cases


CASES = _cases()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def max_diff(y: torch.Tensor, y2: torch.Tensor) -> tuple[float, float]:
    """(max abs difference, tolerance scale max(1, max |y|))."""
    return (y2 - y).abs().max().item(), max(1.0, y.abs().max().item())


def assert_same(y: torch.Tensor, y2: torch.Tensor) -> None:
    diff, scale = max_diff(y, y2)
    assert diff <= RTOL * scale, f"outputs changed: max abs diff {diff:.3g} (scale {scale:.3g})"


def assert_changed(y: torch.Tensor, y2: torch.Tensor) -> None:
    diff, scale = max_diff(y, y2)
    assert diff > 100 * RTOL * scale, f"outputs should change measurably: max abs diff {diff:.3g}"


def loaded(model: nn.Module, state: dict) -> nn.Module:
    new = copy.deepcopy(model)
    new.load_state_dict(state)
    return new


def changed_params(before: dict, after: dict) -> list[str]:
    return [k for k in before if before[k].shape != after[k].shape or not torch.allclose(before[k], after[k])]


# ---------------------------------------------------------------------------------------------
# U3: every class leaves the function unchanged

ALL = ("perm", "semiperm", "orth", "invertible")
CLASSES = {  # name: (on the canonical model?, space patterns, element classes)
    "residual-perm": (False, ("residual",), ("perm",)),
    "mlp-perm": (False, ("blocks.*.mlp",), ("perm",)),
    "head-perm": (False, ("blocks.*.heads",), ("perm",)),
    "head-gl-qk-ov": (False, ("blocks.*.head*.qk", "blocks.*.head*.ov"), ("invertible",)),
    "all-layernorm": (False, ("*",), ALL),
    "residual-orth": (True, ("residual",), ("orth",)),
    "all-canonical": (True, ("*",), ALL),
}


@pytest.mark.parametrize("cls", list(CLASSES))
@pytest.mark.parametrize("case", CASES)
def test_random_element_preserves_function(case: Case, cls: str):
    canonical, patterns, classes = CLASSES[cls]
    model = case.make()
    ref = case.run(model)
    target = canonicalize(model) if canonical else model
    spec = spec_for(target).subset(*patterns)
    element = sample_element(spec, torch.Generator().manual_seed(1), classes=classes)
    assert set(element) == set(spec.names) and element
    if cls == "residual-orth":
        assert element["residual"].shape == (spec["residual"].dim,) * 2  # a matrix, not an index
    before = target.state_dict()
    state = apply(spec, before, element)
    assert changed_params(before, state), "the element must actually move parameters"
    assert_same(ref, case.run(loaded(target, state)))


def test_residual_space_groups():
    model = tiny_gpt2(**GPT2_CONFIGS[0])
    assert spec_for(model)["residual"].group == "perm"  # LayerNorm: permutations only
    spec = spec_for(canonicalize(model))
    assert spec["residual"].group == "orth"
    assert not any(a.role == "scale" for a in spec["residual"].actions)


def test_spec_layout_matches_modules():
    model = tiny_vit(**VIT_CONFIGS[1])  # depth 3, width 48, 4 heads, ratio 2, no qkv bias, avg pool
    spec = spec_for(model)
    assert len(spec) == 1 + 3 * (1 + 2 * 4 + 1)
    assert spec["blocks.2.mlp"].dim == 96 and spec["blocks.2.heads"].dim == 4
    assert spec["blocks.2.heads"].block == 12
    ov = spec["blocks.1.head3.ov"]
    assert {(a.param, a.axis, a.role, a.offset) for a in ov.actions} == {
        ("blocks.1.attn.qkv.weight", 0, "writer", 2 * 48 + 3 * 12),
        ("blocks.1.attn.proj.weight", 1, "reader", 3 * 12),
    }
    readers = {a.param for a in spec["residual"].actions if a.role == "reader"}
    assert "head.weight" in readers and "blocks.0.attn.qkv.weight" in readers
    assert {"fc_norm.weight", "fc_norm.bias"} <= {a.param for a in spec["residual"].actions}
    relu = VisionTransformer(img_size=8, patch_size=4, num_classes=5, embed_dim=32, depth=1, num_heads=2,
                             act_layer=nn.ReLU)
    assert spec_for(relu)["blocks.0.mlp"].group == "semiperm"
    with pytest.raises(NotImplementedError):
        spec_for(nn.Linear(2, 2))


@pytest.mark.parametrize("tied", [True, False])
def test_layout_vocab_rows_are_the_token_axes(tied: bool):
    """`Layout.vocab` names the parameters with one row per token (GPT-2's wte and lm_head), which
    the token-frequency filter of weight matching restricts; a ViT has none."""
    model = tiny_gpt2(**{**GPT2_CONFIGS[0], "tie_word_embeddings": tied})
    layout, state = layout_for(model), model.state_dict()
    assert {r.param for r in layout.vocab} == {"transformer.wte.weight", "lm_head.weight"}
    assert all(state[r.param].shape[r.axis] == model.config.vocab_size for r in layout.vocab)
    assert layout_for(tiny_vit(**VIT_CONFIGS[0])).vocab == ()


# ---------------------------------------------------------------------------------------------
# negative controls: the checks above can fail


@pytest.mark.parametrize("case", CASES)
def test_orthogonal_residual_breaks_layernorm_model(case: Case):
    """LayerNorm centres and rescales per coordinate: an orthogonal residual map is not a symmetry
    until the model is canonicalised."""
    model = case.make()
    spec = spec_for(model)
    res = spec["residual"]
    O = random_orthogonal(res.dim, torch.Generator().manual_seed(2))
    with pytest.raises(ValueError):
        apply(spec, model.state_dict(), {"residual": O})  # the spec refuses it
    naive = replace(res, group="orth", actions=tuple(a for a in res.actions if a.role != "scale"))
    state = apply(SymmetrySpec((naive,)), model.state_dict(), {"residual": O})
    assert_changed(case.run(model), case.run(loaded(model, state)))


@pytest.mark.parametrize("case", CASES)
def test_wrong_axis_or_missing_action_changes_outputs(case: Case):
    model = case.make()
    ref = case.run(model)
    spec = spec_for(model)
    heads = spec["blocks.0.heads"]
    idx = torch.roll(torch.arange(heads.dim), 1)
    # the output projection's heads live on its input axis; acting on the output axis is wrong
    wrong = tuple(replace(a, axis=1 - a.axis) if a.role == "reader" else a for a in heads.actions)
    state = apply(SymmetrySpec((replace(heads, actions=wrong),)), model.state_dict(), {heads.name: idx})
    assert_changed(ref, case.run(loaded(model, state)))
    # forgetting the reader of the MLP units breaks the permutation symmetry
    mlp = spec["blocks.0.mlp"]
    partial = replace(mlp, actions=tuple(a for a in mlp.actions if a.role != "reader"))
    perm = torch.roll(torch.arange(mlp.dim), 1)
    state = apply(SymmetrySpec((partial,)), model.state_dict(), {mlp.name: perm})
    assert_changed(ref, case.run(loaded(model, state)))


# ---------------------------------------------------------------------------------------------
# semi-permutations (ReLU unit splitting, glmc.md section 2)


def _mlp(act: nn.Module, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(6, hidden), act, nn.Linear(hidden, 3))


MLP_SPEC = SymmetrySpec((Space("hidden", "semiperm", 8, (
    Action("0.weight", 0, "writer"), Action("0.bias", 0, "writer"), Action("2.weight", 1, "reader"))),))


@pytest.mark.parametrize("act, preserved", [(nn.ReLU(), True), (nn.GELU(), False)], ids=["relu", "gelu"])
def test_semipermutation_splits_relu_units(act: nn.Module, preserved: bool):
    small = perturb(_mlp(act, 8))
    x = torch.randn(16, 6)
    element = sample_element(MLP_SPEC, torch.Generator().manual_seed(3), semiperm_ratio=2.0)
    S = element["hidden"]
    assert S.shape == (8, 16) and bool((S >= 0).all())
    assert torch.allclose(S @ (S != 0).float().T, torch.eye(8), atol=1e-6)  # S T = I
    wide = _mlp(act, 16)
    wide.load_state_dict(apply(MLP_SPEC, small.state_dict(), element))
    with torch.no_grad():
        (assert_same if preserved else assert_changed)(small(x), wide(x))


# ---------------------------------------------------------------------------------------------
# apply: purity, element forms, validation, gradients


def test_apply_does_not_mutate_input():
    model = tiny_gpt2(**GPT2_CONFIGS[1])
    spec = spec_for(canonicalize(model))
    state = canonicalize(model).state_dict()
    snapshot = {k: v.clone() for k, v in state.items()}
    new = apply(spec, state, sample_element(spec, torch.Generator().manual_seed(4)))
    assert all(torch.equal(state[k], snapshot[k]) for k in state)
    assert changed_params(state, new)


def test_permutation_matrix_equals_index():
    model = tiny_vit(**VIT_CONFIGS[0])
    spec = spec_for(model).subset("residual", "blocks.*.heads", "blocks.*.mlp")
    idx = sample_element(spec, torch.Generator().manual_seed(5), classes=("perm",))
    mats = {k: perm_matrix(v) for k, v in idx.items()}
    a, b = apply(spec, model.state_dict(), idx), apply(spec, model.state_dict(), mats)
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_apply_validates_elements():
    spec = spec_for(tiny_vit(**VIT_CONFIGS[0]))
    state = dict(tiny_vit(**VIT_CONFIGS[0]).state_dict())
    with pytest.raises(ValueError):  # not a permutation
        apply(spec, state, {"residual": torch.zeros(32, dtype=torch.long)})
    with pytest.raises(ValueError):  # general matrix on a permutation space
        apply(spec, state, {"blocks.0.mlp": random_invertible(128)})
    canon = spec_for(canonicalize(tiny_vit(**VIT_CONFIGS[0])))
    with pytest.raises(ValueError):  # not orthogonal
        apply(canon, state, {"residual": random_invertible(32)})
    with pytest.raises(KeyError):
        apply(spec, state, {"nope": torch.arange(3)})


def test_apply_is_differentiable():
    """Learned matching pushes gradients through apply into the group element."""
    model = canonicalize(tiny_gpt2(**GPT2_CONFIGS[0]))
    spec = spec_for(model).subset("residual")
    O = random_orthogonal(32, torch.Generator().manual_seed(6)).requires_grad_(True)
    state = apply(spec, model.state_dict(), {"residual": O})
    sum(v.pow(2).sum() for v in state.values() if v.requires_grad).backward()
    assert O.grad is not None and torch.isfinite(O.grad).all()


def test_random_elements():
    gen = torch.Generator().manual_seed(7)
    O = random_orthogonal(6, gen, m=9)
    assert torch.allclose(O @ O.T, torch.eye(6), atol=1e-6)
    G = random_invertible(8, gen, cond=4.0)
    s = torch.linalg.svdvals(G)
    assert s.max() / s.min() <= 4.0 + 1e-4
    S = random_semiperm(5, 12, gen)
    assert torch.equal((S != 0).sum(0), torch.ones(12, dtype=torch.long))
    assert torch.allclose(S.sum(1), torch.ones(5))
    assert torch.equal(perm_matrix(torch.tensor([2, 0, 1])) @ torch.eye(3), torch.eye(3)[:, [2, 0, 1]])
