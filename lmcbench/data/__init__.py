"""Offline datasets for lmcbench: one loader function per source, picked by ``cfg["name"]``.

Nothing is downloaded at run time; sources that are not shipped in a wheel read a local
``root`` and raise `DatasetNotFoundError` naming what to fetch.
"""
from __future__ import annotations

from typing import Callable

from .core import Dataset, DatasetNotFoundError
from .images import load_cifar10, load_cifar100, load_digits, load_mnist5k, load_tiny_imagenet
from .text import load_shakespeare, load_text_file, load_tiny_shakespeare

DATASETS: dict[str, Callable[[dict], Dataset]] = {
    "mnist5k": load_mnist5k,
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "tiny_imagenet": load_tiny_imagenet,
    "shakespeare": load_shakespeare,
    "tiny_shakespeare": load_tiny_shakespeare,
    "text_file": load_text_file,
}

# read from a local copy at cfg["root"] (never downloaded); the others ship inside a package
LOCAL_DATASETS = frozenset({"cifar10", "cifar100", "tiny_imagenet", "tiny_shakespeare", "text_file"})


def load_dataset(cfg: dict) -> Dataset:
    """Load, split and preprocess the dataset named by ``cfg["name"]``; same cfg, same tensors."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](cfg)


__all__ = ["DATASETS", "LOCAL_DATASETS", "Dataset", "DatasetNotFoundError", "load_dataset"]
