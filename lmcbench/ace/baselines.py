"""Training methods on the same backbones, and the one training loop `fit` that runs all of them.

  strict        equivariant backbone only (no branch)                                  [official code "vanilla"]
  unconstrained mixed model, γ trained freely, no constraint (evaluated mixed)          [official code]
  penalty       mixed model + w·relative equivariance error at a sampled group element (REMUL-style fixed weight)
  rpp           mixed model + w·‖θ_neq‖² (Residual Pathway Priors as MAP, Finzi et al. 2021) [inferred]
  relaxed_conv  relaxed C4 group CNN + α·Σ‖w(h) − w(h')‖² (Wang et al. 2022), image task only
  schedule      γ not learned: triangle schedule 0 → 1 → 0 over training, branch dropped at evaluation
                (Pertigkiozoglou et al. 2024, `--cycle`)
  ace_equality / ace_resilient / ace_eps   primal–dual (lmcbench.ace.constrained)

`HEADLINE_EVAL` names the model each method reports: "eq" = f_{θ,0} (branch dropped), "mixed" = f_{θ,γ}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lmcbench.ace.constrained import VARIANTS, Adam, ace_defects, ace_optimizer
from lmcbench.ace.layers import branch, branch_parameters, gamma_parameters, gammas, mixed_layers

METHODS = ("strict", "unconstrained", "penalty", "rpp", "relaxed_conv", "schedule", *VARIANTS)
HEADLINE_EVAL = {"strict": "eq", "unconstrained": "mixed", "penalty": "mixed", "rpp": "mixed",
                 "relaxed_conv": "mixed", "schedule": "eq", "ace_equality": "eq", "ace_resilient": "mixed",
                 "ace_eps": "mixed"}


def triangle(t: float) -> float:
    """0 → 1 over the first half of training, back to 0 over the second (Pertigkiozoglou et al. `--cycle`)."""
    return 1.0 - abs(2.0 * t - 1.0)


@dataclass
class FitResult:
    trajectory: list[dict] = field(default_factory=list)   # step, layer, gamma, lambda, u
    curves: list[dict] = field(default_factory=list)       # step, eval, split, metric, value
    steps: int = 0


def fit(model, task, method: str, train: dict, ace: dict, baselines: dict, seed: int,
        log_every: int = 5) -> FitResult:
    """Train `model` on `task` with `method`; returns γ/λ trajectories and validation curves."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    gen = torch.Generator().manual_seed(seed)
    gam = gamma_parameters(model)
    gam_ids = {id(p) for p in gam}
    theta = [p for p in model.parameters() if id(p) not in gam_ids]
    groups = [{"params": theta, "lr": train["lr"]}]
    if gam and method != "schedule":
        groups.append({"params": gam, "lr": train.get("gamma_lr", train["lr"]),
                       "sgd": train.get("gamma_optimizer", "adam") == "sgd"})
    for p in gam:
        p.requires_grad_(method != "schedule")
    opt = Adam(groups)   # torch.optim.Adam's update; see constrained.Adam for why not torch.optim
    names = [n for n, _ in mixed_layers(model)]
    problem = None
    if method in VARIANTS:
        problem = ace_optimizer(method, opt, names, ace["dual_lr"], ace.get("dual_optimizer", "ascent"),
                                ace.get("rho", 1.0), ace.get("slack_lr"), ace.get("aug_lag", 0.0))
    steps_per_epoch = math.ceil(task.n_train / train["batch_size"])
    total = train["epochs"] * steps_per_epoch
    result, step = FitResult(), 0
    for epoch in range(train["epochs"]):
        model.train()
        for inputs, target in task.batches(train["batch_size"], gen):
            if method == "schedule":
                with torch.no_grad():
                    for p in gam:
                        p.fill_(triangle(step / max(1, total - 1)))
            pred = model(*inputs)
            loss = task.loss(pred, target)
            if problem is not None:
                problem.step(loss, ace_defects(method, gammas(model), ace.get("eps", 0.0)))
            else:
                if method == "penalty":
                    loss = loss + baselines["penalty_weight"] * task.equivariance_penalty(model, inputs, pred, gen)
                elif method == "rpp":
                    loss = loss + baselines["rpp_weight"] * sum(p.pow(2).sum() for p in branch_parameters(model))
                elif method == "relaxed_conv":
                    loss = loss + baselines["relaxed_weight"] * model.regulariser()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if gam and (step % log_every == 0 or step == total - 1):
                lam = problem.multipliers if problem is not None else {}
                slack = (problem.slacks or {}) if problem is not None else {}
                for name, p in zip(names, gam):
                    result.trajectory.append({"step": step, "layer": name, "gamma": float(p.detach()), "lambda":
                                              lam.get(name, float("nan")), "u": slack.get(name, float("nan"))})
            step += 1
        if (epoch + 1) % train.get("eval_every", 1) == 0 or epoch == train["epochs"] - 1:
            for ev in evals_of(model, method):
                with branch(model, ev == "mixed"):
                    for metric, value in task.evaluate(model, "val").items():
                        result.curves.append({"step": step, "epoch": epoch + 1, "eval": ev, "split": "val",
                                              "metric": metric, "value": value})
    if method == "schedule":
        with torch.no_grad():
            for p in gam:
                p.fill_(0.0)
    result.steps = step
    return result


def evals_of(model, method: str) -> list[str]:
    """Which forms of a trained model to evaluate: both for mixed models, one otherwise."""
    return ["eq", "mixed"] if mixed_layers(model) else [HEADLINE_EVAL[method]]
