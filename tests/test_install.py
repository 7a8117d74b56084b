"""A non-editable install works on its own: `pip install .` into a fresh venv, then the CLI from another
directory, with no file found relative to the source tree (profiles and schemas are package data).

Offline and fast: the fresh venv gets the project's dependencies from this environment's site-packages
through a folder of links that leaves out lmcbench's own (editable) install, and pip builds the wheel with
this environment's setuptools (--no-build-isolation) from a copy of the source, so nothing is written
into the repository.
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT


def _run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path]:
    """(bin folder of a fresh venv with lmcbench pip-installed from a source copy, a folder outside the repo)."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "lmcbench", src / "lmcbench", ignore=shutil.ignore_patterns("__pycache__"))
    deps = tmp / "deps"   # this environment's packages, minus lmcbench's editable install
    deps.mkdir()
    (packages,) = [Path(p) for p in site.getsitepackages() if Path(p, "torch").is_dir()]
    for entry in packages.iterdir():
        if not entry.name.startswith(("lmcbench", "__editable__")) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    (fresh,) = list(venv.glob("lib/python*/site-packages"))
    (fresh / "deps.pth").write_text(f"{deps}\n")
    _run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index",
          "--ignore-installed", src], cwd=tmp)
    shutil.rmtree(src)   # the installed copy must not need its source
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    return venv / "bin", elsewhere


@pytest.mark.slow   # shares the ~20 s install; CI runs slow tests
def test_installed_package_is_the_wheel_copy_with_its_data(installed):
    bin_dir, elsewhere = installed
    code = ("import lmcbench, lmcbench.claims as c, lmcbench.config as k; "
            "print(lmcbench.__file__); assert k.SCHEMA.is_file() and c.SCHEMA.is_file(); print(*k.profile_names())")
    out = _run([bin_dir / "python", "-c", code], cwd=elsewhere).stdout.split("\n")
    site_packages = bin_dir.parent / "lib"
    assert Path(out[0]).is_relative_to(site_packages), f"lmcbench imported from {out[0]}, not the fresh install"
    assert not Path(out[0]).is_relative_to(ROOT)
    assert out[1].split() == sorted(p.stem for p in (ROOT / "lmcbench" / "profiles").glob("*.yaml"))


@pytest.mark.slow   # shares the ~20 s install; CI runs slow tests
def test_installed_cli_lists_methods_and_checks_a_shipped_profile(installed):
    bin_dir, elsewhere = installed
    out = _run([bin_dir / "lmcbench", "methods"], cwd=elsewhere).stdout
    assert "glmc_weight_matching" in out and "ace_equality" in out
    out = _run([bin_dir / "lmcbench", "config", "--profile", "smoke", "--key", "profile"], cwd=elsewhere).stdout
    assert yaml.safe_load(out) == "smoke"


@pytest.mark.slow   # shares the ~20 s install; CI runs slow tests
def test_installed_cli_trains_from_another_directory(installed):
    bin_dir, elsewhere = installed
    _run([bin_dir / "lmcbench", "train", "--config", "smoke", "--model", "vit", "--seed", "0", "--out", "vit0"],
         cwd=elsewhere, timeout=600)
    assert (elsewhere / "vit0" / "model.safetensors").is_file()
    assert not list(elsewhere.glob("results*"))   # nothing but the requested checkpoint folder


# ----------------------------------------------------------------------------- tables without torch
# The shims of the rules that only read tables: they rebuild tables, figures, the claims ledger and the
# timing table from CSVs, so a machine without torch (or a broken torch) can still regenerate them.
TABLE_SHIMS = ("glmc_tables", "moe_tables", "ace_tables", "glmc_figures", "moe_figures", "ace_figures", "claims",
               "timing", "training_report")
NO_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "timm", "transformers", "escnn"):
            raise ImportError(f"{name} imported by table code")
sys.meta_path.insert(0, NoTorch())
from lmcbench.numerics import apply
apply({"mode": "pinned", "threads": 1})   # as the default profile's shims do
"""


def test_table_and_figure_code_runs_without_torch(tmp_path):
    """Every table-only shim's imports, the job context they run in (pinned threads, plugins) and the README
    and claims code on the committed snapshot work with torch, timm, transformers and escnn unimportable."""
    imports = [line for name in TABLE_SHIMS for line in (ROOT / "workflow" / "scripts" / f"{name}.py").read_text()
               .splitlines() if line.startswith(("from lmcbench", "import")) and "numerics" not in line]
    snapshot = ROOT / "results" / "reference" / "default_run"
    code = NO_TORCH + "\n".join(imports) + f"""
from lmcbench import claims, readme
from lmcbench.methods import load_methods
from lmcbench.runner import job_context
with job_context(None, 4):
    load_methods((), tracks=())
    assert readme.render({str(snapshot)!r}).count("|") > 100
    rules = claims.load_claims({str(ROOT / "results" / "reference" / "claims.yaml")!r})
    ledger = claims.evaluate(rules, {{r["table"]: __import__("pandas").DataFrame() for r in rules}}, "none")
    assert set(ledger["verdict"]) == {{"not run"}}
assert "torch" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
