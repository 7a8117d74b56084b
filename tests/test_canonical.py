"""Canonical form, circuit form, per-head GL maps and width embedding (glmc.md section 9, U1, U2, U4)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from lmcbench.symmetry.canonical import (
    RMSNorm,
    apply_head_gl,
    canonicalize,
    circuit_form,
    embed_like,
    embed_width,
    norm_eps,
)
from lmcbench.symmetry import (
    SymmetrySpec,
    layout_for,
    random_invertible,
    random_orthogonal,
    sample_element,
    spec_for,
)
from lmcbench.symmetry import apply as apply_element
from test_symmetry import (
    CASES,
    VIT_CONFIGS,
    Case,
    assert_changed,
    assert_same,
    changed_params,
    loaded,
    tiny_gpt2,
    tiny_vit,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("case", CASES)
def test_canonicalize_preserves_function(case: Case):
    model = case.make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tied = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    canon = canonicalize(model)
    assert_same(case.run(model), case.run(canon))
    # input untouched (values and tying)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [n for n, _ in model.named_parameters(remove_duplicate=False)] == tied
    # structure: no LayerNorm left, nothing shared, every writer zero-mean along the residual
    assert not any(isinstance(m, nn.LayerNorm) for m in canon.modules())
    names = [n for n, _ in canon.named_parameters(remove_duplicate=False)]
    assert len(names) == len(list(canon.parameters()))
    layout = layout_for(canon)
    assert all(isinstance(canon.get_submodule(s.module), RMSNorm) for s in layout.norms)
    state = canon.state_dict()
    for w in layout.writers:
        assert state[w.param].sum(w.axis).abs().max() < 1e-4, w.param


def test_rmsnorm_equals_layernorm_on_zero_mean_input():
    x = torch.randn(4, 5, 16)
    x = x - x.mean(-1, keepdim=True)
    ln = nn.LayerNorm(16, eps=1e-5, elementwise_affine=False)
    assert torch.allclose(RMSNorm(16, eps=1e-5)(x), ln(x), atol=1e-6)
    assert not torch.allclose(RMSNorm(16)(x + 1), ln(x + 1), atol=1e-2)


def test_canonicalize_guards_zero_gain():
    """gamma = 0 on some coordinates: beta/gamma is clamped, the function is still preserved."""
    model = tiny_vit(**VIT_CONFIGS[0])
    with torch.no_grad():
        model.blocks[0].norm1.weight[:3] = 0.0
        model.norm.weight[-2:] = 0.0
    x = torch.randn(2, 3, 8, 8)
    canon = canonicalize(model, eps_guard=1e-6)
    with torch.no_grad():
        y, y2 = model(x), canon(x)
    assert torch.isfinite(y2).all()
    assert_same(y, y2)


def test_canonicalize_rejects_canonical_model():
    with pytest.raises(ValueError):
        canonicalize(canonicalize(tiny_vit(**VIT_CONFIGS[0])))


@pytest.mark.parametrize("case", CASES)
def test_circuit_form_preserves_function(case: Case):
    model = canonicalize(case.make())
    circuits = circuit_form(model)
    ref = case.run(model)
    assert_same(ref, case.run(circuits))
    layout = layout_for(circuits)
    assert all(a.head_dim == layout.width + 1 and a.qkv_bias is not None for a in layout.attentions)
    # the circuit-form model is still a stock module with a valid spec: orthogonal residual maps hold
    spec = spec_for(circuits).subset("residual")
    element = sample_element(spec, torch.Generator().manual_seed(1))
    assert_same(ref, case.run(loaded(circuits, apply_element(spec, circuits.state_dict(), element))))


@pytest.mark.parametrize("case", CASES[:1] + CASES[-1:])
def test_rebuilt_modules_own_their_tensors(case: Case):
    """circuit_form and embed_width build the new module on the meta device and hand it tensors
    (`_load`): every tensor is materialised, trainable like the source's, and none is shared with
    the source (changing the source in place leaves the new module's function unchanged)."""
    model = canonicalize(case.make())
    for new in (circuit_form(model), embed_width(model, layout_for(model).width + 8,
                                                  generator=torch.Generator().manual_seed(4))):
        tensors = [*new.parameters(), *new.buffers()]
        assert not any(t.is_meta for t in tensors)
        assert all(p.requires_grad for p in new.parameters())
        before = case.run(new)
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
        assert_same(before, case.run(new))


def test_circuit_form_of_layernorm_model():
    """Circuits only touch attention, so they work before canonicalisation too."""
    model = tiny_vit(**VIT_CONFIGS[1])
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_same(model(x), circuit_form(model)(x))


@pytest.mark.parametrize("case", CASES)
def test_apply_head_gl_preserves_function(case: Case):
    model = case.make()
    layout = layout_for(model)
    blocks, heads, d = len(layout.attentions), layout.attentions[0].num_heads, layout.attentions[0].head_dim
    gen = torch.Generator().manual_seed(2)
    A = torch.stack([torch.stack([random_invertible(d, gen) for _ in range(heads)]) for _ in range(blocks)])
    B = torch.stack([torch.stack([random_invertible(d, gen) for _ in range(heads)]) for _ in range(blocks)])
    state = apply_head_gl(model.state_dict(), spec_for(model), A, B)
    assert changed_params(model.state_dict(), state)
    assert_same(case.run(model), case.run(loaded(model, state)))
    # negative control: A on Q without A^{-T} on K changes the attention scores
    spec = spec_for(model)
    qk = spec["blocks.0.head0.qk"]
    only_q = replace(qk, actions=tuple(a for a in qk.actions if a.role == "writer"))
    broken = apply_element(SymmetrySpec((only_q,)), model.state_dict(), {qk.name: A[0, 0]})
    assert_changed(case.run(model), case.run(loaded(model, broken)))


@pytest.mark.parametrize("case", CASES)
def test_embed_width_preserves_function(case: Case):
    model = canonicalize(case.make())
    n = layout_for(model).width
    m = n + 16
    native = canonicalize(model_at_width(case, m))
    wide = embed_width(model, m, generator=torch.Generator().manual_seed(3), hidden=layout_for(native).mlps[0].hidden)
    assert_same(case.run(model), case.run(wide))
    layout = layout_for(wide)
    assert layout.width == m and layout.residual_group == "orth"
    assert norm_eps(wide) == norm_eps(model)  # exact with the same eps (writers carry the 1/c)
    # same shapes as a natively built width-m model in canonical form, so the two can be interpolated
    assert {k: v.shape for k, v in wide.state_dict().items()} == {k: v.shape for k, v in native.state_dict().items()}
    assert embed_like(model, native, generator=torch.Generator().manual_seed(3)).state_dict().keys() == \
        native.state_dict().keys()


def model_at_width(case: Case, width: int) -> nn.Module:
    """The case's architecture built natively at `width` (same heads, depth, MLP ratio)."""
    model = case.make()
    if hasattr(model, "config"):
        cfg = model.config.to_dict()
        inner = cfg["n_inner"] and cfg["n_inner"] * width // cfg["n_embd"]
        return type(model)(type(model.config)(**{**cfg, "n_embd": width, "n_inner": inner})).eval()
    blk = model.blocks[0]
    return type(model)(img_size=8, patch_size=4, num_classes=5, embed_dim=width, depth=len(model.blocks),
                       num_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc1.out_features / model.embed_dim,
                       qkv_bias=blk.attn.qkv.bias is not None, global_pool=model.global_pool).eval()


def test_embed_width_with_given_map_and_rejections():
    model = canonicalize(tiny_vit(**VIT_CONFIGS[0]))
    O = random_orthogonal(32, torch.Generator().manual_seed(4), m=40)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert_same(model(x), embed_width(model, 40, O)(x))
    with pytest.raises(ValueError):  # LayerNorm model: not orthogonally invariant
        embed_width(tiny_vit(**VIT_CONFIGS[0]), 48)
    with pytest.raises(ValueError):  # narrower than the model
        embed_width(model, 24)
    with pytest.raises(ValueError):  # not divisible by the 2 heads
        embed_width(model, 41)


def gpt2_pair_official_widths(n_inner: int = 64):
    """GLMC's width-heterogeneous setting in miniature: D = 32 vs 64, the same n_inner and heads."""
    return [tiny_gpt2(n_layer=2, n_embd=width, n_head=4, n_inner=n_inner, tie_word_embeddings=False)
            for width in (32, 64)]


def test_embed_like_official_width_setting_has_an_exact_narrow_endpoint():
    """D = 32 into D = 64 with equal MLP widths (the official n_inner setting): the embedded narrow
    model, run in the wide model's canonical module (its eps), computes the narrow model's logits."""
    narrow, wide = gpt2_pair_official_widths()
    canon_wide = canonicalize(wide)
    embedded = embed_like(canonicalize(narrow), canon_wide, generator=torch.Generator().manual_seed(2))
    x = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = narrow(x).logits.double()
        y0 = functional_call(canon_wide, embedded.state_dict(), (x,), strict=True).logits.double()
    rel = ((y0 - y).abs().max() / y.abs().max()).item()
    assert rel <= 1e-5, f"λ=0 endpoint differs from the narrow model by {rel:.3g} (relative)"
    assert layout_for(embedded).mlps[0].hidden == layout_for(canon_wide).mlps[0].hidden == 64


def test_embed_like_rejects_pairs_it_cannot_embed_exactly():
    narrow, wide = gpt2_pair_official_widths()
    canon_narrow, canon_wide = canonicalize(narrow), canonicalize(wide)
    with pytest.raises(ValueError, match="narrower than the model"):  # target MLP narrower than the model's
        embed_width(canon_narrow, 64, hidden=32)
    other_eps = canonicalize(gpt2_pair_official_widths()[0])
    for site in layout_for(other_eps).norms:
        other_eps.get_submodule(site.module).eps = 1e-6
    with pytest.raises(ValueError, match="eps differ"):
        embed_like(other_eps, canon_wide)
    with pytest.raises(ValueError, match="head count"):
        embed_like(canonicalize(tiny_vit(**VIT_CONFIGS[0])), canonicalize(tiny_vit(**VIT_CONFIGS[1])))


def test_canonicalize_refuses_to_drop_a_final_gain_without_reader():
    """A ViT with num_classes=0 outputs the final norm itself: its gain has nowhere to go."""
    model = tiny_vit(**VIT_CONFIGS[0])
    model.reset_classifier(0)
    assert isinstance(model.head, nn.Identity) and not torch.all(model.norm.weight == 1)
    with pytest.raises(ValueError, match="no reader to fold into"):
        canonicalize(model)
