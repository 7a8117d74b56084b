"""Matchers: each aligns model B to model A and is registered under the fixed name used in tables.

A matcher is a function `(model_a, model_b, context) -> Alignment`. Because some matchers change the
module types (canonical form), the alignment carries the model template the two aligned state
dicts belong to; the barrier engine interpolates those.

Each matcher declares its options as a dataclass (`register(name, options=...)`): the option names,
their types and their defaults, in one place. The options a config or caller gives are checked
against it by name and type (`parse_options`) before any job starts, and the matcher reads the
checked values from `context.options`, so a misspelt option is an error instead of a silent default.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

MATCHERS: dict[str, Callable] = {}
OPTIONS: dict[str, type] = {}


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


@dataclass(frozen=True)
class NoOptions:
    """Options of a matcher that takes none."""


def _conforms(value, hint) -> bool:
    """Whether a config value (YAML: bool, int, float, str, list, None) fits a type annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arm) for arm in args)
    if origin is tuple:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_conforms(v, a) for v, a in zip(value, args)))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _coerce(value, hint):
    """A checked config value as the annotation's type: lists become tuples, ints given for floats become floats."""
    if typing.get_origin(hint) is tuple:
        return tuple(_coerce(v, a) for v, a in zip(value, typing.get_args(hint)))
    if hint is float:
        return float(value)
    return value


def _type_name(hint) -> str:
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return hint.__name__ if typing.get_origin(hint) is None and hasattr(hint, "__name__") else \
        str(hint).replace("typing.", "")


def parse_options(options_class: type, given: dict | None, where: str):
    """`given` checked against `options_class` (a dataclass): unknown names and wrong types are a
    ValueError that names `where` (the config key or matcher) and lists the valid options."""
    given = dict(given or {})
    hints = typing.get_type_hints(options_class)
    names = [f.name for f in dataclasses.fields(options_class)]
    unknown = sorted(set(given) - set(names))
    if unknown:
        valid = ", ".join(f"{n} ({_type_name(hints[n])})" for n in names) or "none"
        raise ValueError(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid options: {valid}")
    for name, value in given.items():
        if not _conforms(value, hints[name]):
            raise ValueError(f"{where}.{name} = {value!r}: expected {_type_name(hints[name])}")
    return options_class(**{name: _coerce(value, hints[name]) for name, value in given.items()})


def register(name: str, options: type = NoOptions):
    """Register a matcher under `name`; `options` is the dataclass of the options it accepts. The
    registered function checks `context.config` against it and passes the result as `context.options`."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"matcher {name!r}: options must be a dataclass, got {options!r}")

    def add(fn):
        if name in MATCHERS:
            raise ValueError(f"matcher {name!r} is registered twice")

        @functools.wraps(fn)
        def matcher(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
            checked = parse_options(options, context.config, f"matcher {name}")
            return fn(model_a, model_b, dataclasses.replace(context, options=checked))

        MATCHERS[name] = matcher
        OPTIONS[name] = options
        return matcher
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
