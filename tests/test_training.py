"""The training loop: it learns, stops early on the best weights, resumes exactly, is seeded, and schedules lr."""
from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import lmcbench.training as training
from conftest import fresh_model, model_cfg, state_equal
from lmcbench.tasks import evaluate, make_task
from lmcbench.training import TrainConfig, train, warmup_cosine

FAMILIES = ["vit", "gpt2"]


def _setup(family, datasets, seed=0, arch=None, **train_overrides):
    cfg = model_cfg(family, arch, **train_overrides)
    data = datasets[family]
    return fresh_model(cfg, data, seed), make_task(data, cfg), TrainConfig.from_dict(cfg["train"])


# ----------------------------------------------------------------------------- it learns
@pytest.mark.parametrize("family", FAMILIES)
def test_smoke_training_lowers_validation_loss(family, datasets):
    model, task, cfg = _setup(family, datasets)
    val = task.eval_tensors("val", cfg.eval_examples)
    before = evaluate(model.eval(), task, val, cfg.eval_batch_size, "cpu")["loss"]
    result = train(model, task, cfg, seed=0, device=torch.device("cpu"), progress=False)
    after = evaluate(model.eval(), task, val, cfg.eval_batch_size, "cpu")["loss"]

    assert [h["step"] for h in result.history] == list(range(cfg.eval_every, cfg.steps + 1, cfg.eval_every))
    assert all(math.isfinite(h["val_loss"]) and math.isfinite(h["train_loss"]) for h in result.history)
    assert after < before - 0.05, f"val loss {before:.4f} -> {after:.4f}"
    assert result.best_val_loss == pytest.approx(min(h["val_loss"] for h in result.history))
    assert after == pytest.approx(result.best_val_loss, abs=1e-6)  # the returned model holds the best weights
    assert not result.stopped_early
    assert state_equal(result.state_dict, {k: v.cpu() for k, v in model.state_dict().items()})


# ----------------------------------------------------------------------------- early stopping
class _ScriptedVal:
    """Replaces `evaluate` inside the training loop: returns scripted val losses, snapshots weights per call."""

    def __init__(self, losses):
        self.losses, self.snapshots = list(losses), []

    def __call__(self, model, task, data, batch_size, device="cpu"):
        self.snapshots.append({k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        return {"loss": self.losses[len(self.snapshots) - 1], "accuracy": 0.0}


def test_early_stopping_restores_best_weights(datasets, monkeypatch):
    model, task, cfg = _setup("vit", datasets, steps=100, eval_every=10, patience=2)
    scripted = _ScriptedVal([3.0, 2.0, 2.5, 2.2, 1.0, 0.5, 0.4, 0.3, 0.2, 0.1])
    monkeypatch.setattr(training, "evaluate", scripted)
    result = train(model, task, cfg, seed=0, device=torch.device("cpu"), progress=False)

    assert result.stopped_early
    assert len(scripted.snapshots) == 4  # two evaluations without improvement after the best (step 20)
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]
    assert result.best_step == 20 and result.best_val_loss == 2.0
    best = scripted.snapshots[1]
    assert state_equal(result.state_dict, best)
    assert state_equal({k: v.cpu() for k, v in model.state_dict().items()}, best)  # restored in place
    assert not state_equal(best, scripted.snapshots[3])  # training did move on after the best step


def test_no_patience_never_stops(datasets, monkeypatch):
    model, task, cfg = _setup("vit", datasets, steps=40, eval_every=10, patience=None)
    scripted = _ScriptedVal([1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(training, "evaluate", scripted)
    result = train(model, task, cfg, seed=0, device=torch.device("cpu"), progress=False)
    assert not result.stopped_early
    assert len(scripted.snapshots) == 4
    assert result.best_step == 10
    assert state_equal(result.state_dict, scripted.snapshots[0])


# ----------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_after_kill_matches_uninterrupted_run(family, datasets, tmp_path, monkeypatch):
    overrides = dict(steps=30, eval_every=10)
    cpu = torch.device("cpu")

    model, task, cfg = _setup(family, datasets, **overrides)
    full = train(model, task, cfg, seed=3, workdir=tmp_path / "full", device=cpu, progress=False)
    full_weights = {k: v.clone() for k, v in model.state_dict().items()}

    # Second run: killed right after its resume file is written at the step-20 evaluation.
    real_atomic_path, writes = training.atomic_path, []

    @contextlib.contextmanager
    def killing_atomic_path(path):
        with real_atomic_path(path) as tmp:
            yield tmp
        writes.append(path)
        if len(writes) == 2:
            raise Killed

    monkeypatch.setattr(training, "atomic_path", killing_atomic_path)
    workdir = tmp_path / "killed"
    model, task, cfg = _setup(family, datasets, **overrides)
    with pytest.raises(Killed):
        train(model, task, cfg, seed=3, workdir=workdir, device=cpu, progress=False)
    monkeypatch.undo()
    saved = torch.load(workdir / "resume.pt", weights_only=False)
    assert saved["state"]["step"] == 20
    assert not list(workdir.glob(".*tmp*"))

    # Restart "in a new process": a new model (even a different init: the resume file must win) and task.
    torch.manual_seed(12345)
    model, task, cfg = _setup(family, datasets, seed=77, **overrides)
    resumed = train(model, task, cfg, seed=3, workdir=workdir, device=cpu, progress=False)

    assert state_equal(full_weights, model.state_dict())
    assert state_equal(full.state_dict, resumed.state_dict)
    assert [h["step"] for h in resumed.history] == [10, 20, 30]
    assert resumed.history == full.history
    assert resumed.best_step == full.best_step and resumed.best_val_loss == full.best_val_loss


# ----------------------------------------------------------------------------- seeding
@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_weights_different_seed_different_weights(family, datasets):
    overrides = dict(steps=15, eval_every=5)
    runs = {}
    for name, init_seed, train_seed in (("a", 0, 0), ("b", 0, 0), ("other_init", 1, 1), ("other_batches", 0, 1)):
        model, task, cfg = _setup(family, datasets, seed=init_seed, **overrides)
        train(model, task, cfg, seed=train_seed, device=torch.device("cpu"), progress=False)
        runs[name] = model.state_dict()
    assert state_equal(runs["a"], runs["b"])
    assert not state_equal(runs["a"], runs["other_init"])
    assert not state_equal(runs["a"], runs["other_batches"])  # the batch order depends on the seed too


# ----------------------------------------------------------------------------- schedule
def test_warmup_cosine_values():
    f = warmup_cosine(10, 110)
    assert f(0) == pytest.approx(0.1)
    assert f(4) == pytest.approx(0.5)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)                      # cosine starts at its peak
    assert f(35) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(60) == pytest.approx(0.5)                      # half-way through the cosine
    assert f(110) == pytest.approx(0.0, abs=1e-12)
    assert f(500) == pytest.approx(0.0, abs=1e-12)          # clamped past the end
    values = [f(s) for s in range(111)]
    assert all(x <= y for x, y in zip(values[:10], values[1:11]))   # rising warm-up
    assert all(x >= y for x, y in zip(values[10:], values[11:]))    # falling cosine


def test_learning_rate_per_step_follows_the_schedule(datasets, monkeypatch):
    steps, lr, warmup = 40, 0.002, 10
    model, task, cfg = _setup("vit", datasets, steps=steps, lr=lr, warmup_frac=warmup / steps, eval_every=10)
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append([g["lr"] for g in opt.param_groups]))
    try:
        result = train(model, task, cfg, seed=0, device=torch.device("cpu"), progress=False)
    finally:
        handle.remove()
    assert len(seen) == steps

    def expected(k):  # lr used by optimisation step k (0-based)
        if k < warmup:
            return lr * (k + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (k - warmup) / (steps - warmup)))

    for k, group_lrs in enumerate(seen):
        assert group_lrs == pytest.approx([expected(k)] * len(group_lrs), rel=1e-9, abs=1e-15)
    # the history records the lr that the *next* step would use, after the scheduler stepped
    for record in result.history:
        assert record["lr"] == pytest.approx(expected(record["step"]), rel=1e-9, abs=1e-15)
    assert result.history[0]["lr"] == pytest.approx(lr)                        # end of warm-up: peak
    assert result.history[1]["lr"] == pytest.approx(lr * 0.75)                 # cos(π/3)
    assert result.history[-1]["lr"] == pytest.approx(0.0, abs=1e-15)


def test_weight_decay_groups_skip_biases_norms_and_tokens(datasets):
    model, _, _ = _setup("vit", datasets)
    decay, no_decay = training._weight_decay_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decayed | undecayed == set(names.values()) and not decayed & undecayed
    assert "pos_embed" in undecayed and "cls_token" in undecayed
    assert all(n.endswith("bias") or "norm" in n or n in ("pos_embed", "cls_token") for n in undecayed)
    assert "head.weight" in decayed
