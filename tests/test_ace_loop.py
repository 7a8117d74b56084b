"""The one training loop's hook protocol (lmcbench.training.run_steps), on which the ACE methods are hooks:
the documented order of the hooks in a step, a constrained step replacing the plain one, stopping early."""
from __future__ import annotations

import torch

from lmcbench.training import Hooks, run_steps


class Recorder(Hooks):
    def __init__(self, constrained: bool = False, stop_after: int | None = None):
        self.calls, self.constrained, self.stop_after = [], constrained, stop_after

    def before_step(self, model, step):
        self.calls.append(("before_step", step))

    def extra_loss(self, model, batch, pred):
        self.calls.append(("extra_loss",))
        return 0.5 * model.weight.pow(2).sum()

    def constrained_step(self, loss):
        self.calls.append(("constrained_step",))
        return self.constrained

    def before_backward(self, loss):
        self.calls.append(("before_backward",))

    def after_backward(self, model):
        self.calls.append(("after_backward", model.weight.grad is not None))

    def after_step(self, model, step, loss):
        self.calls.append(("after_step", step))
        return step == self.stop_after

    def end(self, model):
        self.calls.append(("end",))


def _run(hooks: Hooks, total: int = 3):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1, bias=False)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objective = lambda m, batch: (((m(batch[0]) - batch[1]) ** 2).mean(),) * 2   # noqa: E731
    before = model.weight.detach().clone()
    done = run_steps(model, lambda step: (x, y), objective, [opt], [], hooks, total)
    return done, before, model.weight.detach(), x, y


def test_hooks_run_in_the_documented_order_and_extra_loss_is_added():
    hooks = Recorder()
    done, before, after, x, y = _run(hooks, total=2)
    step = ["extra_loss", "constrained_step", "before_backward", "after_backward"]
    names = [c[0] for c in hooks.calls]
    assert names == ["before_step", *step, "after_step"] * 2 + ["end"] and done == 2
    assert [c[1] for c in hooks.calls if c[0] in ("before_step", "after_step")] == [0, 1, 1, 2]
    _, before, after, x, y = _run(Recorder(), total=1)
    w = before.clone().requires_grad_(True)                 # one plain SGD step on task loss + extra term, by hand
    (((x @ w.T - y) ** 2).mean() + 0.5 * w.pow(2).sum()).backward()
    assert torch.allclose(after, before - 0.1 * w.grad, rtol=0, atol=1e-7) and not torch.equal(after, before)


def test_constrained_step_replaces_the_plain_step_and_after_step_stops():
    hooks = Recorder(constrained=True, stop_after=2)
    done, before, after, *_ = _run(hooks, total=5)
    assert done == 2 and torch.equal(after, before)         # the hook took the step (here: none), no plain step
    assert "before_backward" not in [c[0] for c in hooks.calls] and hooks.calls[-1] == ("end",)
