"""The workflow configuration: a profile merged over the default, checked before any job starts.

`check_config` is what the Snakefile runs at parse time (so `snakemake -n` fails too) and what the
CLI runs on a profile. It checks, in order: the schema (one line: the key path and the problem, not
the whole schema), the matchers the config names and every option it passes to them (by name and
type, against the options class each matcher registered, plugins loaded first), and the cross-key
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
MIN_MULTI_MODELS = 3  # models the multi-model experiments need at least (glmc.multi_model.n_models' minimum)


class ConfigError(ValueError):
    """A configuration mistake, found before any job; the message names the key and what to do."""


def key_path(parts) -> str:
    return ".".join(str(p) for p in parts) or "(top level)"


def validate_schema(config: dict, schema_path: str | Path = SCHEMA) -> None:
    """The config against the JSON schema; the first (most relevant) error as one short line."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        message = error.message if len(error.message) <= 300 else error.message[:300] + " …"
        raise ConfigError(f"config error at {key_path(error.absolute_path)}: {message} "
                          f"(schema: {Path(schema_path).name})")


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


def load_profile(profile: str | Path) -> dict:
    """A profile (a shipped name or a YAML path) merged over the default, as Snakemake does, and checked
    with `check_config`."""
    path = profile_path(profile)
    try:
        override = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    config = merge(yaml.safe_load(DEFAULT_PROFILE.read_text()), override)
    check_config(config)
    return config


# ----------------------------------------------------------------------------------------- matchers
def check_matchers(config: dict) -> None:
    """Every GLMC method names a registered matcher and every option block reaching a matcher passes
    its options class (plugins loaded first)."""
    from lmcbench.matchers import MATCHERS, OPTIONS, parse_options
    from lmcbench.matchers.universe import MultiModelOptions
    from lmcbench.methods import load_methods

    load_methods(config.get("plugins", []), tracks=["glmc", "glmc_multi"])
    unknown = [m for m in config.get("glmc", {}).get("methods", []) if m not in MATCHERS]
    if unknown:
        raise ConfigError(f"config error at glmc.methods: {unknown} name no registered matcher; registered: "
                          f"{', '.join(MATCHERS)} (a plugin of your own goes under `plugins:`)")
    glmc = config.get("glmc", {})
    blocks = [("glmc.matchers", glmc.get("matchers") or {}),
              ("glmc.width_hetero.matchers", (glmc.get("width_hetero") or {}).get("matchers") or {})]
    blocks += [(f"models.{m}.matchers", cfg.get("matchers") or {}) for m, cfg in config.get("models", {}).items()]
    checks = [(OPTIONS[name] if name in MATCHERS else None, options, f"{where}.{name}") for where, block in blocks
              for name, options in block.items()]
    checks.append((MultiModelOptions, (glmc.get("multi_model") or {}).get("matcher"), "glmc.multi_model.matcher"))
    for options_class, given, where in checks:
        if options_class is None:
            raise ConfigError(f"config error at {where}: no matcher is registered as {where.rsplit('.', 1)[1]!r}; "
                              f"registered: {', '.join(sorted(MATCHERS))}")
        try:
            parse_options(options_class, given, where)
        except ValueError as error:  # parse_options names the key
            raise ConfigError(f"config error at {error}") from None


# ----------------------------------------------------------------------------------------- cross-key
def _seeds(config: dict, model: str) -> tuple[list, str]:
    own = config["models"][model].get("seeds")
    return (own, f"models.{model}.seeds") if own is not None else (config["seeds"], "seeds")


def check_cross_keys(config: dict) -> None:
    """Rules between keys: seed counts against the experiments that need ≥ 3 models, non-empty
    ACE task list, dataset roots that exist."""
    from lmcbench.data import LOCAL_DATASETS

    models = config.get("models", {})
    multi = (config.get("glmc") or {}).get("multi_model") or {}
    if multi.get("methods"):
        need = multi.get("n_models", MIN_MULTI_MODELS)
        for model in multi.get("models", []):
            if model in models and len(_seeds(config, model)[0]) < need:
                seeds, key = _seeds(config, model)
                raise ConfigError(f"config error at {key}: glmc.multi_model aligns {need} models of {model!r} "
                                  f"but {key} = {seeds} has {len(seeds)}; list at least {need} seeds there, or "
                                  f"set glmc.multi_model.methods: [] to skip the multi-model experiment")
    full = (config.get("moe") or {}).get("full_model") or {}
    if full.get("models"):
        need = full.get("n_models", MIN_MULTI_MODELS)
        for model in full["models"]:
            if model in models and len(_seeds(config, model)[0]) < need:
                seeds, key = _seeds(config, model)
                raise ConfigError(f"config error at {key}: moe.full_model aligns {need} models of {model!r} "
                                  f"but {key} = {seeds} has {len(seeds)}; list at least {need} seeds there, "
                                  f"lower moe.full_model.n_models, or set moe.full_model.models: []")
    if "ace" in config and not config["ace"].get("tasks"):
        raise ConfigError("config error at ace.tasks: the list is empty; name at least one of image, nbody")
    used = {m["dataset"] for m in models.values()}
    data = [(f"datasets.{k}", d) for k, d in config.get("datasets", {}).items() if k in used]
    ace = config.get("ace") or {}
    if "image" in ace.get("tasks", []):
        data.append(("ace.image.data", ace.get("image", {}).get("data", {})))
    for key, cfg in data:
        root = cfg.get("root")
        if not root and cfg.get("name") in LOCAL_DATASETS:
            raise ConfigError(f"config error at {key}.root: dataset {cfg['name']!r} is read from a local copy, "
                              f"which lmcbench never downloads; set {key}.root to it (README 'Profiles')")
        if root and not Path(root).expanduser().exists():
            raise ConfigError(f"config error at {key}.root: {root} does not exist (relative paths are taken from "
                              f"{Path.cwd()}); point it at the local copy of the dataset")


def check_config(config: dict, schema_path: str | Path = SCHEMA) -> None:
    """Everything checkable before the first job: schema, matchers and their options, cross-key rules."""
    validate_schema(config, schema_path)
    for name, model in config["models"].items():
        if model["dataset"] not in config["datasets"]:
            raise ConfigError(f"config error at models.{name}.dataset: {model['dataset']!r} is not a key of "
                              f"`datasets` (known: {sorted(config['datasets'])})")
    check_matchers(config)
    check_cross_keys(config)
