"""Deterministic train/val/test splits: stratified for labelled images, contiguous for text."""
from __future__ import annotations

import numpy as np


def _check_fracs(val_frac: float, test_frac: float) -> None:
    if val_frac < 0 or test_frac < 0 or val_frac + test_frac >= 1:
        raise ValueError(f"need val_frac >= 0, test_frac >= 0 and val_frac + test_frac < 1, got {val_frac}, {test_frac}")


def stratified_split(y: np.ndarray, val_frac: float, test_frac: float, seed: int) -> tuple[np.ndarray, ...]:
    """Indices (train, val, test) drawn per class with a seeded Generator, each in a seeded random order.

    Per-class draws keep the class balance in every split; the shuffled order makes any prefix of
    a split (evaluation on `max_examples`) a class-balanced sample; the seed makes the same config
    give the same split on every machine.
    """
    _check_fracs(val_frac, test_frac)
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test, n_val = round(len(idx) * test_frac), round(len(idx) * val_frac)
        parts[2].append(idx[:n_test])
        parts[1].append(idx[n_test : n_test + n_val])
        parts[0].append(idx[n_test + n_val :])
    return tuple(rng.permutation(np.concatenate(p)) for p in parts)


def contiguous_split(text: str, val_frac: float, test_frac: float) -> tuple[str, str, str]:
    """(train, val, test) as consecutive chunks, as GLMC's official code does.

    Contiguous chunks keep held-out text unseen as context, which a random split of a
    single corpus would not.
    """
    _check_fracs(val_frac, test_frac)
    n = len(text)
    n_val, n_test = int(n * val_frac), int(n * test_frac)
    a, b = n - n_val - n_test, n - n_test
    return text[:a], text[a:b], text[b:]
