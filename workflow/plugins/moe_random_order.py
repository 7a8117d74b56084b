"""Worked example of a plugin MoE ordering method (README "Add a method"): a uniformly random expert order
per layer, followed by Step 2 like every order method, as a chance-level control. Its barrier and rank
say what Step 1 of gate_wm / expert_wm buys over an arbitrary order (best_order is the other end).
Enable it with
    plugins: [workflow/plugins/moe_random_order.py]
    moe: {methods: [naive, gate_wm, expert_wm, random_order, best_order], options: {random_order: {seed: 0}}}
"""
import zlib
from dataclasses import dataclass

import torch

from lmcbench.moe.matching import order_method
from lmcbench.moe.symmetry import n_experts


@dataclass(frozen=True)
class RandomOrderOptions:
    seed: int = 0   # the same seed gives the same orders (each layer draws from seed + a hash of its name)


@order_method("random_order", options=RandomOrderOptions)
def random_order(state_a, state_b, prefix, options):
    """Control: a uniformly random expert order per layer (seeded), then Step 2 (plugin example)."""
    generator = torch.Generator().manual_seed(options.seed + zlib.crc32(prefix.encode()))
    return torch.randperm(n_experts(state_b, prefix), generator=generator)
