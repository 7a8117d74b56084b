"""Config defaults live once: in the default profile (lmcbench/profiles/default.yaml, which every profile is
merged over) and the schema. The rules read config keys with [key], never with a default of their own, and
every key they read is present in the effective configuration of every shipped profile."""
from __future__ import annotations

import re

import pytest
import yaml

from conftest import ROOT
from lmcbench.config import DEFAULT_PROFILE, PROFILES, merge, profile_names

RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
# `.get("key", <literal>)`: a number, string, boolean, non-empty list/dict or tuple written in the rule
LITERAL_DEFAULT = re.compile(r"""\.get\(\s*["'][\w.]+["']\s*,\s*(-?\d|["']|True\b|False\b|\[\s*[^\]\s]|\{\s*[^}\s]|\()""")
ALIAS = re.compile(r"""^(?P<name>[A-Z_]+)\s*=\s*(?P<base>config|[A-Z_]+)(?P<chain>(?:\[["']\w+["']\])+)""", re.M)
READ = re.compile(r"""\b(?P<base>config|[A-Z_]+)(?P<chain>(?:\[["']\w+["']\])+)""")
KEY = re.compile(r"""\[["'](\w+)["']\]""")


def effective(name: str) -> dict:
    """A shipped profile merged over the default, as Snakemake merges --configfile."""
    config = yaml.safe_load(DEFAULT_PROFILE.read_text())
    return config if name == "default" else merge(config, yaml.safe_load((PROFILES / f"{name}.yaml").read_text()))


def rule_reads() -> dict[str, set[tuple[str, ...]]]:
    """Key paths the rules read with literal subscripts, aliases (`MOE = config["moe"]`) resolved; by file."""
    texts = {path.name: path.read_text() for path in RULE_FILES}
    aliases = {"config": ()}
    for _ in range(3):   # aliases of aliases (MULTI = GLMC["multi_model"], GLMC = config["glmc"]), any file order
        for m in ALIAS.finditer("\n".join(texts.values())):
            if m["base"] in aliases:
                aliases[m["name"]] = aliases[m["base"]] + tuple(KEY.findall(m["chain"]))
    return {name: {aliases[m["base"]] + tuple(KEY.findall(m["chain"])) for m in READ.finditer(text) if m["base"] in aliases}
            for name, text in texts.items()}


def test_rules_hold_no_default_values_of_their_own():
    found = [f"{p.name}:{text[:m.start()].count(chr(10)) + 1}: {text[m.start():m.end() + 20].splitlines()[0]}"
             for p in RULE_FILES for text in [p.read_text()] for m in LITERAL_DEFAULT.finditer(text)]
    assert not found, ("a rule reads a config key with a default of its own; put the default in "
                       "lmcbench/profiles/default.yaml and read the key with [key]:\n" + "\n".join(found))


def test_the_rule_scan_sees_the_rules_reads():
    """The scan below is not vacuous: it resolves aliases and finds reads of every track."""
    reads = set().union(*rule_reads().values())
    assert {("glmc", "multi_model", "n_models"), ("moe", "full_model", "gating"), ("ace", "runtime"),
            ("resources",), ("moe", "max_orders")} <= reads


@pytest.mark.parametrize("profile", profile_names())
def test_every_key_the_rules_read_is_in_the_effective_profile(profile):
    config = effective(profile)
    missing = []
    for name, paths in rule_reads().items():
        for path in sorted(paths):
            node = config
            for key in path:
                if not isinstance(node, dict) or key not in node:
                    missing.append(f"{name}: {'.'.join(path)}")
                    break
                node = node[key]
    assert not missing, f"profile {profile}: the rules read keys the effective config lacks: {missing}"


@pytest.mark.parametrize("command, job, block", [("align", "lmcbench.jobs.pairs_job", ("barrier",)),
                                                 ("moe", "lmcbench.moe.jobs.moe_pair_job", ("barrier", "moe.barrier"))])
def test_cli_barrier_defaults_are_the_default_profiles(command, job, block, monkeypatch, tmp_path):
    """`lmcbench align` / `moe` without barrier flags evaluate the barrier as the workflow's default profile does."""
    import importlib

    from lmcbench.cli import main

    seen = []

    def job_stub(*args, **kwargs):   # the barrier block is the job's 5th (align) or 6th (moe) argument
        seen.append(args[4] if command == "align" else args[5])
        raise RuntimeError("stub: no job")

    module, name = job.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, job_stub)
    assert main([command, "a", "b", "--dataset", "mnist5k", "--out", str(tmp_path)]) == 1   # the stub's error
    default = effective("default")
    want = {}
    for path in block:
        node = default
        for key in path.split("."):
            node = node[key]
        want.update(node)
    assert seen == [{k: want[k] for k in ("points", "splits", "max_examples", "batch_size")}]
