"""Same seed, same barrier: two independent train → pairwise (vanilla) pipelines agree to 1e-6 on CPU."""
from __future__ import annotations

import re

import pandas as pd
import pytest
import torch

from conftest import data_cfg, model_cfg, state_equal
from lmcbench.checkpoints import load_model
from lmcbench.io import PROVENANCE_PACKAGES, read_json
from lmcbench.experiments.glmc import pairs_job
from lmcbench.experiments.train import train_job

SEEDS = (0, 1)
BARRIER_CFG = {"points": 5, "splits": ["train", "test"], "max_examples": 48, "batch_size": 48}
NUMERIC = ["barrier", "barrier_midpoint", "argmax_lambda", "value_a", "value_b"]


@pytest.fixture(scope="module", params=["vit", "gpt2"])
def two_pipelines(request, tmp_path_factory):
    """Run train (seeds 0 and 1) + vanilla pairwise twice, into separate directories."""
    family = request.param
    cfg = model_cfg(family, steps=20, eval_every=10)
    data = data_cfg(family)
    runs = []
    for run in ("run1", "run2"):
        root = tmp_path_factory.mktemp(f"{family}_{run}")
        ckpts = {s: train_job(root / "models" / f"seed{s}", family, cfg, data, s, progress=False) for s in SEEDS}
        out = root / "glmc" / "vanilla" / "s0-s1"
        table = pairs_job([(ckpts[0], ckpts[1])], out, "vanilla", data, BARRIER_CFG,
                          labels={"model": family, "dataset": data["name"]}, progress=False)
        runs.append({"root": root, "ckpts": ckpts, "pair": out, "table": table})
    return family, cfg, data, runs


def test_same_seed_same_weights(two_pipelines):
    _, _, _, (r1, r2) = two_pipelines
    for seed in SEEDS:
        m1, _ = load_model(r1["ckpts"][seed])
        m2, _ = load_model(r2["ckpts"][seed])
        assert state_equal(m1.state_dict(), m2.state_dict())
    a, _ = load_model(r1["ckpts"][0])
    b, _ = load_model(r1["ckpts"][1])
    assert not state_equal(a.state_dict(), b.state_dict())


def test_same_seed_same_barrier(two_pipelines):
    _, _, _, (r1, r2) = two_pipelines
    t1, t2 = (r["table"].sort_values(["split", "metric"]).reset_index(drop=True) for r in (r1, r2))
    assert len(t1) == 4  # (train, test) × (loss, accuracy)
    assert t1[["split", "metric"]].equals(t2[["split", "metric"]])
    for col in NUMERIC:
        assert (t1[col] - t2[col]).abs().max() <= 1e-6, col
    # The written records agree too, and they are what pairs_job returned.
    for r in (r1, r2):
        on_disk = pd.read_csv(r["pair"] / "barriers.csv")
        assert len(on_disk) == len(r["table"])
        assert (on_disk.sort_values(["split", "metric"])["barrier"].to_numpy()
                - r["table"].sort_values(["split", "metric"])["barrier"].to_numpy() == pytest.approx(0, abs=1e-9))
    c1, c2 = (pd.read_csv(r["pair"] / "curve.csv").sort_values(["split", "metric", "lambda"]) for r in (r1, r2))
    assert len(c1) == 5 * 2 * 2
    assert (c1["value"].to_numpy() - c2["value"].to_numpy()) == pytest.approx(0, abs=1e-6)


def _check_common_provenance(prov):
    assert re.fullmatch(r"[0-9a-f]{40}|unknown", prov["git_commit"])
    assert set(PROVENANCE_PACKAGES) <= set(prov["versions"])
    assert prov["versions"]["torch"] == torch.__version__.split("+")[0]
    assert prov["python"] and prov["platform"]
    assert re.fullmatch(r"r[0-9a-f]{12}", prov["run_id"])


def test_train_provenance(two_pipelines):
    family, cfg, data, (r1, r2) = two_pipelines
    for seed in SEEDS:
        d = r1["ckpts"][seed]
        assert {"model.safetensors", "config.json", "history.csv", "provenance.json"} <= {p.name for p in d.iterdir()}
        assert not (d / "resume.pt").exists()
        prov = read_json(d / "provenance.json")
        _check_common_provenance(prov)
        assert prov["seed"] == seed
        assert prov["config"]["seed"] == seed
        assert prov["config"]["model"] == cfg and prov["config"]["data"] == data
        assert prov["config"]["model_name"] == family
        history = pd.read_csv(d / "history.csv")
        assert set(history["run_id"]) == {prov["run_id"]} and set(history["seed"]) == {seed}
        assert prov["best_val_loss"] == pytest.approx(history["val_loss"].min())
        _, info = load_model(d)
        assert info["run_id"] == prov["run_id"] and info["seed"] == seed
        # the id depends on the job only, not on where it ran
        assert read_json(r2["ckpts"][seed] / "provenance.json")["run_id"] == prov["run_id"]
    assert read_json(r1["ckpts"][0] / "provenance.json")["run_id"] != read_json(r1["ckpts"][1] / "provenance.json")["run_id"]


def test_pairwise_provenance(two_pipelines):
    family, _, data, (r1, _) = two_pipelines
    prov = read_json(r1["pair"] / "provenance.json")
    _check_common_provenance(prov)
    assert prov["seed"] == 0
    assert prov["config"]["method"] == "vanilla"
    assert prov["config"]["pairs"] == [[str(r1["ckpts"][0]), str(r1["ckpts"][1])]]
    assert prov["config"]["data"] == data and prov["config"]["barrier"] == BARRIER_CFG
    table = pd.read_csv(r1["pair"] / "barriers.csv")
    assert set(table["run_id"]) == {prov["run_id"]}
    assert set(table["method"]) == {"vanilla"} and set(table["model"]) == {family}
    assert set(table["seed_a"]) == {0} and set(table["seed_b"]) == {1}
