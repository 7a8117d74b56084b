"""Worked example of a plugin matcher (README "Add a method"): GLMC weight matching stopped after one
round of the alternating optimisation, to see what the later rounds buy. Enable it with
    plugins: [workflow/plugins/glmc_wm_one_round.py]
    glmc: {methods: [vanilla, glmc_weight_matching, glmc_wm_one_round]}
Its options (`glmc.matchers.glmc_wm_one_round`) are those of glmc_weight_matching except `iterations`.
"""
import typing
from dataclasses import dataclass

from lmcbench.matchers import MatchContext, get_matcher, register
from lmcbench.matchers.weight_matching import GLMCWeightMatchingOptions as WM

_WM_TYPES = typing.get_type_hints(WM)


@dataclass(frozen=True)
class OneRoundOptions:
    residual: _WM_TYPES["residual"] = WM.residual
    mlp_cost: _WM_TYPES["mlp_cost"] = WM.mlp_cost
    circuits: bool = WM.circuits


@register("glmc_wm_one_round", options=OneRoundOptions)
def glmc_wm_one_round(model_a, model_b, context: MatchContext):
    """GLMC weight matching stopped after one round (plugin example)."""
    config = {**context.config, "iterations": 1}
    return get_matcher("glmc_weight_matching")(model_a, model_b, MatchContext(context.task, config, context.seed))
