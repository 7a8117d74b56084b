"""lmcbench.ace.constrained against cooper (cooper-optim, a dev dependency) on toy problems: the same
simultaneous gradient descent–ascent with torch.optim primal and dual optimisers must give the same γ and λ
at every step. min (γ − t)² s.t. the ACE variant's constraint; augmented term c = 0 (cooper's augmented
Lagrangian is a different formulation) and no resilient slack (cooper has none; the KKT test in test_ace
checks it in closed form)."""
from __future__ import annotations

import cooper
import numpy as np
import pytest
import torch

from lmcbench.ace.constrained import ace_defects, ace_optimizer

STEPS, LR, DUAL_LR, EPS = 800, 0.05, 0.05, 0.5


def ours(variant: str, target: float, dual: str) -> np.ndarray:
    gamma = torch.nn.Parameter(torch.tensor([1.0]))
    problem = ace_optimizer(variant, torch.optim.SGD([gamma], lr=LR), ["g"], DUAL_LR, dual)
    out = []
    for _ in range(STEPS):
        problem.step(((gamma - target) ** 2).sum(), ace_defects(variant, gamma, eps=EPS))
        out.append((gamma.item(), problem.lam.item()))
    return np.array(out)


class Toy(cooper.ConstrainedMinimizationProblem):
    def __init__(self, variant: str, target: float):
        super().__init__()
        self.variant, self.target = variant, target
        kind = cooper.ConstraintType.EQUALITY if variant == "ace_equality" else cooper.ConstraintType.INEQUALITY
        self.constraint = cooper.Constraint(kind, multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1))

    def compute_cmp_state(self, gamma):
        violation = ace_defects(self.variant, gamma, eps=EPS)
        return cooper.CMPState(loss=((gamma - self.target) ** 2).sum(),
                               observed_constraints={self.constraint: cooper.ConstraintState(violation=violation)})


def with_cooper(variant: str, target: float, dual: str) -> np.ndarray:
    gamma = torch.nn.Parameter(torch.tensor([1.0]))
    cmp = Toy(variant, target)
    dual_cls = {"ascent": torch.optim.SGD, "adam": torch.optim.Adam}[dual]   # "ascent" = SGD ascent on λ
    optimizer = cooper.optim.SimultaneousOptimizer(cmp, torch.optim.SGD([gamma], lr=LR),
                                                   dual_cls(cmp.dual_parameters(), lr=DUAL_LR, maximize=True))
    out = []
    for _ in range(STEPS):
        optimizer.roll(compute_cmp_state_kwargs={"gamma": gamma})
        out.append((gamma.item(), cmp.constraint.multiplier.weight.item()))
    return np.array(out)


@pytest.mark.parametrize("dual", ["ascent", "adam"])
@pytest.mark.parametrize("variant,target", [("ace_equality", 2.0), ("ace_equality", -2.0), ("ace_eps", 2.0),
                                            ("ace_eps", 0.2)])
def test_same_trajectory_as_cooper(variant, target, dual):
    a, b = ours(variant, target, dual), with_cooper(variant, target, dual)
    # plain ascent λ + η·s vs torch's fused add: the last float bit may differ, so compare to float precision
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert abs(a[-1, 0] - b[-1, 0]) < 1e-5 and (variant == "ace_equality") == (abs(a[-1, 0]) < 1e-3)
