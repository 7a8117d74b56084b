"""ACE plateau diagnostic (issue 11: "strict's validation accuracy stops improving over the last quarter of its
epochs"): `report.plateau_diagnostics` on synthetic validation curves, and the default profile's settings that
make it decidable."""
from __future__ import annotations

import math

import pytest

from lmcbench.ace.report import PLATEAU_MSE_TOL, TASK_METRIC, plateau_diagnostics

N_VAL = 500


def curve(values: dict[int, float], metric: str = "accuracy") -> list[dict]:
    """Validation-curve rows as `fit` writes them (plus a test row and another metric, which must be ignored)."""
    rows = [{"epoch": e, "split": "val", "metric": metric, "value": v} for e, v in values.items()]
    rows += [{"epoch": e, "split": "test", "metric": metric, "value": 0.0 if metric == "accuracy" else 1e9}
             for e in values]
    rows += [{"epoch": e, "split": "val", "metric": "loss", "value": -1.0} for e in values]
    return rows


@pytest.mark.parametrize("metric", ["accuracy", "mse"])
def test_saturating_curve_is_a_plateau_and_a_rising_one_is_not(metric):
    """Error e(t) = e0·exp(−t/τ) + floor over 40 epochs: with τ = 2 the last quarter (epochs 31–40) removes
    nothing measurable, with τ = 40 it removes far more than the validation noise."""
    def run(tau: float) -> dict:
        err = {t: 0.5 * math.exp(-t / tau) + 0.1 for t in range(1, 41)}
        return plateau_diagnostics(curve({t: 1 - e if metric == "accuracy" else e for t, e in err.items()}, metric),
                                   40, metric, N_VAL)

    flat, rising = run(2.0), run(40.0)
    assert flat["plateau"] == 1.0
    assert flat["val_gain_last_quarter"] == pytest.approx(0.5 * (math.exp(-15) - math.exp(-20)))
    gain = 0.5 * (math.exp(-30 / 40) - math.exp(-1))   # best before: epoch 30; best after: epoch 40
    assert rising["val_gain_last_quarter"] == pytest.approx(gain)
    err = 0.5 * math.exp(-30 / 40) + 0.1
    noise = math.sqrt(err * (1 - err) / N_VAL) if metric == "accuracy" else PLATEAU_MSE_TOL * err
    assert rising["plateau"] == 0.0 and gain > noise


def test_gain_is_best_after_over_best_before_improvement_positive():
    """Max for accuracy, min for MSE, on each side of 0.75·epochs (an evaluation at the boundary is before);
    a late drop counts as a negative gain, i.e. a plateau."""
    acc = {2: 0.5, 4: 0.8, 6: 0.7, 7: 0.75, 8: 0.78}   # boundary 6: before {2, 4, 6}, after {7, 8}
    d = plateau_diagnostics(curve(acc), 8, "accuracy", N_VAL)
    assert d["val_gain_last_quarter"] == pytest.approx(0.78 - 0.8) and d["plateau"] == 1.0
    mse = {2: 0.5, 4: 0.2, 6: 0.3, 8: 0.1}
    d = plateau_diagnostics(curve(mse, "mse"), 8, "mse", N_VAL)
    assert d["val_gain_last_quarter"] == pytest.approx(0.1) and d["plateau"] == 0.0


def test_tolerance_is_the_validation_noise():
    """Accuracy: a gain is a plateau up to one binomial standard error √(p(1 − p)/n) of the best validation
    accuracy p before the last quarter, so the same gain can be noise on 100 examples and not on 10 000; MSE: up
    to PLATEAU_MSE_TOL of the best MSE before."""
    p, gain = 0.8, 0.02   # standard errors: 0.04 on 100 examples, 0.004 on 10 000
    got = [plateau_diagnostics(curve({3: p, 4: p + gain}), 4, "accuracy", n) for n in (100, 10_000)]
    assert [d["val_gain_last_quarter"] for d in got] == pytest.approx([gain, gain])
    assert [d["plateau"] for d in got] == [1.0, 0.0]
    step = 0.01
    for before, expect in ((2 * step / PLATEAU_MSE_TOL, 1.0), (step / (2 * PLATEAU_MSE_TOL), 0.0)):
        d = plateau_diagnostics(curve({3: before, 4: before - step}, "mse"), 4, "mse", N_VAL)
        assert d["plateau"] == expect


def test_undecidable_without_an_evaluation_on_each_side():
    for values in ({2: 0.5, 4: 0.6, 6: 0.7}, {7: 0.5, 8: 0.6}, {}):
        d = plateau_diagnostics(curve(values), 8, "accuracy", N_VAL)
        assert math.isnan(d["val_gain_last_quarter"]) and math.isnan(d["plateau"])


def eval_epochs(train: dict) -> list[int]:
    """The epochs `fit` evaluates the validation curve at: every `eval_every`-th and the last."""
    every, epochs = train.get("eval_every", 1), train["epochs"]
    return [e for e in range(1, epochs + 1) if e % every == 0 or e == epochs]


def test_default_profile_can_decide_the_plateau_of_every_run():
    """The effective (merged) default profile evaluates each task's validation curve at the last-quarter boundary
    itself (so "best before" is the model at 75 % of training, not an earlier one: with 10 epochs and eval_every 2
    the epoch-8 point, still rising, would count as the last quarter) and after it, for the default
    training-set size and for every sample-efficiency size (which `run_one` gives proportionally more epochs and
    a proportionally sparser curve)."""
    from lmcbench.config import DEFAULT_PROFILE, load_profile

    ace = load_profile(DEFAULT_PROFILE)["ace"]
    for task in ace["tasks"]:
        train = ace[task]["train"]
        sizes = [train["n_train"], *ace["experiments"].get("sample_efficiency", {}).get("n_train", [])]
        for n in sizes:
            factor = max(1.0, train["n_train"] / n)
            scaled = {"epochs": math.ceil(train["epochs"] * factor),
                      "eval_every": max(1, round(train.get("eval_every", 1) * factor))}
            epochs = eval_epochs(scaled)
            boundary = 0.75 * scaled["epochs"]
            assert boundary in epochs and any(e > boundary for e in epochs), (task, n, epochs)
            metric = TASK_METRIC[task]
            flat = curve({e: 0.9 if metric == "accuracy" else 0.1 for e in epochs}, metric)
            assert plateau_diagnostics(flat, scaled["epochs"], metric, N_VAL)["plateau"] == 1.0
