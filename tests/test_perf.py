"""The optimised GLMC weight matching (issue 15) finds what the implementation before it found, on the
CPU path of the device-agnostic code, and its blocked L1 kernel equals the plain definition.

The pairs are trained here: tiny GPT-2 and ViT (n_embd/embed_dim 32, 2 blocks, 4 heads, MLP 64), seeds 0
and 1, 60 steps with tests/conftest.py's configs, byte-identical on any machine under the pinned numerics.
tests/golden/weight_matching/elements.json holds the element that the pre-optimisation
`glmc_weight_matching_states` (commit 5c3113c) found for these pairs with the L1 and the cosine MLP cost,
15 rounds: permutations as index lists, the residual map to 10 significant digits. Nothing here
regenerates it."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import fresh_model, gpt2_cfg, vit_cfg

from lmcbench.matchers.assignment import l1_distances
from lmcbench.matchers.weight_matching import (Aligner, ResidualBlocks, detached_state, ensure_canonical,
                                               glmc_weight_matching_states, head_distances)
from lmcbench.symmetry import layout_for, spec_for
from lmcbench.symmetry.groups import random_orthogonal
from lmcbench.symmetry.canonical import canonicalize, circuit_form, head_circuits
from lmcbench.tasks import make_task
from lmcbench.training import TrainConfig, train

EXPECTED = Path(__file__).parent / "golden" / "weight_matching" / "elements.json"
ARCH = {"gpt2": gpt2_cfg({"n_embd": 32, "n_layer": 2, "n_head": 4, "n_inner": 64}, steps=60),
        "vit": vit_cfg({"embed_dim": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64}, steps=60)}


@pytest.fixture(scope="module")
def trained_pairs(datasets) -> dict[str, tuple[torch.nn.Module, torch.nn.Module]]:
    pairs = {}
    for family, cfg in ARCH.items():
        data = datasets[family]
        models = []
        for seed in (0, 1):
            model = fresh_model(cfg, data, seed)
            train(model, make_task(data, cfg), TrainConfig.from_dict(cfg["train"]), seed=seed,
                  device=torch.device("cpu"), progress=False)
            models.append(model.eval())
        pairs[family] = tuple(models)
    return pairs


@pytest.mark.parametrize("family", ["gpt2", "vit"])
@pytest.mark.parametrize("cost", ["l1", "cosine"])
def test_optimised_matching_finds_the_previous_element(trained_pairs, family: str, cost: str):
    """Identical head and MLP permutations and the residual map to 1e-6, on a trained pair, with the
    matching run on the CPU explicitly (the same code runs on CUDA when one is present)."""
    a, b = trained_pairs[family]
    _, aligner = glmc_weight_matching_states(a, b, iterations=15, mlp_cost=cost, device="cpu")
    expected = json.loads(EXPECTED.read_text())[f"{family}.{cost}"]
    assert sorted(aligner.element) == sorted(expected)
    assert len([k for k in expected if k.endswith(".mlp")]) == 2  # both layers' MLPs moved: not a trivial pin
    for name, found in aligner.element.items():
        assert found.device.type == "cpu"
        if name == "residual":
            residual = torch.tensor(expected[name], dtype=torch.float64)
            assert (found.double() - residual).abs().max().item() <= 1e-6, name
        else:
            assert found.tolist() == expected[name], name


def test_matching_with_two_threads_finds_the_previous_element(trained_pairs):
    """With two threads both layers' MLP assignments are solved at once (`match_many`) and the cost
    matrices use two threads: the same permutations, the residual map to 1e-6."""
    a, b = trained_pairs["gpt2"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, aligner = glmc_weight_matching_states(a, b, iterations=15, mlp_cost="l1", device="cpu")
    finally:
        torch.set_num_threads(threads)
    expected = json.loads(EXPECTED.read_text())["gpt2.l1"]
    assert sorted(aligner.element) == sorted(expected)
    for name, found in aligner.element.items():
        if name == "residual":
            assert (found.double() - torch.tensor(expected[name], dtype=torch.float64)).abs().max() <= 1e-6
        else:
            assert found.tolist() == expected[name], name


def test_residual_blocks_carry_the_gram_and_recompute_what_a_step_changed(trained_pairs):
    """`ResidualBlocks`: after a residual step (a random orthogonal map) the carried Gram equals the
    one recomputed from B's moved weights (to float32 rounding); after a step of one layer's MLP that
    layer's block is recomputed, so the Gram is again the recomputed one."""
    a, b = (ensure_canonical(m) for m in trained_pairs["gpt2"])
    spec, layout = spec_for(b), layout_for(b)
    params = {ref.param for mlp in layout.mlps for ref in (mlp.fc1, mlp.fc2)}
    aligner = Aligner(spec, detached_state(a), detached_state(b))
    blocks = ResidualBlocks(spec, params)
    assert sorted(sorted(owners) for owners in blocks.blocks) == [["blocks.0.mlp"], ["blocks.1.mlp"]]

    def recomputed() -> torch.Tensor:
        return ResidualBlocks(spec, params).gram(aligner)

    def rel(x: torch.Tensor, y: torch.Tensor) -> float:
        return ((x - y).abs().max() / y.abs().max()).item()

    before = blocks.gram(aligner)
    step = random_orthogonal(layout.width, torch.Generator().manual_seed(0)).float()
    aligner.update(spec["residual"], step)
    blocks.carry(step)
    assert rel(blocks.gram(aligner), before) > 0.1   # the residual step moved the Gram ...
    assert rel(blocks.gram(aligner), recomputed()) < 1e-5   # ... and carrying it followed
    aligner.update(spec["blocks.0.mlp"], torch.randperm(layout.mlps[0].hidden, generator=torch.Generator().manual_seed(1)))
    assert rel(blocks.gram(aligner), recomputed()) < 1e-5


@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_head_distances_are_the_circuit_distances(trained_pairs, family: str):
    """The head cost computed from the factors equals ‖QK_A,i − QK_B,j‖ + ‖OV_A,i − OV_B,j‖ of the
    materialised circuits (QK scaled as the circuit form stores it), for a canonical A and for A in
    circuit form (the universe's case), against a canonical B."""
    a, b = (canonicalize(m) for m in trained_pairs[family])
    state_b, width = b.state_dict(), layout_for(b).width
    for model_a in (a, circuit_form(a)):
        state_a = model_a.state_dict()
        for att_a, att_b in zip(layout_for(model_a).attentions, layout_for(b).attentions, strict=True):
            qk_a, ov_a, qk_b, ov_b = (c.double() for att, sd in ((att_a, state_a), (att_b, state_b))
                                      for c in head_circuits({k: v.double() for k, v in sd.items()}, att))
            qk_a, qk_b = qk_a * math.sqrt((width + 1) / att_a.head_dim), qk_b * math.sqrt((width + 1) / att_b.head_dim)
            expected = torch.cdist(qk_a.flatten(1), qk_b.flatten(1)) + torch.cdist(ov_a.flatten(1), ov_b.flatten(1))
            found = head_distances(state_a, att_a, state_b, att_b, width)
            assert torch.allclose(found, expected, rtol=1e-9, atol=1e-9 * expected.max().item())


@pytest.mark.parametrize("kernel", ["fused", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_l1_distances_is_the_l1_distance_matrix(kernel: str, dtype: torch.dtype):
    """Both kernels against the definition, with shapes that neither the fused kernel's 4-row and
    128-column blocks nor the torch tiles divide; rows shared between threads give the same bits."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 11, generator=gen, dtype=torch.float64), torch.randn(131, 11, generator=gen, dtype=torch.float64)
    expected = (a[:, None] - b[None]).abs().sum(-1)
    a, b = a.to(dtype), b.to(dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for tile in ((1, 50, 300, None) if kernel == "torch" else (None,)):
        assert torch.allclose(l1_distances(a, b, kernel, tile).double(), expected, rtol=0, atol=tol)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        shared = l1_distances(a, b, kernel, 50)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    assert torch.equal(shared, l1_distances(a, b, kernel, 50))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_matching_on_cuda_finds_the_cpu_element(trained_pairs, family: str):
    """The same code on the GPU (cost matrices, Procrustes and the steps there, assignments on the CPU)
    finds the permutations the CPU finds on this machine, and the residual map to 1e-5 (float32 GPU kernels).
    Against this machine's CPU, not the golden element: a GPU machine may have another torch."""
    a, b = trained_pairs[family]
    _, on_cpu = glmc_weight_matching_states(a, b, iterations=15, device="cpu")
    _, on_gpu = glmc_weight_matching_states(a, b, iterations=15, device="cuda")
    assert sorted(on_gpu.element) == sorted(on_cpu.element)
    for name, found in on_gpu.element.items():
        expected = on_cpu.element[name]
        if name == "residual":
            assert (found.double().cpu() - expected.double()).abs().max().item() <= 1e-5
        else:
            assert found.tolist() == expected.tolist(), name


def assert_bf16_close(cpu, gpu):
    """Evaluation on CUDA runs under bf16 autocast (lmcbench.tasks.autocast). The same autocast emulated
    on the CPU moved these tests' curves by at most 3.6e-4 in loss and 0.002 in accuracy (trained GPT-2
    pair) and 1e-3 / 0.01 (random MoE pairs): tolerances about 5× those."""
    diff = (cpu["value"] - gpu["value"]).abs().groupby(cpu["metric"]).max()
    assert diff["loss"] <= 5e-3 and diff["accuracy"] <= 0.05, diff.to_dict()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
def test_barrier_on_cuda_equals_cpu(trained_pairs, datasets):
    """Interpolation evaluated on the GPU gives the CPU's losses (to bf16 autocast's differences)."""
    from lmcbench.barrier import interpolation_curve
    a, b = trained_pairs["gpt2"]
    task = make_task(datasets["gpt2"], ARCH["gpt2"])
    curves = [interpolation_curve(a, task, a.state_dict(), b.state_dict(), [0.0, 0.5, 1.0], splits=("test",),
                                  max_examples=32, device=device) for device in ("cpu", "cuda")]
    assert_bf16_close(*curves)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
@pytest.mark.parametrize("family", ["vit", "gpt2"])
def test_moe_evaluation_on_cuda_equals_cpu(family: str, datasets):
    """The MoE pair evaluator (cached ViT prefix, interpolated MoE tensors) runs where it is told, with the
    states left on the CPU, and gives the CPU's curve (to bf16 autocast's differences)."""
    import copy

    from lmcbench.models.moe import insert_moe
    from lmcbench.moe.evaluation import PairEvaluator

    cfg = vit_cfg({"depth": 2}) if family == "vit" else gpt2_cfg({"n_layer": 2})
    base = fresh_model(cfg, datasets[family], 0)
    moe_cfg = {"n_experts": 3, "gating": "topk", "k": 2, "placement": "first", "hidden": 16}
    a, b = (insert_moe(copy.deepcopy(base), moe_cfg, torch.Generator().manual_seed(s)).state_dict() for s in (1, 2))
    task = make_task(datasets[family], cfg)
    data = {"test": task.eval_tensors("test", 200 if family == "vit" else 8)}
    curves = []
    for device in ("cpu", "cuda"):
        evaluator = PairEvaluator(insert_moe(copy.deepcopy(base), moe_cfg), task, a, b, data, 64, device=device)
        assert next(evaluator.model.parameters()).device.type == device
        curves.append(evaluator.curve(b, "naive", [0.0, 0.5, 1.0], ["test"]))
    assert_bf16_close(*curves)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
@pytest.mark.parametrize("family", ["gpt2", "vit"])
def test_training_on_cuda_runs_and_hands_back_cpu_weights(family: str, datasets):
    """Training runs where the GPU is (bf16 autocast), evaluates there, and returns its best weights on the CPU."""
    cfg = {**ARCH[family], "train": {**ARCH[family]["train"], "steps": 10, "eval_every": 5}}
    model = fresh_model(cfg, datasets[family], 0)
    result = train(model, make_task(datasets[family], cfg), TrainConfig.from_dict(cfg["train"]), seed=0,
                   progress=False)
    assert next(model.parameters()).device.type == "cuda"
    assert {t.device.type for t in result.state_dict.values()} == {"cpu"}
    assert [h["step"] for h in result.history] == [5, 10]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
def test_learned_matching_on_cuda_runs_and_hands_back_cpu_states(trained_pairs, datasets):
    """Learned matching trains its latents where the GPU is (under bf16 autocast its numbers match the CPU's
    only statistically, so this checks the run, not its values): every step runs, the losses are finite, and
    the aligned states come back on the CPU with A's weights as A had them."""
    from lmcbench.barrier import BoundModel
    from lmcbench.matchers import MATCHERS, MatchContext

    a, b = trained_pairs["gpt2"]
    task = make_task(datasets["gpt2"], ARCH["gpt2"])
    config = {"steps": 4, "batch_size": 4, "val_examples": 8, "eval_every": 2, "iterations": 3}
    alignment = MATCHERS["learned_full"](a, b, MatchContext(task, config, 0))
    info = alignment.info
    assert info["steps_run"] == info["max_steps"] == 4
    assert math.isfinite(info["final_train_loss"]) and math.isfinite(info["val_loss"])
    assert {t.device.type for t in (*alignment.state_a.values(), *alignment.state_b.values())} == {"cpu"}
    x = task.eval_tensors("test", 4)[0]
    with torch.no_grad():   # A is the fixed gauge: the template with A's aligned state computes A
        ours = task.logits(BoundModel(alignment.template.cpu(), alignment.state_a), x)
        torch.testing.assert_close(ours, task.logits(a, x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (workflow/scripts/gpu_check.sh)")
@pytest.mark.parametrize("method", ["gate_wm", "expert_wm"])
def test_moe_matching_on_cuda_equals_cpu(method: str):
    """MoE Algorithm 1 is device-agnostic tensor code: on CUDA states it finds the CPU's expert orders
    and hidden permutations (assignments solved on the CPU), and its aligned state stays on the GPU."""
    from lmcbench.models.moe import MoE
    from lmcbench.moe.matching import align

    states = [{f"layer.{k}": v.detach().clone() for k, v in MoE(8, 16, 6, "shared", k=2, n_shared=2,
              generator=torch.Generator().manual_seed(seed)).double().state_dict().items()} for seed in (0, 1)]
    aligned_cpu, taus_cpu = align(*states, method)
    aligned_gpu, taus_gpu = align(*({k: v.cuda() for k, v in sd.items()} for sd in states), method)
    assert {k: t.tolist() for k, t in taus_gpu.items()} == {k: t.tolist() for k, t in taus_cpu.items()}
    for name, value in aligned_gpu.items():
        assert value.device.type == "cuda", name
        assert torch.allclose(value.cpu(), aligned_cpu[name], rtol=0, atol=1e-12), name


def test_bench_matching_reports_phases_and_preserves_the_function(capsys):
    """`lmcbench bench matching` on a tiny random pair: every phase, the totals, RSS, and the check
    that the aligned B (circuit form) computes B's logits."""
    from lmcbench.bench import PHASES
    from lmcbench.cli import main

    assert main(["bench", "matching", "--n-embd", "32", "--n-layer", "2", "--n-head", "2", "--vocab-size", "97",
                 "--rounds", "2", "--device", "cpu"]) == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip())
    for key in [f"{t}_s.{p}" for t in ("cpu", "wall") for p in PHASES] + ["cpu_s.total", "wall_s.total", "peak_rss_gb",
                                                                          "numerics"]:
        assert key in rows, key
    assert rows["device"].strip() == "cpu"
    phases = [float(rows[f"cpu_s.{p}"]) for p in PHASES]
    assert min(phases) >= 0 and sum(phases) <= float(rows["cpu_s.total"]) + 0.01 * len(PHASES)  # exclusive phases
    walls = [float(rows[f"wall_s.{p}"]) for p in PHASES]
    assert min(walls) >= 0 and sum(walls) <= float(rows["wall_s.total"]) + 0.01 * len(PHASES)
    assert rows["function_preserved"].strip() == "True"


def test_gpu_check_script_parses_and_its_wheels_are_locked():
    """workflow/scripts/gpu_check.sh is valid bash, and every package it downloads for a bare GPU machine
    (`--wheels`) has a version in requirements.lock (else `--wheels` stops there, without a GPU to spare)."""
    import re
    import subprocess

    root = Path(__file__).resolve().parents[1]
    script = root / "workflow" / "scripts" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    wheels = re.search(r'^WHEELS="([^"]+)"', script.read_text(), re.M).group(1).split()
    locked = {line.split("==")[0].lower() for line in (root / "requirements.lock").read_text().splitlines()
              if "==" in line}
    assert wheels and not [name for name in wheels if name.lower() not in locked]
