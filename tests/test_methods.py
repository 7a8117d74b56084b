"""The one method registry (lmcbench.methods) across tracks: every method list and option block of the
effective (merged) configuration is checked against it before any job, with the valid names listed; the
CLI's `--opt` goes through the same check; dispatch goes through the registry, not name tests."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from conftest import copy_workflow, run_snakemake
from lmcbench import methods
from lmcbench.cli import main
from lmcbench.config import PROFILES, ConfigError, check_config, load_profile
from test_extension import registry  # noqa: F401  (fixture: undo plugin registrations)
from test_workflow import ROOT

MOE_PLUGIN = "workflow/plugins/moe_random_order.py"


@pytest.fixture(scope="module")
def smoke():
    """The smoke profile merged over the default, as Snakemake merges it (and already checked once)."""
    return load_profile("smoke")


def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, last = dotted.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return config


def _rejects(config: dict, *patterns: str) -> str:
    with pytest.raises(ConfigError) as error:
        check_config(config)
    for pattern in patterns:
        assert re.search(pattern, str(error.value)), str(error.value)
    return str(error.value)


# One option block per track (and per place GLMC options live): a misspelt option and a mistyped one.
# (block, option, a wrong-typed value for it, the option's type as listed)
OPTION_BLOCKS = {
    "glmc": ("glmc.matchers.glmc_weight_matching", "iterations", "3", "int"),
    "glmc (model override)": ("models.gpt2.matchers.learned_full", "steps", 1.5, "int"),
    "glmc (width-heterogeneous)": ("glmc.width_hetero.matchers.learned_full", "lambda_range", [0.2], r"tuple\[float, float\]"),
    "glmc_multi": ("glmc.multi_model.matcher", "alpha", "0.1", "float"),
    "moe_order": ("moe.options.random_order", "seed", 0.5, "int"),   # the built-in order methods take no options
    "moe_full": ("moe.full_model.options.full_gate_wm", "rounds", "2", "int"),
    "ace": ("ace.options.penalty", "weight", "1.0", "float"),
}


def test_every_track_is_checked():
    assert {case.split(" ")[0] for case in OPTION_BLOCKS} == set(methods.TRACKS)


@pytest.mark.parametrize("case", OPTION_BLOCKS)
def test_option_typo_and_wrong_type_fail_with_the_valid_names(case, smoke, monkeypatch, registry):  # noqa: F811
    block, option, bad_value, type_name = OPTION_BLOCKS[case]
    monkeypatch.chdir(ROOT)   # plugin paths are relative to the working directory
    config = _set(smoke, "plugins", [MOE_PLUGIN])
    config = _set(config, "moe.methods", [*config["moe"]["methods"], "random_order"])
    check_config(config)   # the plugin's method and options pass
    typo = option[:-1] + option[-1].upper()
    _rejects(_set(config, f"{block}.{typo}", 1),
             rf"config error at {re.escape(block)}: unknown option {typo}; valid options: .*{option} \({type_name}\)")
    _rejects(_set(config, f"{block}.{option}", bad_value),
             rf"config error at {re.escape(block)}\.{option} = .*: expected {type_name}")


@pytest.mark.parametrize("key, track", [("glmc.methods", "glmc"), ("glmc.multi_model.methods", "glmc_multi"),
                                        ("moe.methods", "moe_order"), ("moe.full_model.methods", "moe_full"),
                                        ("ace.experiments.accuracy.methods", "ace")])
def test_unknown_method_fails_with_the_registered_names(key, track, smoke):
    listed = [*_get(smoke, key), "no_such_method"]
    message = _rejects(_set(smoke, key, listed), rf"config error at {re.escape(key)}: no_such_method is not registered")
    assert f"registered {track} methods: {', '.join(methods.names(track))}" in message


def _get(config: dict, dotted: str):
    for key in dotted.split("."):
        config = config[key]
    return config


def test_option_block_naming_no_method_and_bad_order_option(smoke):
    _rejects(_set(smoke, "moe.full_model.options.full_gate_vm", {}),
             r"moe\.full_model\.options\.full_gate_vm: no method is registered as 'full_gate_vm'; registered moe_full")
    _rejects(_set(smoke, "moe.full_model.options.full_gate_wm", {"order": "best_order"}),
             r"moe\.full_model\.options\.full_gate_wm: order = 'best_order' evaluates all orders")
    _rejects(_set(smoke, "moe.full_model.options.full_gate_wm", {"order": "gate_vm"}),
             r"full_gate_wm: unknown moe_order method 'gate_vm'; registered: naive, skip_order, gate_wm")


def test_cli_opt_is_checked_as_the_workflow_checks_it(tmp_path, capsys, smoke):
    """Same parse_options, same message after the location; before any checkpoint is read."""
    config_error = _rejects(_set(smoke, "glmc.matchers.glmc_weight_matching.iteration", 3), "unknown option")
    assert main(["align", str(tmp_path / "missing_a"), str(tmp_path / "missing_b"), "--method",
                 "glmc_weight_matching", "--opt", "iteration=3", "--dataset", "mnist5k", "--out", str(tmp_path)]) == 1
    cli_error = capsys.readouterr().err
    assert "no checkpoint" not in cli_error
    assert config_error.split(": ", 1)[1].split(": ", 1)[1] in cli_error   # "unknown option iteration; valid …"
    assert main(["align", "a", "b", "--method", "glmc_weight_matching", "--opt", "iterations=many",
                 "--dataset", "mnist5k", "--out", str(tmp_path)]) == 1
    assert "iterations = 'many': expected int" in capsys.readouterr().err
    assert main(["moe", "a", "b", "--method", "gate_wm", "--opt", "seed=1", "--dataset", "mnist5k",
                 "--out", str(tmp_path)]) == 1
    assert "--opt (moe_order method gate_wm): unknown option seed; valid options: none" in capsys.readouterr().err


def test_dispatch_goes_through_the_registry():
    from lmcbench.matchers import MatchContext
    from lmcbench.matchers.universe import align_many
    from lmcbench.moe.matching import align

    with pytest.raises(ValueError, match="unknown glmc_multi method 'nope'; registered: vanilla, glmc_weight_matching"):
        align_many([], "nope", MatchContext())
    best = methods.get("moe_order", "best_order").obj
    assert best.evaluates_all_orders and not methods.get("moe_order", "gate_wm").obj.evaluates_all_orders
    with pytest.raises(ValueError, match="evaluates all orders"):
        align({}, {}, "best_order")


def test_methods_lists_every_track(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for track in methods.TRACKS:
        assert f"{track}: {methods.TRACKS[track].summary}" in out
        for name in methods.names(track):
            assert re.search(rf"^  {name} ", out, re.M), (track, name)
    assert "rounds (int) = 3" in out and "order (str) = 'expert_wm'" in out   # full_expert_wm's options


def test_dry_run_fails_on_an_option_typo_before_any_job(tmp_path):
    copy_workflow(tmp_path)
    (tmp_path / "override.yaml").write_text(yaml.safe_dump({"moe": {"full_model": {"options": {
        "full_expert_wm": {"rounds": 2, "round": 2}}}}}))
    result = run_snakemake("-n", "--cores", "1", "--configfile", str(PROFILES / "smoke.yaml"), "override.yaml",
                           cwd=tmp_path)
    assert result.returncode != 0
    assert re.search(r"config error at moe\.full_model\.options\.full_expert_wm: unknown option round; "
                     r"valid options: rounds \(int\), order \(str\)", result.stdout + result.stderr)


# ------------------------------------------------------------------------------ options' JSON schema
def _all_methods():
    methods.load_methods()
    return [(track, name) for track in methods.TRACKS for name in methods.names(track)]


# values a config or --opt may give (YAML scalars, lists, a mapping), for the schema/parse_options agreement
SAMPLES = [True, False, 0, 3, -1, 2.0, 1.5, "x", "sinkhorn", "cosine", "gate_wm", None, [0.5, 0.1], [1, 2],
           [1, 2, 3], [], ["a"], {"a": 1}]


def test_options_schema_of_every_method_is_valid_and_checks_names_and_types():
    import jsonschema

    for track, name in _all_methods():
        schema = methods.options_schema(track, name)
        jsonschema.Draft202012Validator.check_schema(schema)
        validator = jsonschema.Draft202012Validator(schema)
        defaults = methods.get(track, name).defaults()
        assert validator.is_valid({k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}), name
        assert {k: p["default"] for k, p in schema["properties"].items()} == \
            {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()}
        assert not validator.is_valid({"no_such_option": 1}), name
        for option in defaults:
            assert not validator.is_valid({option: {"a": 1}}), (name, option)   # no option is a mapping


def test_schema_and_parse_options_agree():
    """One semantics: the schema accepts a value exactly when parse_options' name/type check does (what an
    options class checks beyond types, in __post_init__, is not a type error and may still refuse it)."""
    import jsonschema

    checked = 0
    for track, name in _all_methods():
        method = methods.get(track, name)
        validator = jsonschema.Draft202012Validator(methods.options_schema(track, name))
        for option in method.defaults():
            default = method.defaults()[option]
            for value in SAMPLES + [list(default) if isinstance(default, tuple) else default]:
                where = f"{track}/{name}"
                try:
                    method.parse({option: value}, where)
                    type_ok = True
                except ValueError as error:
                    type_ok = not str(error).startswith((f"{where}.{option} = ", f"{where}: unknown option"))
                assert validator.is_valid({option: value}) == type_ok, (track, name, option, value)
                checked += 1
    assert checked > 500


@pytest.mark.parametrize("case", OPTION_BLOCKS)
def test_the_effective_schema_itself_rejects_option_typos_and_types(case, smoke, monkeypatch, registry):  # noqa: F811
    """check_config's schema holds the methods' options (plugins' too), not only the options classes after it."""
    from lmcbench.config import effective_schema, schema_error

    block, option, bad_value, _ = OPTION_BLOCKS[case]
    monkeypatch.chdir(ROOT)
    config = _set(_set(smoke, "plugins", [MOE_PLUGIN]), "moe.methods", [*smoke["moe"]["methods"], "random_order"])
    schema = effective_schema(config)
    assert schema_error(config, schema) is None
    for bad in (_set(config, f"{block}.{option}X", 1), _set(config, f"{block}.{option}", bad_value)):
        error = schema_error(bad, schema)
        assert error is not None and ".".join(map(str, error.absolute_path)).startswith(block), case


def test_config_schema_prints_the_methods_options(capsys):
    import jsonschema

    assert main(["config", "--profile", "smoke", "--schema"]) == 0
    schema = yaml.safe_load(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    options = schema["properties"]["moe"]["properties"]["full_model"]["properties"]["options"]
    assert options["additionalProperties"] is False
    assert options["properties"]["full_expert_wm"]["properties"]["rounds"] == \
        {"type": "integer", "default": 3, **{k: v for k, v in options["properties"]["full_expert_wm"]["properties"]
                                            ["rounds"].items() if k == "description"}}
    assert set(schema["properties"]["ace"]["properties"]["options"]["properties"]) == set(methods.names("ace"))
