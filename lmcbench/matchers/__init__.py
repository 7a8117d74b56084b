"""Matchers: each aligns model B to model A and is registered under the fixed name used in tables.

A matcher is a function `(model_a, model_b, context) -> Alignment`. Because some matchers change the
module types (canonical form), the alignment carries the model template the two aligned state
dicts belong to; the barrier engine interpolates those.

Matchers are the "glmc" track of the one method registry (`lmcbench.methods`): each declares its
options as a dataclass (`register(name, options=...)`), the option names, types and defaults in one
place. The options a config or caller gives are checked against it by name and type before any job
starts, and the matcher reads the checked values from `context.options`, so a misspelt option is an
error instead of a silent default.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lmcbench import methods
from lmcbench.methods import NoOptions, parse_options  # noqa: F401  (re-exported: a matcher's options API)


@dataclass
class Alignment:
    template: nn.Module                 # module whose state_dict keys the two states use
    state_a: dict[str, torch.Tensor]
    state_b: dict[str, torch.Tensor]   # model B, transformed to line up with A
    info: dict = field(default_factory=dict)
    form: str = "original"              # "original", "canonical" or "circuit": see lmcbench.checkpoints.FORMS


@dataclass
class MatchContext:
    """What a matcher may use besides the weights: the task (for data-driven matchers), its options as
    given (`config`, a dict), a seed, and `options`: those options checked against the matcher's
    options class, with its defaults filled in (set by the registry before the matcher runs)."""
    task: object = None
    config: dict = field(default_factory=dict)
    seed: int = 0
    options: object = None


class _Track(Mapping):
    """Read-only view of the registered GLMC matchers: name -> matcher (`OPTIONS`: name -> options class)."""

    def __init__(self, attribute: str):
        self.attribute = attribute

    def __getitem__(self, name):
        return getattr(methods.REGISTRY["glmc"][name], self.attribute)

    def __iter__(self):
        return iter(methods.REGISTRY["glmc"])

    def __len__(self):
        return len(methods.REGISTRY["glmc"])


MATCHERS: Mapping[str, Callable] = _Track("obj")
OPTIONS: Mapping[str, type] = _Track("options")


def register(name: str, options: type = NoOptions):
    """Register a GLMC matcher under `name` (track "glmc" of `lmcbench.methods`); `options` is the
    dataclass of the options it accepts. The registered function checks `context.config` against it
    and passes the result as `context.options`."""
    def add(fn):
        @functools.wraps(fn)
        def matcher(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
            checked = parse_options(options, context.config, f"matcher {name}")
            return fn(model_a, model_b, dataclasses.replace(context, options=checked))

        return methods.register("glmc", name, options)(matcher)
    return add


def get_matcher(name: str) -> Callable:
    return methods.get("glmc", name).obj


@register("vanilla")
def vanilla(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """No alignment: plain weight averaging, the baseline every table starts from."""
    return Alignment(model_a, model_a.state_dict(), model_b.state_dict())


# matchers register themselves on import; the order here is the order of `lmcbench methods`
from lmcbench.matchers import activation, learned, weight_matching  # noqa: E402,F401
