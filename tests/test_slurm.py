"""A real SLURM cluster on localhost (munge + slurmctld + slurmd from Debian's packages), not a mock.

Part of the smoke DAG (three ViT seeds, then one GLMC pairwise job that needs all three) runs through
snakemake-executor-plugin-slurm with the project's own profile; its outputs must equal a local run's,
and a job that fails inside SLURM must make Snakemake fail. The daemons are stopped by pid at the end.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from test_workflow import ROOT, _copy_workflow, snakemake
from lmcbench.config import PROFILES

SCRIPT = ROOT / "tests" / "cluster" / "slurm_local.sh"
TARGETS = [f"results/models/vit/seed{s}/model.safetensors" for s in (0, 1, 2)] + [
    "results/glmc/pairwise/vit/vanilla/barriers.csv"]


def _cluster(command: str, timeout: int) -> None:
    result = subprocess.run(["bash", str(SCRIPT), command], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"slurm_local.sh {command} failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="module")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the local SLURM cluster needs root and apt-get (Debian), as on the CI machine")
    _cluster("install", timeout=600)
    _cluster("start", timeout=120)
    try:
        yield
    finally:
        _cluster("stop", timeout=120)


def _slurm(workdir: Path, *targets: str, configfiles=(str(PROFILES / "smoke.yaml"),)) -> subprocess.CompletedProcess:
    # the project's profile, with a 1 s first status poll so that a test does not idle for 20 s per job;
    # `timeout` inside snakemake() kills a hung run (the plugin ignores SIGTERM while jobs are queued)
    return snakemake("--profile", str(ROOT / "workflow" / "profiles" / "slurm"),
                     "--slurm-init-seconds-before-status-checks", "1", "--jobs", "2",
                     "--configfile", *configfiles, "--", *targets, cwd=workdir, timeout=900, slurm=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_smoke_subset_through_slurm_matches_local_run(slurm_cluster, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for workdir in (on_slurm, local):
        _copy_workflow(workdir)

    result = _slurm(on_slurm, *TARGETS)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    assert "sbatch" in log or "SLURM run ID" in log, "the jobs did not go through sbatch"
    slurm_logs = list((on_slurm / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert len(slurm_logs) == len(TARGETS), sorted(map(str, slurm_logs))

    result = snakemake("--cores", "2", "--configfile", str(PROFILES / "smoke.yaml"), "--", *TARGETS, cwd=local,
                       timeout=900)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]

    for seed in (0, 1, 2):  # same seed, same CPU: identical weights
        a = load_file(on_slurm / f"results/models/vit/seed{seed}/model.safetensors")
        b = load_file(local / f"results/models/vit/seed{seed}/model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    keys = ["seed_a", "seed_b", "split", "metric"]
    a = pd.read_csv(on_slurm / TARGETS[-1]).sort_values(keys).reset_index(drop=True)
    b = pd.read_csv(local / TARGETS[-1]).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="run_id"), b.drop(columns="run_id"), rtol=1e-6, atol=1e-9)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_failing_slurm_job_fails_the_workflow(slurm_cluster, tmp_path):
    _copy_workflow(tmp_path)
    missing = tmp_path / "no-cifar-here"   # the root exists (checked before any job) but holds no CIFAR-10:
    missing.mkdir()                        # the job itself fails inside SLURM
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump({"datasets": {"images": {"name": "cifar10",
                                                                                   "root": str(missing)}}}))
    result = _slurm(tmp_path, TARGETS[0], configfiles=(str(PROFILES / "smoke.yaml"), "broken.yaml"))
    log = result.stdout + result.stderr
    assert result.returncode != 0, log[-5000:]
    assert "Error in rule train" in log, log[-5000:]
    job_log = (tmp_path / "results/logs/train/vit/seed0.log").read_text()
    assert str(missing) in job_log and "CIFAR-10" in job_log, job_log[-2000:]
    assert not (tmp_path / TARGETS[0]).exists()
