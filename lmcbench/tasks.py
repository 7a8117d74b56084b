"""A task couples a dataset with how a model is scored on it.

Training and the barrier engine only see `Task`: images are classified (cross-entropy and top-1
accuracy), text is next-token prediction (mean token cross-entropy and next-token accuracy).
Evaluation tensors are materialised once per split, so interpolation sweeps never reload data.
"""
from __future__ import annotations

from dataclasses import dataclass
import torch
import torch.nn.functional as F
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class Task:
    """Base class; subclasses define how split tensors are cut into (inputs, targets) and scored."""

    dataset: object  # lmcbench.data.Dataset

    def split(self, name: str):
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; expected train, val or test")
        return getattr(self.dataset, name)

    def train_batch(self, step: int, batch_size: int, seed: int) -> Batch:
        """The batch for optimisation step `step`: a pure function of (step, seed), so resumes are exact."""
        raise NotImplementedError

    def eval_tensors(self, split: str, max_examples: int | None = None) -> Batch:
        raise NotImplementedError

    def logits(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed loss, number correct, number of scored items) for one batch."""
        logits = self.logits(model, inputs)
        logits = logits.reshape(-1, logits.shape[-1]).float()
        targets = targets.reshape(-1)
        loss = F.cross_entropy(logits, targets, reduction="sum")
        correct = (logits.argmax(-1) == targets).sum()
        return loss, correct, targets.numel()


class ClassificationTask(Task):
    def train_batch(self, step, batch_size, seed):
        x, y = self.dataset.train
        per_epoch = len(y) // batch_size
        if per_epoch == 0:
            raise ValueError(f"train split has {len(y)} examples, fewer than batch_size={batch_size}")
        epoch, position = divmod(step, per_epoch)
        if getattr(self, "_epoch", None) != (seed, epoch):  # one reshuffle per epoch
            self._order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
            self._epoch = (seed, epoch)
        idx = self._order[position * batch_size:(position + 1) * batch_size]
        return x[idx], y[idx]

    def eval_tensors(self, split, max_examples=None):
        x, y = self.split(split)
        return x[:max_examples], y[:max_examples]

    def logits(self, model, inputs):
        return model(inputs)


class LanguageModelingTask(Task):
    def __init__(self, dataset, block_size: int):
        super().__init__(dataset)
        self.block_size = block_size

    def train_batch(self, step, batch_size, seed):
        tokens = self.dataset.train
        span = self.block_size + 1
        if len(tokens) <= span:
            raise ValueError(f"train split has {len(tokens)} tokens, fewer than block_size+1={span}")
        generator = torch.Generator().manual_seed(seed * 100_003 + step)  # random windows, nanoGPT style
        starts = torch.randint(0, len(tokens) - span, (batch_size,), generator=generator)
        windows = tokens[starts[:, None] + torch.arange(span)]
        return windows[:, :-1], windows[:, 1:]

    def eval_tensors(self, split, max_examples=None):
        """Non-overlapping blocks from the start of the split: deterministic and reused across λ."""
        tokens = self.split(split)
        span = self.block_size + 1
        n = (len(tokens) - 1) // self.block_size
        if n == 0:
            raise ValueError(f"{split} split has {len(tokens)} tokens, fewer than block_size+1={span}")
        n = min(n, max_examples) if max_examples else n
        starts = torch.arange(n) * self.block_size
        windows = tokens[starts[:, None] + torch.arange(span)]
        return windows[:, :-1], windows[:, 1:]

    def logits(self, model, inputs):
        # no key/value cache: every call scores whole blocks, and building the cache concatenates each layer's keys
        return model(input_ids=inputs, use_cache=False).logits


def make_task(dataset, model_cfg: dict) -> Task:
    if dataset.kind == "image":
        return ClassificationTask(dataset)
    if dataset.kind == "text":
        return LanguageModelingTask(dataset, block_size=model_cfg["arch"]["n_positions"])
    raise ValueError(f"no task for dataset kind {dataset.kind!r}")


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, data: Batch, batch_size: int, device: torch.device | str = "cpu") -> dict:
    """Mean loss and accuracy of `model` on pre-materialised (inputs, targets)."""
    inputs, targets = data
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for start in range(0, len(inputs), batch_size):
        x = inputs[start:start + batch_size].to(device, non_blocking=True)
        y = targets[start:start + batch_size].to(device, non_blocking=True)
        with autocast(device):
            l, c, n = task.score(model, x, y)
        loss_sum += l.double()
        correct += c
        count += n
    return {"loss": (loss_sum / count).item(), "accuracy": (correct.double() / count).item()}


def autocast(device: torch.device | str):
    """bf16 autocast on CUDA (AMP); a no-op on CPU so CPU numbers are exact fp32 and reproducible."""
    device = torch.device(device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
