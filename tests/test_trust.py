"""Trustworthy runs (issue 13): no stale resume, readable outputs, errors that name the problem before any
job (dry runs included), and interrupted runs that the documented commands recover byte for byte.

The workflow tests share one uninterrupted run of one small training job (`reference`); every other
run of that job (after a stale resume file, after SIGINT, after SIGKILL) must reproduce its files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import ROOT, copy_workflow, data_cfg, model_cfg, run_snakemake
from lmcbench.cli import main
from lmcbench.config import DEFAULT_PROFILE, PROFILES, ConfigError, check_config, load_profile, merge

SMOKE = PROFILES / "smoke.yaml"
TARGET = "results/models/vit/seed0/model.safetensors"
OUTPUTS = ("model.safetensors", "config.json", "history.csv")  # the train rule's declared outputs
# one ViT training job long enough to be interrupted after its first resume.pt (step 10) and before its end
TRAIN = {"steps": 150, "batch_size": 32, "lr": 0.002, "eval_every": 10, "eval_examples": 100,
         "eval_batch_size": 100}
PROFILE = merge(yaml.safe_load(SMOKE.read_text()), {"models": {"vit": {"train": TRAIN}}, "resources": {"threads": 1}})


def _profile(tmp_path: Path, override: dict | None = None, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(merge(PROFILE, override or {})))
    return path


def _workflow(tmp_path: Path, override: dict | None = None) -> tuple[Path, list[str]]:
    """A copy of the workflow in tmp_path/wf and the arguments that run the one training job there."""
    workdir = tmp_path / "wf"
    copy_workflow(workdir)
    _profile(workdir, override)
    return workdir, ["--cores", "1", "--configfile", "profile.yaml", "--", TARGET]


def _files(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in OUTPUTS}


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """The working directory of one uninterrupted workflow run of the training job."""
    workdir, args = _workflow(tmp_path_factory.mktemp("reference"))
    result = run_snakemake(*args, cwd=workdir, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return workdir


@pytest.fixture(scope="module")
def reference(reference_run) -> dict[str, bytes]:
    """The training job's outputs from the uninterrupted run."""
    return _files(reference_run / "results/models/vit/seed0")


def _interrupted_train_job(out: Path, cfg: dict, data: dict, seed: int) -> None:
    """Start `train_job` and kill it (KeyboardInterrupt) at its second evaluation: resume.pt is left behind."""
    from lmcbench import training
    from lmcbench.experiments.train import train_job

    calls, evaluate = [], training.evaluate

    def dying_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kwargs)

    training.evaluate = dying_evaluate
    try:
        with pytest.raises(KeyboardInterrupt):
            train_job(out, "vit", cfg, data, seed, progress=False)
    finally:
        training.evaluate = evaluate
    assert (out / "resume.pt").exists() and not (out / "model.safetensors").exists()


# ============================================================================ 1. stale resume
@pytest.mark.parametrize("change", ["config", "seed"])
def test_cli_train_never_resumes_another_runs_state(tmp_path, change):
    """`lmcbench train` into a directory holding the resume.pt of a run with another lr (or seed) trains
    afresh: its weights equal a clean run's, and the log says why it did not resume."""
    profile = _profile(tmp_path, {"models": {"vit": model_cfg("vit", steps=40, eval_every=10)}})
    config = load_profile(profile)
    model, data = config["models"]["vit"], config["datasets"]["images"]
    stale = merge(model, {"train": {"lr": 0.01}}) if change == "config" else model
    out, clean = tmp_path / "out", tmp_path / "clean"
    _interrupted_train_job(out, stale, data, seed=1 if change == "seed" else 0)
    for directory in (out, clean):
        assert main(["train", "--config", str(profile), "--model", "vit", "--seed", "0", "--out", str(directory),
                     "--log", str(directory / "train.log")]) == 0
    assert _files(out) == _files(clean)
    log = (out / "train.log").read_text()
    assert "not resuming" in log and ("lr" in log if change == "config" else "seed: 1 -> 0" in log)
    assert not (out / "resume.pt").exists()


@pytest.mark.parametrize("change", ["config", "seed"])
def test_workflow_never_resumes_another_runs_state(tmp_path, reference, change):
    """The train rule, finding the resume.pt of a run with another lr (or another seed) in its output
    directory, trains afresh and writes exactly what an uninterrupted run writes."""
    workdir, args = _workflow(tmp_path)
    out = workdir / "results/models/vit/seed0"
    config = load_profile(workdir / "profile.yaml")
    model, data = config["models"]["vit"], config["datasets"]["images"]
    stale = merge(model, {"train": {"lr": 0.01}}) if change == "config" else model
    _interrupted_train_job(out, stale, data, seed=1 if change == "seed" else 0)
    result = run_snakemake(*args, cwd=workdir, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _files(out) == reference
    assert "not resuming" in (workdir / "results/logs/train/vit/seed0.log").read_text()


# ============================================================================ 2. file modes
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_the_umask_mode(tmp_path, umask):
    from lmcbench.io import atomic_path, write_json
    from lmcbench.experiments.train import train_job

    old = os.umask(umask)
    try:
        train_job(tmp_path / "ckpt", "vit", model_cfg("vit", steps=2, eval_every=2), data_cfg("vit"), 0,
                  progress=False)
        write_json(tmp_path / "a.json", {"a": 1})
        with atomic_path(tmp_path / "t.pt") as tmp:
            torch.save({"x": 1}, tmp)
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 6
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: oct(0o666 & ~umask) for p in files}


def test_workflow_outputs_get_the_umask_mode(reference_run):
    """Every file the reference run wrote has the umask's mode (0644 under 022), not mkstemp's 0600."""
    umask = os.umask(0o022)
    os.umask(umask)
    results = reference_run / "results"
    files = [p for p in results.rglob("*") if p.is_file() and p.relative_to(results).parts[0] != "reference"]
    modes = {str(p.relative_to(results)): oct(p.stat().st_mode & 0o777) for p in files}
    assert len(files) >= 5 and set(modes.values()) == {oct(0o666 & ~umask)}, modes


# ============================================================================ 3-5. config errors before any job
def _dry_run(tmp_path, override: dict) -> str:
    """`snakemake -n` of the smoke profile with `override`; asserts it failed before listing any job."""
    profile = tmp_path / "bad.yaml"
    profile.write_text(yaml.safe_dump(merge(yaml.safe_load(SMOKE.read_text()), override)))
    result = run_snakemake("-n", "--forceall", "--nolock", "--cores", "1", "--configfile", str(profile), cwd=ROOT)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Job stats:" not in out, out[-3000:]
    assert len(out.splitlines()) < 15, out  # the message, not the schema and the config
    return out


BAD_CONFIGS = [  # (override, what the one-line error must name)
    ({"glmc": {"matchers": {"glmc_weight_matching": {"iteratons": 1}}}},
     ["glmc.matchers.glmc_weight_matching", "iteratons", "iterations"]),
    ({"glmc": {"width_hetero": {"matchers": {"learned_full": {"lamda_range": [0.2, 0.5]}}}}},
     ["glmc.width_hetero.matchers.learned_full", "lamda_range", "lambda_range"]),
    ({"models": {"gpt2": {"matchers": {"learned_full": {"batchsize": 4}}}}},
     ["models.gpt2.matchers.learned_full", "batchsize", "batch_size"]),
    ({"glmc": {"multi_model": {"matcher": {"round": 1}}}}, ["glmc.multi_model.matcher", "round", "rounds"]),
    ({"glmc": {"matchers": {"glmc_weight_matching": {"iterations": "three"}}}},
     ["glmc.matchers.glmc_weight_matching.iterations", "int"]),
    ({"glmc": {"matchers": {"glmc_wieght_matching": {"iterations": 3}}}}, ["glmc_wieght_matching", "registered"]),
    ({"glmc": {"methods": ["vanilla", "no_such_matcher"]}}, ["no_such_matcher", "registered"]),
    ({"seeds": [0, 1]}, ["seeds", "glmc.multi_model", "3"]),
    ({"ace": {"tasks": []}}, ["ace.tasks"]),
    ({"datasets": {"images": {"name": "cifar10", "root": "/nonexistent/cifar-10-batches-py"}}},
     ["datasets.images.root", "/nonexistent/cifar-10-batches-py"]),
    ({"datasets": {"images": {"name": "cifar10"}}}, ["datasets.images.root", "cifar10", "never downloads"]),
    ({"seedz": [0, 1, 2]}, ["seedz"]),
]


@pytest.mark.parametrize("override,named", BAD_CONFIGS, ids=lambda v: str(v)[:40])
def test_config_mistakes_are_named_before_any_job(override, named):
    with pytest.raises((ConfigError, ValueError)) as error:
        check_config(merge(merge(yaml.safe_load(DEFAULT_PROFILE.read_text()), yaml.safe_load(SMOKE.read_text())),
                           override))
    for part in named:
        assert part in str(error.value), (part, str(error.value))


@pytest.mark.parametrize("override,named", [BAD_CONFIGS[0], BAD_CONFIGS[7], BAD_CONFIGS[8], BAD_CONFIGS[9]],
                         ids=["matcher_option_typo", "two_seeds_multi_model", "no_ace_tasks", "missing_root"])
def test_dry_run_fails_on_config_mistakes(tmp_path, override, named):
    out = _dry_run(tmp_path, override)
    for part in named:
        assert part in out, (part, out)


def test_matcher_option_typo_runs_no_job(tmp_path):
    """Not a dry run: a misspelt matcher option stops the workflow before the first training job."""
    workdir, args = _workflow(tmp_path, {"glmc": {"matchers": {"glmc_weight_matching": {"iteratons": 1}}}})
    result = run_snakemake(*args[:-2], cwd=workdir)
    assert result.returncode != 0 and "iteratons" in result.stdout + result.stderr
    assert sorted(p.name for p in (workdir / "results").iterdir()) == ["reference"]


# ============================================================================ 4. corrupt checkpoints
@pytest.fixture(scope="module")
def vit_checkpoint(tmp_path_factory) -> Path:
    from lmcbench.experiments.train import train_job

    out = tmp_path_factory.mktemp("ckpt") / "vit"
    return train_job(out, "vit", model_cfg("vit", steps=2, eval_every=2), data_cfg("vit"), 0, progress=False)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "config_truncated"])
def test_damaged_checkpoint_errors_name_the_file(vit_checkpoint, tmp_path, damage, capsys):
    from lmcbench.checkpoints import load_model

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("model.safetensors", "config.json"):
        (bad / name).write_bytes((vit_checkpoint / name).read_bytes())
    weights = (bad / "model.safetensors").read_bytes()
    damaged = {"truncated": ("model.safetensors", weights[: len(weights) // 2]),
               "empty": ("model.safetensors", b""),
               "random": ("model.safetensors", os.urandom(4096)),
               "config_truncated": ("config.json", (bad / "config.json").read_bytes()[:40])}[damage]
    (bad / damaged[0]).write_bytes(damaged[1])
    with pytest.raises(ValueError, match=str(bad / damaged[0])):
        load_model(bad)
    # a pairwise job reads several checkpoints: the CLI names the bad one
    assert main(["align", str(vit_checkpoint), str(bad), "--dataset", "mnist5k", "--out", str(tmp_path / "o")]) == 1
    assert str(bad / damaged[0]) in capsys.readouterr().err


# ============================================================================ 6. CLI: one line, no traceback
def test_cli_errors_are_one_line_without_traceback(vit_checkpoint, tmp_path, capsys):
    from lmcbench.experiments.train import train_job

    narrow = train_job(tmp_path / "narrow", "vit", model_cfg("vit", {"embed_dim": 8, "mlp_dim": 16}, steps=2,
                                                             eval_every=2), data_cfg("vit"), 1, progress=False)
    typo = _profile(tmp_path, {"glmc": {"matchers": {"glmc_weight_matching": {"iteratons": 1}}}}, "typo.yaml")
    out = str(tmp_path / "out")
    bad = {  # invocation -> what its one line must say
        ("align", str(tmp_path / "nope"), str(vit_checkpoint), "--dataset", "mnist5k", "--out", out):
            f"no checkpoint at {tmp_path / 'nope'}",
        ("align", str(vit_checkpoint), str(vit_checkpoint), "--method", "nope", "--dataset", "mnist5k", "--out", out):
            "unknown glmc method 'nope'",
        ("align", str(vit_checkpoint), str(vit_checkpoint), "--dataset", "shakespeare", "--out", out):
            "--dataset mnist5k",
        ("align", str(vit_checkpoint), str(narrow), "--dataset", "mnist5k", "--out", out):
            "--experiment width_hetero",
        ("train", "--config", str(typo), "--model", "vit", "--seed", "0", "--out", out): "iteratons",
        ("train", "--config", str(tmp_path / "missing.yaml"), "--model", "vit", "--seed", "0", "--out", out):
            "missing.yaml",
        ("methods", "--plugin", str(tmp_path / "missing_plugin.py")): "missing_plugin.py",
    }
    for argv, says in bad.items():
        assert main(list(argv)) == 1, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and says in err, (argv, err)
    # the width-heterogeneous command the error suggests is one the CLI offers, and it works
    assert main(["align", str(vit_checkpoint), str(narrow), "--experiment", "width_hetero", "--dataset", "mnist5k",
                 "--points", "3", "--max-examples", "32", "--out", out]) == 0


def test_cli_traceback_only_with_debug(tmp_path):
    """The real console script: one line by default, the traceback with -v."""
    lmcbench = Path(sys.executable).parent / "lmcbench"
    argv = [str(lmcbench), "align", str(tmp_path / "a"), str(tmp_path / "b"), "--dataset", "mnist5k",
            "--out", str(tmp_path / "o")]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*argv, "-v"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 1 and plain.stderr.strip().count("\n") == 0 and "Traceback" not in plain.stderr
    assert debug.returncode != 0 and "Traceback" in debug.stderr


# ============================================================================ 7. interrupted runs
def _interrupt(workdir: Path, args: list[str], sig: int) -> None:
    """Start the workflow, and once the job has written resume.pt, send `sig` to snakemake and its job
    (the whole process group, as Ctrl-C in a terminal or a scheduler's kill does)."""
    resume = workdir / "results/models/vit/seed0/resume.pt"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not resume.exists():
        assert proc.poll() is None, "the job ended before it could be interrupted"
        assert time.monotonic() < deadline, "no resume.pt after 300 s"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    assert not (workdir / TARGET).exists(), "the job finished before the signal: nothing was interrupted"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_interrupted_run_recovers_with_the_documented_commands(tmp_path, reference, sig):
    """README "Interrupted or failed runs": after Ctrl-C rerun with --rerun-incomplete; after a hard kill
    first --unlock. The job resumes from its resume.pt and writes exactly what an uninterrupted run writes."""
    from lmcbench.io import code_version

    readme = (ROOT / "README.md").read_text()
    documented = readme.split("## Interrupted or failed runs", 1)[1].split("\n## ", 1)[0]
    assert "--rerun-incomplete" in documented and "--unlock" in documented
    workdir, args = _workflow(tmp_path)
    code = code_version()
    _interrupt(workdir, args, sig)
    if sig == signal.SIGKILL:
        locked = run_snakemake(*args, cwd=workdir)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
        unlock = run_snakemake("--unlock", *args, cwd=workdir)
        assert unlock.returncode == 0, unlock.stderr[-2000:]
    result = run_snakemake("--rerun-incomplete", *args, cwd=workdir, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert _files(workdir / "results/models/vit/seed0") == reference
    log = (workdir / "results/logs/train/vit/seed0.log").read_text()
    # it resumed; unless the package's source changed meanwhile (someone edited it): then it must not, and says why
    assert "resumed from" in log or ("not resuming" in log and "code:" in log and code_version() != code), log[-2000:]
