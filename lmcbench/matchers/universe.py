"""Multi-model alignment (GLMC §5): align N models to a common "universe" model, then refine.

(a) Universe matching [secondary; MergeMany-style loop of Git Re-Basin, inferred]: start from
    model 0, align every model to the universe with GLMC weight matching, set the universe to the
    mean of the aligned models' attention circuits (the gauge-free form the simplex interpolates), repeat.
(b) Learned refinement [secondary]: one latent set per model (model 0 is the gauge), trained on the
    task loss of Σ λ_i π_i(θ_i) with λ ~ Dirichlet(α·1).
The methods (vanilla, glmc_weight_matching = (a), learned_full = (a) + (b)) are track "glmc_multi" of
`lmcbench.methods`; all take `MultiModelOptions` (config glmc.multi_model.matcher).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmcbench import methods
from lmcbench.symmetry.canonical import circuit_form, circuit_state_dict
from lmcbench.matchers import Alignment, MatchContext
from lmcbench.matchers.learned import LearningOptions, dirichlet, learn_alignment
from lmcbench.matchers.weight_matching import (
    active_tokens,
    as_model,
    detached_state,
    ensure_canonical,
    finish,
    glmc_weight_matching_states,
)
from lmcbench.symmetry import layout_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MultiModelOptions(LearningOptions):
    """Options of every multi-model method (config `glmc.multi_model.matcher`); learning ones for learned_full."""
    rounds: int = 3         # universe rounds: align all to the universe, average, repeat
    iterations: int = 15    # weight-matching rounds per alignment
    alpha: float = 0.1      # Dirichlet concentration of the refinement's mixture weights [secondary]


def universe_matching(models: list[nn.Module], rounds: int = 3, iterations: int = 15,
                      tokens: Tensor | None = None) -> tuple[nn.Module, list[dict], nn.Module]:
    """(canonical template, aligned canonical states of all models, the final universe).

    The universe is the mean of the aligned models' attention-circuit forms, not of their canonical
    weights [inferred]: canonical W_Q, W_K, W_V, W_O carry each head's arbitrary GL(d) gauge, which
    weight matching leaves as it is, so their mean mixes unaligned per-head bases (a model and a
    re-gauged copy of it would average to another function). Circuits are gauge-free and are what
    the simplex interpolates. The first round aligns to model 0; later rounds align every model to
    the circuit-form universe, which `glmc_weight_matching_states` compares circuit to circuit."""
    canon = [ensure_canonical(m) for m in models]
    template = canon[0]
    circuit_template = circuit_form(template)
    layout, circuit_layout = layout_for(template), layout_for(circuit_template)
    universe: nn.Module = template
    aligned = [detached_state(m) for m in canon]
    for r in range(rounds):
        aligned = [glmc_weight_matching_states(universe, m, iterations, tokens=tokens)[1].state_b for m in canon]
        circuits = [circuit_state_dict(sd, layout, circuit_layout) for sd in aligned]
        universe = as_model(circuit_template, {k: torch.stack([sd[k] for sd in circuits]).mean(0)
                                               if v.is_floating_point() else v for k, v in circuits[0].items()})
        log.info("universe round %d done", r + 1)
    return template, aligned, universe


def multi_model_method(name: str):
    """Register `fn(models, options, context) -> (template, states, info)` in track "glmc_multi"."""
    return methods.register("glmc_multi", name, MultiModelOptions)


@multi_model_method("vanilla")
def vanilla(models: list[nn.Module], options: MultiModelOptions, context: MatchContext):
    """No alignment: the models' own weights mixed over the simplex."""
    return models[0], [detached_state(m) for m in models], {}


def in_circuit_space(template: nn.Module, aligned: list[dict], options: MultiModelOptions, info: dict):
    """Template and states in the space the simplex is evaluated in (circuits when options.circuits)."""
    pairs = [finish(as_model(template, aligned[0]), sd, options.circuits, info) for sd in aligned[1:]]
    first: Alignment = pairs[0]
    return first.template, [first.state_a, *(p.state_b for p in pairs)], info


@multi_model_method("glmc_weight_matching")
def universe_weight_matching(models: list[nn.Module], options: MultiModelOptions, context: MatchContext):
    """Universe matching: every model aligned by GLMC weight matching to the circuit mean of all, repeated."""
    template, aligned, _ = universe_matching(models, options.rounds, options.iterations, active_tokens(context.task))
    return in_circuit_space(template, aligned, options, {"rounds": options.rounds})


@multi_model_method("learned_full")
def universe_learned(models: list[nn.Module], options: MultiModelOptions, context: MatchContext):
    """Universe matching, then learned refinement on Dirichlet-weighted mixtures of all models."""
    template, aligned, _ = universe_matching(models, options.rounds, options.iterations, active_tokens(context.task))
    anchor = as_model(template, aligned[0])
    refined, history = learn_alignment(anchor, aligned[1:], context.task, options, context.seed,
                                       sampler=dirichlet(options.alpha, len(models)))
    info = {"rounds": options.rounds, "final_train_loss": history[-1]["loss"] if history else None}
    return in_circuit_space(anchor, [aligned[0], *refined], options, info)


def align_many(models: list[nn.Module], method: str, context: MatchContext) -> tuple[nn.Module, list[dict], dict]:
    """Template and per-model states in the space the simplex is evaluated in, for registered `method`
    with `context.config` as its options (config glmc.multi_model.matcher)."""
    registered = methods.get("glmc_multi", method)
    return registered.obj(models, registered.parse(context.config, "glmc.multi_model.matcher"), context)
