"""The one training loop for every model: AdamW, warm-up + cosine, clipping, early stopping, resume.

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
    stopped_early = False
    while state["step"] < cfg.steps:
        model.train()
        x, y = task.train_batch(state["step"], cfg.batch_size, seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device):
            loss_sum, _, n = task.score(model, x, y)
            loss = loss_sum / n
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        state["step"] += 1
        bar.update(1)

        if state["step"] % cfg.eval_every == 0 or state["step"] == cfg.steps:
            model.eval()
            val = evaluate(model, task, val_data, cfg.eval_batch_size, device)
            record = {"step": state["step"], "train_loss": loss.item(), "val_loss": val["loss"],
                      "val_accuracy": val["accuracy"], "lr": scheduler.get_last_lr()[0]}
            state["history"].append(record)
            bar.set_postfix(train=f"{record['train_loss']:.3f}", val=f"{val['loss']:.3f}")
            log.info("step %(step)d train_loss %(train_loss).4f val_loss %(val_loss).4f val_acc %(val_accuracy).4f", record)
            if val["loss"] < state["best_val"]:
                state.update(best_val=val["loss"], best_step=state["step"], bad_evals=0,
                             best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            else:
                state["bad_evals"] += 1
            if cfg.patience is not None and state["bad_evals"] >= cfg.patience:
                stopped_early = True
                log.info("early stop at step %d (best step %d)", state["step"], state["best_step"])
                break
            if resume_file:
                with atomic_path(resume_file) as tmp:
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(),
                                "torch_rng": torch.get_rng_state(), "state": state, "run": identity}, tmp)
    bar.close()
    best = state["best_state"] or {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best)
    return TrainResult(best, state["history"], state["best_val"], state["best_step"], stopped_early)
