"""The `lmcbench` command line on users' own checkpoints: align, export, reload.

The key property of an exported alignment: the aligned checkpoint of B, loaded with
`lmcbench.checkpoints.load_model`, computes exactly what B computes (alignment is a symmetry).
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from conftest import data_cfg, model_cfg
from lmcbench.checkpoints import load_model
from lmcbench.cli import main
from lmcbench.data import load_dataset
from lmcbench.jobs import train_job
from lmcbench.tasks import make_task


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = model_cfg("vit", steps=20)
    return [train_job(root / f"vit{s}", "vit", cfg, data_cfg("vit"), s, progress=False) for s in (0, 1)]


@pytest.mark.parametrize("method", ["perm_weight_matching", "glmc_weight_matching"])
def test_align_writes_curve_and_an_aligned_checkpoint_that_computes_b(vit_pair, tmp_path, method, capsys):
    a, b = vit_pair
    out = tmp_path / "pair"
    assert main(["align", str(a), str(b), "--method", method, "--dataset", "mnist5k", "--points", "3",
                 "--splits", "test", "--max-examples", "64", "--out", str(out)]) == 0
    assert "barrier" in capsys.readouterr().out
    curve, barriers = pd.read_csv(out / "curve.csv"), pd.read_csv(out / "barriers.csv")
    assert sorted(curve["lambda"].unique()) == [0.0, 0.5, 1.0]
    assert set(barriers["metric"]) == {"loss", "accuracy"} and (barriers["method"] == method).all()

    aligned, info = load_model(out / "aligned_s0-s1")
    original, _ = load_model(b)
    x, _ = make_task(load_dataset(data_cfg("vit")), model_cfg("vit")).eval_tensors("test", 16)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), original(x), rtol=1e-4, atol=1e-4)
    assert info["method"] == method and info["form"] in {"original", "canonical", "circuit"}


def test_unknown_matcher_is_a_clear_error(vit_pair, tmp_path):
    a, b = vit_pair
    with pytest.raises(ValueError, match="unknown matcher 'nope'.*registered"):
        main(["align", str(a), str(b), "--method", "nope", "--dataset", "mnist5k", "--out", str(tmp_path)])


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "--dataset", "mnist5k", "--out", str(tmp_path)])


def test_matchers_lists_every_registered_name(capsys):
    assert main(["matchers"]) == 0
    out = capsys.readouterr().out
    for name in ("vanilla", "perm_weight_matching", "activation_matching", "glmc_weight_matching",
                 "learned_full", "learned_perm_only", "learned_identity_init"):
        assert name in out
