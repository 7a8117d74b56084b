"""The Snakemake workflow: the whole DAG, config validation before any job, and (slow) the full smoke run."""
from __future__ import annotations

import copy
import json
import re
import subprocess
from math import comb
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import copy_workflow, run_snakemake
from lmcbench.config import PROFILES, SCHEMA

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROFILES
RULES = {"train", "glmc_pairwise", "glmc_tables", "glmc_figures", "training_report", "all"}


snakemake = run_snakemake   # the helpers live in conftest.py, beside the shared smoke-run fixture
_copy_workflow = copy_workflow


def dry_run(configfile: Path | None = None, cwd=ROOT) -> subprocess.CompletedProcess:
    # --forceall: list every job even when results/ already holds outputs; --nolock: never touch a running lock
    args = ["-n", "--forceall", "--cores", "2", "--nolock"]
    if configfile is not None:
        args += ["--configfile", str(configfile)]
    return snakemake(*args, cwd=cwd)


def merge(base: dict, override: dict) -> dict:
    """Snakemake's --configfile semantics: nested dicts are merged, everything else replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load(name: str) -> dict:
    return yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text())


def profile_config(name: str) -> dict:
    default = load("default")
    return default if name == "default" else merge(default, load(name))


def job_stats(output: str) -> dict[str, int]:
    assert "Job stats:" in output, output[-3000:]
    stats = {}
    for line in output.split("Job stats:", 1)[1].splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m:
            if m.group(1) == "total":
                stats["total"] = int(m.group(2))
                break
            stats[m.group(1)] = int(m.group(2))
    return stats


# ----------------------------------------------------------------------------- (a) the whole DAG
def model_seeds(config: dict, model: str) -> list[int]:
    return sorted(config["models"][model].get("seeds", config["seeds"]))


def expected_jobs(config: dict) -> dict[str, int]:
    """Job counts implied by a profile: one train per (model, seed); one GLMC job per (model, method), which
    handles all of that model's seed pairs (pairwise), wide × narrow seeds (width_hetero), or seeds (multi_model)."""
    glmc = config["glmc"]
    jobs = {
        "train": sum(len(model_seeds(config, m)) for m in config["models"]),
        "glmc_pairwise": len(glmc.get("models") or config["models"]) * len(glmc["methods"]),
        "glmc_tables": 1, "glmc_figures": 1, "training_report": 1, "all": 1,
    }
    if glmc.get("width_hetero", {}).get("pairs"):
        jobs["glmc_width_hetero"] = len(glmc["width_hetero"]["pairs"]) * len(glmc["width_hetero"]["methods"])
    if glmc.get("multi_model", {}).get("models"):
        jobs["glmc_multi_model"] = len(glmc["multi_model"]["models"]) * len(glmc["multi_model"]["methods"])
    moe = config.get("moe", {})
    if moe.get("models"):  # one job per (model, variant, gating, n_experts, placement), all seeds inside
        variants = moe.get("variants", {"paper": {}})
        setting = lambda model, v, key: variants[v].get(key, moe["models"][model].get(key, moe.get(key)))  # noqa: E731
        jobs["moe_sweep"] = sum(len(setting(m, v, "gatings")) * len(setting(m, v, "n_experts"))
                                * len(setting(m, v, "placements"))
                                for m in moe["models"] for v in variants if m in variants[v].get("models", moe["models"]))
        jobs["moe_tables"] = jobs["moe_figures"] = 1
        if moe.get("full_model", {}).get("models"):
            jobs["moe_full_model"] = len(moe["full_model"]["models"])
    if config.get("ace"):  # one job per task, the cached N-body pools, tables, figures
        jobs["ace_experiment"] = len(config["ace"]["tasks"])
        jobs["ace_tables"] = jobs["ace_figures"] = 1
        if "nbody" in config["ace"]["tasks"]:
            jobs["ace_nbody_data"] = 1
    jobs["claims"] = jobs["timing"] = 1   # the claims ledger after the track tables; wall-clock seconds
    return jobs


def pairwise_records(config: dict) -> int:
    """Rows of glmc_barriers.csv from the pairwise experiment: per model, method, seed pair, split and metric."""
    glmc = config["glmc"]
    pairs = sum(comb(len(model_seeds(config, m)), 2) for m in glmc.get("models") or config["models"])
    return pairs * len(glmc["methods"]) * len(config["barrier"]["splits"]) * 2


@pytest.mark.parametrize("profile", ["default", "smoke", "gpu_check", "paper"])
def test_dry_run_lists_the_whole_dag(profile, tmp_path):
    config = profile_config(profile)
    cwd, roots = ROOT, [d["root"] for d in config["datasets"].values() if d.get("root")]
    if roots:  # data that are not shipped (paper): even a dry run needs the roots to exist (lmcbench.config)
        cwd = tmp_path
        copy_workflow(cwd)
        for root in roots:
            (cwd / root).parent.mkdir(parents=True, exist_ok=True)
            (cwd / root).touch() if Path(root).suffix else (cwd / root).mkdir()
    result = dry_run(None if profile == "default" else CONFIG_DIR / f"{profile}.yaml", cwd=cwd)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    stats = job_stats(out)
    assert RULES <= set(stats)
    total = stats.pop("total")
    assert stats == expected_jobs(config)
    assert total == sum(stats.values())
    for model in config["models"]:
        for seed in model_seeds(config, model):
            assert f"results/models/{model}/seed{seed}/model.safetensors" in out
    for model in config["glmc"].get("models") or list(config["models"]):
        for method in config["glmc"]["methods"]:
            assert f"results/glmc/pairwise/{model}/{method}/barriers.csv" in out
    assert "dry-run" in out


# ----------------------------------------------------------------------------- (b) invalid configs
def _set(config: dict, dotted: str, value) -> dict:
    config = copy.deepcopy(config)
    *parents, leaf = dotted.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[leaf] = value
    return config


BAD_CONFIGS = [
    pytest.param("models.vit.arch.embed_dimm", 32, "embed_dimm", id="unknown-arch-key"),
    pytest.param("barrier.pointz", 11, "pointz", id="unknown-barrier-key"),
    pytest.param("seeds", "zero", "zero", id="seeds-wrong-type"),
    pytest.param("barrier.points", "eleven", "eleven", id="points-wrong-type"),
]
# checked through the schema directly only (each dry run costs a Snakemake start-up)
MORE_BAD_CONFIGS = [
    pytest.param("models.gpt2.train.stepz", 10, "stepz", id="unknown-train-key"),
    pytest.param("models.vit.family", "resnet", "resnet", id="unknown-family"),
    pytest.param("datasets.text.tokenizer", "bytes", "bytes", id="unknown-tokenizer"),
]


def _write_bad(tmp_path, dotted, value) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_set(load("smoke"), dotted, value)))
    return path


@pytest.mark.parametrize(("dotted", "value", "named"), BAD_CONFIGS)
def test_dry_run_rejects_invalid_config(tmp_path, dotted, value, named):
    result = dry_run(_write_bad(tmp_path, dotted, value))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config error at" in out and len(out.splitlines()) < 15, out[-3000:]  # one line, not the schema
    assert named in out
    assert "Job stats:" not in out and "rule train:" not in out  # rejected before the DAG is even built


@pytest.mark.parametrize(("dotted", "value", "named"), BAD_CONFIGS + MORE_BAD_CONFIGS)
def test_schema_rejects_invalid_config(dotted, value, named):
    from snakemake.utils import validate

    config = _set(profile_config("smoke"), dotted, value)
    with pytest.raises(Exception, match=re.escape(named)):
        validate(config, str(SCHEMA))


@pytest.mark.parametrize("profile", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_schema_accepts_every_shipped_profile(profile):
    from snakemake.utils import validate

    validate(profile_config(profile), str(SCHEMA))


def test_schema_rejects_missing_required_and_out_of_range():
    from snakemake.utils import validate

    config = profile_config("smoke")
    broken = copy.deepcopy(config)
    del broken["models"]["vit"]["arch"]["embed_dim"]
    with pytest.raises(Exception, match="embed_dim"):
        validate(broken, str(SCHEMA))
    with pytest.raises(Exception, match="1.5"):
        validate(_set(config, "datasets.images.val_frac", 1.5), str(SCHEMA))
    with pytest.raises(Exception):
        validate(_set(config, "seeds", [0]), str(SCHEMA))  # one seed makes no pair


def test_invalid_config_runs_no_job(tmp_path):
    """Not a dry run: the copy of the workflow must fail at validation and leave no output behind."""
    workdir = tmp_path / "wf"
    _copy_workflow(workdir)
    bad = _write_bad(tmp_path, "barrier.points", "eleven")
    result = snakemake("--cores", "1", "--configfile", str(bad), cwd=workdir)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "eleven" in out
    assert sorted(p.name for p in (workdir / "results").iterdir()) == ["reference"]


# ----------------------------------------------------------------------------- (c) dangling dataset
def test_model_with_unknown_dataset_is_rejected(tmp_path):
    path = tmp_path / "dangling.yaml"
    path.write_text(yaml.safe_dump(_set(load("smoke"), "models.vit.dataset", "imagez")))
    result = dry_run(path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "imagez" in out and "models.vit.dataset" in out
    assert "Job stats:" not in out


def test_glmc_model_not_in_models_is_rejected(tmp_path):
    path = tmp_path / "dangling_glmc.yaml"
    path.write_text(yaml.safe_dump(_set(load("smoke"), "glmc.models", ["vit", "vitt"])))
    result = dry_run(path)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'vitt'" in out
    assert "Job stats:" not in out


# ----------------------------------------------------------------------------- (d) the full smoke run
BARRIER_COLUMNS = ["experiment", "model", "dataset", "method", "seed_a", "seed_b", "split", "metric", "barrier",
                   "barrier_midpoint", "run_id"]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_full_smoke_workflow(smoke_run):
    tmp_path = smoke_run   # the session's one smoke run (conftest.py), shared with the golden-table test
    config = profile_config("smoke")

    tables, figures = tmp_path / "results" / "tables", tmp_path / "results" / "figures"
    for name in ("training.csv", "glmc_barriers.csv", "glmc_curves.csv", "glmc_summary.csv", "glmc_summary.tex"):
        assert (tables / name).stat().st_size > 0, name
    pngs = sorted(figures.glob("*.png"))
    assert {p.name for p in pngs} >= {"training_curves.png", "glmc_curves.png", "glmc_summary.png"}
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000

    barriers = pd.read_csv(tables / "glmc_barriers.csv")
    assert set(BARRIER_COLUMNS) <= set(barriers.columns)
    assert barriers[["barrier", "barrier_midpoint"]].notna().all().all()
    assert (barriers["barrier"] >= -1e-12).all()  # endpoints (vertices) are on the grid
    jobs = expected_jobs(config)
    pairwise = barriers[barriers["experiment"] == "pairwise"]
    assert len(pairwise) == pairwise_records(config)
    assert not pairwise.duplicated(["model", "method", "seed_a", "seed_b", "split", "metric"]).any()

    provenances = {}
    for prov_file in (tmp_path / "results" / "glmc").rglob("provenance.json"):
        provenances[json.loads(prov_file.read_text())["run_id"]] = prov_file
    assert set(barriers["run_id"]) <= set(provenances), "every record's run_id names a provenance.json"
    assert barriers["run_id"].nunique() == sum(v for k, v in jobs.items() if k.startswith("glmc_")
                                               and k not in ("glmc_tables", "glmc_figures"))

    training = pd.read_csv(tables / "training.csv")
    train_provs = {json.loads(p.read_text())["run_id"] for p in (tmp_path / "results" / "models").rglob("provenance.json")}
    assert set(training["run_id"]) == train_provs
    assert not list((tmp_path / "results").rglob("resume.pt"))

    summary = pd.read_csv(tables / "glmc_summary.csv")
    n_pairs = {comb(len(model_seeds(config, m)), 2) for m in config["glmc"].get("models") or config["models"]}
    assert set(summary.loc[summary["experiment"] == "pairwise", "n_pairs"]) == n_pairs
    curves = pd.read_csv(tables / "glmc_curves.csv")
    assert sorted(curves["lambda"].unique()) == pytest.approx(list(
        [i / (config["barrier"]["points"] - 1) for i in range(config["barrier"]["points"])]))
    tex = (tables / "glmc_summary.tex").read_text()
    assert "\\begin{tabular}" in tex
    for method in config["glmc"]["methods"]:
        assert method.replace("_", "\\_") in tex  # LaTeX-escaped

    # wall-clock seconds only in timing.csv: the result tables are the same bytes for the same seed
    assert "train_seconds" not in set(pd.read_csv(tables / "ace_results.csv")["metric"])
    timing = pd.read_csv(tables / "timing.csv")
    assert {"ace/image", "ace/nbody"} <= set(timing["source"]) and (timing["seconds"] > 0).all()

    # the claims ledger: every column, and at least 4 claims per paper that the smoke profile can judge
    ledger = pd.read_csv(tables / "claims.csv")
    assert {"claim", "paper", "statement", "profile", "metric", "ours_mean", "ours_ci_low", "ours_ci_high", "n",
            "paper_value", "verdict", "table", "rows"} <= set(ledger.columns)
    assert set(ledger["profile"]) == {"smoke"} and ledger["verdict"].isin(["holds", "does not hold",
                                                                          "inconclusive", "not run"]).all()
    judged = ledger[ledger["verdict"] != "not run"]
    assert (judged.groupby("paper")["claim"].nunique() >= 4).all() and judged["paper"].nunique() == 3, \
        ledger[["claim", "scope", "verdict", "note"]].to_string()
    assert (tables / "claims.tex").read_text().count("glmc.C") >= 4

    # the Snakemake report holds every figure (each with its caption) and the summary tables
    result = snakemake("--cores", "1", "--configfile", str(PROFILES / "smoke.yaml"), "--report", "results/report.html",
                       cwd=tmp_path, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = (tmp_path / "results" / "report.html").read_text()
    for png in pngs:
        assert png.name in report, f"{png.name} is not in the report"
    for table in ("glmc_summary.csv", "moe_summary.csv", "ace_summary.csv", "claims.csv"):
        assert table in report, f"{table} is not in the report"
    assert "smoke" in report and "profile" in report
