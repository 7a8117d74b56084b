"""Pinned CPU numerics (lmcbench/numerics.py) take effect, and `lmcbench compare` reports table differences.

The environment must be set before torch and numpy load, so every run here is a fresh subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from snakemake.utils import update_config, validate

from conftest import MNIST_CFG, ROOT, vit_cfg
from lmcbench import numerics
from lmcbench.cli import main
from lmcbench.compare import compare_dirs
from lmcbench.config import PROFILES, SCHEMA
from lmcbench.io import provenance

# A few training steps of a tiny ViT through the job runner (threads as a rule would request them),
# plus a few N-body steps (numpy); prints the kernel level, torch threads and a hash of each result.
PROBE = """
import hashlib, json, sys
from lmcbench import numerics
mode, requested, model_cfg, data_cfg = json.loads(sys.argv[1])
numerics.apply({"mode": mode})
import torch
from lmcbench.ace.nbody import simulate
from lmcbench.data import load_dataset
from lmcbench.models import build_model
from lmcbench.runner import job_context
from lmcbench.tasks import make_task
from lmcbench.training import TrainConfig, seed_everything, train
with job_context(threads=requested):
    data = load_dataset(data_cfg)
    seed_everything(0)
    result = train(build_model(model_cfg, data.meta), make_task(data, model_cfg), TrainConfig.from_dict(model_cfg["train"]),
                   seed=0, progress=False)
    weights = hashlib.sha256(b"".join(result.state_dict[k].numpy().tobytes() for k in sorted(result.state_dict)))
    sim = simulate(4, 43, softening=0.1, field=(0.0, 0.0, 1.0), n_frames=3)
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
                  "weights": weights.hexdigest(), "nbody": hashlib.sha256(sim["loc"].tobytes()).hexdigest()}))
"""


def _clean_env() -> dict:
    """This process's environment without the pinned mode conftest applied (a child starts from a user's shell)."""
    return {k: v for k, v in os.environ.items()
            if k not in (*numerics.PINNED_ENV, *numerics.THREAD_ENV, numerics.MARKER)}


def _probe(mode: str, requested: int) -> dict:
    model = {**vit_cfg(steps=12, eval_every=12, eval_examples=32, eval_batch_size=32), "dataset": "images"}
    out = subprocess.run([sys.executable, "-c", PROBE, json.dumps([mode, requested, model, MNIST_CFG])],
                         env=_clean_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes():
    """Four single-job runs (mode, threads the rule asks for), side by side: ~10 s on 2 cores."""
    runs = [("pinned", 1), ("pinned", 2), ("fast", 1), ("fast", 2)]
    with ThreadPoolExecutor(len(runs)) as pool:
        return dict(zip(runs, pool.map(lambda run: _probe(*run), runs)))


def test_pinned_mode_ignores_requested_threads(probes):
    one, two = probes[("pinned", 1)], probes[("pinned", 2)]
    assert one["capability"] == two["capability"] == numerics.PINNED_LEVEL
    assert one["threads"] == two["threads"] == 1, "pinned mode runs numerics.threads, not the rule's threads"
    assert one == two, "pinned mode: the same bytes whether the rule asked for 1 or 2 threads"
    assert probes[("fast", 2)]["threads"] == 2, "fast mode gives the job the threads it asked for"


def test_pinned_mode_changes_the_kernels(probes):
    fast, pinned = probes[("fast", 1)], probes[("pinned", 1)]
    if fast["capability"] in (numerics.PINNED_LEVEL, "DEFAULT"):
        pytest.skip(f"this CPU dispatches {fast['capability']} kernels unpinned: nothing above AVX2 to cap")
    assert fast["weights"] != pinned["weights"], "capping torch/oneDNN/MKL at AVX2 must change the trained weights"
    if "avx512f" in numerics.cpu_info()["isa_flags"]:
        assert fast["nbody"] != pinned["nbody"], "numpy's AVX-512 loops must be off in pinned mode"


def test_apply_refuses_a_torch_loaded_with_other_kernels():
    code = "import torch; torch.ones(8).exp(); from lmcbench import numerics; numerics.apply({'mode': 'pinned'})"
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.backends.cpu.get_cpu_capability())"],
                         env=_clean_env(), capture_output=True, text=True, timeout=120)
    if out.stdout.strip() in (numerics.PINNED_LEVEL, "DEFAULT"):
        pytest.skip(f"this CPU dispatches {out.stdout.strip()} kernels unpinned: nothing to refuse")
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "before the first `import torch`" in out.stderr
    code = "import numpy; from lmcbench import numerics; numerics.apply({'mode': 'pinned'})"
    out = subprocess.run([sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "before the first `import numpy`" in out.stderr


def test_bad_mode_is_a_config_error():
    with pytest.raises(ValueError, match="numerics.mode"):
        numerics.resolve({"mode": "exact"})
    with pytest.raises(ValueError, match="numerics.threads"):
        numerics.resolve({"threads": 0})


@pytest.mark.parametrize("profile,mode", [("default", "pinned"), ("smoke", "pinned"), ("gpu_check", "fast"),
                                          ("paper", "fast")])
def test_profiles_numerics(profile, mode):
    """The merged, validated profile: CPU profiles pinned at 1 thread, GPU profiles fast."""
    config = yaml.safe_load((PROFILES / "default.yaml").read_text())
    update_config(config, yaml.safe_load((PROFILES / f"{profile}.yaml").read_text()))
    validate(config, str(SCHEMA))
    assert numerics.resolve(config["numerics"])["mode"] == mode
    if mode == "pinned":
        assert numerics.resolve(config["numerics"])["threads"] == 1


def test_provenance_records_the_numerics():
    """The tests run pinned (conftest): provenance names the mode, kernel level, threads and the CPU."""
    import torch

    record = provenance({"job": "x"}, 0)["numerics"]
    assert record["mode"] == "pinned" and record["threads"] == torch.get_num_threads() == 1
    assert record["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert record["cpu"]["model"] and record["cpu"]["machine"]
    if numerics.cpu_info()["machine"] == "x86_64":
        assert record["torch_cpu_capability"] == numerics.PINNED_LEVEL and "avx2" in record["cpu"]["isa_flags"]
        assert record["env"]["MKL_CBWR"] == "AVX2" and record["numpy_avx512"] is False


# What each NumPy dispatches above AVX2, read off the real releases (`__cpu_features__` after import with
# NPY_DISABLE_CPU_FEATURES): 2.4 replaced the per-extension targets by x86-64 levels, 2.3 dispatches AVX512_SPR.
NUMPY_TARGETS_ABOVE_AVX2 = {"1.26.4": {"AVX512F", "AVX512_SKX", "AVX512_ICL"},
                            "2.3.5": {"AVX512F", "AVX512_SKX", "AVX512_ICL", "AVX512_SPR"},
                            "2.5.2": {"X86_V4", "AVX512_ICL", "AVX512_SPR"}}


@pytest.mark.parametrize("version", sorted(NUMPY_TARGETS_ABOVE_AVX2))
def test_pinned_mode_names_the_targets_each_numpy_dispatches(monkeypatch, version):
    """The GPU machines' image has NumPy 2.5, whose targets are x86-64 levels: naming 1.26's targets there
    disables nothing (an ImportWarning) and leaves AVX-512 loops on."""
    monkeypatch.setattr(numerics.importlib.metadata, "version", lambda name: version)
    named = set(numerics.numpy_above_avx2().split())
    assert NUMPY_TARGETS_ABOVE_AVX2[version] <= named
    assert ("X86_V4" in named) == version.startswith("2.5")


def _tables(root, rows):
    (root / "sub").mkdir(parents=True)
    text = "method,split,barrier\n" + "".join(f"{m},test,{b!r}\n" for m, b in rows)
    (root / "sub" / "barriers.csv").write_text(text)
    (root / "curve.csv").write_text("lambda,loss\n0.0,1.0\n1.0,2.0\n")


def test_compare_tables(tmp_path, capsys):
    rows = [("vanilla", 2.5), ("glmc_weight_matching", 0.75)]
    _tables(tmp_path / "ref", rows)
    _tables(tmp_path / "same", rows)
    _tables(tmp_path / "moved", [rows[0], ("glmc_weight_matching", 0.7500001)])
    assert compare_dirs(tmp_path / "same", tmp_path / "ref") == ([], [])
    differences, _ = compare_dirs(tmp_path / "moved", tmp_path / "ref")
    assert len(differences) == 1
    assert differences[0].startswith("sub/barriers.csv: row 2 (method=glmc_weight_matching, split=test), barrier: ")
    assert compare_dirs(tmp_path / "moved", tmp_path / "ref", rtol=1e-6)[0] == []
    (tmp_path / "moved" / "curve.csv").unlink()
    (tmp_path / "moved" / "extra.csv").write_text("a\n1\n")
    differences, notes = compare_dirs(tmp_path / "moved", tmp_path / "ref", rtol=1e-6)
    assert differences == [f"curve.csv: missing from {tmp_path / 'moved'}"]
    assert notes == ["extra.csv: not in the reference (not compared)"]

    assert main(["compare", str(tmp_path / "same"), str(tmp_path / "ref")]) == 0
    assert capsys.readouterr().out.strip() == "tables match"
    assert main(["compare", str(tmp_path / "moved"), str(tmp_path / "ref")]) == 1
    assert capsys.readouterr().out.endswith("\n2 tables differ: curve.csv, sub/barriers.csv\n")


@pytest.mark.parametrize("shim", sorted((ROOT / "workflow" / "scripts").glob("*.py")), ids=lambda p: p.name)
def test_every_shim_applies_the_numerics_first(shim):
    """Dispatch variables are read when torch/numpy load: each job shim must set them before any other import."""
    import ast

    body = ast.parse(shim.read_text()).body
    assert ast.unparse(body[0]) == "from lmcbench.numerics import apply", f"{shim.name}: first line"
    assert ast.unparse(body[1]) == "apply(snakemake.config.get('numerics'))", f"{shim.name}: second statement"
