"""Golden numbers: the smoke profile's key tables (the three summaries and the claims ledger), committed
under tests/golden/smoke/ and compared with a fresh smoke run byte for byte (`lmcbench.compare`; the
pinned CPU numerics make the tables identical on any x86-64 machine). A change that moves a number
updates the golden files in the same commit:

    lmcbench golden --results <smoke run>/results --update      (or LMCBENCH_UPDATE_GOLDEN=1 pytest …)
"""
from __future__ import annotations

import shutil
from pathlib import Path

from lmcbench.compare import compare_dirs
from lmcbench.readme import SNAPSHOT_TABLES

GOLDEN_TABLES = SNAPSHOT_TABLES
SMOKE_GOLDEN = Path("tests") / "golden" / "smoke"   # in the project folder (the CWD), not the package


def check(results: str | Path, golden: str | Path = SMOKE_GOLDEN) -> list[str]:
    """Differences between a run's key tables and the golden ones (none = match); exact comparison."""
    golden = Path(golden)
    missing = [n for n in GOLDEN_TABLES if not (golden / n).exists()]
    if missing:
        return [f"no golden {golden / n}: write it with `lmcbench golden --results RUN --update`" for n in missing]
    differences, _ = compare_dirs(Path(results) / "tables", golden)
    return differences


def update_golden(results: str | Path, golden: str | Path = SMOKE_GOLDEN) -> list[Path]:
    """Copy the run's key tables into the golden folder, byte for byte."""
    golden = Path(golden)
    golden.mkdir(parents=True, exist_ok=True)
    for name in GOLDEN_TABLES:
        shutil.copyfile(Path(results) / "tables" / name, golden / name)
    return [golden / n for n in GOLDEN_TABLES]
