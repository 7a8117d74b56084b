"""Plugins: a new matcher in one file of your own, without editing the package or the workflow.

A plugin is a Python file (or an importable module) that registers matchers with
`@lmcbench.matchers.register("name")`. List it under `plugins:` in a config file and add "name" to
`glmc.methods`: Snakemake then schedules one `glmc_pairwise` job per
model for it, and its rows, curves and figure panels appear beside the built-in methods. Every job,
and the check before the run starts, loads the same plugins. See README "Add a method".
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Iterable

_LOADED: dict[str, object] = {}


def load_plugins(entries: Iterable[str]) -> None:
    """Import every plugin once: a path ending in .py (relative to the working directory), else a module name."""
    for entry in entries or ():
        if entry in _LOADED:
            continue
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_file():
                raise FileNotFoundError(f"plugin file {entry!r} (config key `plugins`) does not exist "
                                        f"(relative paths are taken from {Path.cwd()})")
            name = f"lmcbench_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(entry)
        _LOADED[entry] = module


def check_methods(config: dict) -> None:
    """Fail before any job starts if a GLMC method names no registered matcher (plugins loaded first)."""
    from lmcbench.matchers import MATCHERS

    load_plugins(config.get("plugins", []))
    unknown = [m for m in config.get("glmc", {}).get("methods", []) if m not in MATCHERS]
    if unknown:
        raise ValueError(f"config error: glmc.methods names {unknown}, which no matcher is registered under; "
                         f"registered: {sorted(MATCHERS)} (a plugin of your own goes under `plugins:`)")
