"""Per-run diagnostics that say whether the MoE-LMC expert-order claim is testable at all.

The paper's Step 1 (moe.md §3.1) can only find "the right" expert order if the experts of two
independently fine-tuned MoEs have become distinguishable and comparable functions. These numbers
check that [inferred: the paper reports none of them]:

* routing entropy — mean over tokens of H(softmax(router scores)) / log n: 1 for a uniform router
  (no specialisation), 0 for a one-hot router. The full softmax over all n scores is used for every
  gating, so dense and top-k runs are comparable. Load entropy — H(mean routing) / log n: 1 when
  every expert gets the same share on average (high load entropy + low routing entropy = experts
  specialise on different tokens).
* expert movement — ‖θ − θ₀‖ / ‖θ₀‖ of the routed experts' stacked tensors against their
  initialisation (how far fine-tuning took them from the random start).
* cross-seed expert similarity — Pearson correlation, over the layer's test input tokens and the d
  output features, of expert i's contribution g_i(x)·E_i(x) in A and expert j's in B (each model's
  own gate weights; the sparse weights for top-k). Gate-weighted because Thm 4.2 [paper] only
  identifies an expert where it is selected. Read on the diagonal after a method's order
  ("matched"), off the diagonal ("unmatched": high when the experts are copies of one function),
  and for the order that maximises it ("output-matched", a data-dependent oracle of Step 1).
  Pearson over all entries, each feature centred over the tokens, so a shared per-feature offset
  does not count as agreement; a constant (e.g. zero) contribution correlates 0 with anything.
* similarity at initialisation — the same matched correlation for the same expert pairs (each
  method's order found after fine-tuning) in the two MoEs before fine-tuning: when it is as high as
  after, the similarity came from a shared initialisation (e.g. upcycling), not from training.
* cost–barrier Spearman — across all expert orders of a pair, the rank correlation of a Step-1
  cost Σ_i C[i, τ(i)] with the test loss barrier after Step 2: positive when a cheaper order under
  Step 1's cost is also a lower-barrier order, ≈ 0 when the cost carries no information.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.stats import spearmanr
from torch import Tensor

from lmcbench.matchers.assignment import match_units
from lmcbench.models.moe import ACTIVATIONS, MoE, moe_modules
from lmcbench.moe.evaluation import class_token_only
from lmcbench.moe.matching import expert_cost, expert_order, gate_cost, order_key
from lmcbench.moe.symmetry import EXPERT_TENSORS

MAX_TOKENS = 20000  # test tokens per layer for the similarity (the first ones; memory n·T·d doubles)


def normalised_entropy(probs: Tensor) -> Tensor:
    """H(p) / log n along the last axis (0 for one-hot, 1 for uniform); n = 1 gives 0."""
    n = probs.shape[-1]
    if n < 2:
        return torch.zeros(probs.shape[:-1], dtype=probs.dtype)
    p = probs.clamp_min(0)
    h = -(p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum(-1)
    return h / math.log(n)


def routing_entropy(scores: Tensor) -> tuple[float, float]:
    """(mean per-token normalised entropy of softmax(scores), normalised entropy of the mean routing)
    for router scores of shape (tokens, n)."""
    probs = scores.double().softmax(-1)
    return float(normalised_entropy(probs).mean()), float(normalised_entropy(probs.mean(0)))


@torch.no_grad()
def moe_inputs(model: torch.nn.Module, inputs: Tensor, batch_size: int = 256,
               every_token: bool = False) -> dict[str, Tensor]:
    """The tokens (T, d) entering every MoE layer of `model` (eval mode) on `inputs`; for a ViT MoE
    whose output reaches the logits only through the class token, only that token (unless every_token)."""
    captured: dict[str, list[Tensor]] = {}
    blocks = getattr(model, "blocks", None) if not every_token else None
    cls_only = {f"blocks.{i}.mlp" for i in range(len(blocks)) if class_token_only(model, i)} if blocks else set()

    def grab(name, x):
        captured.setdefault(name, []).append((x[:, 0] if name in cls_only else x).detach().reshape(-1, x.shape[-1]))

    hooks = [m.register_forward_pre_hook(lambda _m, args, name=name: grab(name, args[0]))
             for name, m in moe_modules(model).items()]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            batch = inputs[start:start + batch_size]
            model(input_ids=batch) if not batch.is_floating_point() else model(batch)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in captured.items()}


def router_scores(state: dict, prefix: str, tokens: Tensor) -> Tensor:
    return tokens.double() @ state[f"{prefix}.router.weight"].double().T + state[f"{prefix}.router.bias"].double()


def expert_movement(state: dict, init_state: dict, prefix: str) -> float:
    """‖θ − θ₀‖ / ‖θ₀‖ over the routed experts' stacked tensors of one layer."""
    diff = sum(float((state[f"{prefix}.{t}"].double() - init_state[f"{prefix}.{t}"].double()).pow(2).sum())
               for t in EXPERT_TENSORS)
    base = sum(float(init_state[f"{prefix}.{t}"].double().pow(2).sum()) for t in EXPERT_TENSORS)
    return math.sqrt(diff / base)


def expert_outputs(state: dict, prefix: str, tokens: Tensor, activation: str) -> Tensor:
    """(n, T, d): every routed expert of one layer on every token (no gating)."""
    w1, b1, w2, b2 = (state[f"{prefix}.{t}"].double() for t in EXPERT_TENSORS)
    h = ACTIVATIONS[activation](torch.einsum("td,nhd->nth", tokens.double(), w1) + b1[:, None])
    return torch.einsum("nth,ndh->ntd", h, w2) + b2[:, None]


def output_correlation(out_a: Tensor, out_b: Tensor) -> Tensor:
    """(n, n): Pearson correlation of expert i of A with expert j of B over all (token, feature)
    entries, each feature centred over the tokens."""
    def standardised(out):
        flat = (out - out.mean(1, keepdim=True)).flatten(1)
        return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return standardised(out_a) @ standardised(out_b).T


def similarity_summary(corr: Tensor, tau: Tensor | None = None) -> dict[str, float]:
    """matched: mean diagonal correlation after B's order τ (None = identity); unmatched: mean
    off-diagonal correlation; output_matched: the mean diagonal for the τ that maximises it."""
    n = corr.shape[0]
    tau = torch.arange(n) if tau is None else torch.as_tensor(tau, dtype=torch.long)
    matched = corr[torch.arange(n), tau]
    off = corr[~torch.eye(n, dtype=torch.bool)]
    best = match_units(corr, maximize=True)
    return {"matched": float(matched.mean()), "unmatched": float(off.mean()) if off.numel() else float("nan"),
            "output_matched": float(corr[torch.arange(n), best].mean()), "output_order": best}


def order_cost(cost: Tensor, tau: Tensor) -> float:
    """Σ_i C[i, τ(i)] for B's order τ (new expert i = old expert τ[i])."""
    tau = torch.as_tensor(tau, dtype=torch.long)
    return float(cost[torch.arange(len(tau)), tau].sum())


def order_rank(barrier: float, all_barriers, tol: float = 1e-9) -> int:
    """1 + the number of orders with a strictly lower barrier."""
    return 1 + int(np.sum(np.asarray(all_barriers) < barrier - tol))


def spearman(x, y) -> float:
    """Spearman rank correlation; NaN when either side is constant or has fewer than 3 entries."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def gate_matrix(layer: MoE, state: dict, prefix: str, tokens: Tensor) -> Tensor:
    """(T, n): the weight each expert gets per token under `state` (zero off the top-k), as `layer` gates."""
    clone = copy.deepcopy(layer).double()
    clone.load_state_dict({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")})
    with torch.no_grad():
        scores, weights, idx = clone.gates(tokens.double())
    return weights.new_zeros(scores.shape).scatter(-1, idx, weights)


def contributions(layer: MoE, state: dict, prefix: str, tokens: Tensor) -> Tensor:
    """(n, T, d): g_i(x)·E_i(x) of every routed expert."""
    gates = gate_matrix(layer, state, prefix, tokens)
    return gates.T[:, :, None] * expert_outputs(state, prefix, tokens, layer.activation)


def total_cost(state_a: dict, state_b: dict, taus: dict[str, Tensor], method: str) -> float:
    """Σ over layers of Step 1's cost Σ_i C[i, τ(i)] of the given per-layer orders."""
    cost = {"gate_wm": gate_cost, "expert_wm": expert_cost}[method]
    return sum(order_cost(cost(state_a, state_b, p), tau) for p, tau in taus.items())


def pair_diagnostics(model: torch.nn.Module, state_a: dict, state_b: dict, test_inputs: Tensor, taus: dict,
                     order_table, ranks: list[dict], init_states: tuple[dict, dict] | None = None) -> dict:
    """One row of testability numbers for a pair (means over the MoE layers; see the module docstring).
    `model` holds A's weights; tokens are A's inputs to each layer (identical for B at the first
    MoE layer, since the backbone is shared), only those that reach the logits (`moe_inputs`). `taus` maps method -> per-layer orders (empty = naive);
    `order_table` has one row per order (order, barrier, gate_cost, expert_cost) or is empty."""
    layers = moe_modules(model)
    tokens = {p: t[:MAX_TOKENS] for p, t in moe_inputs(model, test_inputs).items()}
    row: dict = {}
    per_layer: dict[str, list] = {}
    output_orders = {}
    for prefix, layer in layers.items():
        x = tokens[prefix]
        for side, state in (("a", state_a), ("b", state_b)):
            ent, load = routing_entropy(router_scores(state, prefix, x))
            per_layer.setdefault("routing_entropy", []).append(ent)
            per_layer.setdefault("load_entropy", []).append(load)
        corr = output_correlation(contributions(layer, state_a, prefix, x), contributions(layer, state_b, prefix, x))
        summary = similarity_summary(corr)
        output_orders[prefix] = summary["output_order"]
        per_layer.setdefault("sim_unmatched", []).append(summary["unmatched"])
        per_layer.setdefault("sim_output_matched", []).append(summary["output_matched"])
        for method, method_taus in taus.items():
            if method_taus:
                per_layer.setdefault(f"sim_{method}", []).append(similarity_summary(corr, method_taus[prefix])["matched"])
        if init_states is not None:
            per_layer.setdefault("expert_movement", []).extend(
                expert_movement(s, i, prefix) for s, i in zip((state_a, state_b), init_states))
            corr_init = output_correlation(*(contributions(layer, s, prefix, x) for s in init_states))
            for method, method_taus in taus.items():
                if method_taus:
                    per_layer.setdefault(f"sim_{method}_at_init", []).append(
                        similarity_summary(corr_init, method_taus[prefix])["matched"])
    row.update({k: float(np.mean(v)) for k, v in per_layer.items()})
    if init_states is not None:
        for method in ("gate_wm", "expert_wm"):
            if method in taus:
                same = all(torch.equal(expert_order(*init_states, p, method), taus[method][p]) for p in layers)
                row[f"{method}_order_as_at_init"] = bool(same)
    for r in ranks:
        row[f"rank_{r['method']}"] = r["rank"]
        row[f"lhat_{r['method']}"] = r["scaled_excess"]
    if len(order_table):
        barriers = order_table["barrier"].to_numpy()
        row["rank_output_matched"] = order_rank(
            float(order_table.set_index("order").loc[order_key(output_orders), "barrier"]), barriers)
        row["spearman_gate_cost"] = spearman(order_table["gate_cost"], barriers)
        row["spearman_expert_cost"] = spearman(order_table["expert_cost"], barriers)
    return row
