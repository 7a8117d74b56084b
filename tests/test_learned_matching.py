"""Learned matching moves discrete assignments when that lowers the loss (issue 10, glmc.md §3.3).

The pairs: a confident tiny ViT A (its head scaled up, so A's own labels give it a near-zero loss
and a misaligned mixture a clearly higher one) and B = A with head and MLP units permuted. Before the
fix, latents at I + 0.01·N trained by Adam at lr 1e-3 moved by ≲ 0.1, a flip needs ~1: no assignment
ever changed, so these tests fail on that code.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from conftest import perturb
from test_matchers import CTX, IMG, VOCAB, loss_path, make, teacher_task
from lmcbench.symmetry.canonical import canonicalize
from lmcbench.data import Dataset
from lmcbench.matchers import MATCHERS, MatchContext, learned
from lmcbench.matchers.learned import LOG_FLOOR, LearnedOptions, sinkhorn, train_latents
from lmcbench.matchers.weight_matching import glmc_weight_matching_states
from lmcbench.symmetry import apply, perm_matrix, spec_for
from lmcbench.tasks import ClassificationTask, LanguageModelingTask

STEPS = {"steps": 150, "batch_size": 8, "perm_lr": 0.05, "eval_every": 10, "patience": None}


def confident_vit():
    """Canonical tiny ViT whose logits are scaled ×10: A fits its own labels almost exactly."""
    model = make("vit-d2-w48-h4-avg-noqkvb")
    with torch.no_grad():
        model.head.weight.mul_(10)
        model.head.bias.mul_(10)
    return canonicalize(model)


def planted(model, seed: int) -> tuple[dict, dict]:
    """A random permutation of every head and MLP space (each moves at least two units): (state of B, element)."""
    gen = torch.Generator().manual_seed(seed)
    element = {}
    for space in spec_for(model).subset("blocks.*.heads", "blocks.*.mlp"):
        idx = torch.randperm(space.dim, generator=gen)
        element[space.name] = idx if not torch.equal(idx, torch.arange(space.dim)) else torch.roll(idx, 1)
    return apply(spec_for(model), model.state_dict(), element), element


def test_learned_matching_moves_assignments_when_that_lowers_the_loss():
    a = confident_vit()
    state_b, _ = planted(a, seed=1)
    task = teacher_task(a)
    run = train_latents(a, [state_b], task, LearnedOptions(**STEPS), seed=0)
    record = run.record
    assert record["moved_heads"] + record["moved_mlp"] >= 1, record
    assert record["best_step"] > 0 and record["val_loss"] < 0.5 * record["start_val_loss"], record
    assert set(record["moved"]) == {s.name for s in spec_for(a).subset("residual", "blocks.*.heads", "blocks.*.mlp")}
    assert record["moved_mlp"] == sum(v for k, v in record["moved"].items() if k.endswith(".mlp"))


def distinct_units_vit(seed: int = 0) -> nn.Module:
    """Canonical ViT of shapes used nowhere else (2 blocks, width 24, 3 heads, 12 MLP units: narrower than
    the residual, 16 classes, avg pooling, no qkv bias) whose heads and units each matter: queries and
    keys ×3 (attention far from uniform, else a head permutation barely changes the function), fc1 ×3
    (GELU out of its linear range) and the head ×4 (labels that say more than chance). Without these
    scalings (test_matchers' "vit-d2-w48-h4-avg-noqkvb", 96 classes) the same matching ends at 28 of 192
    MLP units right with a midpoint loss only 0.03 above A's: that loss barely tells the units apart."""
    model = perturb(VisionTransformer(img_size=IMG, patch_size=4, in_chans=3, num_classes=16, depth=2, embed_dim=24,
                                      num_heads=3, mlp_ratio=0.5, qkv_bias=False, global_pool="avg"), seed)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:2 * 24].mul_(3)
            block.mlp.fc1.weight.mul_(3)
        model.head.weight.mul_(4)
    return canonicalize(model)


def sampled_task(model: nn.Module, n: int = 256, draws: int = 16, seed: int = 7) -> ClassificationTask:
    """Labels drawn from A's softmax (`draws` per image): A minimises the expected loss, so the planted
    element is where the midpoint loss is lowest (argmax labels would let other elements beat A)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, IMG, IMG, generator=gen)
    with torch.no_grad():
        p = torch.softmax(model.eval()(x), -1)
    y = torch.multinomial(p, draws, replacement=True, generator=gen).T.reshape(-1)
    data = (x.repeat(draws, 1, 1, 1), y)
    return ClassificationTask(Dataset("sampled-images", "image", data, data, data))


def test_learned_identity_init_recovers_a_planted_permutation():
    """B = A with a random permutation of every head and MLP space at once; `learned_identity_init`
    (its registered defaults: Sinkhorn relaxation from a diffuse start, annealed to the Hungarian
    assignment) finds the inverse of every one, from the task loss alone (measured: plants 0-3, all
    recovered). With the straight-through relaxation ("ste", the official code's) the same run recovers
    1-3 of 3 heads and 0-1 of 12 units per space: at the identity the gradient of a misaligned midpoint
    does not say which unit goes where; Sinkhorn's diffuse start compares each A unit with B's averaged ones.
    The orthogonal residual, which the method also learns, is not planted: from the identity it does
    not recover a random rotation (measured: ‖O − O*‖_F ≈ 6 of at most 9.8, and then only 4-8 of 12 units)."""
    a = distinct_units_vit()
    state_b, element = planted(a, seed=3)
    b = distinct_units_vit(seed=1)   # a template of the same shapes
    b.load_state_dict(state_b)
    task = sampled_task(a)
    # every validation example: two MLP units of a 12-unit space change the loss by less than 256 sampled labels' noise
    options = {"steps": 200, "batch_size": 64, "perm_lr": 0.3, "eval_every": 50, "patience": None, "val_examples": None}
    alignment = MATCHERS["learned_identity_init"](a, b, MatchContext(task, options, 0))
    info = alignment.info
    assert info["options"]["relaxation"] == "sinkhorn" and info["init"] == "identity"
    assert info["assignments"] == {name: torch.argsort(idx).tolist() for name, idx in element.items()}
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    barrier, _ = loss_path(alignment, task, lambdas)
    start_barrier, _ = loss_path(MATCHERS["vanilla"](a, b, MatchContext()), task, lambdas)
    assert barrier <= 0.05 * start_barrier, (barrier, start_barrier)


def test_epochs_set_the_number_of_steps():
    """The official schedule counts epochs over the train split; `steps` is used only without them."""
    assert LearnedOptions(steps=7).total_steps(train_examples=95) == 7
    assert LearnedOptions(steps=7, epochs=2, batch_size=10).total_steps(train_examples=95) == 19   # ⌈2·95/10⌉


def test_weight_matching_start_compares_only_tokens_seen_in_training(monkeypatch):
    """`learned_full` starts from the same weight matching as `glmc_weight_matching`: embedding rows of
    tokens the train split never contains are left out of the residual step (`active_tokens`)."""
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("tokens"))
        return glmc_weight_matching_states(*args, **kwargs)

    monkeypatch.setattr(learned, "glmc_weight_matching_states", spy)
    a, b = make("gpt2-d1-w32-h2-tied", seed=0), make("gpt2-d1-w32-h2-tied", seed=1)
    tokens = torch.randint(0, VOCAB // 2, (200,), generator=torch.Generator().manual_seed(0))  # half the vocabulary
    task = LanguageModelingTask(Dataset("half-vocab", "text", tokens, tokens, tokens), block_size=CTX)
    MATCHERS["learned_full"](a, b, MatchContext(task, {"steps": 1, "batch_size": 4, "iterations": 2}, 0))
    assert len(seen) == 1 and torch.equal(seen[0], torch.unique(tokens)), seen


def test_relaxed_apply_is_apply_extended_linearly():
    """On a mixture of permutations, relaxed `apply` is the same mixture of `apply`s (so on a permutation,
    `apply` itself), for heads and MLP spaces of several blocks at once; strict `apply` refuses the mixture,
    relaxed `apply` a negative matrix."""
    model = canonicalize(make("gpt2-d2-w48-h4-untied"))
    spec, state = spec_for(model), model.state_dict()
    gen = torch.Generator().manual_seed(0)
    spaces = spec.subset("blocks.*.heads", "blocks.*.mlp")
    p, q = ({s.name: perm_matrix(torch.randperm(s.dim, generator=gen)) for s in spaces} for _ in range(2))
    mixture = {n: 0.3 * p[n] + 0.7 * q[n] for n in p}
    mixed = apply(spec, state, mixture, relaxed=True)
    on_p, on_q = apply(spec, state, p), apply(spec, state, q)
    for k, v in mixed.items():
        expected = 0.3 * on_p[k] + 0.7 * on_q[k] if v.is_floating_point() else on_p[k]
        assert torch.allclose(v, expected, atol=1e-6), k
    with pytest.raises(ValueError, match="not a permutation matrix"):
        apply(spec, state, mixture)
    name = next(iter(p))
    with pytest.raises(ValueError, match="non-negative"):
        apply(spec, state, {name: p[name] - 0.5 * q[name]}, relaxed=True)


@pytest.mark.parametrize("tau", [1.0, 0.1, 0.01])
def test_sinkhorn_scaling_form_equals_the_log_domain_form(tau):
    """`sinkhorn` (scaling form, float64 inside, floored kernel) against alternate logsumexp normalisations
    from the same start (rows, then columns, shifted to max 0) written out here: the same matrix and gradient
    at every temperature of the schedule, on latents spread like trained ones (entries up to ~8 apart: at
    τ = 0.01 the kernel spans e^-800, where scalings started at 1 overflow); columns sum to 1; in float32
    the gradient stays finite."""
    def log_domain(z, tau, iterations):
        log_p = z / tau
        log_p = log_p - log_p.amax(1, keepdim=True)
        log_p = log_p - log_p.amax(0, keepdim=True)
        for _ in range(iterations):
            log_p = log_p - log_p.logsumexp(1, keepdim=True)
            log_p = log_p - log_p.logsumexp(0, keepdim=True)
        return log_p.exp()

    gen = torch.Generator().manual_seed(0)
    z = (torch.eye(48) + torch.randn(48, 48, generator=gen)).double()
    weights = torch.randn(48, 48, generator=gen, dtype=torch.float64)
    za, zb = z.clone().requires_grad_(), z.clone().requires_grad_()
    p, ref = sinkhorn(za, tau, 10), log_domain(zb, tau, 10)
    (p * weights).sum().backward()
    (ref * weights).sum().backward()
    assert torch.allclose(p, ref, atol=1e-10) and torch.allclose(p.sum(0), torch.ones(48, dtype=torch.float64))
    assert torch.allclose(za.grad, zb.grad, atol=1e-8 * zb.grad.abs().max().item())
    z32 = z.float().requires_grad_()
    (sinkhorn(z32, tau, 10) * weights.float()).sum().backward()
    assert torch.isfinite(z32.grad).all()


def test_sinkhorn_written_out_backward_passes_gradcheck():
    """`sinkhorn`'s written-out backward (shifts without gradient, the unrolled iterations' outer products as two
    matrix products, floored and zeroed entries without gradient) against finite differences: non-square and
    square latents, one iteration and several, latents spread over ~8 units at τ = 1 and 0.5."""
    gen = torch.Generator().manual_seed(3)
    for shape, iterations, tau in (((9, 6), 1, 1.0), ((9, 6), 4, 0.5), ((7, 7), 10, 1.0)):
        z = (torch.eye(*shape, dtype=torch.float64) + 2 * torch.randn(*shape, generator=gen, dtype=torch.float64))
        assert torch.autograd.gradcheck(lambda z: sinkhorn(z, tau, iterations), (z.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_backward_equals_autograd_through_the_same_operations(dtype):
    """The written-out backward against autograd through the same forward written with tensor operations (shifts,
    floor, scalings, output mask): the same matrix, and the same gradient to rounding, on tied maxima too (all
    zeros; ties in rows and columns), at every temperature of the schedule."""
    def reference(z, tau, iterations):
        log_k = z.double() / tau
        log_k = log_k - log_k.amax(1, keepdim=True)
        log_k = log_k - log_k.amax(0, keepdim=True)
        k = log_k.clamp_min(LOG_FLOOR).exp()
        v = torch.ones(k.shape[1], dtype=k.dtype)
        for _ in range(iterations):
            u = 1.0 / (k @ v)
            v = 1.0 / (u @ k)
        p = u[:, None] * k * v[None, :]
        return p.masked_fill(p < torch.finfo(z.dtype).tiny, 0.0).to(z.dtype)

    gen = torch.Generator().manual_seed(5)
    cases = [torch.zeros(5, 5), torch.randint(0, 3, (7, 7), generator=gen).float(),   # tied maxima everywhere
             torch.eye(40) + 3 * torch.randn(40, 40, generator=gen)]
    for z, tau, iterations in itertools.product(cases, (1.0, 0.1, 0.01), (1, 10)):
        weights = torch.randn(z.shape, generator=gen).to(dtype)
        za, zb = z.to(dtype).requires_grad_(), z.to(dtype).requires_grad_()
        p, ref = sinkhorn(za, tau, iterations), reference(zb, tau, iterations)
        (p * weights).sum().backward()
        (ref * weights).sum().backward()
        assert torch.equal(p, ref)
        assert torch.allclose(za.grad, zb.grad, rtol=1e-5, atol=1e-6 * float(zb.grad.abs().max()))

