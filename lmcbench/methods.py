"""Methods: one registry for the methods of all three tracks, each with a typed options class.

A method is a named object registered under a track with `@register(track, name, options=...)`;
`options` is a dataclass whose fields are the method's option names, types and defaults — the one
place they live. Options a config, a CLI `--opt key=value` or a caller gives are checked against it
by name and type (`parse_options`) before any job starts, so a misspelt or mistyped option is an
error that lists the valid ones instead of a silent default.

Tracks (what a registered object is, per track; `TRACKS` says where a config names them):
  glmc        pairwise matcher `(model_a, model_b, MatchContext) -> Alignment`     (lmcbench.matchers)
  glmc_multi  `(models, options, MatchContext) -> (template, states, info)`        (lmcbench.matchers.universe)
  moe_order   `ExpertOrder`: τ of one MoE layer, Step 2 follows (`order_method`)   (lmcbench.moe.matching)
  moe_full    `(spec, state_a, state_b, options, seed) -> aligned B state`         (lmcbench.moe.full_model)
  ace         ACE training method: hooks on the one training loop                  (lmcbench.ace.baselines)

Where methods come from: the built-in modules above, the entry points of group `lmcbench.methods`
(an installed package of your own), and plugin files or modules listed under `plugins:` in a config
or given with `--plugin` (`load_methods`). README "Add a method".
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import yaml


@dataclass(frozen=True)
class Track:
    """A track of the registry and where a config names its methods and their options.

    Config keys are dotted paths; `*` stands for every key of a mapping (e.g. every model). `methods`
    keys hold lists of method names; `options` keys hold `{method name: options}` blocks; `shared`
    keys hold one options block given to every method the track's lists name. `lmcbench.config`
    checks all of them against the registry before any job, so a track that adds a config key adds
    it here and nowhere else."""
    summary: str
    builtin: str                      # module whose import registers the built-in methods
    methods: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    shared: tuple[str, ...] = ()


# Convention for options: a track's options live beside its method list, at `<list's parent>.options.<name>`
# (moe.options.<name>, moe.full_model.options.<name>, ace.options.<name>); GLMC keeps its older names
# (glmc.matchers.<name>, models.<m>.matchers.<name>, glmc.width_hetero.matchers.<name>, and one block for all
# multi-model methods, glmc.multi_model.matcher).
TRACKS = {
    "glmc": Track("GLMC pairwise and width-heterogeneous matchers", "lmcbench.matchers",
                  methods=("glmc.methods", "glmc.width_hetero.methods"),
                  options=("glmc.matchers", "glmc.width_hetero.matchers", "models.*.matchers")),
    "glmc_multi": Track("GLMC multi-model alignment to a common universe", "lmcbench.matchers.universe",
                        methods=("glmc.multi_model.methods",), shared=("glmc.multi_model.matcher",)),
    "moe_order": Track("MoE-LMC Step-1 expert-order methods, Step 2 after each", "lmcbench.moe.matching",
                       methods=("moe.methods",), options=("moe.options",)),
    "moe_full": Track("MoE-LMC full-model alignment (backbone and MoE layers)", "lmcbench.moe.full_model",
                      methods=("moe.full_model.methods",), options=("moe.full_model.options",)),
    "ace": Track("ACE training methods and baselines", "lmcbench.ace.baselines",
                 methods=("ace.experiments.*.methods",), options=("ace.options",)),
}
ENTRY_POINT_GROUP = "lmcbench.methods"


@dataclass(frozen=True)
class NoOptions:
    """Options of a method that takes none."""


@dataclass(frozen=True)
class Method:
    """A registered method: what runs (`obj`: function or class, per track), its options class, its track."""
    track: str
    name: str
    obj: object
    options: type

    @property
    def summary(self) -> str:
        doc = (getattr(self.obj, "__doc__", None) or "").strip()
        return doc.splitlines()[0] if doc else ""

    def parse(self, given: dict | None, where: str | None = None):
        """`given` checked against this method's options class, defaults filled in."""
        return parse_options(self.options, given, where or f"{self.track} method {self.name}")

    def defaults(self) -> dict:
        return dataclasses.asdict(self.options())


REGISTRY: dict[str, dict[str, Method]] = {track: {} for track in TRACKS}


def register(track: str, name: str, options: type = NoOptions) -> Callable:
    """Decorator: register `obj` as method `name` of `track` with options class `options` (a dataclass)."""
    if track not in TRACKS:
        raise ValueError(f"method {name!r}: unknown track {track!r}; tracks: {', '.join(TRACKS)}")
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"method {name!r}: options must be a dataclass, got {options!r}")
    missing = [f.name for f in dataclasses.fields(options)
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise TypeError(f"method {name!r}: option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                        f"need a default (options must be optional)")

    def add(obj):
        if name in REGISTRY[track]:
            raise ValueError(f"{track} method {name!r} is registered twice")
        REGISTRY[track][name] = Method(track, name, obj, options)
        return obj
    return add


def get(track: str, name: str) -> Method:
    """The registered method, or a ValueError listing the registered names of the track."""
    load_methods(tracks=[track])
    if name not in REGISTRY[track]:
        raise ValueError(f"unknown {track} method {name!r}; registered: {', '.join(names(track))} "
                         f"(a method of your own: README 'Add a method')")
    return REGISTRY[track][name]


def names(track: str) -> list[str]:
    """Registered names of a track, in registration order (built-ins first)."""
    load_methods(tracks=[track])
    return list(REGISTRY[track])


# ------------------------------------------------------------------------------------------------ loading
LOADED: dict[str, object] = {}  # plugin, module or entry point -> what importing it returned


def load_plugin(entry: str) -> None:
    """Import a plugin once: a path ending in .py (relative to the working directory), else a module name."""
    if entry in LOADED:
        return
    if entry.endswith(".py"):
        path = Path(entry)
        if not path.is_file():
            raise FileNotFoundError(f"plugin file {entry!r} (config key `plugins` or --plugin) does not exist "
                                    f"(relative paths are taken from {Path.cwd()})")
        name = f"lmcbench_plugin_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(entry)
    LOADED[entry] = module


def load_methods(plugins: Iterable[str] = (), tracks: Iterable[str] | None = None) -> None:
    """Built-in methods of `tracks` (default: all), then installed entry points (group
    `lmcbench.methods`), then `plugins`; each imported once, so every job and the check before the run
    see the same methods. (Per track because the ACE methods import escnn, which a GLMC job does not need.)"""
    for track in tracks if tracks is not None else TRACKS:
        load_plugin(TRACKS[track].builtin)
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {entry_point.name}"
        if key not in LOADED:
            LOADED[key] = entry_point.load()
    for entry in plugins or ():
        load_plugin(entry)


# ------------------------------------------------------------------------------------------------ options
def _conforms(value, hint) -> bool:
    """Whether a config value (YAML: bool, int, float, str, list, None) fits a type annotation."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arm) for arm in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value)
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_conforms(v, a) for v, a in zip(value, args)))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:   # JSON Schema's integer: 2.0 is one too (YAML writes 2.0 for a float)
        return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                              and value.is_integer())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _coerce(value, hint):
    """A checked config value as the annotation's type: lists become tuples, ints given for floats become floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        arm = next(a for a in args if _conforms(value, a))
        return _coerce(value, arm)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0]) for v in value)
        return tuple(_coerce(v, a) for v, a in zip(value, args))
    if hint is float:
        return float(value)
    if hint is int:
        return int(value)
    return value


def type_name(hint) -> str:
    """A type annotation as a user reads it in an error or in `lmcbench methods`."""
    if typing.get_origin(hint) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    return hint.__name__ if typing.get_origin(hint) is None and hasattr(hint, "__name__") else \
        str(hint).replace("typing.", "")


def parse_options(options_class: type, given: dict | None, where: str):
    """`given` checked against `options_class` (a dataclass): unknown names and wrong types are a
    ValueError that names `where` (the config key or method) and lists the valid options."""
    if given is not None and not isinstance(given, dict):
        raise ValueError(f"{where} = {given!r}: expected a mapping of option names to values")
    given = dict(given or {})
    hints = typing.get_type_hints(options_class)
    names_ = [f.name for f in dataclasses.fields(options_class)]
    unknown = sorted(set(given) - set(names_))
    if unknown:
        valid = ", ".join(f"{n} ({type_name(hints[n])})" for n in names_) or "none"
        raise ValueError(f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"valid options: {valid}")
    for name, value in given.items():
        if not _conforms(value, hints[name]):
            raise ValueError(f"{where}.{name} = {value!r}: expected {type_name(hints[name])}")
    try:  # an options class may check values further in __post_init__ (a range, a registered name)
        return options_class(**{name: _coerce(value, hints[name]) for name, value in given.items()})
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def cli_options(pairs: Iterable[str] | None) -> dict:
    """`--opt key=value` arguments as an options dict; values are read as YAML (3, 0.1, true, [1, 2], text)."""
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--opt {pair!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    return out


def describe(track: str) -> list[dict]:
    """One row per option of every method of `track` (a method without options gets one row): for `lmcbench methods`."""
    rows = []
    for name in names(track):
        method = REGISTRY[track][name]
        hints = typing.get_type_hints(method.options)
        fields = dataclasses.fields(method.options)
        if not fields:
            rows.append({"track": track, "method": name, "option": "", "type": "", "default": "",
                         "summary": method.summary})
        for i, f in enumerate(fields):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            rows.append({"track": track, "method": name, "option": f.name, "type": type_name(hints[f.name]),
                         "default": default, "summary": method.summary if i == 0 else ""})
    return rows


# ------------------------------------------------------------------------------------------------ schema
JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null",
              list: "array", dict: "object"}


def type_schema(hint) -> dict:
    """A type annotation as the JSON schema of exactly the values `parse_options` accepts for it
    (tests/test_methods.py checks the two agree)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(arm) for arm in args]}
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": type_schema(args[0])}
        return {"type": "array", "prefixItems": [type_schema(a) for a in args], "items": False,
                "minItems": len(args)}
    if hint in JSON_TYPES:
        return {"type": JSON_TYPES[hint]}
    raise TypeError(f"option type {type_name(hint)} has no JSON-schema form; use bool, int, float, str, "
                    f"Literal[...], tuple[...], X | None")


@functools.cache   # source is read once per class (every config check builds the schema)
def field_comments(options_class: type) -> dict[str, str]:
    """`name: type = default  # comment` lines of the class's source: the options' descriptions."""
    try:
        source = inspect.getsource(options_class)
    except (OSError, TypeError):   # a class made at run time has no source
        return {}
    return {m[1]: m[2].strip() for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", source, re.M)}


def options_schema(track: str, name: str) -> dict:
    """The JSON schema (Draft 2020-12) of method `name`'s options block: one property per option with its
    type, default and description (field metadata `help`, else the field's comment), no other names.
    What the options class checks beyond types (ranges, registered names in `__post_init__`) stays there."""
    return method_schema(get(track, name))


def method_schema(method: Method) -> dict:
    """`options_schema` of a registered method."""
    hints = typing.get_type_hints(method.options)
    comments = field_comments(method.options)
    properties = {}
    for f in dataclasses.fields(method.options):
        prop = type_schema(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        prop["default"] = list(default) if isinstance(default, tuple) else default
        if f.metadata.get("help") or f.name in comments:
            prop["description"] = f.metadata.get("help") or comments[f.name]
        properties[f.name] = prop
    return {"type": "object", "title": f"{method.track} method {method.name}", "description": method.summary,
            "properties": properties, "additionalProperties": False}
