"""The add-a-method extension point: a plugin file registers a matcher, the config names it, and it gets
its own jobs, rows, curves and figure panels without any edit to the package or the rules."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from lmcbench import methods
from lmcbench.config import ConfigError, check_matchers
from lmcbench.matchers import MATCHERS
from lmcbench.methods import load_plugin
from test_workflow import ROOT, _copy_workflow, snakemake
from lmcbench.config import PROFILES

PLUGIN = "workflow/plugins/glmc_wm_one_round.py"
METHOD = "glmc_wm_one_round"
ONLY_VIT = {  # smoke profile, pairwise GLMC on the ViT only: the smallest DAG that ends in the tables
    "plugins": [PLUGIN],
    "glmc": {"methods": ["vanilla", METHOD], "models": ["vit"],
             "width_hetero": {"pairs": [], "methods": []},
             "multi_model": {"models": [], "methods": [], "resolution": 3}},
}


@pytest.fixture
def registry():
    """Loading a plugin registers into the process-wide registry: undo it so other tests see the built-ins."""
    saved = {track: dict(registered) for track, registered in methods.REGISTRY.items()}
    saved_loaded = dict(methods.LOADED)
    yield methods.REGISTRY
    for track, registered in saved.items():
        methods.REGISTRY[track].clear()
        methods.REGISTRY[track].update(registered)
    methods.LOADED.clear()
    methods.LOADED.update(saved_loaded)


def _config(tmp_path, override: dict) -> list[str]:
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(override))
    return ["--configfile", str(PROFILES / "smoke.yaml"), "override.yaml"]


def test_plugin_registers_its_matcher_once(monkeypatch, registry):
    monkeypatch.chdir(ROOT)
    load_plugin(PLUGIN)
    load_plugin(PLUGIN)  # a second load (every job loads the plugins) is a no-op, not a duplicate error
    assert METHOD in MATCHERS
    check_matchers({"plugins": [PLUGIN], "glmc": {"methods": ["vanilla", METHOD]}})


def test_unknown_method_and_missing_plugin_are_named(registry):
    with pytest.raises(ConfigError, match="no_such_matcher"):
        check_matchers({"glmc": {"methods": ["vanilla", "no_such_matcher"]}})
    with pytest.raises(FileNotFoundError, match="missing_plugin.py"):
        load_plugin("missing_plugin.py")


def test_unregistered_method_fails_before_any_job(tmp_path):
    _copy_workflow(tmp_path)
    result = snakemake("--cores", "2", *_config(tmp_path, {"glmc": {"methods": ["vanilla", METHOD]}}), "--",
                       "glmc_tables", cwd=tmp_path)
    assert result.returncode != 0
    assert METHOD in result.stdout + result.stderr and "plugins" in result.stdout + result.stderr
    assert not (tmp_path / "results" / "models").exists()


def test_dry_run_schedules_the_plugin_method(tmp_path):
    _copy_workflow(tmp_path)
    result = snakemake("-n", "--cores", "2", *_config(tmp_path, ONLY_VIT), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results/glmc/pairwise/vit/{METHOD}/barriers.csv" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_plugin_method_reaches_tables_and_figures(tmp_path):
    _copy_workflow(tmp_path)
    result = snakemake("--cores", "2", *_config(tmp_path, ONLY_VIT), "--", "glmc_figures", cwd=tmp_path,
                       timeout=800)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    tables = tmp_path / "results" / "tables"
    barriers = pd.read_csv(tables / "glmc_barriers.csv")
    ours = barriers[barriers["method"] == METHOD]
    assert len(ours) == len(barriers[barriers["method"] == "vanilla"]) > 0
    assert ours["barrier"].notna().all()
    assert METHOD in set(pd.read_csv(tables / "glmc_curves.csv")["method"])
    assert METHOD in set(pd.read_csv(tables / "glmc_summary.csv")["method"])
    assert METHOD.replace("_", "\\_") in (tables / "glmc_summary.tex").read_text()
    assert (tmp_path / "results" / "figures" / "glmc_curves.png").stat().st_size > 1000


def test_cli_lists_a_plugin_matcher(capsys, monkeypatch, registry):
    from lmcbench.cli import main

    monkeypatch.chdir(ROOT)
    assert main(["matchers", "--plugin", PLUGIN]) == 0
    assert METHOD in capsys.readouterr().out
