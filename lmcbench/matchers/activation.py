"""Activation matching: permutations from correlations of activations on a shared data sample.

GLMC compares against "activation matching following existing methods" without details [secondary];
this follows the correlation-based procedure of Verma & Elbayad (2024) [inferred, glmc.md §3.2]:
one residual permutation from the residual stream at every norm input, then per layer a head
permutation from each head's contribution to the residual stream and an MLP permutation from the
hidden activations, each solved with the Hungarian algorithm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lmcbench.matchers import Alignment, MatchContext, register
from lmcbench.matchers.assignment import match_units
from lmcbench.matchers.weight_matching import Aligner, permutation_spec, detached_state
from lmcbench.symmetry import layout_for
from lmcbench.symmetry.spec import Layout


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0]


@torch.no_grad()
def record_activations(model: nn.Module, layout: Layout, logits_fn, inputs: Tensor) -> dict[str, Tensor]:
    """Residual stream at every norm input, MLP hidden units (fc2 inputs) and per-head outputs
    (attention projection inputs), each flattened to (samples·positions, units)."""
    taps = {f"residual{i}": site.module for i, site in enumerate(layout.norms)}
    taps.update({f"mlp{i}": _module_of(m.fc2.param) for i, m in enumerate(layout.mlps)})
    taps.update({f"heads{i}": _module_of(a.proj.param) for i, a in enumerate(layout.attentions)})
    acts, handles = {}, []
    for key, path in taps.items():
        def hook(_module, args, key=key):
            acts[key] = args[0].detach().reshape(-1, args[0].shape[-1]).double()
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook))
    try:
        model.eval()
        logits_fn(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return acts


def correlation(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation between the columns of x (N, n) and of y (N, m)."""
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    y = (y - y.mean(0)) / (y.std(0) + 1e-8)
    return x.T @ y / x.shape[0]


def head_contributions(z: Tensor, state: dict[str, Tensor], attention) -> Tensor:
    """(heads, samples·D): what each head adds to the residual stream, z_h W_O,h."""
    h_n, d = attention.num_heads, attention.head_dim
    w_o = state[attention.proj.param].movedim(attention.proj.axis, 0).double().unflatten(0, (h_n, d))
    return torch.einsum("nhd,hdo->hno", z.unflatten(1, (h_n, d)), w_o).flatten(1)


@dataclass(frozen=True)
class ActivationMatchingOptions:
    examples: int = 256  # training examples whose activations are correlated


@register("activation_matching", options=ActivationMatchingOptions)
def activation_matching(model_a: nn.Module, model_b: nn.Module, context: MatchContext) -> Alignment:
    """Correlation-based permutations of the residual stream, heads and MLP units (Hungarian)."""
    if context.task is None:
        raise ValueError("activation_matching needs data: pass a task in the MatchContext")
    inputs, _ = context.task.eval_tensors("train", context.options.examples)
    layout = layout_for(model_a)
    acts_a = record_activations(model_a, layout, context.task.logits, inputs)
    acts_b = record_activations(model_b, layout, context.task.logits, inputs)
    spec = permutation_spec(model_a)
    aligner = Aligner(spec, detached_state(model_a), detached_state(model_b))

    residual_keys = [k for k in acts_a if k.startswith("residual")]
    res_corr = sum(correlation(acts_a[k], acts_b[k]) for k in residual_keys)
    res_idx = match_units(res_corr)
    aligner.update(spec["residual"], res_idx)
    for i, attention in enumerate(layout.attentions):
        # B's heads write into B's residual coordinates: move them to A's before comparing
        contrib_a = head_contributions(acts_a[f"heads{i}"], aligner.state_a, attention)
        contrib_b = head_contributions(acts_b[f"heads{i}"], detached_state(model_b), attention)
        contrib_b = contrib_b.unflatten(1, (-1, layout.width))[..., res_idx].flatten(1)
        aligner.update(spec[f"blocks.{i}.heads"], match_units(correlation(contrib_a.T, contrib_b.T)))
        aligner.update(spec[f"blocks.{i}.mlp"], match_units(correlation(acts_a[f"mlp{i}"], acts_b[f"mlp{i}"])))
    return Alignment(model_a, detached_state(model_a), aligner.state_b, {"examples": int(inputs.shape[0])})
