"""Shared tiny configs and fixtures: CPU-sized models and the offline datasets, loaded once per session."""
from __future__ import annotations

from lmcbench.numerics import apply as apply_numerics

# First, before torch and numpy load: the tests run with the CPU profiles' numerics (AVX2 kernels, 1 thread).
apply_numerics()

import copy
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

from lmcbench.config import PROFILES

ROOT = Path(__file__).resolve().parents[1]

# Tiny shapes: every model here trains for tens of steps in well under a second on one core.
torch.set_num_threads(1)

MNIST_CFG = {"name": "mnist5k", "val_frac": 0.1, "test_frac": 0.2, "split_seed": 0}
TEXT_CFG = {"name": "shakespeare", "tokenizer": "char", "val_frac": 0.05, "test_frac": 0.05,
            "max_chars": 100000, "split_seed": 0}

_VIT = {
    "family": "vit",
    "arch": {"patch_size": 7, "embed_dim": 16, "depth": 1, "num_heads": 2, "mlp_dim": 32,
             "qkv_bias": True, "global_pool": "token"},
    "train": {"steps": 40, "batch_size": 32, "lr": 0.003, "weight_decay": 0.01, "warmup_frac": 0.1,
              "grad_clip": 1.0, "eval_every": 10, "patience": None, "eval_examples": 200, "eval_batch_size": 200},
}
_GPT2 = {
    "family": "gpt2",
    "arch": {"n_embd": 16, "n_layer": 1, "n_head": 2, "n_inner": 32, "n_positions": 16,
             "activation_function": "gelu_new", "dropout": 0.0, "tie_word_embeddings": False},
    "train": {"steps": 40, "batch_size": 16, "lr": 0.01, "weight_decay": 0.01, "warmup_frac": 0.1,
              "grad_clip": 1.0, "eval_every": 10, "patience": None, "eval_examples": 32, "eval_batch_size": 32},
}


def vit_cfg(arch: dict | None = None, **train) -> dict:
    """A tiny ViT model section (`family`, `arch`, `train`), with overrides."""
    cfg = copy.deepcopy(_VIT)
    cfg["arch"].update(arch or {})
    cfg["train"].update(train)
    return cfg


def gpt2_cfg(arch: dict | None = None, **train) -> dict:
    """A tiny GPT-2 model section (`family`, `arch`, `train`), with overrides."""
    cfg = copy.deepcopy(_GPT2)
    cfg["arch"].update(arch or {})
    cfg["train"].update(train)
    return cfg


def model_cfg(family: str, arch: dict | None = None, **train) -> dict:
    return {"vit": vit_cfg, "gpt2": gpt2_cfg}[family](arch, **train)


def data_cfg(family: str) -> dict:
    return dict(MNIST_CFG if family == "vit" else TEXT_CFG)


def state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


@pytest.fixture(scope="session")
def mnist():
    from lmcbench.data import load_dataset

    return load_dataset(MNIST_CFG)


@pytest.fixture(scope="session")
def shakespeare():
    from lmcbench.data import load_dataset

    return load_dataset(TEXT_CFG)


@pytest.fixture(scope="session")
def datasets(mnist, shakespeare):
    """family -> its dataset."""
    return {"vit": mnist, "gpt2": shakespeare}


def fresh_model(cfg: dict, dataset, seed: int):
    """Build a model exactly as `train_job` does: seed first, then initialise."""
    from lmcbench.models import build_model
    from lmcbench.training import seed_everything

    seed_everything(seed)
    return build_model(cfg, dataset.meta)


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter moved away from its init, so folding and biases are exercised: O(1)
    activations, non-zero biases, LayerNorm gains of both signs with |gamma| in [0.5, 1.5] and
    offsets of size ~0.3. Returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            std = p.shape[-1] ** -0.5 if p.ndim == 2 else 0.2 if p.ndim == 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=gen) * std)
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                sign = torch.where(torch.rand(m.weight.shape, generator=gen) < 0.2, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(m.weight.shape, generator=gen)))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
    return model.eval()


# ----------------------------------------------------------------------------- the smoke workflow, run once
def _no_scontrol() -> Path:
    """A directory holding an `scontrol` that fails at once. Snakemake's SLURM plugin runs `scontrol show config`
    (10 s timeout) whenever snakemake starts, where SLURM is installed; after test_slurm has installed SLURM and
    stopped its daemons, that call waits ~9 s for the absent controller in every later snakemake process
    (measured). The plugin treats a failing scontrol as 'no MinJobAge known', which only the SLURM executor reads."""
    stub = Path(tempfile.gettempdir()) / f"lmcbench-no-scontrol-{os.getuid()}"
    if not (stub / "scontrol").exists():
        stub.mkdir(parents=True, exist_ok=True)
        tmp = stub / f"scontrol.{os.getpid()}"
        tmp.write_text("#!/bin/sh\nexit 1\n")
        tmp.chmod(0o755)
        tmp.replace(stub / "scontrol")
    return stub


def run_snakemake(*args, cwd=ROOT, timeout=120, slurm: bool = False) -> subprocess.CompletedProcess:
    """`python -m snakemake ARGS` in `cwd` with this interpreter's environment first on PATH; without `slurm`
    (a run on the SLURM executor) the SLURM plugin's start-up query fails at once (`_no_scontrol`)."""
    env = dict(os.environ)
    first = [str(Path(sys.executable).parent)] + ([] if slurm else [str(_no_scontrol())])
    env["PATH"] = os.pathsep.join(first + [env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def copy_workflow(dest: Path) -> None:
    """Snakefile, workflow/ and the committed results/reference/ in `dest`: a run there leaves the tree alone."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "Snakefile", dest / "Snakefile")
    shutil.copytree(ROOT / "workflow", dest / "workflow", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "results" / "reference", dest / "results" / "reference")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> Path:
    """The whole smoke-profile DAG (~5 min on 2 cores), run once per session in a copy of the workflow and
    shared by every test that reads its outputs (test_workflow's checks, the golden tables in test_claims)."""
    workdir = tmp_path_factory.mktemp("smoke")
    copy_workflow(workdir)
    result = run_snakemake("--cores", "2", "--configfile", str(PROFILES / "smoke.yaml"), cwd=workdir, timeout=1400)
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    return workdir
