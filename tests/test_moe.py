"""MoE-LMC: the MoE layer, the G(n) symmetry, Algorithm 1 matching, metrics and the sweep job."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import data_cfg, fresh_model, gpt2_cfg, vit_cfg
from lmcbench.methods import names
from lmcbench.models.moe import MoE, freeze_backbone, insert_moe, moe_modules, reference_forward
from lmcbench.moe import diagnostics as D
from lmcbench.moe import matching as M
from lmcbench.moe import symmetry as S
from lmcbench.barrier import add_ratios, chord_auc, scaled_excess
from lmcbench.moe.diagnostics import order_rank

GATINGS = ("dense", "topk", "shared")
P = "layer"  # prefix of the single MoE layer in the standalone tests


def layer(gating: str, n: int = 5, d: int = 8, h: int = 12, k: int = 2, seed: int = 0, **kw) -> MoE:
    return MoE(d, h, n, gating, k=k, n_shared=1, generator=torch.Generator().manual_seed(seed), **kw).double()


def prefixed(moe: MoE) -> dict:
    return {f"{P}.{k}": v.detach().clone() for k, v in moe.state_dict().items()}


def load(moe: MoE, state: dict) -> MoE:
    out = copy.deepcopy(moe)
    out.load_state_dict({k[len(P) + 1:]: v for k, v in state.items()})
    return out


def tokens(n: int = 64, d: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("dispatch", ["batched", "grouped"])
@pytest.mark.parametrize("gating", GATINGS)
def test_dispatch_matches_per_token_reference(gating, dispatch):
    moe = layer(gating, dispatch=dispatch)
    x = tokens().reshape(4, 16, 8)
    torch.testing.assert_close(moe(x), reference_forward(moe, x), rtol=0, atol=1e-12)


def test_shared_normalisation_variants_differ():
    x = tokens()
    a, b = layer("shared", normalise="all"), layer("shared", normalise="selected")
    torch.testing.assert_close(a(x), reference_forward(a, x), rtol=0, atol=1e-12)
    assert (a(x) - b(x)).abs().max() > 1e-4


# --------------------------------------------------------------------------------------------- G(n)
@pytest.mark.parametrize("trial", range(5))
def test_dense_output_exactly_invariant_under_random_group_elements(trial):
    moe = layer("dense", seed=trial)
    state = prefixed(moe)
    tau, c_w, c_b = S.random_element(state, P, torch.Generator().manual_seed(100 + trial), scale=3.0)
    moved = S.act(state, P, tau, c_w, c_b)
    assert not torch.allclose(moved[f"{P}.w1"], state[f"{P}.w1"])  # the element does something
    torch.testing.assert_close(load(moe, moved)(tokens(256)), moe(tokens(256)), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gating", ["topk", "shared"])
def test_sparse_output_invariant_on_generic_inputs(gating):
    moe = layer(gating, n=6)
    state = prefixed(moe)
    tau, c_w, c_b = S.random_element(state, P, torch.Generator().manual_seed(7), scale=3.0)
    x = tokens(512)
    torch.testing.assert_close(load(moe, S.act(state, P, tau, c_w, c_b))(x), moe(x), rtol=0, atol=1e-10)


def test_a_per_row_translation_is_not_a_symmetry():
    moe = layer("dense")
    state = prefixed(moe)
    state[f"{P}.router.bias"] = state[f"{P}.router.bias"] + torch.arange(5, dtype=torch.float64)
    assert (load(moe, state)(tokens()) - moe(tokens())).abs().max() > 1e-3


@pytest.mark.parametrize("k, symmetric", [(1, True), (2, False)])
def test_top1_positive_scaling_symmetry_holds_and_fails_for_top2(k, symmetric):
    moe = layer("topk", k=k)
    state = prefixed(moe)
    for name in ("router.weight", "router.bias"):
        state[f"{P}.{name}"] = 2.5 * state[f"{P}.{name}"]
    diff = (load(moe, state)(tokens(256)) - moe(tokens(256))).abs().max().item()
    assert (diff < 1e-12) if symmetric else (diff > 1e-3)


def test_expert_permutation_is_a_glmc_space():
    moe = layer("dense", n=4)
    spec = S.moe_spec(prefixed(moe))
    assert spec.names == [f"{P}.experts"] and spec[f"{P}.experts"].group == "perm"


def test_gram_cost_invariant_to_hidden_permutations():
    a, b = prefixed(layer("dense", seed=0)), prefixed(layer("dense", seed=1))
    perms = S.random_hidden_perms(b, P, torch.Generator().manual_seed(3))
    moved = S.permute_hidden(b, P, perms)
    assert not torch.equal(moved[f"{P}.w1"], b[f"{P}.w1"])
    torch.testing.assert_close(M.expert_cost(a, moved, P), M.expert_cost(a, b, P), rtol=1e-12, atol=1e-9)
    # and the function is unchanged by hidden permutations too
    torch.testing.assert_close(load(layer("dense", seed=1), moved)(tokens()), layer("dense", seed=1)(tokens()))


def test_gate_cost_invariant_to_translation():
    a, b = prefixed(layer("dense", seed=0)), prefixed(layer("dense", seed=1))
    moved = S.translate_gate(b, P, torch.randn(8, dtype=torch.float64), 1.7)
    torch.testing.assert_close(M.gate_cost(a, moved, P), M.gate_cost(a, b, P))


# --------------------------------------------------------------------------------------------- planted recovery
@pytest.mark.parametrize("method", ["gate_wm", "expert_wm"])  # Algorithm 1's Step 1
@pytest.mark.parametrize("gating", GATINGS)
def test_planted_recovery(gating, method):
    a = prefixed(layer(gating, n=6, h=16))
    g = torch.Generator().manual_seed(11)
    tau, c_w, c_b = S.random_element(a, P, g, scale=2.0)
    perms = S.random_hidden_perms(a, P, g)
    b = S.permute_hidden(S.act(a, P, tau, c_w, c_b), P, perms)
    if S.has_shared(a, P):
        b = S.permute_hidden(b, P, S.random_hidden_perms(a, P, g, shared=True), shared=True)
    b = {k: v + 1e-3 * torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in b.items()}

    found = M.expert_order(a, b, P, method)
    assert found.tolist() == torch.argsort(tau).tolist()  # Step 1 recovers τ (as its inverse index)
    reordered = S.permute_experts(b, P, found)
    step2 = M.hidden_perms(a, reordered, P)
    expected = torch.stack([torch.argsort(perms[j]) for j in torch.argsort(tau)])
    assert torch.equal(step2, expected)  # Step 2 recovers every expert's hidden permutation
    aligned, _ = M.align(a, b, method)
    for name in S.EXPERT_TENSORS + (S.SHARED_TENSORS if S.has_shared(a, P) else ()):
        torch.testing.assert_close(aligned[f"{P}.{name}"], a[f"{P}.{name}"], rtol=0, atol=1e-2)
    # the gate is aligned up to the (untouched) common translation
    torch.testing.assert_close(aligned[f"{P}.router.weight"] - c_w, a[f"{P}.router.weight"], rtol=0, atol=1e-2)


def test_skip_order_keeps_the_identity_order():
    a, b = prefixed(layer("dense", seed=0)), prefixed(layer("dense", seed=1))
    _, taus = M.align(a, b, "skip_order")
    assert taus[P].tolist() == list(range(5))
    assert M.all_orders(a, 10) is None and len(M.all_orders(a, 120)) == 120


# --------------------------------------------------------------------------------------------- metrics
def test_auc_and_ranks():
    lam = np.linspace(0, 1, 5)
    assert chord_auc(lam, [1, 2, 3, 2, 1]) == pytest.approx(1.0)  # ∫ of a tent of height 2 on [0, 1]
    assert chord_auc(lam, [0.9, 0.8, 0.7, 0.8, 0.9], higher_is_better=True) == pytest.approx(0.1)
    assert chord_auc(lam, [0, 0.25, 0.5, 0.75, 1.0]) == pytest.approx(0.0)
    assert order_rank(0.3, [0.1, 0.3, 0.5, 0.2]) == 3
    assert scaled_excess(0.2, 0.1, 1.1) == pytest.approx(10.0)
    t = pd.DataFrame({"method": ["naive", "gate_wm"], "seed_a": 0, "seed_b": 1, "split": "test", "metric": "loss",
                      "barrier": [0.5, 0.1], "auc": [0.2, 0.05]})
    assert add_ratios(t)["ratio_to_naive"].tolist() == pytest.approx([1.0, 0.2])


# --------------------------------------------------------------------------------------------- in real models
MOE_CFG = {"n_experts": 3, "gating": "topk", "k": 2, "placement": "all", "hidden": 24}


@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_insert_moe_preserves_shapes_and_trains(family, datasets):
    from lmcbench.tasks import make_task
    from lmcbench.training import TrainConfig, train

    cfg = vit_cfg({"depth": 2}) if family == "vit" else gpt2_cfg({"n_layer": 2})
    data = datasets[family]
    dense = fresh_model(cfg, data, 0)
    task = make_task(data, cfg)
    x, _ = task.eval_tensors("test", 4)
    shape = task.logits(dense, x).shape
    model = freeze_backbone(insert_moe(copy.deepcopy(dense), MOE_CFG, torch.Generator().manual_seed(0)))
    assert len(moe_modules(model)) == 2 and task.logits(model, x).shape == shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(model, task, TrainConfig(steps=12, batch_size=8, lr=0.01, eval_every=6, eval_examples=16), seed=0,
                   progress=False)
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".mlp." in k for k in moved)  # only the MoE trained; the backbone is frozen
    assert np.isfinite(result.best_val_loss)


@pytest.mark.parametrize("placement, layers", [("first", [0]), ("last", [2]), ("all", [0, 1, 2]), ([0, -1], [0, 2])])
def test_placements(placement, layers, datasets):
    model = insert_moe(fresh_model(vit_cfg({"depth": 3}), datasets["vit"], 0), {**MOE_CFG, "placement": placement})
    assert list(moe_modules(model)) == [f"blocks.{i}.mlp" for i in layers]


def test_checkpoint_round_trip(tmp_path, datasets):
    from lmcbench.checkpoints import load_model, save_model

    cfg = gpt2_cfg()
    data = datasets["gpt2"]
    moe_cfg = {"n_experts": 2, "gating": "shared", "k": 1, "n_shared": 1, "placement": "first"}
    model = insert_moe(fresh_model(cfg, data, 0), moe_cfg, torch.Generator().manual_seed(5)).eval()
    save_model(tmp_path / "m", model, {**cfg, "moe": moe_cfg}, data.meta, seed=0)
    loaded, info = load_model(tmp_path / "m")
    assert info["model"]["moe"] == moe_cfg
    x = torch.randint(0, data.meta["vocab_size"], (2, 8))
    torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- barrier + job
@pytest.fixture(scope="module")
def backbone_ckpt(tmp_path_factory, datasets):
    from lmcbench.checkpoints import save_model

    cfg = vit_cfg()
    path = tmp_path_factory.mktemp("backbone") / "seed0"
    save_model(path, fresh_model(cfg, datasets["vit"], 0), cfg, datasets["vit"].meta, seed=0)
    return path


def test_barrier_invariant_to_gate_translation(datasets):
    from lmcbench.barrier import barriers, interpolation_curve
    from lmcbench.tasks import make_task

    cfg = vit_cfg()
    base = fresh_model(cfg, datasets["vit"], 0)
    moe_cfg = {"n_experts": 3, "gating": "dense", "placement": "first"}
    a = insert_moe(copy.deepcopy(base), moe_cfg, torch.Generator().manual_seed(1)).state_dict()
    template = insert_moe(copy.deepcopy(base), moe_cfg, torch.Generator().manual_seed(2))
    b = template.state_dict()
    prefix = S.moe_prefixes(template)[0]
    moved = S.translate_gate(b, prefix, 5 * torch.randn(cfg["arch"]["embed_dim"]), -3.0)
    task = make_task(datasets["vit"], cfg)
    kw = {"lambdas": np.linspace(0, 1, 5), "splits": ("test",), "max_examples": 128}
    plain = barriers(interpolation_curve(template, task, a, b, **kw))
    translated = barriers(interpolation_curve(template, task, a, moved, **kw))
    np.testing.assert_allclose(translated["barrier"], plain["barrier"], atol=1e-5)


def test_sweep_job_and_tables(tmp_path, backbone_ckpt):
    from lmcbench.experiments.moe import moe_sweep_job
    from lmcbench.tables import moe_tables

    moe_cfg = {"n_experts": 3, "gating": "topk", "k": 2, "placement": "first", "hidden": 16}
    train_cfg = {"steps": 6, "batch_size": 16, "lr": 0.01, "eval_every": 3, "eval_examples": 32}
    barrier_cfg = {"points": 3, "splits": ["train", "test"], "max_examples": 32, "batch_size": 64}
    labels = {"experiment": "sweep", "model": "vit", "dataset": "mnist5k", "gating": "topk", "n_experts": 3,
              "placement": "first"}
    out = tmp_path / "job"
    builtin = names("moe_order")
    table = moe_sweep_job(out, backbone_ckpt, moe_cfg, train_cfg, data_cfg("vit"), [0, 1, 2], barrier_cfg,
                          builtin, labels=labels)
    assert set(table["method"]) == set(builtin) and len(table) == 3 * 5 * 2 * 2
    ranks = pd.read_csv(out / "ranks.csv")
    assert set(ranks["method"]) == {"skip_order", "gate_wm", "expert_wm"}
    assert ranks["rank"].between(1, 6).all() and (ranks["n_orders"] == 6).all()
    best = table.query("method == 'best_order' and split == 'test' and metric == 'loss'")["barrier"].to_numpy()
    assert (ranks.groupby(["seed_a", "seed_b"])["best_barrier"].first().to_numpy() == pytest.approx(best))
    assert (out / "seed2" / "model.safetensors").exists()
    tables_dir = tmp_path / "tables"
    outputs = {name: tables_dir / f"moe_{name}.csv"
               for name in ("barriers", "curves", "order_ranks", "summary", "vs_paper", "diagnostics", "testability")}
    reference = tmp_path / "published.csv"   # a Table-2-style row that matches this job, and one that matches nothing
    pd.DataFrame([{"experiment": "sweep", "model": "vit", "gating": "topk", "n_experts": 3, "placement": "first",
                   "method": "gate_wm", "metric": "rank", "mean": 2.5, "std": 1.5},
                  {"experiment": "sweep", "model": "vit", "gating": "dense", "n_experts": 4, "placement": "first",
                   "method": "gate_wm", "metric": "scaled_excess", "mean": 3.4, "std": 0.5},
                  {"experiment": "sweep", "model": "vit", "method": "skip_order", "metric": "loss_barrier",
                   "low": 0.14, "high": 0.86}]).to_csv(reference, index=False)
    moe_tables([out / "barriers.csv"], outputs, reference)
    written = pd.read_csv(outputs["barriers"])
    for col in ("model", "dataset", "gating", "n_experts", "placement", "method", "seed_a", "seed_b", "split",
                "metric", "barrier", "auc", "ratio_to_naive", "run_id"):
        assert col in written
    assert len(pd.read_csv(outputs["order_ranks"])) == 9
    diagnostics = pd.read_csv(outputs["diagnostics"])
    assert len(diagnostics) == 3 and diagnostics["routing_entropy"].between(0, 1).all()
    for col in ("load_entropy", "expert_movement", "sim_gate_wm", "sim_expert_wm", "sim_unmatched",
                "rank_gate_wm", "lhat_expert_wm", "spearman_gate_cost", "gate_wm_order_as_at_init"):
        assert col in diagnostics
    assert (diagnostics["rank_gate_wm"].to_numpy() == ranks.query("method == 'gate_wm'")["rank"].to_numpy()).all()
    testability = pd.read_csv(outputs["testability"])
    assert len(testability) == 1 and testability.loc[0, "n_pairs"] == 3 and "testable" in testability
    vs_paper = pd.read_csv(outputs["vs_paper"])
    ranks_test_loss = ranks.query("method == 'gate_wm' and split == 'test' and metric == 'loss'")["rank"]
    assert vs_paper.loc[0, "ours_n"] == 3 and vs_paper.loc[0, "ours_mean"] == pytest.approx(ranks_test_loss.mean())
    assert vs_paper.loc[0, "mean"] == 2.5 and vs_paper.loc[1, "ours_n"] == 0
    skip = table.query("method == 'skip_order' and split == 'test' and metric == 'loss'")["barrier"]
    assert vs_paper.loc[2, "ours_n"] == 3 and vs_paper.loc[2, "ours_mean"] == pytest.approx(skip.mean())  # pairs once


# --------------------------------------------------------------------------------------------- diagnostics
def test_entropy_of_one_hot_router_is_zero_and_of_uniform_is_one():
    n = 4
    assert float(D.normalised_entropy(torch.eye(n, dtype=torch.float64)).max()) == 0.0
    assert float(D.normalised_entropy(torch.full((3, n), 1 / n, dtype=torch.float64)).min()) == pytest.approx(1.0)
    ent, load = D.routing_entropy(torch.zeros(10, n))
    assert ent == pytest.approx(1.0) and load == pytest.approx(1.0)
    confident = 1e3 * torch.eye(n).repeat(5, 1)       # every token one-hot, experts used equally
    ent, load = D.routing_entropy(confident)
    assert ent == pytest.approx(0.0, abs=1e-9) and load == pytest.approx(1.0)


def planted_copy(gating: str, seed: int = 11):
    """A layer, and a copy moved by a random element of G(n) and random hidden permutations, and τ."""
    moe = layer(gating, n=5, h=16)
    a = prefixed(moe)
    g = torch.Generator().manual_seed(seed)
    tau, c_w, c_b = S.random_element(a, P, g, scale=2.0)
    b = S.permute_hidden(S.act(a, P, tau, c_w, c_b), P, S.random_hidden_perms(a, P, g))
    return moe, a, b, tau


@pytest.mark.parametrize("gating", ["dense", "topk"])
def test_cross_seed_similarity_is_one_for_a_planted_permuted_copy(gating):
    moe, a, b, tau = planted_copy(gating)
    x = tokens(256)
    corr = D.output_correlation(D.contributions(moe, a, P, x), D.contributions(moe, b, P, x))
    found = M.expert_order(a, b, P, "expert_wm")
    assert found.tolist() == torch.argsort(tau).tolist()
    summary = D.similarity_summary(corr, found)
    assert summary["matched"] == pytest.approx(1.0, abs=1e-9)
    assert summary["output_order"].tolist() == found.tolist()     # the output-matching oracle agrees
    assert summary["unmatched"] < 0.9                              # distinct experts are not copies
    assert D.similarity_summary(corr)["matched"] < 0.9             # the identity order is wrong


def test_spearman_of_cost_with_barrier_on_a_planted_order():
    _, a, b, _ = planted_copy("dense")
    orders = M.all_orders(a, 120)
    cost = np.array([D.total_cost(a, b, o, "gate_wm") for o in orders])
    truth = M.expert_order(a, b, P, "gate_wm")
    assert cost.argmin() == [o[P].tolist() for o in orders].index(truth.tolist())
    planted = 0.01 + 0.3 * cost ** 2                   # a barrier that grows with the cost
    assert D.spearman(cost, planted) == pytest.approx(1.0)
    assert D.spearman(cost, -planted) == pytest.approx(-1.0)
    assert np.isnan(D.spearman(cost, np.ones_like(cost)))


def test_expert_movement_from_initialisation():
    a = prefixed(layer("dense", seed=0))
    assert D.expert_movement(a, a, P) == 0.0
    moved = {k: (2 * v if k.split(".")[-1] in S.EXPERT_TENSORS else v) for k, v in a.items()}
    assert D.expert_movement(moved, a, P) == pytest.approx(1.0)


@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_upcycled_experts_without_noise_reproduce_the_dense_model(family, datasets):
    from lmcbench.tasks import make_task

    cfg = vit_cfg() if family == "vit" else gpt2_cfg()
    dense = fresh_model(cfg, datasets[family], 0).eval()
    task = make_task(datasets[family], cfg)
    x, _ = task.eval_tensors("test", 8)
    moe_cfg = {"n_experts": 3, "gating": "topk", "k": 2, "placement": "first", "expert_init": "upcycle",
               "activation": "gelu" if family == "vit" else "gelu_tanh"}
    exact = insert_moe(copy.deepcopy(dense), {**moe_cfg, "init_noise": 0.0}, torch.Generator().manual_seed(0)).eval()
    torch.testing.assert_close(task.logits(exact, x), task.logits(dense, x), rtol=1e-5, atol=1e-5)
    noisy = insert_moe(copy.deepcopy(dense), {**moe_cfg, "init_noise": 1.0}, torch.Generator().manual_seed(0)).eval()
    assert (task.logits(noisy, x) - task.logits(dense, x)).abs().max() > 1e-3


def test_zero_out_experts_start_as_the_zero_function_and_router_scale_scales_the_router():
    plain, zero = layer("dense"), layer("dense", expert_init="zero_out", router_scale=4.0)
    assert torch.equal(zero(tokens()), torch.zeros_like(tokens()))
    torch.testing.assert_close(zero.router.weight, 4 * plain.router.weight)
    torch.testing.assert_close(zero.w1, plain.w1)      # same draws: only the output layer is zeroed


def test_testability_needs_confident_routing_and_comparable_experts():
    from lmcbench.tables import moe_testability

    rows = [{"variant": v, "gating": "topk", "seed_a": 0, "seed_b": b, "routing_entropy": ent,
             "sim_gate_wm": sim, "sim_expert_wm": sim - 0.1}
            for v, ent, sim in (("specialised", 0.3, 0.7), ("paper", 0.95, 0.7), ("weak", 0.3, 0.2)) for b in (1, 2)]
    table = moe_testability(pd.DataFrame(rows)).set_index("variant")
    assert table["testable"].to_dict() == {"paper": False, "specialised": True, "weak": False}
    assert table.loc["specialised", "n_pairs"] == 2 and table.loc["specialised", "sim_matched"] == pytest.approx(0.7)


def test_kmeans_router_routes_to_the_nearest_planted_cluster():
    from lmcbench.moe.router_init import centroid_router, kmeans

    g = torch.Generator().manual_seed(0)
    centres = 6 * torch.randn(4, 8, generator=g, dtype=torch.float64)
    label = torch.randint(4, (400,), generator=g)
    x = centres[label] + 0.3 * torch.randn(400, 8, generator=g, dtype=torch.float64)
    found = kmeans(x, 4, torch.Generator().manual_seed(3))
    perm = torch.cdist(centres, found).argmin(1)
    assert sorted(perm.tolist()) == [0, 1, 2, 3]             # one centroid per planted cluster
    torch.testing.assert_close(found[perm], centres, rtol=0, atol=0.15)
    w, b = centroid_router(x, found, scale=3.0)
    assert torch.equal((x @ w.T + b).argmax(1), torch.cdist(x, found).argmin(1))   # linear = nearest centroid
    sharp, soft = (D.routing_entropy(x @ w.T * s + b * s)[0] for s in (1.0, 0.1))
    assert sharp < soft


@pytest.mark.parametrize("family, placement", [("vit", "first"), ("vit", "last"), ("gpt2", "first")])
def test_pair_evaluator_equals_end_to_end_interpolation(family, placement, datasets):
    from lmcbench.barrier import interpolation_curve
    from lmcbench.moe.evaluation import PairEvaluator
    from lmcbench.tasks import make_task

    cfg = vit_cfg({"depth": 2}) if family == "vit" else gpt2_cfg({"n_layer": 2})
    base = fresh_model(cfg, datasets[family], 0)
    moe_cfg = {"n_experts": 3, "gating": "topk", "k": 2, "placement": placement, "hidden": 16}
    a = insert_moe(copy.deepcopy(base), moe_cfg, torch.Generator().manual_seed(1)).state_dict()
    template = insert_moe(copy.deepcopy(base), moe_cfg, torch.Generator().manual_seed(2))
    b = template.state_dict()
    task = make_task(datasets[family], cfg)
    data = {"test": task.eval_tensors("test", 200 if family == "vit" else 8)}
    lambdas = np.linspace(0, 1, 4)
    evaluator = PairEvaluator(copy.deepcopy(template), task, a, b, data, batch_size=64)
    assert evaluator.cached_prefix == (family == "vit") and all(".mlp." in k for k in evaluator.keys)
    ours = evaluator.curve(b, "naive", lambdas, ["test"])
    ref = interpolation_curve(template, task, a, b, lambdas, splits=["test"], max_examples=len(data["test"][1]))
    np.testing.assert_allclose(ours["value"], ref["value"], rtol=1e-5, atol=1e-5)
    other = insert_moe(fresh_model(cfg, datasets[family], 1), moe_cfg, torch.Generator().manual_seed(2)).state_dict()
    assert not PairEvaluator(copy.deepcopy(template), task, a, other, data, 64).cached_prefix  # backbones differ


def test_load_balancing_loss_is_added_in_training_only(datasets):
    from lmcbench.models.moe import AuxLossTask, aux_loss
    from lmcbench.tasks import make_task

    cfg = vit_cfg()
    model = insert_moe(fresh_model(cfg, datasets["vit"], 0), {**MOE_CFG, "aux_loss_coef": 0.5},
                       torch.Generator().manual_seed(0))
    task = make_task(datasets["vit"], cfg)
    x, y = task.eval_tensors("test", 8)
    plain = task.score(model.train(), x, y)[0]
    wrapped = AuxLossTask(task).score(model.train(), x, y)[0]
    extra = aux_loss(model)
    assert extra is not None and extra > 0
    torch.testing.assert_close(wrapped, plain + extra * 8)
    model.eval()
    torch.testing.assert_close(AuxLossTask(task).score(model, x, y)[0], task.score(model, x, y)[0])
