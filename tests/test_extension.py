"""The add-a-method extension point: a plugin file registers a method (a GLMC matcher, an MoE ordering
method), the config names it, and it gets its own jobs, rows, curves and figure panels and is listed by
`lmcbench methods`, without any edit to the package or the rules."""
from __future__ import annotations

import pandas as pd
import pytest
import yaml

from lmcbench import methods
from conftest import data_cfg, fresh_model, vit_cfg
from lmcbench.config import PROFILES, ConfigError, check_config, check_methods, load_profile
from lmcbench.matchers import MATCHERS
from lmcbench.methods import load_plugin
from test_workflow import ROOT, _copy_workflow, snakemake

PLUGIN = "workflow/plugins/glmc_wm_one_round.py"
METHOD = "glmc_wm_one_round"
MOE_PLUGIN = "workflow/plugins/moe_random_order.py"
MOE_METHOD = "random_order"
MOE_OVERRIDE = {"plugins": [MOE_PLUGIN], "moe": {"methods": ["naive", "gate_wm", MOE_METHOD, "best_order"],
                                                 "options": {MOE_METHOD: {"seed": 3}}}}
ONLY_VIT = {  # smoke profile, pairwise GLMC on the ViT only: the smallest DAG that ends in the tables
    "plugins": [PLUGIN],
    "glmc": {"methods": ["vanilla", METHOD], "models": ["vit"],
             "width_hetero": {"pairs": [], "methods": []},
             "multi_model": {"models": [], "methods": [], "resolution": 3}},
}


@pytest.fixture
def registry():
    """Loading a plugin registers into the process-wide registry: undo it so other tests see the built-ins
    (all loaded first: a built-in module imported during the test would not register again after the undo)."""
    methods.load_methods()
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
    check_methods({"plugins": [PLUGIN], "glmc": {"methods": ["vanilla", METHOD]}})


def test_unknown_method_and_missing_plugin_are_named(registry):
    with pytest.raises(ConfigError, match="no_such_matcher"):
        check_methods({"glmc": {"methods": ["vanilla", "no_such_matcher"]}})
    with pytest.raises(FileNotFoundError, match="missing_plugin.py"):
        load_plugin("missing_plugin.py")


def test_an_installed_package_registers_through_the_entry_point_group(tmp_path, monkeypatch, registry):
    """A distribution declaring an entry point in group `lmcbench.methods` is loaded with the built-ins: its
    methods are listed and checked without any `plugins:` entry."""
    (tmp_path / "my_lmcbench_methods.py").write_text(
        "from lmcbench.matchers import register\n\n"
        "@register('installed_matcher')\n"
        "def installed_matcher(model_a, model_b, context):\n"
        "    \"\"\"A matcher from an installed package.\"\"\"\n")
    info = tmp_path / "my_lmcbench_methods-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-lmcbench-methods\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{methods.ENTRY_POINT_GROUP}]\nmine = my_lmcbench_methods\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "installed_matcher" not in methods.REGISTRY["glmc"]
    assert "installed_matcher" in methods.names("glmc")
    check_methods({"glmc": {"methods": ["vanilla", "installed_matcher"]}})


def test_unregistered_method_fails_before_any_job(tmp_path):
    _copy_workflow(tmp_path)
    result = snakemake("--cores", "2", *_config(tmp_path, {"glmc": {"methods": ["vanilla", METHOD]}}), "--",
                       "glmc_tables", cwd=tmp_path)
    assert result.returncode != 0
    assert METHOD in result.stdout + result.stderr and "plugins" in result.stdout + result.stderr
    assert not (tmp_path / "results" / "models").exists()


def test_dry_run_schedules_the_plugin_methods(tmp_path):
    """Both worked examples (GLMC and MoE) in one dry run: checked and scheduled."""
    _copy_workflow(tmp_path)
    override = {**ONLY_VIT, "plugins": [PLUGIN, MOE_PLUGIN], "moe": MOE_OVERRIDE["moe"]}
    result = snakemake("-n", "--cores", "2", *_config(tmp_path, override), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"results/glmc/pairwise/vit/{METHOD}/barriers.csv" in result.stdout
    assert "moe_sweep" in result.stdout and "moe_tables" in result.stdout   # the sweep jobs run moe.methods


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
    assert main(["methods", "--track", "glmc", "--plugin", PLUGIN]) == 0
    out = capsys.readouterr().out
    assert f"  {METHOD} " in out and "GLMC weight matching stopped after one round (plugin example)." in out


# ------------------------------------------------------------------------------------ an MoE ordering method


def test_moe_method_needs_its_plugin(monkeypatch, registry):
    monkeypatch.chdir(ROOT)
    config = load_profile("smoke")
    moe = {**config["moe"], **MOE_OVERRIDE["moe"]}
    with pytest.raises(ConfigError, match=f"moe.methods: {MOE_METHOD} is not registered; registered moe_order"):
        check_config({**config, "moe": moe})
    check_config({**config, "moe": moe, "plugins": [MOE_PLUGIN]})


def test_moe_plugin_reaches_tables_figures_and_the_listing(tmp_path, monkeypatch, capsys, registry, datasets):
    """A real (tiny) sweep job with the plugin method, then the MoE tables and figures built from it."""
    from lmcbench import plots
    from lmcbench.checkpoints import save_model
    from lmcbench.experiments.moe import moe_sweep_job
    from lmcbench.tables import moe_tables
    from lmcbench.cli import main

    monkeypatch.chdir(ROOT)
    load_plugin(MOE_PLUGIN)
    cfg = vit_cfg()
    backbone = save_model(tmp_path / "backbone", fresh_model(cfg, datasets["vit"], 0), cfg, datasets["vit"].meta,
                          seed=0)
    labels = {"experiment": "sweep", "variant": "paper", "model": "vit", "dataset": "mnist5k", "gating": "topk",
              "n_experts": 3, "placement": "first"}
    moe_sweep_job(tmp_path / "job", backbone, {"n_experts": 3, "gating": "topk", "k": 2, "placement": "first",
                                                "hidden": 16},
                  {"steps": 4, "batch_size": 16, "lr": 0.01, "eval_every": 2, "eval_examples": 32}, data_cfg("vit"),
                  [0, 1], {"points": 3, "splits": ["test"], "max_examples": 32, "batch_size": 64},
                  MOE_OVERRIDE["moe"]["methods"], labels, options=MOE_OVERRIDE["moe"]["options"])
    tables = tmp_path / "tables"
    outputs = {name: tables / f"moe_{name}.csv"
               for name in ("barriers", "curves", "order_ranks", "summary", "vs_paper", "diagnostics", "testability")}
    moe_tables([tmp_path / "job" / "barriers.csv"], outputs, ROOT / "results" / "reference" / "moe_published.csv")
    for name in ("barriers", "curves", "summary", "order_ranks"):
        assert MOE_METHOD in set(pd.read_csv(outputs[name])["method"]), name   # ranked too: it orders every layer
    assert f"sim_{MOE_METHOD}" in pd.read_csv(outputs["diagnostics"])
    barriers, curves = pd.read_csv(outputs["barriers"]), pd.read_csv(outputs["curves"])
    for draw, frame in ((plots.moe_curves, curves), (plots.moe_ratio_heatmap, barriers),
                        (plots.moe_rank_hist, pd.read_csv(outputs["order_ranks"]))):
        grid = draw(frame, tmp_path / f"{draw.__name__}.png", profile="test")
        shown = {t.get_text() for t in grid.legend.texts} if grid.legend else set(grid.row_names)
        assert MOE_METHOD in shown, draw.__name__
        assert (tmp_path / f"{draw.__name__}.png").stat().st_size > 1000
    assert main(["methods", "--track", "moe_order", "--plugin", MOE_PLUGIN]) == 0
    out = capsys.readouterr().out
    assert f"  {MOE_METHOD} " in out and "seed (int) = 0" in out
    # the CLI twin of a sweep's pair 0-1: same method, same options, same barriers
    pair = tmp_path / "pair"
    assert main(["moe", str(tmp_path / "job" / "seed0"), str(tmp_path / "job" / "seed1"), "--method", MOE_METHOD,
                 "--opt", "seed=3", "--plugin", MOE_PLUGIN, "--dataset", "mnist5k", "--points", "3",
                 "--max-examples", "32", "--batch-size", "64", "--splits", "test", "--out", str(pair)]) == 0
    ours = pd.read_csv(pair / "barriers.csv").set_index(["method", "split", "metric"])["barrier"]
    sweep = barriers.query("seed_a == 0 and seed_b == 1").set_index(["method", "split", "metric"])["barrier"]
    assert ours.index.get_level_values("method").unique().tolist() == ["naive", MOE_METHOD]
    pd.testing.assert_series_equal(ours, sweep.loc[ours.index], rtol=1e-6)
