"""The one training loop for every model (`run_steps`) with a small hook protocol (`Hooks`), and the
GLMC/MoE recipe on it (`train`): AdamW, warm-up + cosine, clipping, early stopping, resume. The ACE
training methods are hooks on the same loop (lmcbench.ace.baselines): extra loss terms, a constrained
step in place of the plain one, a γ schedule per step, evaluation and an end-of-training action.

A run periodically writes `resume.pt` (model, optimiser, scheduler, RNG and early-stopping state)
atomically into its output directory; a killed run restarted with the same arguments continues
from there and, on CPU, ends with exactly the weights an uninterrupted run would have produced.
The file records the run that wrote it (`run_identity`: training config, seed, the caller's job
description, code version); a run with any other identity never resumes from it, but starts fresh
and logs which keys differ.
"""
from __future__ import annotations

import logging
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lmcbench.io import atomic_path, code_version
from lmcbench.tasks import Task, autocast, evaluate

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    eval_every: int = 50
    patience: int | None = None       # evaluations without improvement before stopping; None = never
    eval_examples: int | None = 512   # val examples per evaluation (CPU budget)
    eval_batch_size: int = 128

    @classmethod
    def from_dict(cls, cfg: dict) -> "TrainConfig":
        return cls(**cfg)


@dataclass
class TrainResult:
    state_dict: dict[str, torch.Tensor]
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_step: int = 0
    stopped_early: bool = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return factor


def _weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices only; biases, norms, embeddings' positional vectors and tokens stay undecayed."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 and "pos_embed" not in name and "cls_token" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class Hooks:
    """What a training method adds to `run_steps`; every hook is optional (these defaults do nothing).

    Per step, in this order: `before_step` (e.g. a γ schedule), the objective, `extra_loss` (a term added
    to it: a penalty, a prior), then either `constrained_step` (a step that replaces the plain one and
    returns True, e.g. primal–dual) or the plain step — zero_grad, `before_backward`, backward,
    `after_backward` (e.g. clipping), every optimiser's step — then the schedulers' step and `after_step`
    (logging, evaluation; returns True to stop). `end` runs once after the last step."""

    def before_step(self, model: nn.Module, step: int) -> None:
        pass

    def extra_loss(self, model: nn.Module, batch: tuple, pred) -> torch.Tensor | None:
        return None

    def constrained_step(self, loss: torch.Tensor) -> bool:
        return False

    def before_backward(self, loss: torch.Tensor) -> None:
        pass

    def after_backward(self, model: nn.Module) -> None:
        pass

    def after_step(self, model: nn.Module, step: int, loss: torch.Tensor) -> bool:
        return False

    def end(self, model: nn.Module) -> None:
        pass


def run_steps(model: nn.Module, batches: Callable[[int], tuple], objective: Callable, optimizers: list,
              schedulers: list, hooks: Hooks, total: int, start: int = 0) -> int:
    """The one training loop: steps `start`..`total` − 1 of `model` on `batches(step)` (a tuple, passed
    whole to `objective(model, batch) -> (loss, prediction)`), with `hooks` (see `Hooks`). Returns the
    number of steps done (fewer than `total` when `after_step` stopped the run)."""
    step = start
    while step < total:
        model.train()
        batch = batches(step)
        hooks.before_step(model, step)
        loss, pred = objective(model, batch)
        extra = hooks.extra_loss(model, batch, pred)
        if extra is not None:
            loss = loss + extra
        if not hooks.constrained_step(loss):
            for optimizer in optimizers:
                optimizer.zero_grad(set_to_none=True)
            hooks.before_backward(loss)
            loss.backward()
            hooks.after_backward(model)
            for optimizer in optimizers:
                optimizer.step()
        for scheduler in schedulers:
            scheduler.step()
        step += 1
        if hooks.after_step(model, step, loss):
            break
    hooks.end(model)
    return step


def run_identity(cfg: TrainConfig, seed: int, job: dict | None = None) -> dict:
    """What a resume file must have been written by to be resumed: config, seed, job, code version."""
    return {"train": asdict(cfg), "seed": seed, "job": job or {}, "code": code_version()}


def _differences(old, new, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys(), key=str)
                for d in _differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def _load_resume(resume_file: Path, identity: dict):
    """The saved state if `resume_file` was written by this very run; otherwise None (and it is removed)."""
    try:
        saved = torch.load(resume_file, weights_only=False)
        if "run" not in saved:
            differ, reason = ["run"], "it records no run identity (written by an older lmcbench)"
        else:
            differ = _differences(saved["run"], identity)
            reason = f"it was written by a different run ({'; '.join(differ[:5])}{' …' if len(differ) > 5 else ''})"
    except Exception as error:  # noqa: BLE001 - whatever makes it unreadable, there is nothing to resume
        differ, reason = [error], f"it is unreadable ({error})"
    if not differ:
        return saved
    log.warning("not resuming from %s: %s; starting fresh", resume_file, reason)
    resume_file.unlink()
    return None


class ValidationHooks(Hooks):
    """`train`'s hooks: gradient clipping, periodic validation keeping the best weights, early stopping and
    the resume file (`snapshot()` is what it saves)."""

    def __init__(self, cfg: TrainConfig, task: Task, val_data, device, state: dict, scheduler, bar,
                 resume_file: Path | None, snapshot: Callable[[], dict]):
        self.cfg, self.task, self.val_data, self.device, self.state = cfg, task, val_data, device, state
        self.scheduler, self.bar, self.resume_file, self.snapshot = scheduler, bar, resume_file, snapshot
        self.stopped_early = False

    def after_backward(self, model: nn.Module) -> None:
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.cfg.grad_clip)

    def after_step(self, model: nn.Module, step: int, loss: torch.Tensor) -> bool:
        cfg, state = self.cfg, self.state
        state["step"] = step
        self.bar.update(1)
        if not (step % cfg.eval_every == 0 or step == cfg.steps):
            return False
        model.eval()
        val = evaluate(model, self.task, self.val_data, cfg.eval_batch_size, self.device)
        record = {"step": step, "train_loss": loss.item(), "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "lr": self.scheduler.get_last_lr()[0]}
        state["history"].append(record)
        self.bar.set_postfix(train=f"{record['train_loss']:.3f}", val=f"{val['loss']:.3f}")
        log.info("step %(step)d train_loss %(train_loss).4f val_loss %(val_loss).4f val_acc %(val_accuracy).4f", record)
        if val["loss"] < state["best_val"]:
            state.update(best_val=val["loss"], best_step=step, bad_evals=0,
                         best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            state["bad_evals"] += 1
        if cfg.patience is not None and state["bad_evals"] >= cfg.patience:
            self.stopped_early = True
            log.info("early stop at step %d (best step %d)", step, state["best_step"])
            return True
        if self.resume_file:
            with atomic_path(self.resume_file) as tmp:
                torch.save(self.snapshot(), tmp)
        return False


def train(model: nn.Module, task: Task, cfg: TrainConfig, seed: int, workdir: str | Path | None = None,
          device: torch.device | None = None, progress: bool = True, job: dict | None = None) -> TrainResult:
    """Train `model` in place on `task`; returns the best-validation weights and the history.
    `job` describes the run beyond `cfg` and `seed` (model, data): a resume file resumes only when
    config, seed, job and code version all match (`run_identity`)."""
    device = device or default_device()
    seed_everything(seed)
    model.to(device)
    optimizer = torch.optim.AdamW(_weight_decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, cfg.steps))
    val_data = task.eval_tensors("val", cfg.eval_examples)
    state = {"step": 0, "history": [], "best_val": math.inf, "best_step": 0, "best_state": None, "bad_evals": 0}

    resume_file = Path(workdir) / "resume.pt" if workdir else None
    identity = run_identity(cfg, seed, job)
    saved = _load_resume(resume_file, identity) if resume_file and resume_file.exists() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        log.info("resumed from %s at step %d", resume_file, state["step"])

    bar = tqdm(total=cfg.steps, initial=state["step"], desc="train", disable=not progress, mininterval=2.0)
    hooks = ValidationHooks(cfg, task, val_data, device, state, scheduler, bar, resume_file,
                            lambda: {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "torch_rng": torch.get_rng_state(),
                                     "state": state, "run": identity})

    def batch(step: int) -> tuple:
        x, y = task.train_batch(step, cfg.batch_size, seed)
        return x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def objective(model: nn.Module, batch: tuple):
        with autocast(device):
            loss_sum, _, n = task.score(model, *batch)
            return loss_sum / n, None

    run_steps(model, batch, objective, [optimizer], [scheduler], hooks, cfg.steps, start=state["step"])
    bar.close()
    best = state["best_state"] or {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    return TrainResult(best, state["history"], state["best_val"], state["best_step"], hooks.stopped_early)
