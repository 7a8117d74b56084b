"""Training methods on the same backbones, and the one training loop `fit` that runs all of them.

  strict            equivariant backbone only (no branch)                              [official code "vanilla"]
  unconstrained     mixed model, γ trained freely, no constraint (evaluated mixed)      [official code]
  penalty           mixed model + w·relative equivariance error at a sampled group element (REMUL-style fixed weight)
  rpp               mixed model + Gaussian priors on both paths, the branch taken as γ·f_neq (Residual Pathway
                    Priors as MAP, Finzi et al. 2021) [inferred]; see `layers.rpp_penalty`
  relaxed_conv      relaxed C4 group CNN + α·Σ‖w(h) − w(h')‖² (Wang et al. 2022), image task only
  triangle_schedule γ not learned: the triangle schedule 0 → 1 → 0 over training, branch dropped at evaluation.
                    Only the schedule of Pertigkiozoglou et al. 2024 (`--cycle`): their Lie-derivative/‖Wx‖
                    regulariser and near-zero branch initialisation are not implemented, hence the name.
  ace_equality / ace_resilient / ace_eps   primal–dual (lmcbench.ace.constrained)

θ: torch.optim.Adam with cosine decay to 0 over the run (`train.lr_decay`, so a fixed budget ends at a plateau);
γ: `constrained.gamma_optimizer` (default "curvature": step tied to the curvature in γ, cannot oscillate).
`HEADLINE_EVAL` names the model each method reports: "eq" = f_{θ,0} (branch dropped), "mixed" = f_{θ,γ}.
Evaluating f_{θ,0} of a model trained with its branch first recomputes the BatchNorm statistics with the
branch off (`evaluation_form`).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field

import torch

from lmcbench.ace.constrained import VARIANTS, ace_defects, ace_optimizer, gamma_optimizer
from lmcbench.ace.layers import branch, gamma_parameters, gammas, mixed_layers, recompute_batchnorm, rpp_penalty

METHODS = ("strict", "unconstrained", "penalty", "rpp", "relaxed_conv", "triangle_schedule", *VARIANTS)
HEADLINE_EVAL = {"strict": "eq", "unconstrained": "mixed", "penalty": "mixed", "rpp": "mixed",
                 "relaxed_conv": "mixed", "triangle_schedule": "eq", "ace_equality": "eq", "ace_resilient": "mixed",
                 "ace_eps": "mixed"}


CURVE_BN_EXAMPLES = 512   # training examples that recompute BN statistics for a validation-curve point


def triangle(t: float) -> float:
    """0 → 1 over the first half of training, back to 0 over the second (Pertigkiozoglou et al. `--cycle`)."""
    return 1.0 - abs(2.0 * t - 1.0)


@dataclass
class FitResult:
    trajectory: list[dict] = field(default_factory=list)   # step, layer, gamma, lambda, u
    curves: list[dict] = field(default_factory=list)       # step, eval, split, metric, value
    steps: int = 0


@contextlib.contextmanager
def evaluation_form(model, ev: str, train_inputs: tuple, restore: bool = True):
    """Switch `model` to the evaluated form ("eq": branch off, "mixed": branch on). A model that has a
    branch gets its BatchNorm statistics recomputed on `train_inputs` for the branch-off form (its training
    statistics were collected with the branch on). With `restore`, the BN buffers are put back afterwards."""
    recompute = ev == "eq" and bool(mixed_layers(model))
    saved = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}) \
        if recompute and restore else None
    with branch(model, ev == "mixed"):
        if recompute:
            recompute_batchnorm(model, train_inputs)
        try:
            yield model
        finally:
            if saved:
                model.load_state_dict(saved, strict=False)


def fit(model, task, method: str, train: dict, ace: dict, baselines: dict, seed: int,
        log_every: int = 5) -> FitResult:
    """Train `model` on `task` with `method`; returns γ/λ trajectories and validation curves of the
    headline form."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid: {METHODS}")
    gen = torch.Generator().manual_seed(seed)
    gam = gamma_parameters(model)
    gam_ids = {id(p) for p in gam}
    theta = [p for p in model.parameters() if id(p) not in gam_ids]
    steps_per_epoch = math.ceil(task.n_train / train["batch_size"])
    total = train["epochs"] * steps_per_epoch
    optimizers, curvature = [torch.optim.Adam(theta, lr=train["lr"])], None
    learn_gamma = bool(gam) and method != "triangle_schedule"
    if learn_gamma:
        gopt, curvature = gamma_optimizer(train.get("gamma_optimizer", "curvature"), gam,
                                          train.get("gamma_lr", train["lr"]))
        optimizers.append(gopt)
    cosine = train.get("lr_decay", "cosine") == "cosine"   # θ and γ steps decay together: γ's noise too
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
              for o in optimizers if cosine and not (curvature is not None and o is curvature.optimizer)]
    for p in gam:
        p.requires_grad_(learn_gamma)
    names = [n for n, _ in mixed_layers(model)]
    problem = None
    if method in VARIANTS:
        problem = ace_optimizer(method, optimizers, names, ace["dual_lr"], ace.get("dual_optimizer", "ascent"),
                                ace.get("rho", 1.0), ace.get("slack_lr"), ace.get("aug_lag", 0.0))
    headline = HEADLINE_EVAL[method]
    result, step = FitResult(), 0
    for epoch in range(train["epochs"]):
        model.train()
        for inputs, target in task.batches(train["batch_size"], gen):
            if method == "triangle_schedule":
                with torch.no_grad():
                    for p in gam:
                        p.fill_(triangle(step / max(1, total - 1)))
            if curvature is not None and cosine:
                curvature.scale = 0.5 * (1 + math.cos(math.pi * step / total))
            pred = model(*inputs)
            loss = task.loss(pred, target)
            if problem is not None:
                problem.step(loss, ace_defects(method, gammas(model), ace.get("eps", 0.0)), curvature)
            else:
                if method == "penalty":
                    loss = loss + baselines["penalty_weight"] * task.equivariance_penalty(model, inputs, pred, gen)
                elif method == "rpp":
                    loss = loss + rpp_penalty(model, baselines.get("rpp_eq_weight", 0.0), baselines["rpp_weight"])
                elif method == "relaxed_conv":
                    loss = loss + baselines["relaxed_weight"] * model.regulariser()
                for o in optimizers:
                    o.zero_grad(set_to_none=True)
                if curvature is not None:
                    curvature.update(loss)
                loss.backward()
                for o in optimizers:
                    o.step()
            for sched in scheds:
                sched.step()
            if gam and (step % log_every == 0 or step == total - 1):
                lam = problem.multipliers if problem is not None else {}
                slack = (problem.slacks or {}) if problem is not None else {}
                for name, p in zip(names, gam):
                    result.trajectory.append({"step": step, "layer": name, "gamma": float(p.detach()), "lambda":
                                              lam.get(name, float("nan")), "u": slack.get(name, float("nan"))})
            step += 1
        if (epoch + 1) % train.get("eval_every", 1) == 0 or epoch == train["epochs"] - 1:
            # validation curves: BN statistics (branch off) from the first CURVE_BN_EXAMPLES training examples
            with evaluation_form(model, headline, tuple(t[:CURVE_BN_EXAMPLES] for t in task.splits["train"][0])):
                for metric, value in task.evaluate(model, "val").items():
                    result.curves.append({"step": step, "epoch": epoch + 1, "eval": headline, "split": "val",
                                          "metric": metric, "value": value})
    if method == "triangle_schedule":
        with torch.no_grad():
            for p in gam:
                p.fill_(0.0)
    result.steps = step
    return result


def evals_of(model, method: str) -> list[str]:
    """Which forms of a trained model to evaluate: both for mixed models, one otherwise; the headline form
    last, so that the model is left as the reported one."""
    if not mixed_layers(model):
        return [HEADLINE_EVAL[method]]
    return sorted(["eq", "mixed"], key=lambda ev: ev == HEADLINE_EVAL[method])
