"""Interpolation curves of one MoE pair, cheap enough to run on whole test splits.

In the paper's protocol (moe.md §5.1 [secondary]) both endpoints share one frozen backbone, so along
λθ_A + (1−λ)θ_B only the MoE parameters move. `PairEvaluator` uses that:

* only the MoE tensors are interpolated; the backbone is loaded once from A (after checking that B's
  backbone is identical — otherwise, e.g. with `train_backbone`, it falls back to interpolating
  every tensor through the whole model);
* for a timm ViT, the residual stream entering the first MoE sub-layer (after that block's
  attention) is computed once per split and cached; each λ and expert order runs only the rest of
  the network. When the MoE sits in the last block and the head reads the class token, only that
  token is carried (the other tokens' MoE outputs never reach the logits). Text models (GPT-2) are
  evaluated end to end (their first-layer prefix is only the embedding lookup);
* the endpoint values are evaluated once per pair: every alignment of B is the same function as B
  (Prop. 3.1/3.2 [paper]; top-k on Ω), so λ = 0 is B's value up to float rounding for every method;
* values are memoised per (alignment key, split, λ), so an expert order evaluated for the ranks is
  not evaluated again as a method's curve on the same grid.

Batching the λ grid into one forward was measured not to pay on CPU: the forward is FLOP-bound
(17k tokens × d = 64 per 1000 images), so stacking λs adds no throughput.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from lmcbench.barrier import BoundModel
from lmcbench.models.moe import moe_modules
from lmcbench.tasks import evaluate
from lmcbench.training import default_device


class _StopForward(Exception):
    pass


class _ViTSuffix(nn.Module):
    """The part of a timm ViT after the attention of block `start`, on a cached residual stream."""

    def __init__(self, vit: nn.Module, start: int, class_token_only: bool):
        super().__init__()
        self.vit, self.start, self.class_token_only = vit, start, class_token_only

    def forward(self, residual):
        blk = self.vit.blocks[self.start]
        x = residual[:, :1] if self.class_token_only else residual
        x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
        for later in self.vit.blocks[self.start + 1:]:
            x = later(x)
        return self.vit.forward_head(self.vit.norm(x))


def first_moe_block(model: nn.Module) -> int | None:
    """Index of the first ViT block holding an MoE, or None if the model is not a timm ViT."""
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "forward_head"):
        return None
    layers = [i for i, blk in enumerate(blocks) if blk.mlp in set(moe_modules(model).values())]
    return layers[0] if layers else None


def class_token_only(model: nn.Module, block: int) -> bool:
    """True when only the class token of ViT block `block`'s MLP output reaches the logits: it is the
    last block and the head pools the class token."""
    return block == len(model.blocks) - 1 and getattr(model, "global_pool", None) == "token"


@torch.no_grad()
def _cached_residual(model: nn.Module, start: int, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The residual stream entering block `start`'s MLP sub-layer, for every input (forward stopped there)."""
    parts = []

    def grab(_module, args):
        parts.append(args[0].detach())
        raise _StopForward

    hook = model.blocks[start].norm2.register_forward_pre_hook(grab)
    device = next(model.parameters()).device
    try:
        for i in range(0, len(inputs), batch_size):
            try:
                model(inputs[i:i + batch_size].to(device))
            except _StopForward:
                pass
    finally:
        hook.remove()
    return torch.cat(parts)


class PairEvaluator:
    """Loss and accuracy along λθ_A + (1−λ)θ_B' for alignments B' of one pair (see the module docstring).
    `data` maps split → (inputs, targets), already cut to the examples to evaluate. The forwards run on
    `device` (default: the GPU when there is one, as the barrier's do); the states may live anywhere."""

    def __init__(self, model: nn.Module, task, state_a: dict, state_b: dict, data: dict, batch_size: int,
                 device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device).eval()
        self.model.load_state_dict(state_a)
        self.task, self.batch_size, self.state_a, self.state_b = task, batch_size, state_a, state_b
        moe_names = {f"{p}." for p in moe_modules(model)}
        in_moe = [k for k in state_a if any(k.startswith(p) for p in moe_names)]
        shared = all(torch.equal(state_a[k], state_b[k]) for k in state_a if k not in set(in_moe))
        self.keys = [k for k in (in_moe if shared else state_a) if state_a[k].is_floating_point()]
        start = first_moe_block(model) if shared else None
        self.data = data
        self.net: nn.Module = self.model
        self.prefix = ""
        if start is not None:
            self.net = _ViTSuffix(self.model, start, class_token_only(model, start))
            self.prefix = "vit."
            self.data = {s: (_cached_residual(self.model, start, x, batch_size), y) for s, (x, y) in data.items()}
        self.cached_prefix = start is not None
        self._memo: dict[tuple, dict] = {}

    def _values(self, state_b: dict, lam: float, split: str) -> dict:
        tensors = {self.prefix + k: lam * self.state_a[k].to(self.device).float()
                   + (1 - lam) * state_b[k].to(self.device).float() for k in self.keys}
        return evaluate(BoundModel(self.net, tensors), self.task, self.data[split], self.batch_size, self.device)

    def curve(self, state_b: dict, key: str, lambdas, splits) -> pd.DataFrame:
        """Long table (lambda, split, metric, value) for the alignment `state_b` named `key`; the
        endpoints are shared by all keys of the pair, interior values memoised per (key, split, λ)."""
        rows = []
        for lam in np.asarray(lambdas, float):
            for split in splits:
                memo_key = ("A" if lam == 1 else "B" if lam == 0 else key, split, float(lam))
                if memo_key not in self._memo:
                    source = self.state_b if lam == 0 else state_b
                    self._memo[memo_key] = self._values(source, float(lam), split)
                rows += [{"lambda": float(lam), "split": split, "metric": m, "value": v}
                         for m, v in self._memo[memo_key].items()]
        return pd.DataFrame(rows)
