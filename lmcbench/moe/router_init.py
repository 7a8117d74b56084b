"""Data-driven router initialisation (beyond the paper [inferred]): k-means centroids of the layer's inputs.

At CPU scale (3500 training digits, a few hundred fine-tuning steps) a randomly initialised router
barely moves: the partition of tokens among experts is fixed by the seed's random router, so two
seeds' experts specialise on unrelated token sets and there is nothing for Step 1 to match (issue 11).
Initialising the router at the k-means centroids c_i of the tokens entering the layer gives a
partition that the data determines (the same clusters for every seed, in a seed-dependent order):
nearest-centroid routing argmin_i ‖x − c_i‖² is the linear router W_i = β c_i, b_i = −β ‖c_i‖² / 2.
β = 2 · scale / (mean squared distance of a token to its centroid) sets the typical logit gap to
about `scale` (confidence of the initial routing). The experts are still initialised at random.
"""
from __future__ import annotations

import torch
from torch import Tensor

from lmcbench.models.moe import moe_modules
from lmcbench.moe.diagnostics import moe_inputs


def kmeans(x: Tensor, n: int, generator: torch.Generator, iterations: int = 25) -> Tensor:
    """(n, d) centroids of the rows of x: k-means++ seeding from `generator`, then Lloyd iterations."""
    x = x.double()
    centroids = x[torch.randint(len(x), (1,), generator=generator)]
    for _ in range(1, n):
        d2 = torch.cdist(x, centroids).pow(2).min(1).values
        pick = torch.multinomial(d2 / d2.sum(), 1, generator=generator)
        centroids = torch.cat([centroids, x[pick]])
    for _ in range(iterations):
        assign = torch.cdist(x, centroids).argmin(1)
        for i in range(n):
            members = x[assign == i]
            if len(members):
                centroids[i] = members.mean(0)
    return centroids


def centroid_router(x: Tensor, centroids: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(W, b) of the linear router that routes to the nearest centroid with a logit gap of about `scale`."""
    spread = torch.cdist(x.double(), centroids).pow(2).min(1).values.mean()
    beta = 2 * scale / spread
    return beta * centroids, -beta * centroids.pow(2).sum(1) / 2


@torch.no_grad()
def kmeans_routers(model: torch.nn.Module, inputs: Tensor, scale: float, generator: torch.Generator,
                   batch_size: int = 256) -> torch.nn.Module:
    """Set every MoE router of `model` (in layer order, each seeing the earlier layers already set) to
    the k-means router of the tokens entering it on `inputs`; returns the model."""
    for name, layer in moe_modules(model).items():
        tokens = moe_inputs(model, inputs, batch_size, every_token=True)[name]
        centroids = kmeans(tokens, layer.n_experts, generator)
        w, b = centroid_router(tokens, centroids, scale)
        layer.router.weight.copy_(w.to(layer.router.weight.dtype))
        layer.router.bias.copy_(b.to(layer.router.bias.dtype))
    return model
