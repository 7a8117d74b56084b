"""Compare a run's CSV tables with reference ones (`lmcbench compare RUN_DIR REFERENCE_DIR`).

Every CSV under REFERENCE_DIR (recursively) must exist under RUN_DIR at the same relative path and
match it: byte for byte by default (the pinned CPU numerics promise that), or, with --rtol/--atol,
numeric cells within tolerance and every other cell equal. One line per difference; CSVs only in
RUN_DIR are listed as notes and do not fail the comparison.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

KEY_COLUMNS = 3   # text columns shown to name a differing row


def _csvs(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*.csv")}


def _row_name(frame: pd.DataFrame, i: int) -> str:
    keys = [c for c in frame.columns if frame[c].dtype == object][:KEY_COLUMNS]
    return f"row {i + 1}" + (f" ({', '.join(f'{k}={frame[k].iloc[i]}' for k in keys)})" if keys else "")


def compare_csv(run: Path, reference: Path, rtol: float = 0.0, atol: float = 0.0, limit: int = 20) -> list[str]:
    """Differences between two CSV files, one line each (at most `limit` cell lines, then a count)."""
    if run.read_bytes() == reference.read_bytes():
        return []
    a, b = pd.read_csv(run), pd.read_csv(reference)
    if list(a.columns) != list(b.columns):
        return [f"columns differ: {list(a.columns)} vs reference {list(b.columns)}"]
    if len(a) != len(b):
        return [f"{len(a)} rows vs reference {len(b)}"]
    cells = []
    for column in a.columns:
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            bad = ~np.isclose(xv, yv, rtol=rtol, atol=atol, equal_nan=True)
            cells += [f"{_row_name(b, i)}, {column}: {xv[i]!r} vs reference {yv[i]!r} (|diff| {abs(xv[i] - yv[i]):.3g})"
                      for i in np.flatnonzero(bad)]
        else:
            bad = ~((x.astype(str) == y.astype(str)) | (x.isna() & y.isna()))
            cells += [f"{_row_name(b, i)}, {column}: {x.iloc[i]!r} vs reference {y.iloc[i]!r}"
                      for i in np.flatnonzero(bad.to_numpy())]
    if not cells and rtol == 0 and atol == 0:
        return ["same values, different bytes (formatting or row order)"]
    return cells[:limit] + ([f"... and {len(cells) - limit} more cells"] if len(cells) > limit else [])


def compare_dirs(run_dir: str | Path, reference_dir: str | Path, rtol: float = 0.0, atol: float = 0.0
                 ) -> tuple[list[str], list[str]]:
    """(differences, notes) between the CSV tables of a run and a reference folder; no differences = match."""
    run_dir, reference_dir = Path(run_dir), Path(reference_dir)
    for d in (run_dir, reference_dir):
        if not d.is_dir():
            raise FileNotFoundError(f"{d} is not a folder of CSV tables")
    reference, run = _csvs(reference_dir), _csvs(run_dir)
    if not reference:
        raise FileNotFoundError(f"no CSV tables under {reference_dir}")
    differences = [f"{name}: missing from {run_dir}" for name in sorted(reference - run)]
    for name in sorted(reference & run):
        differences += [f"{name}: {line}" for line in compare_csv(run_dir / name, reference_dir / name, rtol, atol)]
    notes = [f"{name}: not in the reference (not compared)" for name in sorted(run - reference)]
    return differences, notes
