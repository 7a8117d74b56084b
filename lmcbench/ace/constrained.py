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
multipliers are then projected onto λ >= 0.

ACE variants over per-layer γ (see `ace_defects`):
  ace_equality : g_i = γ_i = 0                  (Algorithm 1)
  ace_resilient: g_i = |γ_i| <= u_i, ρ/2‖u‖²     (Algorithm 2)
  ace_eps      : g_i = |γ_i| − ε <= 0            [official code `--epsilon`]
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

VARIANTS = ("ace_equality", "ace_resilient", "ace_eps")


class Adam:
    """Adam (Kingma & Ba; the same update and defaults as `torch.optim.Adam`, no weight decay, no amsgrad),
    with the parts of the optimiser interface used here: `param_groups`, `zero_grad`, `step`.

    Why not torch.optim: every `torch.optim.Optimizer` (its `__init__`, `zero_grad`) is wrapped by
    `torch._disable_dynamo`, which imports `torch._dynamo` on first use: 3–6 s per process on the 2-core
    machine, more than a whole smoke-size ACE run. This class is numerically the same update
    (tests/test_ace.py::test_adam_matches_torch).

    A param group with `"sgd": True` gets plain gradient descent p ← p − lr·∇p instead [official code
    `--optimizer adamsgd`, which puts γ under SGD]: with Adam on a scalar γ the step is ≈ lr whatever the
    gradient, so near γ = 0 it keeps jittering at ~lr and γ never settles within a short budget."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        params = list(params)
        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[int, dict] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for g in self.param_groups:
            for p in g["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                if g.get("sgd"):
                    p.add_(p.grad, alpha=-g["lr"])
                    continue
                st = self.state.setdefault(id(p), {"step": 0, "m": torch.zeros_like(p), "v": torch.zeros_like(p)})
                st["step"] += 1
                t = st["step"]
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                denom = (st["v"].sqrt() / math.sqrt(1 - b2 ** t)).add_(g["eps"])
                p.addcdiv_(st["m"], denom, value=-g["lr"] / (1 - b1 ** t))


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str = "eq"   # "eq": g = 0 ; "ineq": g <= 0

    def __post_init__(self):
        if self.kind not in ("eq", "ineq"):
            raise ValueError(f"constraint {self.name!r}: kind must be 'eq' or 'ineq', got {self.kind!r}")


class ConstrainedOptimizer:
    """Gradient descent–ascent on L(θ, u, λ) = J0 + ρ/2‖u‖² + Σ λ_i (g_i − u_i) (+ c Σ (g_i − u_i)²)."""

    def __init__(self, primal_optimizer: torch.optim.Optimizer, constraints: list[Constraint], dual_lr: float,
                 dual_optimizer: str = "ascent", resilient_rho: float | None = None, slack_lr: float | None = None,
                 aug_lag: float = 0.0):
        if dual_optimizer not in ("ascent", "adam", "sgd"):
            raise ValueError(f"dual_optimizer must be ascent, adam or sgd, got {dual_optimizer!r}")
        if resilient_rho is not None and any(c.kind == "eq" for c in constraints):
            raise ValueError("resilient slack applies to inequality constraints only")
        self.primal = primal_optimizer
        self.constraints = list(constraints)
        self.names = [c.name for c in constraints]
        k = len(constraints)
        self.lam = torch.zeros(k)
        self.is_ineq = torch.tensor([c.kind == "ineq" for c in constraints])
        self.dual_lr, self.dual_kind, self.aug_lag = float(dual_lr), dual_optimizer, float(aug_lag)
        self.dual = None
        if dual_optimizer != "ascent":
            self._lam_param = torch.nn.Parameter(torch.zeros(k))
            self.dual = (Adam([self._lam_param], lr=self.dual_lr) if dual_optimizer == "adam"
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
        return lag, s.detach()

    def step(self, objective: torch.Tensor, defects: torch.Tensor) -> dict:
        """One primal descent step on L and one dual ascent step with the pre-step defects."""
        if defects.shape != (len(self.constraints),):
            raise ValueError(f"expected {len(self.constraints)} defects, got shape {tuple(defects.shape)}")
        self.primal.zero_grad(set_to_none=True)
        lag, s = self.lagrangian(objective, defects)
        lag.backward()
        self.primal.step()
        if self.u is not None:   # slack descent: ∂L/∂u = ρu − λ (− 2c s, augmented term)
            lr = self.slack_lr if self.slack_lr is not None else self.primal.param_groups[0]["lr"]
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


def ace_defects(variant: str, gammas: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """g_i for an ACE variant, from the stacked γ (graph attached)."""
    if variant == "ace_equality":
        return gammas
    if variant == "ace_resilient":
        return gammas.abs()
    if variant == "ace_eps":
        return gammas.abs() - eps
    raise ValueError(f"unknown ACE variant {variant!r}; valid: {VARIANTS}")


def ace_optimizer(variant: str, primal: torch.optim.Optimizer, names: list[str], dual_lr: float,
                  dual_optimizer: str = "ascent", rho: float = 1.0, slack_lr: float | None = None,
                  aug_lag: float = 0.0) -> ConstrainedOptimizer:
    kind = "eq" if variant == "ace_equality" else "ineq"
    return ConstrainedOptimizer(primal, [Constraint(n, kind) for n in names], dual_lr, dual_optimizer,
                                resilient_rho=rho if variant == "ace_resilient" else None, slack_lr=slack_lr,
                                aug_lag=aug_lag)
