"""Matchers (glmc.md sections 2, 3 and 9: U5 planted recovery, U6 gradients).

Conventions under test: a matcher maps (model_a, model_b, MatchContext) to an `Alignment` whose
template, loaded with state_a, is A and, loaded with state_b, is B moved onto A by a symmetry.
Permutation elements are index tensors idx with x P = x[..., idx] (new unit j = old unit idx[j]);
so if B = apply(planted) then the element a matcher finds is the inverse: argsort(planted) for
permutations, Oᵀ for an orthogonal residual map O.

Tiny random models (gains of both signs, non-zero biases) and tiny synthetic datasets whose labels
are model A's own predictions, so that A fits them and a misaligned midpoint shows a real barrier
(every "barrier ≈ 0" check has a vanilla negative control on the same data).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.func import functional_call
from transformers import GPT2Config, GPT2LMHeadModel

from conftest import perturb
from lmcbench.barrier import barriers, interpolation_curve
from lmcbench.symmetry.canonical import RMSNorm, canonicalize
from lmcbench.checkpoints import FORMS
from lmcbench.data import Dataset
from lmcbench import methods
from lmcbench.matchers import MATCHERS, OPTIONS, Alignment, MatchContext, get_matcher, register
from lmcbench.matchers.assignment import action_rows, match_many, match_units, orthogonal_from_gram, unit_features
from lmcbench.matchers.learned import polar, ste_permutation
from lmcbench.matchers.weight_matching import glmc_weight_matching_states, permutation_weight_matching
from lmcbench.symmetry import apply, perm_matrix, random_orthogonal, sample_element, spec_for
from lmcbench.tasks import ClassificationTask, LanguageModelingTask

VOCAB, CTX, IMG, CLASSES = 40, 8, 8, 5
MATCHED = ("residual", "blocks.*.heads", "blocks.*.mlp")
EXPECTED_MATCHERS = {"vanilla", "perm_weight_matching", "activation_matching", "glmc_weight_matching",
                     "learned_full", "learned_perm_only", "learned_identity_init"}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------- models
def tiny_vit(seed: int = 0, depth=1, width=32, heads=2, mlp_ratio=2.0, qkv_bias=True, pool="token"):
    return perturb(VisionTransformer(img_size=IMG, patch_size=4, in_chans=3, num_classes=CLASSES, depth=depth,
                                     embed_dim=width, num_heads=heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                                     global_pool=pool), seed)


def tiny_gpt2(seed: int = 0, depth=1, width=32, heads=2, inner=None, tied=True):
    config = GPT2Config(vocab_size=VOCAB, n_positions=16, n_embd=width, n_layer=depth, n_head=heads, n_inner=inner,
                        tie_word_embeddings=tied, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=0, eos_token_id=0, pad_token_id=0)
    return perturb(GPT2LMHeadModel(config), seed)


MODELS = {  # id: (family, kwargs); depth 1-2, width 32-48, heads 2-4, tied and untied GPT-2
    "vit-d1-w32-h2-token": ("vit", dict(depth=1, width=32, heads=2, qkv_bias=True, pool="token")),
    "vit-d2-w48-h4-avg-noqkvb": ("vit", dict(depth=2, width=48, heads=4, qkv_bias=False, pool="avg")),
    "gpt2-d1-w32-h2-tied": ("gpt2", dict(depth=1, width=32, heads=2, tied=True)),
    "gpt2-d2-w48-h4-untied": ("gpt2", dict(depth=2, width=48, heads=4, inner=96, tied=False)),
}


def make(model_id: str, seed: int = 0) -> nn.Module:
    family, kwargs = MODELS[model_id]
    return (tiny_vit if family == "vit" else tiny_gpt2)(seed, **kwargs)


def family_of(model: nn.Module) -> str:
    return "gpt2" if isinstance(model, GPT2LMHeadModel) else "vit"


def inputs_for(family: str, n: int = 6, seed: int = 123) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if family == "vit":
        return torch.randn(n, 3, IMG, IMG, generator=gen)
    return torch.randint(0, VOCAB, (n, CTX), generator=gen)


def outputs(template: nn.Module, state: dict, x: torch.Tensor) -> torch.Tensor:
    """The template's function with `state` (as the barrier engine evaluates it), in eval mode."""
    model = copy.deepcopy(template).eval()
    with torch.no_grad():
        out = functional_call(model, state, (x,), tie_weights=False, strict=True)
    return getattr(out, "logits", out).double()


def run(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.eval()(x)
    return getattr(out, "logits", out).double()


def assert_same_function(y: torch.Tensor, y2: torch.Tensor, rtol: float = 1e-4) -> None:
    diff, scale = (y2 - y).abs().max().item(), max(1.0, y.abs().max().item())
    assert diff <= rtol * scale, f"outputs differ: max abs diff {diff:.3g} (scale {scale:.3g})"


def loaded(model: nn.Module, state: dict) -> nn.Module:
    new = copy.deepcopy(model)
    new.load_state_dict(state)
    return new.eval()


def float_keys(state: dict) -> list[str]:
    return [k for k, v in state.items() if v.is_floating_point()]


def rel_error(state: dict, ref: dict) -> float:
    """‖θ − θ_ref‖ / ‖θ_ref‖ over all floating-point entries, in float64."""
    assert state.keys() == ref.keys()
    assert all(state[k].shape == ref[k].shape for k in ref), "shapes differ"
    num = sum(((state[k].double() - ref[k].double()) ** 2).sum() for k in float_keys(ref))
    den = sum((ref[k].double() ** 2).sum() for k in float_keys(ref))
    return float((num / den).sqrt())


def max_abs_diff(state: dict, ref: dict) -> float:
    assert state.keys() == ref.keys()
    return max((state[k].double() - ref[k].double()).abs().max().item() for k in float_keys(ref))


def planted_pair(model_id: str, seed: int = 1, canonical: bool = True):
    """(A, B, element): B = T(A) for a random element of the residual (orthogonal on the canonical
    form, a permutation on LayerNorm models), head and MLP spaces."""
    a = make(model_id)
    if canonical:
        a = canonicalize(a)
    spec = spec_for(a).subset(*MATCHED)
    classes = ("perm", "orth") if canonical else ("perm",)
    element = sample_element(spec, torch.Generator().manual_seed(seed), classes=classes)
    assert set(element) == set(spec.names)
    for name, g in element.items():  # every space really moves (2 heads: a random perm is often identity)
        if not g.is_floating_point() and torch.equal(g, torch.arange(len(g))):
            element[name] = torch.roll(g, 1)
    if canonical:
        assert element["residual"].is_floating_point()  # a real rotation, not a permutation
    b = loaded(a, apply(spec_for(a), a.state_dict(), element))
    return a, b, element


def with_noise(model: nn.Module, rel: float, seed: int) -> nn.Module:
    """Gaussian noise of `rel` times each tensor's RMS on every float parameter."""
    gen = torch.Generator().manual_seed(seed)
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(rel * p.pow(2).mean().sqrt() * torch.randn(p.shape, generator=gen))
    return noisy


# --------------------------------------------------------------------------------------------- tasks
def teacher_task(model: nn.Module, n: int = 48, seed: int = 7):
    """A tiny synthetic task labelled by `model` itself (images: argmax class; text: a greedy
    continuation of random first tokens), the same tensors in every split."""
    gen = torch.Generator().manual_seed(seed)
    if family_of(model) == "vit":
        x = torch.randn(n, 3, IMG, IMG, generator=gen)
        y = run(model, x).argmax(-1)
        data = (x, y)
        return ClassificationTask(Dataset("teacher-images", "image", data, data, data))
    seqs = torch.randint(0, VOCAB, (n, 1), generator=gen)
    for _ in range(CTX - 1):
        seqs = torch.cat([seqs, run(model, seqs)[:, -1].argmax(-1, keepdim=True)], 1)
    tokens = torch.cat([seqs.flatten(), torch.randint(0, VOCAB, (1,), generator=gen)])
    return LanguageModelingTask(Dataset("teacher-text", "text", tokens, tokens, tokens), block_size=CTX)


def loss_path(alignment: Alignment, task, lambdas=None) -> tuple[float, float]:
    """(chord loss barrier, spread max − min of the loss along the path) on the test split."""
    curve = interpolation_curve(alignment.template, task, alignment.state_a, alignment.state_b, lambdas=lambdas,
                                splits=("test",), batch_size=64, device="cpu")
    table = barriers(curve)
    losses = curve.loc[curve["metric"] == "loss", "value"]
    return float(table.loc[table["metric"] == "loss", "barrier"].iloc[0]), float(losses.max() - losses.min())


# ============================================================================================= 1. GLMC WM
@pytest.mark.parametrize("model_id", list(MODELS))
def test_glmc_weight_matching_recovers_planted_orthogonal_map(model_id: str):
    """U5: B = T(A_c) with a random residual rotation, head and MLP permutations; GLMC weight
    matching brings B back onto A (canonical form, circuits off) and the barrier vanishes."""
    a, b, _ = planted_pair(model_id)
    assert rel_error(b.state_dict(), a.state_dict()) > 0.3  # the planted pair really is far apart
    alignment = MATCHERS["glmc_weight_matching"](a, b, MatchContext(None, {"circuits": False}, 0))
    assert type(alignment.template) is type(a) and alignment.form == "canonical"
    assert all(torch.equal(alignment.state_a[k], v) for k, v in a.state_dict().items())
    assert rel_error(alignment.state_b, alignment.state_a) <= 1e-4
    x = inputs_for(family_of(a))
    assert_same_function(run(a, x), outputs(alignment.template, alignment.state_b, x))

    task = teacher_task(a)
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    barrier, spread = loss_path(alignment, task, lambdas)
    assert abs(barrier) <= 1e-4 and spread <= 1e-4  # the whole path is model A
    # negative control: without alignment the path through the same pair leaves A's loss
    assert loss_path(MATCHERS["vanilla"](a, b, MatchContext()), task, lambdas)[1] > 1e-2


@pytest.mark.parametrize("model_id", ["vit-d1-w32-h2-token", "gpt2-d1-w32-h2-tied"])
def test_glmc_weight_matching_planted_in_circuit_form(model_id: str):
    """circuits=True (the default): the alignment lives in the circuit form of A; with a planted
    pair the two circuit states coincide and the barrier vanishes."""
    a, b, _ = planted_pair(model_id, seed=2)
    alignment = MATCHERS["glmc_weight_matching"](a, b, MatchContext(None, {}, 0))
    assert alignment.form == "circuit"
    assert alignment.state_a.keys() == a.state_dict().keys()
    assert any(alignment.state_a[k].shape != v.shape for k, v in a.state_dict().items())  # heads are D+1 wide
    assert rel_error(alignment.state_b, alignment.state_a) <= 1e-4
    x = inputs_for(family_of(a))
    assert_same_function(run(a, x), outputs(alignment.template, alignment.state_a, x))
    barrier, spread = loss_path(alignment, teacher_task(a), [0.0, 0.5, 1.0])
    assert abs(barrier) <= 1e-4 and spread <= 1e-4


@pytest.mark.parametrize("model_id", ["vit-d1-w32-h2-token", "gpt2-d2-w48-h4-untied"])
def test_glmc_weight_matching_recovers_element_under_noise(model_id: str):
    """The element found is the inverse of the planted one, also when B carries 1e-3 relative noise:
    residual O_found ≈ O_trueᵀ, head and MLP permutations exactly argsort(planted)."""
    a, b, planted = planted_pair(model_id, seed=3)
    for noise in (0.0, 1e-3):
        canon_a, aligner = glmc_weight_matching_states(a, with_noise(b, noise, seed=4) if noise else b)
        assert canon_a is a  # already canonical: used as is
        o_found, o_true = aligner.element["residual"].double(), planted["residual"].double()
        assert torch.allclose(o_found @ o_found.T, torch.eye(len(o_found), dtype=torch.float64), atol=1e-5)
        err = (o_found - o_true.T).norm().item()
        assert err <= (1e-5 if noise == 0 else 0.02), f"residual map off by {err:.3g} (noise {noise})"
        for name, idx in planted.items():
            if name != "residual":
                assert torch.equal(aligner.element[name], torch.argsort(idx)), name
        assert rel_error(aligner.state_b, a.state_dict()) <= (1e-5 if noise == 0 else 5e-3)


@pytest.mark.parametrize("model_id", ["vit-d2-w48-h4-avg-noqkvb", "gpt2-d1-w32-h2-tied"])
def test_glmc_weight_matching_canonicalises_layernorm_models(model_id: str):
    """LayerNorm inputs are canonicalised internally; a permuted copy lands on canonical A."""
    a, b, _ = planted_pair(model_id, seed=5, canonical=False)
    alignment = MATCHERS["glmc_weight_matching"](a, b, MatchContext(None, {"circuits": False}, 0))
    assert isinstance(alignment.template, type(a))
    assert any(isinstance(m, RMSNorm) for m in alignment.template.modules())
    assert not any(isinstance(m, nn.LayerNorm) for m in alignment.template.modules())
    assert rel_error(alignment.state_a, canonicalize(a).state_dict()) <= 1e-6
    assert rel_error(alignment.state_b, alignment.state_a) <= 1e-4


@pytest.mark.parametrize("model_id", ["vit-d1-w32-h2-token", "gpt2-d2-w48-h4-untied"])
def test_glmc_weight_matching_permutation_residual_mode(model_id: str):
    """residual="perm" (GLMC's permutations-only mode, used by learned_perm_only): a planted pure
    permutation of the canonical form is recovered as index tensors, the inverse of the planted ones."""
    a = canonicalize(make(model_id))
    spec = spec_for(a).subset(*MATCHED)
    planted = sample_element(spec, torch.Generator().manual_seed(9), classes=("perm",))
    assert not planted["residual"].is_floating_point()
    b = loaded(a, apply(spec, a.state_dict(), planted))
    _, aligner = glmc_weight_matching_states(a, b, iterations=3, residual="perm")
    assert not aligner.element["residual"].is_floating_point()
    for name, idx in planted.items():
        found = aligner.element.get(name, torch.arange(len(idx)))
        assert torch.equal(found, torch.argsort(idx)), name
    assert max_abs_diff(aligner.state_b, a.state_dict()) <= 1e-6


# ============================================================================================= 2. Re-Basin WM
@pytest.mark.parametrize("model_id", list(MODELS))
def test_perm_weight_matching_recovers_planted_permutation(model_id: str):
    a, b, planted = planted_pair(model_id, seed=6, canonical=False)
    alignment = MATCHERS["perm_weight_matching"](a, b, MatchContext(None, {}, 0))
    assert alignment.template is a and alignment.form == "original"
    assert max_abs_diff(alignment.state_b, a.state_dict()) <= 1e-6
    assert set(alignment.info["spaces"]) == set(planted)

    spec = spec_for(a).subset(*MATCHED)
    assert all(s.group == "perm" for s in spec)  # LayerNorm model: permutations only
    aligner = permutation_weight_matching(spec, a.state_dict(), b.state_dict(), seed=0)
    for name, idx in planted.items():
        assert torch.equal(aligner.element[name], torch.argsort(idx)), name
        assert torch.equal(idx[aligner.element[name]], torch.arange(len(idx)))

    # negative control: vanilla leaves the pair far apart in weight space
    vanilla = MATCHERS["vanilla"](a, b, MatchContext())
    assert rel_error(vanilla.state_b, vanilla.state_a) > 0.3


# ============================================================================================= 3. activations
@pytest.mark.parametrize("model_id", ["vit-d2-w48-h4-avg-noqkvb", "gpt2-d1-w32-h2-tied", "gpt2-d2-w48-h4-untied"])
def test_activation_matching_recovers_planted_permutation(model_id: str):
    a, b, _ = planted_pair(model_id, seed=8, canonical=False)
    task = teacher_task(a)
    alignment = MATCHERS["activation_matching"](a, b, MatchContext(task, {"examples": 32}, 0))
    assert rel_error(alignment.state_b, alignment.state_a) <= 1e-5
    assert rel_error(alignment.state_a, a.state_dict()) == 0.0


def test_activation_matching_needs_a_task():
    a = make("vit-d1-w32-h2-token")
    with pytest.raises(ValueError, match="task"):
        MATCHERS["activation_matching"](a, make("vit-d1-w32-h2-token", 1), MatchContext())


# ============================================================================================= 4. solvers
def test_match_units_recovers_planted_permutation_from_noisy_scores():
    gen = torch.Generator().manual_seed(10)
    n = 12
    feats_a = torch.randn(n, 20, generator=gen, dtype=torch.float64)
    perm = torch.randperm(n, generator=gen)
    feats_b = feats_a[perm] + 0.1 * torch.randn(n, 20, generator=gen, dtype=torch.float64)  # B unit j = A unit perm[j]
    idx = match_units(feats_a @ feats_b.T)
    assert idx.dtype == torch.long and torch.equal(idx.sort().values, torch.arange(n))
    assert torch.equal(idx, torch.argsort(perm))
    assert torch.allclose(feats_b[idx], feats_a, atol=0.5)  # aligned B unit j is A unit j
    # costs: minimise distances to get the same matching
    assert torch.equal(match_units(torch.cdist(feats_a, feats_b), maximize=False), idx)
    # ... while minimising the similarity is a different (worst-case) assignment
    score = feats_a @ feats_b.T
    worst = match_units(score, maximize=False)
    assert not torch.equal(worst, idx)
    rows, cols = linear_sum_assignment(score.numpy(), maximize=False)
    assert score[torch.arange(n), worst].sum().item() == pytest.approx(score.numpy()[rows, cols].sum())
    assert score[torch.arange(n), idx].sum() > score[torch.arange(n), worst].sum()


def test_match_units_is_optimal_by_brute_force():
    """Brute force on 5 units: the returned matching maximises Σ_i score[i, idx[i]]."""
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        score = torch.randn(5, 5, generator=gen, dtype=torch.float64)
        idx = match_units(score)
        best = max(sum(score[i, p[i]].item() for i in range(5)) for p in itertools.permutations(range(5)))
        assert score[torch.arange(5), idx].sum().item() == pytest.approx(best, abs=1e-12)


def test_match_many_solves_each_problem_as_alone():
    """Five problems of different shapes, three threads: each result is `match_units` of its score."""
    gen = torch.Generator().manual_seed(13)
    scores = [torch.randn(n, n, generator=gen, dtype=torch.float64) for n in (40, 7, 65, 1, 40)]
    for maximize in (True, False):
        expected = [match_units(s, maximize) for s in scores]
        for threads in (1, 3):
            found = match_many(scores, maximize, threads)
            assert [f.tolist() for f in found] == [e.tolist() for e in expected]
    assert len({tuple(e.tolist()) for e in expected}) == len(scores)  # distinct problems: order is checked


def test_procrustes_recovers_planted_orthogonal_map():
    gen = torch.Generator().manual_seed(12)
    d = 8
    feats_a = torch.randn(d, 30, generator=gen, dtype=torch.float64)
    O = random_orthogonal(d, gen, dtype=torch.float64)
    feats_b = O.T @ feats_a  # what a writer map x -> x O does to units-first features
    found = orthogonal_from_gram(feats_a @ feats_b.T)
    assert torch.allclose(found, O.T, atol=1e-10)
    assert torch.allclose(found.T @ feats_b, feats_a, atol=1e-10)
    assert torch.allclose(found @ found.T, torch.eye(d, dtype=torch.float64), atol=1e-12)
    # with noise the fit stays close to the truth
    noisy = feats_b + 1e-3 * torch.randn(d, 30, generator=gen, dtype=torch.float64)
    assert (orthogonal_from_gram(feats_a @ noisy.T) - O.T).norm() < 1e-2


def test_procrustes_on_residual_features_of_a_canonical_model():
    """unit_features of the residual move as Oᵀ F under x -> x O (writers, readers, norm offsets
    alike), so Procrustes on them returns exactly the inverse map."""
    a = canonicalize(make("gpt2-d1-w32-h2-tied"))
    spec = spec_for(a)
    O = random_orthogonal(32, torch.Generator().manual_seed(13), dtype=torch.float64)
    state_a = {k: v.double() for k, v in a.state_dict().items()}
    state_b = apply(spec.subset("residual"), state_a, {"residual": O})
    fa, fb = unit_features(spec["residual"], state_a), unit_features(spec["residual"], state_b)
    assert torch.allclose(fb, O.T @ fa, atol=1e-10)
    assert torch.allclose(orthogonal_from_gram(fa @ fb.T), O.T, atol=1e-8)


@pytest.mark.parametrize("space_name", ["residual", "blocks.0.heads", "blocks.1.heads", "blocks.1.mlp"])
def test_unit_features_rows_follow_a_permutation(space_name: str):
    a = make("vit-d2-w48-h4-avg-noqkvb")
    spec = spec_for(a)
    space = spec[space_name]
    if "heads" in space_name:
        assert space.block == 12  # heads are runs of head_dim coordinates
    idx = torch.randperm(space.dim, generator=torch.Generator().manual_seed(14))
    state_a = a.state_dict()
    state_b = apply(spec.subset(space_name), state_a, {space_name: idx})
    fa, fb = unit_features(space, state_a), unit_features(space, state_b)
    assert fa.shape[0] == space.dim and fa.dtype == torch.float64
    assert torch.equal(fb, fa[idx])
    assert not torch.equal(fb, fa)
    # per-parameter selection (a parameter with a single action here: the fused qkv weight holds
    # three blocks, one per q/k/v slice)
    param = next(a.param for a in space.actions if sum(b.param == a.param for b in space.actions) == 1)
    action = next(a for a in space.actions if a.param == param)
    assert torch.equal(unit_features(space, state_a, {param}), action_rows(space, action, state_a).double())
    with pytest.raises(ValueError):
        unit_features(space, state_a, {"no.such.param"})


# ============================================================================================= 5. gradients
def test_polar_gradcheck_and_orthogonality():
    gen = torch.Generator().manual_seed(15)
    n = 5
    u, v = random_orthogonal(n, gen, dtype=torch.float64), random_orthogonal(n, gen, dtype=torch.float64)
    s = torch.linspace(1.0, 3.0, n, dtype=torch.float64)  # distinct singular values: well-conditioned
    z = (u * s) @ v.T
    out = polar(z)
    assert torch.allclose(out @ out.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out, u @ v.T, atol=1e-12)  # the polar factor of U S Vᵀ
    sym = torch.randn(n, n, generator=gen, dtype=torch.float64)
    spd = sym @ sym.T + n * torch.eye(n, dtype=torch.float64)
    assert torch.allclose(polar(u @ spd), u, atol=1e-10)  # polar(O S) = O for S SPD
    assert torch.autograd.gradcheck(polar, (z.clone().requires_grad_(),), eps=1e-6, atol=1e-6)
    # and it really has a non-trivial derivative
    zz = z.clone().requires_grad_()
    (polar(zz) * torch.randn(n, n, generator=gen, dtype=torch.float64)).sum().backward()
    assert zz.grad.abs().max() > 1e-3


def _cycle_scores(n: int = 5, seed: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores with a clear optimum: a permutation that is not its own inverse (a 5-cycle)."""
    gen = torch.Generator().manual_seed(seed)
    cycle = torch.roll(torch.arange(n), 1)
    z = torch.randn(n, n, generator=gen, dtype=torch.float64)
    z[torch.arange(n), cycle] += 10.0
    return z, cycle


def _hungarian_matrix(z: torch.Tensor) -> torch.Tensor:
    rows, cols = linear_sum_assignment(z.detach().numpy(), maximize=True)
    p = torch.zeros_like(z)
    p[torch.as_tensor(rows), torch.as_tensor(cols)] = 1.0
    return p


def test_ste_permutation_forward_is_a_hard_permutation():
    z, _ = _cycle_scores()
    p = ste_permutation(z.clone().requires_grad_())
    assert p.requires_grad
    pd = p.detach()
    assert bool(((pd == 0) | (pd == 1)).all())
    assert torch.equal(pd.sum(0), torch.ones(5, dtype=pd.dtype)) and torch.equal(pd.sum(1), torch.ones(5, dtype=pd.dtype))


def test_ste_permutation_forward_maximises_inner_product_with_z():
    """glmc.md §3.3: P = Hungarian(maximise <P, Z>). Otherwise the STE step Z -= lr dL/dP raises
    Z[a, b] to select P[a, b] but the projection then selects P[b, a]."""
    z, _ = _cycle_scores()
    p = ste_permutation(z).detach()
    hungarian = _hungarian_matrix(z)
    best = max(sum(z[i, q[i]].item() for i in range(5)) for q in itertools.permutations(range(5)))
    assert (hungarian * z).sum().item() == pytest.approx(best)
    assert (p * z).sum().item() == pytest.approx(best), "ste_permutation does not maximise <P, z>"
    assert torch.equal(p, hungarian)


def _loss_of_p(p: torch.Tensor) -> torch.Tensor:
    gen = torch.Generator().manual_seed(17)
    x = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(7, 5, generator=gen, dtype=torch.float64)
    w = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    return ((x @ p - y) ** 2).sum() + torch.tanh(x @ p @ w).sum()


def test_ste_permutation_gradient_is_the_gradient_wrt_p():
    """U6: ∂L/∂z through the STE equals ∂L/∂P evaluated at the hard P, exactly; and that ∂L/∂P is
    the true derivative of L as a function of P (central finite differences)."""
    z, _ = _cycle_scores()
    z = z.requires_grad_()
    p = ste_permutation(z)
    _loss_of_p(p).backward()

    hard = p.detach().clone().requires_grad_()
    _loss_of_p(hard).backward()
    assert torch.equal(z.grad, hard.grad)
    assert hard.grad.abs().max() > 1e-3  # a non-trivial gradient

    eps = 1e-6
    fd = torch.zeros_like(hard.grad)
    base = hard.detach()
    for i, j in itertools.product(range(5), range(5)):
        e = torch.zeros_like(base)
        e[i, j] = eps
        fd[i, j] = (_loss_of_p(base + e) - _loss_of_p(base - e)) / (2 * eps)
    assert torch.allclose(fd, hard.grad, atol=1e-6, rtol=1e-6)


# ============================================================================================= 6. learned
LEARN_CFG = {"steps": 5, "batch_size": 8}


@pytest.mark.parametrize("model_id", ["vit-d1-w32-h2-token", "gpt2-d1-w32-h2-tied"])
def test_learned_full_on_planted_pair_has_no_barrier(model_id: str):
    a, b, _ = planted_pair(model_id, seed=20)
    task = teacher_task(a)
    alignment = MATCHERS["learned_full"](a, b, MatchContext(task, dict(LEARN_CFG), 0))
    assert alignment.info["init"] == "weight_matching" and alignment.info["residual"] == "orth"
    assert alignment.info["final_train_loss"] is not None
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    barrier, _ = loss_path(alignment, task, lambdas)
    vanilla_barrier, vanilla_spread = loss_path(MATCHERS["vanilla"](a, b, MatchContext()), task, lambdas)
    assert vanilla_spread > 1e-2  # negative control: the unaligned path leaves A's loss
    # the latents start at I + N(0, 0.01²) (official code), so B* is A up to a small rotation
    assert abs(barrier) <= 1e-3, f"learned_full barrier {barrier:.3g} (vanilla {vanilla_barrier:.3g})"
    # ... which is far closer to A than the unaligned B
    assert rel_error(alignment.state_b, alignment.state_a) <= 0.1
    assert rel_error(b.state_dict(), a.state_dict()) > 1.0


@pytest.mark.parametrize("name", ["learned_perm_only", "learned_identity_init"])
@pytest.mark.parametrize("model_id", ["vit-d1-w32-h2-token", "gpt2-d1-w32-h2-tied"])
def test_learned_ablations_run_and_keep_a(name: str, model_id: str):
    a, b = make(model_id, 0), make(model_id, 1)
    task = teacher_task(a)
    cfg = {**LEARN_CFG, "steps": 3, **({"iterations": 3} if name == "learned_perm_only" else {})}
    alignment = MATCHERS[name](a, b, MatchContext(task, cfg, 0))
    assert alignment.state_a.keys() == alignment.state_b.keys()
    assert all(alignment.state_a[k].shape == alignment.state_b[k].shape for k in alignment.state_a)
    assert alignment.state_a.keys() == alignment.template.state_dict().keys()
    x = inputs_for(family_of(a))
    assert_same_function(run(a, x), outputs(alignment.template, alignment.state_a, x))
    assert alignment.info["residual"] == ("perm" if name == "learned_perm_only" else "orth")
    assert alignment.info["init"] == ("identity" if name == "learned_identity_init" else "weight_matching")


def test_learned_matching_needs_a_task():
    a = make("vit-d1-w32-h2-token")
    with pytest.raises(ValueError, match="task"):
        MATCHERS["learned_full"](a, make("vit-d1-w32-h2-token", 1), MatchContext())


# ============================================================================================= 7. registry
def test_registry_has_exactly_the_table_names():
    assert set(MATCHERS) == EXPECTED_MATCHERS
    for name in EXPECTED_MATCHERS:
        assert get_matcher(name) is MATCHERS[name]


def test_unknown_matcher_lists_registered_names():
    with pytest.raises(ValueError) as err:
        get_matcher("no_such_matcher")
    assert "no_such_matcher" in str(err.value)
    assert all(name in str(err.value) for name in EXPECTED_MATCHERS)


def test_registering_a_duplicate_raises():
    before = dict(MATCHERS)
    with pytest.raises(ValueError, match="vanilla"):
        register("vanilla")(lambda a, b, c: None)
    assert MATCHERS == before  # the original is kept
    name = "_test_matchers_tmp"
    try:
        fn = register(name)(lambda a, b, c: None)
        assert MATCHERS[name] is fn
        with pytest.raises(ValueError):
            register(name)(lambda a, b, c: None)
    finally:
        methods.REGISTRY["glmc"].pop(name, None)
    assert MATCHERS == before


# ============================================================================================= 8. consistency
NEEDS_TASK = {"activation_matching", "learned_full", "learned_perm_only", "learned_identity_init"}
FORM = {"vanilla": "original", "perm_weight_matching": "original", "activation_matching": "original",
        "glmc_weight_matching": "circuit", "learned_full": "circuit", "learned_perm_only": "circuit",
        "learned_identity_init": "circuit"}  # with default configs (circuits on)


@pytest.mark.parametrize("name", sorted(EXPECTED_MATCHERS))
@pytest.mark.parametrize("model_id", ["vit-d2-w48-h4-avg-noqkvb", "gpt2-d1-w32-h2-tied"])
def test_alignment_endpoints_are_the_original_models(name: str, model_id: str):
    """The key property of any alignment: template + state_a computes A, template + state_b
    computes B (B moved by an exact symmetry), so the barrier endpoints are the two models."""
    a, b = make(model_id, 0), make(model_id, 1)
    task = teacher_task(a) if name in NEEDS_TASK else None
    given = {**LEARN_CFG, "steps": 3, "iterations": 3, "examples": 32}
    cfg = {k: v for k, v in given.items() if k in {f.name for f in dataclasses.fields(OPTIONS[name])}}
    a_before = {k: v.clone() for k, v in a.state_dict().items()}
    alignment = MATCHERS[name](a, b, MatchContext(task, cfg, 0))
    assert isinstance(alignment, Alignment)
    assert alignment.form == FORM[name]
    # the declared form is the template's structure (what lmcbench.checkpoints rebuilds on load)
    ref = FORMS[alignment.form](a).state_dict()
    assert ref.keys() == alignment.template.state_dict().keys() == alignment.state_a.keys()
    assert all(ref[k].shape == alignment.state_a[k].shape for k in ref)
    assert alignment.state_a.keys() == alignment.state_b.keys()
    assert all(alignment.state_a[k].shape == alignment.state_b[k].shape for k in alignment.state_a)
    x = inputs_for(family_of(a))
    y_a, y_b = run(a, x), run(b, x)
    assert (y_a - y_b).abs().max() > 0.1  # two different models, so the checks below are not vacuous
    assert_same_function(y_a, outputs(alignment.template, alignment.state_a, x))
    assert_same_function(y_b, outputs(alignment.template, alignment.state_b, x))
    assert all(torch.equal(a_before[k], v) for k, v in a.state_dict().items()), "model A was modified"
