"""Worked example of a plugin ACE baseline (README "Add a method"): the equivariance penalty of `penalty`
with a linear warm-up of its weight, 0 → w over the first `warmup` fraction of the training steps, so that
the model first fits the data and is then pulled towards equivariance. Enable it with
    plugins: [workflow/plugins/ace_warmup_penalty.py]
    ace:
      experiments: {accuracy: {methods: [strict, penalty, warmup_penalty, ace_equality]}}
      options: {warmup_penalty: {weight: 1.0, warmup: 0.5}}     # optional; these are the defaults
It is trained on the mixed backbone and reported mixed (f_θ,γ), like `penalty` (AceMethod's defaults).
"""
from dataclasses import dataclass

from lmcbench.ace.baselines import TRACK, AceMethod
from lmcbench.methods import register


@dataclass(frozen=True)
class WarmupPenaltyOptions:
    weight: float = 1.0   # w reached at the end of the warm-up
    warmup: float = 0.5   # fraction of the training steps over which the weight ramps up from 0


@register(TRACK, "warmup_penalty", options=WarmupPenaltyOptions)
class WarmupPenalty(AceMethod):
    """Equivariance penalty whose weight ramps linearly from 0 to w over the first `warmup` of training (plugin example)."""

    def before_step(self, model, step):
        super().before_step(model, step)
        self.ramp = min(1.0, step / max(1.0, self.options.warmup * self.run.total))

    def extra_loss(self, model, batch, pred):
        inputs = batch[0]
        return self.ramp * self.options.weight * self.run.task.equivariance_penalty(model, inputs, pred, self.run.gen)
