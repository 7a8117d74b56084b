"""Tidy tables (summary, published numbers, LaTeX) and figures, from small synthetic records only."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT
from lmcbench import plots
from lmcbench.tables import FAMILY_OF_DATASET, attach_reference, concat_csv, latex_summary, summarise_barriers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PAIRS = [(0, 1), (0, 2), (1, 2)]


def synthetic_barriers(methods=("vanilla", "weight_matching"),
                       models=(("vit", "mnist5k"), ("gpt2", "shakespeare"))) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for (model, dataset), method, (a, b), split, metric in itertools.product(
            models, methods, PAIRS, ("train", "test"), ("loss", "accuracy")):
        barrier = float(rng.uniform(0, 2))
        rows.append({"experiment": "pairwise", "model": model, "dataset": dataset, "method": method,
                     "seed_a": a, "seed_b": b, "split": split, "metric": metric, "barrier": barrier,
                     "barrier_midpoint": barrier - float(rng.uniform(0, 0.5)), "run_id": f"{a}{b}{method}"})
    return pd.DataFrame(rows)


def reference_table() -> pd.DataFrame:
    rows = [
        ("vit", "cifar10", True, "vanilla", "loss", 1.69, 0.07),
        ("vit", "cifar100", False, "vanilla", "loss", 2.46, 0.04),
        ("gpt2", "tiny_shakespeare", True, "vanilla", "loss", 2.02, 0.12),
        ("gpt2", "bookcorpus", False, "vanilla", "loss", 4.34, 0.09),
        ("vit", "cifar10", True, "weight_matching", "loss", 0.36, 0.01),
        ("vit", "cifar100", False, "weight_matching", "loss", 0.69, 0.21),
    ]
    frame = pd.DataFrame(rows, columns=["family", "dataset", "default_for_family", "method", "metric", "mean", "std"])
    return frame.assign(table="T1", source="test", checked_against_paper=False)


# ----------------------------------------------------------------------------- summary
def test_summarise_barriers_mean_and_std_over_pairs():
    records = synthetic_barriers()
    summary = summarise_barriers(records)
    keys = ["model", "dataset", "method", "split", "metric"]
    assert len(summary) == records.groupby(keys).ngroups == 2 * 2 * 2 * 2
    assert set(summary["n_pairs"]) == {len(PAIRS)}
    for _, row in summary.iterrows():
        part = records[(records[keys] == row[keys]).all(axis=1)]
        assert len(part) == len(PAIRS)
        assert row["barrier_mean"] == pytest.approx(np.mean(part["barrier"]))
        assert row["barrier_std"] == pytest.approx(np.std(part["barrier"], ddof=1))
        assert row["midpoint_mean"] == pytest.approx(np.mean(part["barrier_midpoint"]))
        assert row["midpoint_std"] == pytest.approx(np.std(part["barrier_midpoint"], ddof=1))


def test_summarise_a_single_pair_has_zero_std():
    records = synthetic_barriers()
    one = records[(records["seed_a"] == 0) & (records["seed_b"] == 1)]
    summary = summarise_barriers(one)
    assert set(summary["n_pairs"]) == {1}
    assert (summary["barrier_std"] == 0).all() and (summary["midpoint_std"] == 0).all()
    assert not summary.isna().any().any()


def test_concat_csv(tmp_path):
    records = synthetic_barriers()
    paths = []
    for i, (_, part) in enumerate(records.groupby("method")):
        paths.append(tmp_path / f"{i}" / "barriers.csv")
        paths[-1].parent.mkdir()
        part.to_csv(paths[-1], index=False)
    out = concat_csv(paths, tmp_path / "all.csv")
    assert len(out) == len(records)
    assert len(pd.read_csv(tmp_path / "all.csv")) == len(records)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        concat_csv([paths[0], tmp_path / "nowhere.csv"])


# ----------------------------------------------------------------------------- published numbers
def _summary_rows(rows):
    return pd.DataFrame([{"model": m, "dataset": d, "method": me, "split": s, "metric": mt, "n_pairs": 3,
                          "barrier_mean": 1.0, "barrier_std": 0.1, "midpoint_mean": 0.9, "midpoint_std": 0.1}
                         for m, d, me, s, mt in rows])


def test_attach_reference_prefers_exact_dataset_then_family_default():
    summary = _summary_rows([
        ("vit", "cifar100", "vanilla", "test", "loss"),            # exact match (not the vit default cifar10)
        ("vit", "mnist5k", "vanilla", "test", "loss"),             # family fallback: vit default = cifar10
        ("gpt2", "shakespeare", "vanilla", "test", "loss"),        # family fallback: gpt2 default = tiny_shakespeare
        ("vit", "mnist5k", "weight_matching", "test", "loss"),     # fallback for another method
        ("vit", "mnist5k", "vanilla", "train", "loss"),            # train split: no paper number
        ("vit", "mnist5k", "vanilla", "test", "accuracy"),         # metric not in the paper
        ("vit", "mnist5k", "learned_full", "test", "loss"),        # method not in the paper
        ("gpt2", "shakespeare", "weight_matching", "test", "loss"),  # method only published for vit
    ])
    out = attach_reference(summary, reference_table())
    assert len(out) == len(summary)
    assert out[list(summary.columns)].equals(summary)  # our numbers untouched, same order
    expect = [("cifar100", 2.46, 0.04), ("cifar10", 1.69, 0.07), ("tiny_shakespeare", 2.02, 0.12),
              ("cifar10", 0.36, 0.01), None, None, None, None]
    for (_, row), exp in zip(out.iterrows(), expect):
        if exp is None:
            assert pd.isna(row.get("paper_mean")) and pd.isna(row.get("paper_dataset"))
        else:
            assert (row["paper_dataset"], row["paper_mean"], row["paper_std"]) == pytest.approx(exp)
            assert row["source"] == "test"


def test_attach_reference_only_for_pairwise_experiments():
    summary = _summary_rows([("vit", "mnist5k", "vanilla", "test", "loss")] * 3)
    summary.insert(0, "experiment", ["pairwise", "width_hetero", "multi_model"])
    out = attach_reference(summary, reference_table())
    assert out.loc[0, "paper_mean"] == pytest.approx(1.69)
    assert out.loc[1:, "paper_mean"].isna().all()


def test_attach_reference_with_the_shipped_table():
    reference = pd.read_csv(ROOT / "results" / "reference" / "glmc_table1.csv")
    assert {"family", "dataset", "default_for_family", "method", "metric", "mean", "std", "source",
            "checked_against_paper"} <= set(reference)
    # exactly one default dataset per (family, method, metric), so the fallback is unambiguous
    defaults = reference[reference["default_for_family"]].groupby(["family", "method", "metric"]).size()
    assert (defaults == 1).all()
    assert set(defaults.index.get_level_values("family")) == set(FAMILY_OF_DATASET.values())
    summary = summarise_barriers(synthetic_barriers(methods=("vanilla",)))
    out = attach_reference(summary, reference)
    test_loss = out[(out["split"] == "test") & (out["metric"] == "loss")]
    assert test_loss["paper_mean"].notna().all()
    assert set(out.loc[out["split"] != "test", "paper_mean"].dropna()) == set()
    assert set(out.loc[out["metric"] != "loss", "paper_mean"].dropna()) == set()


# ----------------------------------------------------------------------------- LaTeX
def _latex_input(methods):
    summary = summarise_barriers(synthetic_barriers(methods=methods))
    return summary, attach_reference(summary, reference_table())


def test_latex_summary_has_every_method_and_our_numbers():
    summary, with_ref = _latex_input(("vanilla", "zipit"))
    tex = latex_summary(with_ref)
    assert "\\begin{tabular}" in tex and "\\end{tabular}" in tex
    assert "\\caption{" in tex and "tab:barrier-loss" in tex
    body = tex[tex.index("\\begin{tabular}"):tex.index("\\end{tabular}")]
    for method in ("vanilla", "zipit"):
        assert re.search(rf"^\s*{method}\s*&", body, re.M), method
    for _, r in summary[(summary["split"] == "test") & (summary["metric"] == "loss")].iterrows():
        assert f"{r.barrier_mean:.2f} $\\pm$ {r.barrier_std:.2f}" in tex
    for _, r in summary[(summary["split"] != "test") | (summary["metric"] != "loss")].iterrows():
        assert f"{r.barrier_mean:.2f} $\\pm$ {r.barrier_std:.2f}" not in tex
    assert "1.69 $\\pm$ 0.07 (cifar10)" in tex  # the published vanilla vit number, flagged with its dataset
    assert "vit / mnist5k" in tex and "gpt2 / shakespeare" in tex
    assert "--" in tex  # zipit has no published number
    # without published numbers there is no paper column
    assert "(paper)" not in latex_summary(summary) and "(ours)" in latex_summary(summary)


def test_latex_summary_escapes_underscores():
    summary = summarise_barriers(synthetic_barriers(methods=("vanilla", "glmc_weight_matching")))
    tex = latex_summary(summary)
    text_outside_math = re.sub(r"\$[^$]*\$", "", tex)
    assert not re.search(r"(?<!\\)_", text_outside_math), "unescaped underscore in LaTeX text mode"


# ----------------------------------------------------------------------------- figures
def _assert_png(path):
    assert path.exists() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind


def test_training_curves_png(tmp_path):
    history = pd.DataFrame([{"model": m, "seed": s, "step": step, "val_loss": 2.0 / step + 0.1 * s,
                             "train_loss": 2.0 / step, "dataset": "d"}
                            for m in ("vit", "gpt2") for s in (0, 1) for step in (10, 20, 30)])
    plots.training_curves(history, tmp_path / "training.png", profile="test")
    _assert_png(tmp_path / "training.png")


def test_interpolation_curves_png(tmp_path):
    rows = []
    for model, method, (a, b), split, metric in itertools.product(
            ("vit", "gpt2"), ("vanilla", "weight_matching"), PAIRS[:2], ("test",), ("loss", "accuracy")):
        for lam in np.linspace(0, 1, 3):
            bump = 4 * lam * (1 - lam)
            rows.append({"lambda": lam, "split": split, "metric": metric, "model": model, "method": method,
                         "seed_a": a, "seed_b": b, "value": 1 + bump if metric == "loss" else 0.9 - 0.3 * bump})
    plots.interpolation_curves(pd.DataFrame(rows), tmp_path / "curves.png", profile="test")
    _assert_png(tmp_path / "curves.png")


def test_barrier_summary_png(tmp_path):
    plots.barrier_summary(synthetic_barriers(), tmp_path / "summary.png", profile="test")
    _assert_png(tmp_path / "summary.png")
