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


@pytest.mark.parametrize("command, job, block", [("align", "lmcbench.experiments.glmc.pairs_job", ("barrier",)),
                                                 ("moe", "lmcbench.experiments.moe.moe_pair_job", ("barrier", "moe.barrier"))])
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


# `.get(key, literal)` left in the package on purpose, by (file, key). Each is not a config key with a default of
# its own, or an optional key whose absent meaning is documented here, once.
PACKAGE_ALLOWED = {
    # reads of records, provenance, checkpoint info and claim entries (not configuration): absent = the value shown
    ("tables.py", "experiment"): "a table row without an experiment column is a pairwise row",
    ("readme.py", "torch"): "provenance of a run that recorded no torch version",
    ("readme.py", "cpu"): "machine record without a CPU name",
    ("readme.py", "numerics"): "machine record without a numerics mode",
    ("claims.py", "id"): "error text for a claim without an id",
    ("claims.py", "paper_source"): "claims registry: optional text columns, empty when absent",
    ("claims.py", "basis"): "claims registry: optional text columns, empty when absent",
    ("experiments/glmc.py", "dataset"): "error text: a checkpoint whose info names no dataset",
    ("timing.py", "run_id"): "provenance without a run id (older runs)",
    ("timing.py", "metric"): "timing rows: metric name, empty when absent",
    ("timing.py", "cpu_time"): "timing records: '-' = not measured",
    ("checkpoints.py", "form"): "a checkpoint saved before forms existed is in the original form",
    ("matchers/learned.py", "residual"): "learned matching info: no residual shift when the space has none",
    # optional config keys (the schema lists them without a default; absent has this meaning)
    ("ace/models.py", "n_bases"): "ace.image.arch.n_bases: relaxed group convolution's filter bases",
    ("ace/models.py", "group"): "ace.image.arch.group: the cyclic group C unless D is given",
    ("experiments/ace.py", "group"): "ace.image.arch.group, as in ace/models.py",
    ("experiments/ace.py", "method"): "ace.experiments.dual_lr.method: the method whose dual step size is swept; "
                                      "absent = ace_equality",
}


def package_literal_defaults() -> list[tuple[str, str, str]]:
    """(file relative to lmcbench/, key, line) of every `.get("key", <literal>)` in the package."""
    package = ROOT / "lmcbench"
    found = []
    for path in sorted(package.rglob("*.py")):
        text = path.read_text()
        for m in LITERAL_DEFAULT.finditer(text):
            key = re.match(r"""\.get\(\s*["']([\w.]+)""", m.group()).group(1)
            line = text[:m.start()].count("\n") + 1
            found.append((path.relative_to(package).as_posix(), key, f"{line}: {text.splitlines()[line - 1].strip()}"))
    return found


def test_package_holds_no_config_defaults_of_its_own():
    """The package reads config keys with [key] (the merged default profile provides them), takes them from the
    default profile where it is reached without one (lmcbench.data.split_defaults, models.moe.moe_layer_defaults,
    the MoE jobs' max_orders) or from the schema's `default`s (model archs: config.schema_defaults)."""
    found = package_literal_defaults()
    assert any(key == "experiment" for _, key, _ in found)   # the scan sees the package (not vacuous)
    extra = [f"lmcbench/{file}:{line}" for file, key, line in found if (file, key) not in PACKAGE_ALLOWED]
    stale = set(PACKAGE_ALLOWED) - {(file, key) for file, key, _ in found}
    assert not stale, f"allow-list entries no longer needed (remove them): {sorted(stale)}"
    assert not extra, ("a literal default in the package; read the key with [key] from the merged profile, or take "
                       "it from lmcbench.config.load_default_profile / schema_defaults:\n" + "\n".join(extra))


@pytest.mark.parametrize("definition, family", [("vit_arch", "vit"), ("gpt2_arch", "gpt2")])
def test_arch_defaults_are_the_schemas(definition, family):
    """A model built from an arch without the optional keys gets the schema's defaults (same effective model)."""
    import importlib

    from lmcbench.config import schema_defaults

    defaults = schema_defaults(definition)
    assert defaults and set(defaults) < set(yaml.safe_load((ROOT / "lmcbench/schemas/config.schema.yaml").read_text())
                                            ["definitions"][definition]["properties"])
    arch = effective("default")["models"][family]["arch"]
    required = {k: v for k, v in arch.items() if k not in defaults}
    meta = {"img_size": 28, "in_chans": 1, "num_classes": 10} if family == "vit" else {"vocab_size": 65}
    build = importlib.import_module(f"lmcbench.models.{family}").build
    assert str(build(required, meta)) == str(build({**required, **defaults}, meta))
    if family == "gpt2":
        assert build(required, meta).config.to_dict() == build({**required, **defaults}, meta).config.to_dict()


def test_split_defaults_are_the_default_profiles():
    """`--dataset NAME` (no profile) splits as the default profile's dataset of that kind does."""
    from lmcbench.data import split_defaults

    default = effective("default")["datasets"]
    assert split_defaults("mnist5k").items() <= default["images"].items()
    assert split_defaults("shakespeare").items() <= default["text"].items()
    assert split_defaults("cifar10").keys() == {"val_frac", "test_frac", "split_seed"}
