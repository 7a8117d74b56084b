"""Matchers: each aligns model B to model A and is registered under the fixed name used in tables.

A matcher is a function `(model_a, model_b, context) -> Alignment`. Because some matchers change the
module types (canonical form), the alignment carries the model template the two aligned state
dicts belong to; the barrier engine interpolates those.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

MATCHERS: dict[str, Callable] = {}


@dataclass
class Alignment:
    template: nn.Module                 # module whose state_dict keys the two states use
    state_a: dict[str, torch.Tensor]
    state_b: dict[str, torch.Tensor]   # model B, transformed to line up with A
    info: dict = field(default_factory=dict)
    form: str = "original"              # "original", "canonical" or "circuit": see lmcbench.checkpoints.FORMS


@dataclass
class MatchContext:
    """What a matcher may use besides the weights: the task (for data-driven matchers), its config, a seed."""
    task: object = None
    config: dict = field(default_factory=dict)
    seed: int = 0


def register(name: str):
    def add(fn):
        if name in MATCHERS:
            raise ValueError(f"matcher {name!r} is registered twice")
        MATCHERS[name] = fn
        return fn
    return add


def get_matcher(name: str) -> Callable:
    if name not in MATCHERS:
        raise ValueError(f"unknown matcher {name!r}; registered: {sorted(MATCHERS)}")
    return MATCHERS[name]


@register("vanilla")
def vanilla(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """No alignment: plain weight averaging, the baseline every table starts from."""
    return Alignment(model_a, model_a.state_dict(), model_b.state_dict())


# matchers register themselves on import; the order here is the order of `lmcbench matchers`
from lmcbench.matchers import activation, learned, weight_matching  # noqa: E402,F401
