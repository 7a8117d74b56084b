"""The `Dataset` record every loader returns, and the missing-data error."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Dataset:
    """One loaded dataset, already split, so that every consumer sees the same train/val/test.

    Image datasets hold ``(x, y)`` tuples (``x`` float32 N×C×H×W normalised with the train
    statistics, ``y`` int64 N); text datasets hold 1-D int64 tensors of token ids.
    """

    name: str
    kind: str  # "image" or "text"
    train: Any
    val: Any
    test: Any
    meta: dict = field(default_factory=dict)


class DatasetNotFoundError(FileNotFoundError):
    """Local data is missing; lmcbench never downloads, so the message says what to fetch."""


def require_root(cfg: dict, dataset: str, needs: list[str], fetch: str, key: str) -> Path:
    """Return ``cfg["root"]`` as a Path, checking the files in `needs` (relative to it) exist.

    Runs are offline, so instead of downloading we fail early with the dataset, the path looked
    at, what to fetch and which config key (`key`, e.g. ``datasets.images.root``) to set.
    """
    root = cfg.get("root")
    path = Path(root).expanduser() if root else None
    missing = [n for n in needs if path is None or not (path / n).exists()]
    if path is None or missing:
        looked = "nothing (`root` is not set)" if path is None else str((path / missing[0]).absolute())
        raise DatasetNotFoundError(
            f"dataset {dataset!r}: data not found, looked at {looked}. "
            f"Fetch {fetch}, then set {key} in the config to it. "
            "lmcbench never downloads data."
        )
    return path
