"""The workflow configuration: a profile merged over the default, checked before any job starts.

`check_config` is what the Snakefile runs at parse time (so `snakemake -n` fails too) and what the
CLI runs on a profile. It checks, in order: the schema (one line: the key path and the problem, not
the whole schema), the methods of every track the config names and every option it passes to them
(by name and type, against the options class each method registered, plugins loaded first; where
each track keeps them: `lmcbench.methods.TRACKS`), and the cross-key
rules the schema cannot express (enough seeds for the experiments that need ≥ 3 models, non-empty
task lists, dataset roots that exist).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import jsonschema
import yaml

# package data (pyproject's package-data), the only copies: the workflow reads these files too
PROFILES = Path(files("lmcbench") / "profiles")
SCHEMA = Path(files("lmcbench") / "schemas" / "config.schema.yaml")
DEFAULT_PROFILE = PROFILES / "default.yaml"


class ConfigError(ValueError):
    """A configuration mistake, found before any job; the message names the key and what to do."""


def key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def schema_error(config: dict, schema: dict):
    """The first (most relevant) error of `config` against `schema`, or None."""
    return jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))


def raise_schema_error(error, schema_path: str | Path) -> None:
    message = error.message if len(error.message) <= 300 else error.message[:300] + " …"
    raise ConfigError(f"config error at {key_path(error.absolute_path)}: {message} (schema: {Path(schema_path).name})")


def validate_schema(config: dict, schema_path: str | Path = SCHEMA) -> None:
    """The config against the schema file alone (method option blocks unchecked: that is `effective_schema`);
    the first (most relevant) error as one short line."""
    error = schema_error(config, yaml.safe_load(Path(schema_path).read_text()))
    if error is not None:
        raise_schema_error(error, schema_path)


def schema_defaults(definition: str, schema_path: str | Path = SCHEMA) -> dict:
    """{key: default} of the schema's `definitions.<definition>`: the one place of the defaults of keys a
    block may leave out (a model's arch; `lmcbench config --schema` shows them)."""
    properties = yaml.safe_load(Path(schema_path).read_text())["definitions"][definition]["properties"]
    return {key: prop["default"] for key, prop in properties.items() if "default" in prop}


def schema_nodes(schema: dict, key: str) -> list[dict]:
    """The subschemas of config key `key` (dotted; `*` = every value of a mapping: its `additionalProperties`
    schema, else each of its `properties`), local `$ref`s followed."""
    def follow(node):
        while "$ref" in node:   # "#/definitions/model"
            target = schema
            for step in node["$ref"].removeprefix("#/").split("/"):
                target = target[step]
            node = target
        return node

    nodes = [schema]
    for part in key.split("."):
        nodes = [follow(child) for node in nodes for child in
                 ([node["properties"][part]] if part != "*" else [node["additionalProperties"]]
                  if isinstance(node.get("additionalProperties"), dict) else node["properties"].values())]
    return list({id(node): node for node in nodes}.values())   # several keys may share one definition


def method_keys() -> list[str]:
    """Every config key (dotted, with `*`) that names methods or holds their options, of every track."""
    from lmcbench import methods

    return [key for spec in methods.TRACKS.values() for key in (*spec.methods, *spec.options, *spec.shared)]


def effective_schema(config: dict | None = None, schema_path: str | Path = SCHEMA) -> dict:
    """The schema file with the registry filled in (`lmcbench config --schema` prints it): method lists
    take registered names; an options block (`methods.TRACKS`) takes registered names, each with that
    method's `options_schema`; a shared block (glmc.multi_model.matcher) the options of every method it
    reaches. With `config`: the tracks it uses (ACE's methods import escnn), its plugins loaded first, the
    shared blocks' methods as it lists them; without: every track, every registered method."""
    from lmcbench import methods

    schema = yaml.safe_load(Path(schema_path).read_text())
    plugins = config.get("plugins") if config is not None else None   # absent: a partial config (tests)
    plugins = plugins if isinstance(plugins, list) and all(isinstance(p, str) for p in plugins) else []
    for track, spec in methods.TRACKS.items():
        lists = [found for key in spec.methods for found in config_values(config, key)] if config else []
        if config is not None and not (lists or any(config_values(config, key)
                                                     for key in (*spec.options, *spec.shared))):
            continue
        methods.load_methods(plugins, tracks=[track])
        registered = methods.REGISTRY[track]
        for key in spec.methods:
            for node in schema_nodes(schema, key):
                node["items"] = {"enum": list(registered)}
        for key in spec.options:
            for node in schema_nodes(schema, key):
                node.update(properties={name: methods.method_schema(method) for name, method in registered.items()},
                            additionalProperties=False)
        listed = [n for _, names in lists if isinstance(names, list) for n in names if n in registered] \
            if config is not None else list(registered)
        for node in [node for key in spec.shared for node in schema_nodes(schema, key)] if listed else ():
            node["allOf"] = [methods.method_schema(registered[n]) for n in dict.fromkeys(listed)]
    return schema


def merge(base: dict, override: dict) -> dict:
    """Snakemake's --configfile semantics: nested dicts are merged, everything else replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def profile_names() -> list[str]:
    """The shipped profiles, by name."""
    return sorted(p.stem for p in PROFILES.glob("*.yaml"))


def profile_path(profile: str | Path) -> Path:
    """A shipped profile's file by name (`smoke`), else `profile` as a path (relative to the CWD)."""
    if str(profile) in profile_names():
        return PROFILES / f"{profile}.yaml"
    path = Path(profile)
    if not path.is_file():
        raise ConfigError(f"profile {profile} is neither a shipped profile ({', '.join(profile_names())}) "
                          f"nor an existing YAML file")
    return path


def load_default_profile() -> dict:
    """The default profile as shipped (what every profile is merged over): for code reached without a profile
    (the CLI's `--dataset NAME`) that needs the defaults the workflow uses."""
    return yaml.safe_load(DEFAULT_PROFILE.read_text())


def load_profile(profile: str | Path) -> dict:
    """A profile (a shipped name or a YAML path) merged over the default, as Snakemake does, and checked
    with `check_config`."""
    path = profile_path(profile)
    try:
        override = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    config = merge(load_default_profile(), override)
    check_config(config)
    return config


# ----------------------------------------------------------------------------------------- methods
def config_values(config: dict, key: str, where: tuple = ()) -> list[tuple[str, object]]:
    """(dotted path, value) of every value at `key` (dotted; `*` = every key of a mapping); absent keys
    give nothing."""
    if not key:
        return [(key_path(where), config)]
    head, _, rest = key.partition(".")
    if not isinstance(config, dict):
        return []
    keys = list(config) if head == "*" else [head] if head in config else []
    return [found for k in keys for found in config_values(config[k], rest, (*where, k))]


def _parse(method, given, where: str) -> None:
    try:
        method.parse(given, where)
    except ValueError as error:  # parse_options names the key and lists the valid options
        raise ConfigError(f"config error at {error}") from None


def check_methods(config: dict) -> None:
    """For every track of `lmcbench.methods.TRACKS` the config uses: every method list names registered
    methods and every options block reaching a method passes its options class (plugins loaded first).
    Where a track's methods and options live in the config is `TRACKS[track]`, so this check covers
    tracks and keys added there without a change here."""
    from lmcbench import methods

    for track, spec in methods.TRACKS.items():
        lists = [found for key in spec.methods for found in config_values(config, key)]
        blocks = [found for key in spec.options for found in config_values(config, key)]
        shared = [found for key in spec.shared for found in config_values(config, key)]
        if not (lists or blocks or shared):
            continue   # a track the config does not use: its modules are not even imported
        methods.load_methods(config.get("plugins") or [], tracks=[track])
        registered = methods.REGISTRY[track]
        valid = f"registered {track} methods: {', '.join(registered)} (a method of your own: a plugin under " \
                f"`plugins:`, README 'Add a method')"
        for where, listed in lists:
            unknown = [name for name in listed if name not in registered] if isinstance(listed, list) else []
            if unknown:
                raise ConfigError(f"config error at {where}: {', '.join(map(str, unknown))} "
                                  f"{'is' if len(unknown) == 1 else 'are'} not registered; {valid}")
        for where, block in blocks:
            if not isinstance(block, dict):
                raise ConfigError(f"config error at {where}: expected a mapping of method names to their options")
            for name, given in block.items():
                if name not in registered:
                    raise ConfigError(f"config error at {where}.{name}: no method is registered as {name!r}; {valid}")
                _parse(registered[name], given, f"{where}.{name}")
        for where, given in shared:
            for name in dict.fromkeys(n for _, listed in lists if isinstance(listed, list) for n in listed):
                _parse(registered[name], given, where)


# ----------------------------------------------------------------------------------------- cross-key
def _seeds(config: dict, model: str) -> tuple[list, str]:
    own = config["models"][model].get("seeds")
    return (own, f"models.{model}.seeds") if own is not None else (config["seeds"], "seeds")


def check_cross_keys(config: dict) -> None:
    """Rules between keys of the effective (merged, schema-checked) config: seed counts against the
    multi-model experiments, non-empty ACE task list, dataset roots that exist. `moe` and `ace` are
    optional (absent: that track does not run)."""
    from lmcbench.data import LOCAL_DATASETS

    models = config["models"]
    multi = config["glmc"]["multi_model"]
    if multi["methods"]:
        need = multi["n_models"]
        for model in multi["models"]:
            if model in models and len(_seeds(config, model)[0]) < need:
                seeds, key = _seeds(config, model)
                raise ConfigError(f"config error at {key}: glmc.multi_model aligns {need} models of {model!r} "
                                  f"but {key} = {seeds} has {len(seeds)}; list at least {need} seeds there, or "
                                  f"set glmc.multi_model.methods: [] to skip the multi-model experiment")
    full = config["moe"]["full_model"] if "moe" in config else {"models": []}
    if full["models"]:
        need = full["n_models"]
        for model in full["models"]:
            if model in models and len(_seeds(config, model)[0]) < need:
                seeds, key = _seeds(config, model)
                raise ConfigError(f"config error at {key}: moe.full_model aligns {need} models of {model!r} "
                                  f"but {key} = {seeds} has {len(seeds)}; list at least {need} seeds there, "
                                  f"lower moe.full_model.n_models, or set moe.full_model.models: []")
    if "ace" in config and not config["ace"]["tasks"]:
        raise ConfigError("config error at ace.tasks: the list is empty; name at least one of image, nbody")
    used = {m["dataset"] for m in models.values()}
    data = [(f"datasets.{k}", d) for k, d in config["datasets"].items() if k in used]
    if "ace" in config and "image" in config["ace"]["tasks"]:
        data.append(("ace.image.data", config["ace"]["image"]["data"]))
    for key, cfg in data:
        root = cfg.get("root")
        if not root and cfg.get("name") in LOCAL_DATASETS:
            raise ConfigError(f"config error at {key}.root: dataset {cfg['name']!r} is read from a local copy, "
                              f"which lmcbench never downloads; set {key}.root to it (README 'Profiles')")
        if root and not Path(root).expanduser().exists():
            raise ConfigError(f"config error at {key}.root: {root} does not exist (relative paths are taken from "
                              f"{Path.cwd()}); point it at the local copy of the dataset")


def check_config(config: dict, schema_path: str | Path = SCHEMA) -> None:
    """Everything checkable before the first job: the effective schema (the file's, with the registered
    methods and their options schemas), what options classes check beyond it, cross-key rules. An error
    in a method list or options block is reported as the registry words it (key, valid names)."""
    error = schema_error(config, effective_schema(config, schema_path))
    if error is not None:
        path = [str(p) for p in error.absolute_path]
        if any(len(path) >= len(key.split(".")) and all(k in ("*", p) for k, p in zip(key.split("."), path))
               for key in method_keys()):
            check_methods(config)   # raises with the registry's message for the same value
        raise_schema_error(error, schema_path)
    for name, model in config["models"].items():
        if model["dataset"] not in config["datasets"]:
            raise ConfigError(f"config error at models.{name}.dataset: {model['dataset']!r} is not a key of "
                              f"`datasets` (known: {sorted(config['datasets'])})")
    check_methods(config)
    check_cross_keys(config)
