"""A small constrained-optimisation API (in the spirit of cooper): objective, named constraints,
multipliers, one `step`.

    problem = ConstrainedOptimizer(primal_opt, [Constraint("g0", "eq"), ...], dual_lr=0.1)
    info = problem.step(loss, defects)      # defects: tensor [K] of g_i(θ) (graph attached)

Constraints read g_i = 0 ("eq", multiplier free in sign) or g_i <= 0 ("ineq", multiplier >= 0).
With `resilient_rho=ρ` every inequality is relaxed to g_i <= u_i with slack cost ρ/2·‖u‖²
(Hounie et al. 2023; ACE Algorithm 2); the slacks are primal variables updated by plain descent
u ← u − η_u(ρu − λ) [paper, Algorithm 2, sign reconstructed in ace.md §2.2], so u settles at λ/ρ.

The Lagrangian is L = J0 + Σ λ_i s_i (+ c·Σ s_i² augmented term, default 0 [official code `auglag_const`]),
s_i = g_i − u_i, with λ detached in the primal step. The dual step uses the *pre-update* defect
(simultaneous / Jacobi GDA as in Algorithm 1 [paper]) and is either plain ascent λ ← λ + η_d s
("ascent" [paper]) or a torch optimiser fed grad = −s ("adam" / "sgd" [official code]); inequality
multipliers are then projected onto λ >= 0. θ and γ are stepped by the torch.optim optimisers given.
Checked against cooper (cooper-optim, tests/test_ace_cooper.py): on toy problems its SimultaneousOptimizer
with torch.optim.SGD/Adam(maximize=True) on λ gives the same γ and λ at every step ("ascent" is kept as the
one-line update λ + η·s: torch's SGD fuses the multiply-add and differs in the last bit, which would change
every ACE table).

The γ step (`gamma_optimizer`): "curvature" (default) ties it to the Lagrangian's curvature in γ so that γ
contracts monotonically; c > 0 matters too: with c = 0, wherever the loss is flat in γ the Lagrangian is
bilinear in (γ, λ) and simultaneous GDA (plain or Adam) circles instead of converging (measured on N-body).

ACE variants over per-layer γ (see `ace_defects`):
  ace_equality : g_i = γ_i = 0                  (Algorithm 1)
  ace_resilient: g_i = |γ_i| <= u_i, ρ/2‖u‖²     (Algorithm 2)
  ace_eps      : g_i = |γ_i| − ε <= 0            [official code `--epsilon`]
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch


class CurvatureStep:
    """Step size of the γ scalars tied to the curvature of the Lagrangian in γ: lr = min(lr_max, κ/Ĥ).

    Why: under plain gradient steps a scalar γ with curvature H contracts by |1 − lr·H| per step; for
    lr·H > 1 it flips sign every step and for lr·H > 2 the period-2 oscillation grows (measured on the image
    model: H ≈ 1.4–10 in γ, so lr 0.5 diverged). With lr·Ĥ ≤ κ = ½ every curvature direction of the γ block
    contracts by a factor in [½, 1): monotone, no sign flip, whatever H is [inferred; the remedy the issue asks
    for]. Ĥ estimates the spectral norm of the γ-block of the Hessian of the Lagrangian (loss + augmented term,
    so the 2c of `aug_lag` is included) by power iteration with one Hessian-vector product (double backward
    through the network, γ only) every `every` steps; between estimates Ĥ keeps the recent maximum, decaying
    by `decay` per estimate so that it can follow the curvature down."""

    SAFETY = 0.5

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], lr_max: float,
                 every: int = 10, decay: float = 0.9):
        self.optimizer, self.params, self.lr_max = optimizer, list(params), float(lr_max)
        self.every, self.decay = int(every), float(decay)
        k = len(self.params)
        self.v = torch.ones(k) / math.sqrt(k)
        self.h, self.calls = 0.0, 0
        self.scale = 1.0   # the run's learning-rate schedule factor (cosine decay), set by the training loop

    @property
    def lr(self) -> float:
        return self.scale * (self.lr_max if self.h <= 0 else min(self.lr_max, self.SAFETY / self.h))

    def update(self, loss: torch.Tensor) -> None:
        """Call before `loss.backward()` (the graph is kept); refreshes Ĥ every `every` calls."""
        due = self.calls % self.every == 0
        self.calls += 1
        if due:
            self.estimate(loss)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def estimate(self, loss: torch.Tensor) -> None:
        # allow_unused: a γ whose branch does not reach the loss (the EGNN's last node update) has no curvature
        grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        gv = sum(g * v for g, v in zip(grads, self.v) if g is not None and g.requires_grad)
        hv = (torch.autograd.grad(gv, self.params, retain_graph=True, allow_unused=True)
              if isinstance(gv, torch.Tensor) else [None] * len(self.params))
        hv = torch.stack([torch.zeros(()) if h is None else h.detach().reshape(()) for h in hv])
        norm = float(hv.norm())                      # ‖H v‖ with ‖v‖ = 1: → spectral norm of the γ block
        if norm > 0:
            self.v = hv / norm
        self.h = max(norm, self.h * self.decay)


def gamma_optimizer(kind: str, params: list[torch.nn.Parameter], lr: float):
    """(optimiser, CurvatureStep or None) for the γ scalars.

    kind: "curvature" (SGD with lr = min(lr, ½/Ĥ), stable by construction, `CurvatureStep`),
    "adam" (the primal optimiser, as in the official code and Algorithm 1 where θ and γ share η_p),
    "sgd" (plain SGD [official code `--optimizer adamsgd`]; unstable once lr·H > 2, kept to show it)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr), None
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr), None
    if kind == "curvature":
        opt = torch.optim.SGD(params, lr=lr)
        return opt, CurvatureStep(opt, params, lr)
    raise ValueError(f"gamma_optimizer must be curvature, adam or sgd, got {kind!r}")


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str = "eq"   # "eq": g = 0 ; "ineq": g <= 0

    def __post_init__(self):
        if self.kind not in ("eq", "ineq"):
            raise ValueError(f"constraint {self.name!r}: kind must be 'eq' or 'ineq', got {self.kind!r}")


class ConstrainedOptimizer:
    """Gradient descent–ascent on L(θ, u, λ) = J0 + ρ/2‖u‖² + Σ λ_i (g_i − u_i) (+ c Σ (g_i − u_i)²)."""

    def __init__(self, primal_optimizer, constraints: list[Constraint], dual_lr: float,
                 dual_optimizer: str = "ascent", resilient_rho: float | None = None, slack_lr: float | None = None,
                 aug_lag: float = 0.0):
        if dual_optimizer not in ("ascent", "adam", "sgd"):
            raise ValueError(f"dual_optimizer must be ascent, adam or sgd, got {dual_optimizer!r}")
        if resilient_rho is not None and any(c.kind == "eq" for c in constraints):
            raise ValueError("resilient slack applies to inequality constraints only")
        # one optimiser or a list (θ and γ may have different optimisers); the first one's lr steps the slacks
        self.primal = list(primal_optimizer) if isinstance(primal_optimizer, (list, tuple)) else [primal_optimizer]
        self.constraints = list(constraints)
        self.names = [c.name for c in constraints]
        k = len(constraints)
        self.lam = torch.zeros(k)
        self.is_ineq = torch.tensor([c.kind == "ineq" for c in constraints])
        self.dual_lr, self.dual_kind, self.aug_lag = float(dual_lr), dual_optimizer, float(aug_lag)
        self.dual = None
        if dual_optimizer != "ascent":
            self._lam_param = torch.nn.Parameter(torch.zeros(k))
            self.dual = (torch.optim.Adam([self._lam_param], lr=self.dual_lr) if dual_optimizer == "adam"
                         else torch.optim.SGD([self._lam_param], lr=self.dual_lr))
            self.lam = self._lam_param.data   # shares storage: the optimiser updates self.lam in place
        self.rho = resilient_rho
        self.u = torch.zeros(k) if resilient_rho is not None else None
        self.slack_lr = slack_lr

    @property
    def multipliers(self) -> dict[str, float]:
        return dict(zip(self.names, self.lam.tolist()))

    @property
    def slacks(self) -> dict[str, float] | None:
        return None if self.u is None else dict(zip(self.names, self.u.tolist()))

    def lagrangian(self, objective: torch.Tensor, defects: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = defects - self.u if self.u is not None else defects
        lag = objective + (self.lam.detach() * s).sum()
        if self.aug_lag:
            lag = lag + self.aug_lag * (s ** 2).sum()
        return lag, s.detach().clone()   # a copy: defects may share storage with γ (ace_equality: g = γ)

    def step(self, objective: torch.Tensor, defects: torch.Tensor, curvature: CurvatureStep | None = None) -> dict:
        """One primal descent step on L and one dual ascent step with the pre-step defects; `curvature`
        (optional) sets the γ step from the Lagrangian's curvature before the primal step."""
        if defects.shape != (len(self.constraints),):
            raise ValueError(f"expected {len(self.constraints)} defects, got shape {tuple(defects.shape)}")
        for opt in self.primal:
            opt.zero_grad(set_to_none=True)
        lag, s = self.lagrangian(objective, defects)
        if curvature is not None:
            curvature.update(lag)
        lag.backward()
        for opt in self.primal:
            opt.step()
        if self.u is not None:   # slack descent: ∂L/∂u = ρu − λ (− 2c s, augmented term)
            lr = self.slack_lr if self.slack_lr is not None else self.primal[0].param_groups[0]["lr"]
            grad_u = self.rho * self.u - self.lam - 2 * self.aug_lag * s
            self.u = (self.u - lr * grad_u).clamp_(min=0.0)
        with torch.no_grad():
            if self.dual is None:
                self.lam += self.dual_lr * s
            else:
                self._lam_param.grad = -s.clone()   # the optimiser descends, so feed −s to ascend
                self.dual.step()
            self.lam[self.is_ineq] = self.lam[self.is_ineq].clamp(min=0.0)
        return {"objective": float(objective.detach()), "lagrangian": float(lag.detach()),
                "defects": s.tolist()}


@dataclass(frozen=True)
class Variant:
    """An ACE constraint form over the per-layer γ: the kind of every g_i, g_i from (γ, ε), slack or not."""
    kind: str                                   # "eq" or "ineq"
    defect: Callable[[torch.Tensor, float], torch.Tensor]
    resilient: bool = False                     # g_i <= u_i with slack cost ρ/2‖u‖²


VARIANTS = {
    "ace_equality": Variant("eq", lambda gammas, eps: gammas),                          # Algorithm 1
    "ace_resilient": Variant("ineq", lambda gammas, eps: gammas.abs(), resilient=True),  # Algorithm 2
    "ace_eps": Variant("ineq", lambda gammas, eps: gammas.abs() - eps),                 # official `--epsilon`
}


def variant_of(name: str) -> Variant:
    if name not in VARIANTS:
        raise ValueError(f"unknown ACE variant {name!r}; valid: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def ace_defects(variant: str, gammas: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """g_i for an ACE variant, from the stacked γ (graph attached)."""
    return variant_of(variant).defect(gammas, eps)


def ace_optimizer(variant: str, primal, names: list[str], dual_lr: float,
                  dual_optimizer: str = "ascent", rho: float = 1.0, slack_lr: float | None = None,
                  aug_lag: float = 0.0) -> ConstrainedOptimizer:
    form = variant_of(variant)
    return ConstrainedOptimizer(primal, [Constraint(n, form.kind) for n in names], dual_lr, dual_optimizer,
                                resilient_rho=rho if form.resilient else None, slack_lr=slack_lr, aug_lag=aug_lag)
