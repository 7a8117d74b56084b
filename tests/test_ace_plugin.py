"""The ACE add-a-method example (workflow/plugins/ace_warmup_penalty.py): a plugin file registers an ACE
baseline with its own options; the config names it and it is checked, scheduled by the dry run, trained,
and appears in the ACE tables, figures and `lmcbench methods`, without any edit to the package or the rules."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml

from lmcbench.config import PROFILES, ConfigError, check_config, load_profile
from lmcbench.methods import load_plugin
from test_extension import registry  # noqa: F401 - the fixture that undoes plugin registrations
from test_workflow import ROOT, _copy_workflow, snakemake

PLUGIN = "workflow/plugins/ace_warmup_penalty.py"
METHOD = "warmup_penalty"
OVERRIDE = {"plugins": [PLUGIN], "ace": {"tasks": ["image"], "experiments": {"accuracy": {"methods": ["strict", METHOD]}},
                                         "options": {METHOD: {"warmup": 0.25}}}}


def test_plugin_options_are_checked_before_any_job(monkeypatch, registry):  # noqa: F811
    monkeypatch.chdir(ROOT)
    config = load_profile("smoke")
    without_plugin = copy.deepcopy(config)
    without_plugin["ace"]["experiments"]["accuracy"]["methods"] = ["strict", METHOD]
    with pytest.raises(ConfigError, match=f"{METHOD}.*strict"):          # not registered: the registered ones listed
        check_config(without_plugin)
    for options, message in [({"warmup": 0.25, "wramup": 1}, "unknown option wramup; valid options: weight"),
                             ({"weight": "big"}, "weight = 'big': expected float")]:
        bad = copy.deepcopy(without_plugin)
        bad["plugins"] = [PLUGIN]
        bad["ace"]["options"] = {METHOD: options}
        with pytest.raises(ConfigError, match=message):
            check_config(bad)


def test_dry_run_schedules_the_plugin_method(tmp_path):
    _copy_workflow(tmp_path)
    (tmp_path / "override.yaml").write_text(yaml.safe_dump(OVERRIDE))
    result = snakemake("-n", "--cores", "2", "--configfile", str(PROFILES / "smoke.yaml"), "override.yaml", "--",
                       "ace_figures", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if "rule ace_experiment (image)" in x)
    assert f"accuracy: strict, {METHOD}" in line, line


def test_plugin_method_trains_and_reaches_tables_figures_and_listing(tmp_path, monkeypatch, capsys, registry):  # noqa: F811
    pytest.importorskip("escnn")
    from lmcbench.experiments.ace import task_job
    from lmcbench.ace.report import ace_figures, ace_tables
    from lmcbench.cli import main

    monkeypatch.chdir(ROOT)
    load_plugin(PLUGIN)
    cfg = {"seeds": [0], "log_every": 1,
           "image": {"data": {"name": "mnist5k", "val_frac": 0.1, "test_frac": 0.2, "split_seed": 0},
                     "arch": {"group": "C", "N": 4, "channels": [2], "kernel_size": 3},
                     "train": {"epochs": 1, "batch_size": 32, "lr": 0.003, "gamma_lr": 0.05, "n_train": 64,
                               "eval_examples": 32}},
           "options": OVERRIDE["ace"]["options"],
           "experiments": {"accuracy": {"methods": ["ace_equality", METHOD]},   # γ/λ figure: ACE runs only
                           "sample_efficiency": {"n_train": [32], "methods": [METHOD]}}}
    task_job("image", cfg, tmp_path / "image")
    out = SimpleNamespace(**{k: tmp_path / f"{k}.csv" for k in ("results", "trajectories", "curves", "summary",
                                                                 "vs_paper")})
    ace_tables([tmp_path / "image" / "records.csv"], out, ROOT / "results" / "reference" / "ace_published.csv")
    results, summary = pd.read_csv(out.results), pd.read_csv(out.summary)
    for table in (results, summary, pd.read_csv(out.curves)):
        assert set(table["method"]) == {"ace_equality", METHOD}
    ours = results[(results["method"] == METHOD) & results["headline"]]
    assert set(ours["eval"]) == {"mixed"} and {"accuracy", "equiv_err"} <= set(ours["metric"])

    saved = []
    monkeypatch.setattr("lmcbench.plots.save_figure", lambda grid, path, title: saved.append((grid, path)))
    figs = SimpleNamespace(**{k: tmp_path / f"{k}.png" for k in ("trajectories", "sample_efficiency", "equivariance")})
    ace_figures(results, pd.read_csv(out.trajectories), figs, "test")
    for figure in (figs.sample_efficiency, figs.equivariance):
        grid = next(g for g, path in saved if path == figure)
        assert METHOD in {t.get_text() for t in grid.legend.texts}, figure

    assert main(["methods", "--track", "ace", "--plugin", PLUGIN]) == 0
    listing = capsys.readouterr().out
    assert METHOD in listing and "warmup" in listing


def test_cli_trains_the_plugin_method_with_checked_options(tmp_path, monkeypatch, capsys, registry):  # noqa: F811
    import json

    from lmcbench.cli import main

    monkeypatch.chdir(ROOT)
    args = ["ace", "--config", "smoke", "--task", "nbody", "--method", METHOD, "--plugin", PLUGIN, "--out", str(tmp_path)]
    assert main([*args, "--opt", "warmup=fast"]) == 1                # wrong type: refused before any job
    assert "warmup = 'fast': expected float" in capsys.readouterr().err and not (tmp_path / "data").exists()
    assert main([*args, "--opt", "warmup=0.25"]) == 0
    assert METHOD in capsys.readouterr().out
    records = pd.read_csv(tmp_path / "records.csv")
    assert set(records["method"]) == {METHOD} and {"mse", "equiv_err"} <= set(records["metric"])
    job = json.loads((tmp_path / "provenance.json").read_text())
    assert json.dumps(job).count('"warmup": 0.25') == 1               # the option the run was given


def test_dual_lr_experiment_needs_a_method_with_a_dual_lr_option():
    from lmcbench.experiments.ace import experiment_methods

    cfg = {"experiments": {"dual_lr": {"method": "strict", "values": [0.1]}}}
    with pytest.raises(ValueError, match="ace.experiments.dual_lr.method = 'strict' has no dual_lr option; "
                                         "methods with one: ace_equality, ace_resilient, ace_eps"):
        experiment_methods("dual_lr", "image", cfg)
    cfg["experiments"]["dual_lr"]["method"] = "ace_eps"
    assert experiment_methods("dual_lr", "nbody", cfg) == ["ace_eps"]
