"""GLMC weight matching against the whole group it claims (glmc.md sections 2, 3.1; issue 10).

B = g·A for a random element g of every class at once: an orthogonal residual map, head
permutations, a per-head GL(d) map on every QK and every OV circuit, MLP permutations. GLMC weight
matching must undo it: in the circuit form (where interpolation merges circuits, so the per-head
gauge is quotiented out) the interpolation midpoint computes A's logits and the loss barrier is 0.
Shapes are not used by other tests: odd head counts, with and without qkv bias, tied and untied
GPT-2, token and average pooling, widths 30-45, 1-2 blocks, 3-5 heads.

ReLU MLPs also admit semi-permutations (a unit split into copies with incoming weights scaled by
α_k, Σ α_k = 1). A split changes the MLP width, so that plant relates a split model A to a narrower
B = g·C of the same C; GELU MLPs admit permutations only [official code].
"""
from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import perturb
from lmcbench.symmetry.canonical import canonicalize, embed_like, embed_width
from lmcbench.data import Dataset
from lmcbench.matchers import MATCHERS, MatchContext
from lmcbench.matchers.universe import universe_matching
from lmcbench.matchers.weight_matching import active_tokens, glmc_weight_matching_states
from lmcbench.symmetry import apply, layout_for, random_semiperm, sample_element, spec_for
from lmcbench.tasks import LanguageModelingTask
from test_matchers import (
    assert_same_function,
    family_of,
    inputs_for,
    loaded,
    loss_path,
    outputs,
    run,
    teacher_task,
    tiny_gpt2,
    tiny_vit,
)

SHAPES = {  # id: (builder, kwargs)
    "vit-d1-w30-h3-token": (tiny_vit, dict(depth=1, width=30, heads=3, mlp_ratio=2.0, qkv_bias=True, pool="token")),
    "vit-d2-w45-h5-avg-noqkvb": (tiny_vit, dict(depth=2, width=45, heads=5, mlp_ratio=1.6, qkv_bias=False,
                                                 pool="avg")),
    "gpt2-d2-w36-h3-tied": (tiny_gpt2, dict(depth=2, width=36, heads=3, inner=60, tied=True)),
    "gpt2-d1-w40-h5-untied": (tiny_gpt2, dict(depth=1, width=40, heads=5, inner=88, tied=False)),
}
CLASSES = ("perm", "orth", "invertible")  # residual O(D), heads and MLP S_n, QK/OV GL(d) per head


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def gauge_planted_pair(shape: str, seed: int = 11):
    """(canonical A, B = g·A, g) with g drawn from every class each space admits."""
    build, kwargs = SHAPES[shape]
    a = canonicalize(build(0, **kwargs))
    spec = spec_for(a)
    element = sample_element(spec, torch.Generator().manual_seed(seed), classes=CLASSES)
    kinds = {name.rsplit(".", 1)[-1]: g for name, g in element.items()}
    assert element["residual"].is_floating_point() and "qk" in kinds and "ov" in kinds and "mlp" in kinds
    for name, g in element.items():  # every permutation really moves
        if not g.is_floating_point() and torch.equal(g, torch.arange(len(g))):
            element[name] = torch.roll(g, 1)
    return a, loaded(a, apply(spec, a.state_dict(), element)), element


def assert_path_computes_a(alignment, a, x) -> None:
    """The aligned pair is A twice: midpoint logits equal A's (≤ 1e-5 relative) and the path has no barrier."""
    mid = {k: (v + alignment.state_b[k]) / 2 if v.is_floating_point() else v for k, v in alignment.state_a.items()}
    y_a, y_mid = run(a, x), outputs(alignment.template, mid, x)
    rel = ((y_mid - y_a).abs().max() / y_a.abs().max()).item()
    assert rel <= 1e-5, f"midpoint logits differ from A's by {rel:.3g} (relative)"
    barrier, spread = loss_path(alignment, teacher_task(a), [0.0, 0.25, 0.5, 0.75, 1.0])
    assert abs(barrier) <= 1e-6 and spread <= 1e-6, (barrier, spread)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_glmc_weight_matching_recovers_the_whole_group(shape: str):
    a, b, planted = gauge_planted_pair(shape)
    x = inputs_for(family_of(a))
    assert_same_function(run(a, x), run(b, x))  # the plant is a symmetry
    alignment = MATCHERS["glmc_weight_matching"](a, b, MatchContext(None, {}, 0))
    assert alignment.form == "circuit"

    # the element found is the inverse of the planted one, GL gauge and all
    _, aligner = glmc_weight_matching_states(a, b)
    o_found, o_true = aligner.element["residual"].double(), planted["residual"].double()
    assert (o_found - o_true.T).norm() <= 1e-5
    for name, idx in planted.items():
        if name.endswith(("heads", "mlp")):
            assert torch.equal(aligner.element[name], torch.argsort(idx)), name

    # the midpoint of the circuit-form path computes A
    assert_path_computes_a(alignment, a, x)


@pytest.mark.parametrize("shape", ["vit-d1-w30-h3-token", "gpt2-d1-w40-h5-untied"])
def test_per_head_gauge_changes_no_step(shape: str):
    """The same B with and without a per-head GL(d) gauge on QK and OV: every assignment and the
    residual map agree, on a pair that is not a planted copy (B is another random model)."""
    build, kwargs = SHAPES[shape]
    a, b = canonicalize(build(0, **kwargs)), canonicalize(build(1, **kwargs))
    spec = spec_for(b)
    gauge = sample_element(spec.subset("blocks.*.head*.qk", "blocks.*.head*.ov"),
                           torch.Generator().manual_seed(5), classes=("invertible",))
    b_gauged = loaded(b, apply(spec, b.state_dict(), gauge))
    found, found_gauged = (glmc_weight_matching_states(a, m, iterations=4)[1].element for m in (b, b_gauged))
    assert found.keys() == found_gauged.keys()
    for name in found:
        if found[name].is_floating_point():
            assert torch.allclose(found[name], found_gauged[name], atol=1e-5), name
        else:
            assert torch.equal(found[name], found_gauged[name]), name


def test_permutation_residual_mode_with_gauge():
    """residual="perm": a residual permutation with head perms, per-head GL and MLP perms is recovered."""
    build, kwargs = SHAPES["gpt2-d2-w36-h3-tied"]
    a = canonicalize(build(0, **kwargs))
    spec = spec_for(a)
    element = sample_element(spec, torch.Generator().manual_seed(3), classes=("perm", "invertible"))
    assert not element["residual"].is_floating_point()
    b = loaded(a, apply(spec, a.state_dict(), element))
    _, aligner = glmc_weight_matching_states(a, b, residual="perm")
    for name, idx in element.items():
        if not idx.is_floating_point():
            assert torch.equal(aligner.element[name], torch.argsort(idx)), name


def test_universe_averages_circuits_not_gauged_weights():
    """Three copies of one model, each moved by a random element of the whole group (GL gauges
    included): the universe is A's function, because it averages circuits. Averaging canonical
    weights would mix the copies' per-head bases (mean of W_Q G_i and of W_K G_i^-T is another QK)."""
    a, b, _ = gauge_planted_pair("gpt2-d2-w36-h3-tied", seed=21)
    _, c, _ = gauge_planted_pair("gpt2-d2-w36-h3-tied", seed=22)
    template, aligned, universe = universe_matching([a, b, c], rounds=2, iterations=5)
    x = inputs_for("gpt2")
    assert_same_function(run(a, x), run(universe, x), rtol=1e-5)
    for state in aligned:
        assert_same_function(run(a, x), outputs(template, state, x), rtol=1e-5)
    # negative control: the canonical-weight mean of the same aligned states is not A
    mean = {k: sum(sd[k] for sd in aligned) / 3 if v.is_floating_point() else v for k, v in aligned[0].items()}
    with pytest.raises(AssertionError):
        assert_same_function(run(a, x), outputs(template, mean, x), rtol=1e-3)


def test_token_frequency_filter_ignores_rows_of_unseen_tokens():
    """Vocabulary rows of tokens absent from the train split do not move the residual map: B is a
    planted copy of A whose unseen-token rows (embedding and unembedding) are replaced by noise; with
    the filter the planted map is recovered exactly, without it the noise pulls it off."""
    a, b, planted = gauge_planted_pair("gpt2-d1-w40-h5-untied", seed=8)
    seen = torch.arange(0, 40, 2)
    tokens = seen.repeat(3)  # only even ids occur in training
    task = LanguageModelingTask(Dataset("even-ids", "text", tokens, tokens, tokens), block_size=4)
    assert torch.equal(active_tokens(task), seen) and active_tokens(task, enabled=False) is None
    unseen = torch.arange(1, 40, 2)
    state = b.state_dict()
    gen = torch.Generator().manual_seed(0)
    for key in ("transformer.wte.weight", "lm_head.weight"):
        state[key][unseen] = 3 * torch.randn(len(unseen), state[key].shape[1], generator=gen)
    b = loaded(b, state)
    errors = {}
    for tokens in (active_tokens(task), None):
        _, aligner = glmc_weight_matching_states(a, b, iterations=3, tokens=tokens)
        errors[tokens is None] = (aligner.element["residual"].double() - planted["residual"].double().T).norm().item()
    assert errors[False] <= 1e-5 and errors[True] > 1e-2, errors


def test_width_heterogeneous_pair_with_different_mlp_widths():
    """GLMC §5's official setting in miniature: residual widths 30 vs 60 with one MLP width (the
    narrow model's MLP ratio is twice the wide one's). The narrow model is embedded exactly, weight
    matching aligns it, and the path's endpoints are exactly the wide and the narrow model."""
    narrow = tiny_gpt2(0, depth=2, width=30, heads=3, inner=64, tied=False)
    wide = tiny_gpt2(1, depth=2, width=60, heads=3, inner=64, tied=False)
    canon_wide = canonicalize(wide)
    embedded = embed_like(canonicalize(narrow), canon_wide, generator=torch.Generator().manual_seed(0))
    alignment = MATCHERS["glmc_weight_matching"](canon_wide, embedded, MatchContext(None, {}, 0))
    x = inputs_for("gpt2")
    assert_same_function(run(wide, x), outputs(alignment.template, alignment.state_a, x), rtol=1e-5)
    assert_same_function(run(narrow, x), outputs(alignment.template, alignment.state_b, x), rtol=1e-5)


def relu_vit(seed: int) -> nn.Module:
    return perturb(VisionTransformer(img_size=8, patch_size=4, in_chans=3, num_classes=5, depth=1, embed_dim=36,
                                     num_heads=3, mlp_ratio=2.0, qkv_bias=True, global_pool="token",
                                     act_layer=nn.ReLU), seed)


def relu_gpt2(seed: int) -> nn.Module:
    config = GPT2Config(vocab_size=40, n_positions=16, n_embd=30, n_layer=2, n_head=5, n_inner=40,
                        activation_function="relu", tie_word_embeddings=False, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    return perturb(GPT2LMHeadModel(config), seed)


@pytest.mark.parametrize("build", [relu_vit, relu_gpt2], ids=["vit-relu-d1-w36-h3", "gpt2-relu-d2-w30-h5"])
def test_glmc_weight_matching_recovers_a_semipermutation(build):
    """A = C with every ReLU MLP split 1.5× wider (a random semi-permutation), B = g·C for g from every
    other class (orthogonal residual, head perms, per-head GL on QK and OV, MLP perms): weight matching
    splits B onto A's units and the circuit-form path is A all along."""
    c = canonicalize(build(0))
    spec, layout = spec_for(c), layout_for(c)
    gen = torch.Generator().manual_seed(31)
    hidden = round(1.5 * layout.mlps[0].hidden)
    split = {s.name: random_semiperm(s.dim, hidden, gen) for s in spec.subset("blocks.*.mlp")}
    wide = embed_width(c, layout.width, O=torch.eye(layout.width), hidden=hidden)  # C's module, MLPs `hidden` wide
    a = loaded(wide, apply(spec, c.state_dict(), split))
    element = sample_element(spec, gen, classes=CLASSES)
    assert all(not element[name].is_floating_point() for name in split)  # ReLU MLP spaces draw permutations here
    b = loaded(c, apply(spec, c.state_dict(), element))
    x = inputs_for(family_of(c))
    assert_same_function(run(c, x), run(a, x))
    assert_same_function(run(c, x), run(b, x))

    alignment = MATCHERS["glmc_weight_matching"](a, b, MatchContext(None, {}, 0))
    assert_path_computes_a(alignment, a, x)


def test_mlp_widths_that_cannot_be_split_are_an_error():
    """GELU MLPs of different widths: no semi-permutation exists, so weight matching says what to do."""
    a = canonicalize(tiny_gpt2(0, depth=1, width=30, heads=3, inner=60, tied=False))
    b = canonicalize(tiny_gpt2(1, depth=1, width=30, heads=3, inner=40, tied=False))
    with pytest.raises(ValueError, match="embed the narrower model first"):
        glmc_weight_matching_states(a, b)
