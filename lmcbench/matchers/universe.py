"""Multi-model alignment (GLMC §5): align N models to a common "universe" model, then refine.

(a) Universe matching [secondary; MergeMany-style loop of Git Re-Basin, inferred]: start from
    model 0, align every model to the universe with GLMC weight matching, set the universe to the
    mean of the aligned models, repeat.
(b) Learned refinement [secondary]: one latent set per model (model 0 is the gauge), trained on the
    task loss of Σ λ_i π_i(θ_i) with λ ~ Dirichlet(α·1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from lmcbench.matchers import Alignment, MatchContext, parse_options
from lmcbench.matchers.learned import LearningOptions, dirichlet, learn_alignment
from lmcbench.matchers.weight_matching import _state, as_model, ensure_canonical, finish, glmc_weight_matching_states

log = logging.getLogger(__name__)

MULTI_MODEL_METHODS = ("vanilla", "glmc_weight_matching", "learned_full")


@dataclass(frozen=True)
class MultiModelOptions(LearningOptions):
    """Options of every multi-model method (config `glmc.multi_model.matcher`); learning ones for learned_full."""
    rounds: int = 3         # universe rounds: align all to the universe, average, repeat
    iterations: int = 15    # weight-matching rounds per alignment
    alpha: float = 0.1      # Dirichlet concentration of the refinement's mixture weights [secondary]


def universe_matching(models: list[nn.Module], rounds: int = 3, iterations: int = 15) -> tuple[nn.Module, list[dict]]:
    """(canonical template, aligned canonical states of all models)."""
    canon = [ensure_canonical(m) for m in models]
    template = canon[0]
    universe = _state(template)
    aligned = [_state(m) for m in canon]
    for r in range(rounds):
        target = as_model(template, universe)
        aligned = [glmc_weight_matching_states(target, m, iterations)[1].state_b for m in canon]
        universe = {k: torch.stack([sd[k] for sd in aligned]).mean(0) if v.is_floating_point() else v
                    for k, v in aligned[0].items()}
        log.info("universe round %d done", r + 1)
    return template, aligned


def align_many(models: list[nn.Module], method: str, context: MatchContext) -> tuple[nn.Module, list[dict], dict]:
    """Template and per-model states in the space the simplex is evaluated in, for `method`."""
    if method not in MULTI_MODEL_METHODS:
        raise ValueError(f"multi-model method {method!r} is not one of {MULTI_MODEL_METHODS}")
    cfg = parse_options(MultiModelOptions, context.config, "glmc.multi_model.matcher")
    if method == "vanilla":
        return models[0], [_state(m) for m in models], {}
    template, aligned = universe_matching(models, cfg.rounds, cfg.iterations)
    info = {"rounds": cfg.rounds}
    if method == "learned_full":
        anchor = as_model(template, aligned[0])
        refined, history = learn_alignment(anchor, aligned[1:], context.task, cfg, context.seed,
                                           sampler=dirichlet(cfg.alpha, len(models)))
        aligned = [aligned[0], *refined]
        template = anchor
        info["final_train_loss"] = history[-1]["loss"] if history else None
    circuits = cfg.circuits
    pairs = [finish(as_model(template, aligned[0]), sd, circuits, info) for sd in aligned[1:]]
    first: Alignment = pairs[0]
    return first.template, [first.state_a, *(p.state_b for p in pairs)], info
