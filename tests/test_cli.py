"""The `lmcbench` command line on users' own checkpoints: align, export, reload.

The key property of an exported alignment: the aligned checkpoint of B, loaded with
`lmcbench.checkpoints.load_model`, computes exactly what B computes (alignment is a symmetry).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import data_cfg, model_cfg
from lmcbench.checkpoints import load_model
from lmcbench.cli import main
from lmcbench.data import load_dataset
from lmcbench.experiments.train import train_job
from lmcbench.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def vit_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    cfg = model_cfg("vit", steps=20)
    return [train_job(root / f"vit{s}", "vit", cfg, data_cfg("vit"), s, progress=False) for s in (0, 1)]


@pytest.mark.parametrize("method, opts", [("perm_weight_matching", []),
                                          ("glmc_weight_matching", ["--opt", "iterations=2", "--opt", "residual=perm"])])
def test_align_writes_curve_and_an_aligned_checkpoint_that_computes_b(vit_pair, tmp_path, method, opts, capsys):
    a, b = vit_pair
    out = tmp_path / "pair"
    assert main(["align", str(a), str(b), "--method", method, *opts, "--dataset", "mnist5k", "--points", "3",
                 "--splits", "test", "--max-examples", "64", "--out", str(out)]) == 0
    assert "barrier" in capsys.readouterr().out
    curve, barriers = pd.read_csv(out / "curve.csv"), pd.read_csv(out / "barriers.csv")
    assert sorted(curve["lambda"].unique()) == [0.0, 0.5, 1.0]
    assert set(barriers["metric"]) == {"loss", "accuracy"} and (barriers["method"] == method).all()
    given = dict(o.split("=") for o in opts[1::2])   # the --opt values reached the job (as YAML: 2, perm)
    assert json.loads((out / "provenance.json").read_text())["config"]["matcher"] == {
        k: yaml.safe_load(v) for k, v in given.items()}

    aligned, info = load_model(out / "aligned_s0-s1")
    original, _ = load_model(b)
    x, _ = make_task(load_dataset(data_cfg("vit")), model_cfg("vit")).eval_tensors("test", 16)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), original(x), rtol=1e-4, atol=1e-4)
    assert info["method"] == method and info["form"] in {"original", "canonical", "circuit"}


def test_unknown_matcher_is_a_clear_error(vit_pair, tmp_path, capsys):
    a, b = vit_pair
    assert main(["align", str(a), str(b), "--method", "nope", "--dataset", "mnist5k", "--out", str(tmp_path)]) == 1
    assert re.search("unknown glmc method 'nope'.*registered", capsys.readouterr().err)
    with pytest.raises(ValueError, match="unknown glmc method 'nope'"):  # --debug: the exception itself
        main(["align", str(a), str(b), "--method", "nope", "--dataset", "mnist5k", "--out", str(tmp_path), "--debug"])


def test_missing_checkpoint_names_the_path(tmp_path, capsys):
    assert main(["align", str(tmp_path / "a"), str(tmp_path / "b"), "--dataset", "mnist5k",
                 "--out", str(tmp_path)]) == 1
    assert f"no checkpoint at {tmp_path / 'a'}" in capsys.readouterr().err


def test_methods_lists_every_registered_name_with_its_options(capsys):
    from lmcbench import methods

    assert main(["methods", "--track", "glmc"]) == 0
    out = capsys.readouterr().out
    for name in methods.names("glmc"):
        assert re.search(rf"^  {name} ", out, re.M)
    assert "iterations (int) = 15" in out  # glmc_weight_matching's option, type and default


# ----------------------------------------------------------------------------- lmcbench bench
def test_bench_rules_reads_snakemake_benchmark_files(tmp_path):
    from lmcbench.timing import bench_rules

    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for rel, seconds in {"train/vit/seed0.tsv": 10.0, "train/vit/seed1.tsv": 14.0, "glmc_tables.tsv": 2.5}.items():
        path = tmp_path / "benchmarks" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + f"{seconds}\t0:00:10\t512.0\t1\t1\t1\t0\t0\t90\t9\n")
    jobs, summary = bench_rules(tmp_path)
    assert len(jobs) == 3
    train = summary.set_index("rule").loc["train"]
    assert train["jobs"] == 2 and train["total_s"] == 24.0 and train["max_s"] == 14.0 and train["cpu_s"] == 18.0
    assert list(summary["rule"]) == ["train", "glmc_tables"]  # slowest rule first
    with pytest.raises(FileNotFoundError, match="benchmark files"):
        bench_rules(tmp_path / "nothing")


def test_bench_throughput_and_matching_scale_run_the_real_code():
    from lmcbench.bench import bench_matching_scale, bench_throughput
    from lmcbench.config import load_profile

    config = load_profile("smoke")
    table = bench_throughput(config, ["vit", "gpt2"], steps=2, warmup=1, device="cpu")
    assert list(table["model"]) == ["vit", "gpt2"] and (table["samples_per_s"] > 0).all()
    assert table.loc[1, "tokens_per_s"] == pytest.approx(table.loc[1, "samples_per_s"] * 32, rel=1e-2)
    scale = bench_matching_scale(widths=(64, 128), n_layer=1, iterations=1, vocab_size=50)
    assert list(scale["n_embd"]) == [64, 128] and (scale["cpu_s.total"] > 0).all()
