"""Worked example of a plugin matcher (README "Add a method"): GLMC weight matching stopped after one
round of the alternating optimisation, to see what the later rounds buy. Enable it with
    plugins: [workflow/plugins/glmc_wm_one_round.py]
    glmc: {methods: [vanilla, glmc_weight_matching, glmc_wm_one_round]}
"""
from lmcbench.matchers import MatchContext, get_matcher, register


@register("glmc_wm_one_round")
def glmc_wm_one_round(model_a, model_b, context: MatchContext):
    """GLMC weight matching stopped after one round (plugin example)."""
    config = {**context.config, "iterations": 1}
    return get_matcher("glmc_weight_matching")(model_a, model_b, MatchContext(context.task, config, context.seed))
