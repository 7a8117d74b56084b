"""The barrier engine on analytic curves, the flat-vector interpolator, and a real interpolation sweep."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import fresh_model, gpt2_cfg, vit_cfg
from lmcbench.barrier import (Interpolator, barriers, chord_barrier, default_grid, interpolation_curve, midpoint_barrier,
                              simplex_barriers, simplex_grid)
from lmcbench.tasks import evaluate, make_task

GRID = np.linspace(0.0, 1.0, 11)


def bump_loss(lam, tilt=0.7):
    """1 + 4λ(1−λ) + tilt·λ: chord 1 + tilt·λ, excess 4λ(1−λ), so the barrier is exactly 1 at λ = ½."""
    lam = np.asarray(lam, float)
    return 1.0 + 4.0 * lam * (1.0 - lam) + tilt * lam


def tent(lam, centre, height, half_width=0.2):
    return height * np.clip(1.0 - np.abs(np.asarray(lam, float) - centre) / half_width, 0.0, None)


# ----------------------------------------------------------------------------- chord / midpoint
@pytest.mark.parametrize("tilt", [0.0, 0.7, -0.4])
def test_chord_barrier_of_a_bump_is_its_height(tilt):
    barrier, lam = chord_barrier(GRID, bump_loss(GRID, tilt))
    assert barrier == pytest.approx(1.0, abs=1e-12)
    assert lam == pytest.approx(0.5)


@pytest.mark.parametrize("tilt", [0.0, 0.7, -0.4])
def test_midpoint_barrier_of_a_bump(tilt):
    # L(½) = 2 + tilt/2, mean of the ends = 1 + tilt/2.
    assert midpoint_barrier(GRID, bump_loss(GRID, tilt)) == pytest.approx(1.0, abs=1e-12)


def test_convex_curve_below_the_chord():
    values = GRID**2 + 0.3  # below the chord 0.3 + λ everywhere inside, equal at the ends
    barrier, lam = chord_barrier(GRID, values)
    assert barrier == pytest.approx(0.0, abs=1e-12)  # the endpoints are on the grid, so never negative
    assert lam in (0.0, 1.0)
    assert midpoint_barrier(GRID, values) == pytest.approx(0.25 - 0.5, abs=1e-12)


@pytest.mark.parametrize("centre", [0.3, 0.5, 0.8])
def test_argmax_lambda_follows_the_peak(centre):
    values = 2.0 - 0.5 * GRID + tent(GRID, centre, 0.37)  # tent is 0 at both ends, so the chord is the tilt
    barrier, lam = chord_barrier(GRID, values)
    assert barrier == pytest.approx(0.37, abs=1e-12)
    assert lam == pytest.approx(centre)


def test_accuracy_dip_counts_positive():
    acc = 0.8 + 0.1 * GRID - 0.5 * np.sin(np.pi * GRID)
    barrier, lam = chord_barrier(GRID, acc, higher_is_better=True)
    assert barrier == pytest.approx(0.5, abs=1e-12)
    assert lam == pytest.approx(0.5)
    assert midpoint_barrier(GRID, acc, higher_is_better=True) == pytest.approx(0.5, abs=1e-12)
    # The same curve read as a loss lies below its chord: no barrier, negative midpoint.
    assert chord_barrier(GRID, acc, higher_is_better=False)[0] == pytest.approx(0.0, abs=1e-12)
    assert midpoint_barrier(GRID, acc, higher_is_better=False) == pytest.approx(-0.5, abs=1e-12)


def test_accuracy_bump_is_no_barrier():
    acc = 0.5 + 0.2 * np.sin(np.pi * GRID)  # interpolation *improves* accuracy
    assert chord_barrier(GRID, acc, higher_is_better=True)[0] == pytest.approx(0.0, abs=1e-12)
    assert midpoint_barrier(GRID, acc, higher_is_better=True) == pytest.approx(-0.2, abs=1e-12)


def test_unsorted_grid_gives_the_same_answer():
    values = 1.0 + 0.2 * GRID + tent(GRID, 0.3, 0.6)
    perm = np.random.default_rng(0).permutation(len(GRID))
    assert not np.all(np.diff(GRID[perm]) > 0)
    assert chord_barrier(GRID[perm], values[perm]) == pytest.approx(chord_barrier(GRID, values))
    assert chord_barrier(GRID[perm], values[perm])[1] == pytest.approx(0.3)
    assert midpoint_barrier(GRID[perm], values[perm]) == pytest.approx(midpoint_barrier(GRID, values))
    reversed_ = (GRID[::-1], values[::-1])
    assert chord_barrier(*reversed_) == pytest.approx(chord_barrier(GRID, values))


def test_midpoint_is_interpolated_off_grid():
    lam = np.array([0.0, 0.4, 0.6, 1.0])
    values = bump_loss(lam, tilt=0.0)  # L(0.4) = L(0.6) = 1.96, so the interpolated L(½) is 1.96
    assert midpoint_barrier(lam, values) == pytest.approx(0.96, abs=1e-12)


@pytest.mark.parametrize("lam", [np.linspace(0.1, 1.0, 10), np.linspace(0.0, 0.9, 10), np.array([0.2, 0.5, 0.7])])
def test_chord_barrier_needs_both_endpoints(lam):
    with pytest.raises(ValueError, match="endpoint"):
        chord_barrier(lam, bump_loss(lam))


@pytest.mark.parametrize("lam", [np.linspace(0.1, 1.0, 10), np.linspace(0.0, 0.9, 10)])
def test_midpoint_barrier_needs_both_endpoints(lam):
    with pytest.raises(ValueError, match="endpoint"):
        midpoint_barrier(lam, bump_loss(lam))


def test_default_grid():
    assert np.allclose(default_grid(11), GRID)
    assert default_grid(5)[0] == 0.0 and default_grid(5)[-1] == 1.0
    with pytest.raises(ValueError):
        default_grid(1)


def test_barriers_table_has_both_definitions_per_split_and_metric():
    heights = {("train", "loss"): 0.4, ("test", "loss"): 1.3, ("train", "accuracy"): 0.05, ("test", "accuracy"): 0.2}
    rows = []
    for (split, metric), h in heights.items():
        if metric == "loss":
            values = 2.0 + 0.3 * GRID + tent(GRID, 0.5, h, half_width=0.5)
        else:
            values = 0.9 - 0.1 * GRID - tent(GRID, 0.5, h, half_width=0.5)
        rows += [{"lambda": lam, "split": split, "metric": metric, "value": v} for lam, v in zip(GRID, values)]
    curve = pd.DataFrame(rows).sample(frac=1.0, random_state=0)  # order must not matter
    table = barriers(curve)
    assert len(table) == 4
    assert {"split", "metric", "barrier", "barrier_midpoint", "argmax_lambda", "value_a", "value_b"} <= set(table)
    assert not table.duplicated(["split", "metric"]).any()
    for (split, metric), h in heights.items():
        row = table[(table["split"] == split) & (table["metric"] == metric)].iloc[0]
        assert row["barrier"] == pytest.approx(h, abs=1e-12)
        assert row["barrier_midpoint"] == pytest.approx(h, abs=1e-12)  # the tent peaks exactly at ½
        assert row["argmax_lambda"] == pytest.approx(0.5)
        # λ = 1 is model A, λ = 0 is model B
        assert row["value_b"] == pytest.approx(2.0 if metric == "loss" else 0.9)
        assert row["value_a"] == pytest.approx(2.3 if metric == "loss" else 0.8)


# ----------------------------------------------------------------------------- Interpolator
def _states():
    g = torch.Generator().manual_seed(0)
    a = {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g),
         "bn.num_batches_tracked": torch.tensor(7), "idx": torch.tensor([3, 1, 2])}
    b = {"fc.weight": torch.randn(3, 4, generator=g), "fc.bias": torch.randn(3, generator=g),
         "bn.num_batches_tracked": torch.tensor(99), "idx": torch.tensor([0, 0, 0])}
    return a, b


def test_interpolator_endpoints_and_interior():
    a, b = _states()
    path = Interpolator(a, b)
    at1, at0, at03 = path.at(1.0), path.at(0.0), path.at(0.3)
    for key in ("fc.weight", "fc.bias"):
        assert torch.equal(at1[key], a[key])
        assert torch.equal(at0[key], b[key])
        assert torch.allclose(at03[key], 0.3 * a[key] + 0.7 * b[key], atol=1e-6)
        assert at03[key].shape == a[key].shape
    for state in (at1, at0, at03):
        assert state.keys() == a.keys()
        # integer buffers are not interpolated: they come from A (the reference)
        assert torch.equal(state["bn.num_batches_tracked"], a["bn.num_batches_tracked"])
        assert torch.equal(state["idx"], a["idx"])
        assert not state["idx"].is_floating_point()


def test_interpolator_does_not_modify_inputs():
    a, b = _states()
    a0, b0 = {k: v.clone() for k, v in a.items()}, {k: v.clone() for k, v in b.items()}
    Interpolator(a, b).at(0.3)
    assert all(torch.equal(a[k], a0[k]) and torch.equal(b[k], b0[k]) for k in a)


def test_interpolator_rejects_different_keys():
    a, b = _states()
    a["head.extra"] = torch.zeros(2)
    with pytest.raises(ValueError, match="head.extra"):
        Interpolator(a, b)
    with pytest.raises(ValueError, match="head.extra"):
        Interpolator(b, a)


def test_interpolator_rejects_different_shapes():
    a, b = _states()
    b["fc.weight"] = torch.zeros(4, 4)
    with pytest.raises(ValueError, match=r"fc\.weight"):
        Interpolator(a, b)


def test_interpolator_mixes_several_models():
    a, b = _states()
    c = {k: (v * 3 + 1 if v.is_floating_point() else v + 5) for k, v in a.items()}
    path = Interpolator(a, b, c)
    for i, state in enumerate((a, b, c)):
        vertex = path.mix(np.eye(3)[i])
        assert all(torch.equal(vertex[k], state[k]) for k in ("fc.weight", "fc.bias"))
    mixed = path.mix([0.2, 0.3, 0.5])
    for key in ("fc.weight", "fc.bias"):
        assert torch.allclose(mixed[key], 0.2 * a[key] + 0.3 * b[key] + 0.5 * c[key], atol=1e-6)
    assert torch.equal(mixed["idx"], a["idx"])  # integer entries still come from the first model
    bad = dict(c, **{"fc.bias": torch.zeros(5)})
    with pytest.raises(ValueError, match=r"fc\.bias"):
        Interpolator(a, b, bad)


@pytest.mark.parametrize(("n", "r"), [(2, 4), (3, 3), (4, 2)])
def test_simplex_grid(n, r):
    from math import comb

    grid = simplex_grid(n, r)
    assert grid.shape == (comb(r + n - 1, n - 1), n)
    assert np.allclose(grid.sum(1), 1.0) and (grid >= 0).all()
    assert np.allclose(grid * r, np.round(grid * r))
    assert len({tuple(row) for row in grid}) == len(grid)
    for vertex in np.eye(n):
        assert any(np.allclose(row, vertex) for row in grid)
    if n == 2:
        assert sorted(grid[:, 0]) == pytest.approx(np.linspace(0, 1, r + 1))
    with pytest.raises(ValueError):
        simplex_grid(1, 3)


def test_simplex_barriers_on_an_analytic_surface():
    grid = simplex_grid(3, 3)  # contains the centre (⅓, ⅓, ⅓)
    vertices = {"loss": np.array([1.0, 1.5, 2.0]), "accuracy": np.array([0.9, 0.8, 0.85])}
    height = {"loss": 0.6, "accuracy": 0.2}
    rows = []
    for metric, vals in vertices.items():
        sign = 1.0 if metric == "loss" else -1.0
        for w in grid:
            value = w @ vals + sign * height[metric] * 27 * w.prod()  # 27·w0·w1·w2 peaks at 1 in the centre
            rows.append({"w0": w[0], "w1": w[1], "w2": w[2], "split": "test", "metric": metric, "value": value})
    table = simplex_barriers(pd.DataFrame(rows))
    assert len(table) == 2
    for _, row in table.iterrows():
        assert row["barrier"] == pytest.approx(height[row["metric"]], abs=1e-12)
        assert row["barrier_midpoint"] == pytest.approx(height[row["metric"]], abs=1e-12)
        assert [float(x) for x in row["argmax_weights"].split()] == pytest.approx([1 / 3] * 3, abs=1e-3)


# ----------------------------------------------------------------------------- real sweep
@pytest.fixture(params=["vit", "gpt2_tied"])
def two_models(request, datasets):
    if request.param == "vit":
        cfg, data = vit_cfg(), datasets["vit"]
    else:
        cfg, data = gpt2_cfg({"tie_word_embeddings": True}), datasets["gpt2"]
    return fresh_model(cfg, data, 0).eval(), fresh_model(cfg, data, 1).eval(), make_task(data, cfg)


def test_curve_endpoints_equal_direct_evaluation(two_models):
    model_a, model_b, task = two_models
    lambdas = [0.0, 0.25, 0.5, 0.75, 1.0]
    curve = interpolation_curve(model_a, task, model_a.state_dict(), model_b.state_dict(), lambdas=lambdas,
                                splits=("train", "test"), max_examples=48, batch_size=32, device="cpu")
    assert set(curve.columns) == {"lambda", "split", "metric", "value"}
    assert len(curve) == len(lambdas) * 2 * 2
    assert sorted(curve["lambda"].unique()) == lambdas
    for split in ("train", "test"):
        data = task.eval_tensors(split, 48)
        for lam, model in ((1.0, model_a), (0.0, model_b)):
            direct = evaluate(model, task, data, 32, "cpu")
            for metric in ("loss", "accuracy"):
                got = curve[(curve["lambda"] == lam) & (curve["split"] == split) & (curve["metric"] == metric)]
                assert len(got) == 1
                assert got["value"].iloc[0] == pytest.approx(direct[metric], abs=1e-6)
    # two independent inits really differ, so the check above is not vacuous
    test_loss = curve[(curve["split"] == "test") & (curve["metric"] == "loss")].set_index("lambda")["value"]
    assert abs(test_loss[1.0] - test_loss[0.0]) > 1e-4


def test_model_with_itself_is_flat(two_models):
    model_a, _, task = two_models
    state = model_a.state_dict()
    curve = interpolation_curve(model_a, task, state, state, lambdas=default_grid(5), splits=("test",),
                                max_examples=48, batch_size=32, device="cpu")
    for _, group in curve.groupby("metric"):
        assert np.ptp(group["value"].to_numpy()) <= 1e-6
    table = barriers(curve)
    assert len(table) == 2
    assert np.all(np.abs(table["barrier"]) <= 1e-6)
    assert np.all(np.abs(table["barrier_midpoint"]) <= 1e-6)
