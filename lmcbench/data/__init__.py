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


TEXT_DATASETS = frozenset({"shakespeare", "tiny_shakespeare", "text_file"})
# The split settings a dataset config may leave out (the CLI's `--dataset NAME`, a profile's own dataset key)
# are the default profile's, of the dataset's kind: datasets.images or datasets.text there is their one place.
SPLIT_DEFAULTS = {"image": ("images", ("val_frac", "test_frac", "split_seed")),
                  "text": ("text", ("val_frac", "test_frac", "tokenizer"))}


def split_defaults(name: str) -> dict:
    """The default profile's split settings for a dataset of `name`'s kind (see SPLIT_DEFAULTS)."""
    from lmcbench.config import load_default_profile

    key, settings = SPLIT_DEFAULTS["text" if name in TEXT_DATASETS else "image"]
    block = load_default_profile()["datasets"][key]
    return {setting: block[setting] for setting in settings}


def load_dataset(cfg: dict) -> Dataset:
    """Load, split and preprocess the dataset named by ``cfg["name"]``; same cfg, same tensors."""
    name = cfg.get("name")
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]({**split_defaults(name), **cfg})


__all__ = ["DATASETS", "LOCAL_DATASETS", "TEXT_DATASETS", "split_defaults", "Dataset", "DatasetNotFoundError", "load_dataset"]
