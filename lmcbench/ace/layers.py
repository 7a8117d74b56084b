"""Mixed layers f = f_eq + γ·f_neq with one learnable scalar γ per mixed sub-layer (γ starts at 1).

`MixedLayer.branch` (default True) switches the non-equivariant branch; with it off the layer is
exactly f_eq and costs the same as the strict layer [official code `disable_equivariance`].
Works on plain tensors and on escnn GeometricTensors (the branch then acts on `x.tensor` and its
output is re-wrapped as the equivariant output's field type). An escnn R2Conv with an nn.Conv2d branch of
the same geometry is one convolution: conv(x, K_eq) + γ·conv(x, K) = conv(x, K_eq + γ·K), biases alike
(the same function and gradients up to float rounding, at half the convolution cost of the two).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn


class MixedLayer(nn.Module):
    def __init__(self, eq: nn.Module, neq: nn.Module | None, gamma_init: float = 1.0,
                 neq_input: Callable | None = None):
        super().__init__()
        self.eq, self.neq = eq, neq
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init))) if neq is not None else None
        self.branch = neq is not None
        self.neq_input = neq_input   # optional map from the layer's input to the branch's input
        self.fused = neq_input is None and _same_convolution(eq, neq)

    def forward(self, x, *args):
        if self.fused and self.branch:
            return self._fused_conv(x)
        y = self.eq(x, *args) if args else self.eq(x)
        if not self.branch or self.neq is None:
            return y
        raw = self.neq_input(x, *args) if self.neq_input is not None else (x.tensor if hasattr(x, "tensor") else x)
        z = self.neq(raw)
        if hasattr(y, "tensor"):   # escnn GeometricTensor: add to the raw tensor, re-wrap as the output type
            return type(y)(y.tensor + self.gamma * z, y.type)
        return y + self.gamma * z


    def _fused_conv(self, x):
        """R2Conv + γ·Conv2d as one convolution (module docstring); the R2Conv's expanded filter as its own
        forward takes it: rebuilt from the basis in training, cached in eval mode."""
        eq, neq = self.eq, self.neq
        kernel, bias = eq.expand_parameters() if eq.training else (eq.filter, eq.expanded_bias)
        kernel = kernel + self.gamma * neq.weight
        if neq.bias is not None:
            bias = self.gamma * neq.bias if bias is None else bias + self.gamma * neq.bias
        y = F.conv2d(x.tensor, kernel, bias, stride=eq.stride, padding=eq.padding, dilation=eq.dilation,
                     groups=eq.groups)
        return type(x)(y, eq.out_type)


def _same_convolution(eq: nn.Module, neq: nn.Module | None) -> bool:
    """Whether `eq` is an escnn R2Conv and `neq` an nn.Conv2d computing the same convolution geometry."""
    if not isinstance(neq, nn.Conv2d) or type(eq).__name__ != "R2Conv":
        return False
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return (eq.padding_mode == neq.padding_mode == "zeros" and tuple(neq.weight.shape) == (eq.out_type.size, eq.in_type.size, *pair(eq.kernel_size))
            and pair(eq.stride) == pair(neq.stride) and pair(eq.padding) == pair(neq.padding)
            and pair(eq.dilation) == pair(neq.dilation) and eq.groups == neq.groups)


def mixed_layers(model: nn.Module) -> list[tuple[str, MixedLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, MixedLayer) and m.neq is not None]


def gamma_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [m.gamma for _, m in mixed_layers(model)]


def branch_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in mixed_layers(model) for p in m.neq.parameters()]


def rpp_penalty(model: nn.Module, eq_weight: float, neq_weight: float) -> torch.Tensor:
    """Residual Pathway Prior as MAP (Finzi et al. 2021): Gaussian priors on both paths, i.e.
    eq_weight·‖θ_eq‖² + neq_weight·‖θ_neq,eff‖² with the branch measured as it acts, γ·f_neq: the last
    affine map of each branch enters as γ·(W, b), so rescaling γ → aγ, (W, b) → (W, b)/a leaves the penalty
    unchanged (a prior on W alone is evaded by growing γ). θ_eq: every parameter outside the branches and γ."""
    neq, skip = 0.0, set()
    for _, m in mixed_layers(model):
        last = [mod for mod in m.neq.modules() if isinstance(mod, (nn.Linear, nn.Conv2d))][-1]
        for p in m.neq.parameters():
            skip.add(id(p))
            scale = m.gamma if any(p is q for q in last.parameters()) else 1.0
            neq = neq + (scale * p).pow(2).sum()
        skip.add(id(m.gamma))
    eq = sum(p.pow(2).sum() for p in model.parameters() if id(p) not in skip)
    return eq_weight * eq + neq_weight * neq


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, inputs: tuple, batch_size: int = 500) -> None:
    """Recompute every BatchNorm's running mean/var as the exact average over `inputs` (the training split)
    for the model as it is now (branch on or off). Why: statistics collected while training with the branch
    on describe a different function from f_{θ,0}; the reported model needs its own [inferred]."""
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))]
    if not norms:
        return
    was_training = model.training
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None            # cumulative moving average: the plain mean over the batches seen
    model.train()
    n = len(inputs[0])
    for i in range(0, n, batch_size):
        model(*(t[i:i + batch_size] for t in inputs))
    for m, mom in zip(norms, saved):
        m.momentum = mom
    model.train(was_training)


def set_branch(model: nn.Module, on: bool) -> None:
    for _, m in mixed_layers(model):
        m.branch = on


@contextlib.contextmanager
def branch(model: nn.Module, on: bool) -> Iterator[nn.Module]:
    """Temporarily switch every non-equivariant branch on or off (off = f_{θ,0}, exactly equivariant)."""
    layers = mixed_layers(model)
    before = [m.branch for _, m in layers]
    set_branch(model, on)
    try:
        yield model
    finally:
        for (_, m), b in zip(layers, before):
            m.branch = b
