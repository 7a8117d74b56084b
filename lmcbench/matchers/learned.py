"""Learned matching (GLMC §3.3): latent matrices projected onto the group at every step and trained
on the task loss of the interpolated model at random λ.

Projections: the polar factor U Vᵀ of SVD(Z) for orthogonal spaces (differentiable). Permutation
spaces (heads, MLP units, a permutation residual), `relaxation`:
- "sinkhorn" (default): the doubly stochastic matrix Sinkhorn(Z/τ), τ annealed geometrically from
  `temperature[0]` to `temperature[1]` over the run, applied to B as it is (each B unit mixed from
  several) [secondary: Peña et al. 2023, Sinkhorn re-basin; deviation from the official code]. The
  chosen element is always the hard one, Hungarian(Z) (the τ → 0 limit), and validation scores it.
- "ste": the Hungarian permutation of Z with a straight-through gradient (forward the hard
  permutation, backward ∂L/∂Z = ∂L/∂P) [official code `GPTMerger._project`].

Why the relaxation. Latents start at I + N(0, 0.01²) [official code], so a hard assignment flips only
once an off-diagonal pair Z_ij + Z_ji overtakes Z_ii + Z_jj: a change of ~1, which Adam at the
official lr (3e-4) never makes (measured: 0 units moved). Larger steps alone do not fix it: with the
hard forward, the gradient at a misaligned midpoint does not say which unit goes where (measured
on a planted head/MLP permutation started at the identity: Hungarian(−∂L/∂P) matches 3-5 of 96
units, and 200-300 STE steps end at 0-3 of 12 per space). At τ = 1 Sinkhorn(I) is diffuse, so the
forward pass mixes each A unit with an average of B's units and the gradient compares A's units with
B's; annealing then commits to one assignment. On the same plants it recovers every head and unit
(tests/test_learned_matching.py). With a start worth keeping (weight matching) that start is a prior
(Z = I) and a candidate: the best evaluated step is kept, the start included.

Steps: the permutation latents take plain SGD on the gradient scaled so that its largest entry is
`perm_lr` — no entry moves by more than perm_lr a step and Σ_t perm_lr_t bounds any entry's total
change; a profile sizes it against τ (a Z change of a few units is what turns Sinkhorn(Z/1) from
diffuse to concentrated) [inferred; the official code uses one Adam lr; measured on the planted
test, Adam at 0.05-0.1 recovered fewer units than this]. The orthogonal residual keeps AdamW at `lr`
(polar(Z) turns by ~lr a step, the scale of the corrections GLMC reports [secondary]). Everything
else is the official schedule: AdamW with weight decay on the latents, linear warm-up then cosine
decay, up to `steps` (or `epochs` over the train split), evaluation every `eval_every` steps on the
validation split at fixed mixture weights, early stopping after `patience` evaluations without
improvement, and the best evaluated latents kept — including the start, so the chosen element is
never worse on validation than the WM solution it started from [official code: `--early_stop`,
`load_best_model_at_end`; the fixed evaluation weights replace its random c, inferred].
Not recovered from the identity: a random orthogonal residual (measured ‖O − O*‖_F ≈ 6 of at most 9.8
on a width-24 plant) — the identity-start ablation is meaningful only where B's residual basis is close.
"""
from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from lmcbench.barrier import BoundModel
from lmcbench.symmetry.canonical import circuit_form, circuit_state_dict
from lmcbench.matchers import Alignment, MatchContext, register
from lmcbench.matchers.assignment import match_units
from lmcbench.matchers.weight_matching import (active_tokens, detached_state, ensure_canonical, finish,
                                              glmc_weight_matching_states)
from lmcbench.symmetry import apply, layout_for, perm_matrix, spec_for
from lmcbench.symmetry.spec import SymmetrySpec
from lmcbench.tasks import autocast, evaluate
from lmcbench.training import default_device, warmup_cosine

log = logging.getLogger(__name__)


@dataclass
class LearnedRun:
    """What `train_latents` found: aligned states, the chosen group elements (per B: space -> index
    tensor or orthogonal matrix, applied on top of the B it was given), the per-step history, and the
    record of the run."""
    states: list[dict[str, Tensor]]
    elements: list[dict[str, Tensor]] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    record: dict = field(default_factory=dict)


def polar(z: Tensor) -> Tensor:
    """The orthogonal matrix nearest to z (Frobenius): U Vᵀ from z = U S Vᵀ."""
    u, _, vh = torch.linalg.svd(z)
    return u @ vh


def ste_permutation(z: Tensor) -> Tensor:
    """Hard permutation matrix maximising ⟨P, z⟩, with the straight-through gradient of z."""
    # perm_matrix(idx) has ones at (idx[j], j), so ⟨P, z⟩ = Σ_j z[idx[j], j]: assign on zᵀ
    hard = perm_matrix(match_units(z.T), dtype=z.dtype).to(z.device)
    return hard + (z - z.detach())


# Kernel entries below e^LOG_FLOOR are raised to it. After `sinkhorn`'s shifts every row and column of K has
# an entry 1 and none above, so each iteration widens the scalings' range by at most a factor n on each side:
# after t iterations u, v lie within n^±(t+1). An entry below e^-300 then stays below e^-300 · n^(2t+2)
# relative to 1, under float64's resolution for t = 10 and n up to ~10^5: the floor changes nothing
# representable, and it keeps exp out of its slow underflow path and the matrix products out of denormals.
LOG_FLOOR = -300.0


class Sinkhorn(torch.autograd.Function):
    """Sinkhorn(z/τ) = diag(u_T) K diag(v_T), K = exp(z/τ), after `iterations` alternate scalings
    u_t = 1/(K v_{t-1}), v_t = 1/(Kᵀ u_t), in float64 whatever z's dtype, with its backward written out.

    Forward, before the scalings: rows, then columns, of z/τ shifted to max 0 (the scalings then start from K's
    column maxima: v_0 = 1 on the shifted kernel), and the kernel floored at e^LOG_FLOOR. After the scalings,
    entries below z's dtype's smallest normal number are 0 (denormals would slow every product with P).
    Backward: what autograd computes through these operations (a shift's gradient shared by tied maxima, none
    for floored or zeroed entries), written out. Autograd's unrolled backward of the scalings builds one n×n
    outer product per matrix-vector product (2·iterations of them, each added into ∂L/∂K), plus a dozen
    elementwise passes in two dtypes; here the per-iteration vectors are kept and the outer products become
    two matrix products, U Cᵀ + R Vᵀ (one column an iteration). A GPT-2 learned-matching step's four 512²
    matrices: 0.09 CPU-s forward and backward against 0.21 under autograd (measured, one thread), the same
    matrix and, in float32, the same gradient bit for bit (tests: gradcheck; autograd through the same
    operations, ties included; alternate logsumexp normalisations)."""

    @staticmethod
    def forward(ctx, z: Tensor, tau: float, iterations: int) -> Tensor:
        log_k = z.double() / tau
        log_k -= log_k.amax(1, keepdim=True)
        row_max = log_k == 0
        log_k -= log_k.amax(0, keepdim=True)   # every row and every column now has an entry 0, none above
        col_max = log_k == 0
        floored = log_k < LOG_FLOOR
        k = log_k.clamp_min_(LOG_FLOOR).exp_()
        v = torch.ones(k.shape[1], dtype=k.dtype, device=k.device)
        us, vs = [], [v]
        for _ in range(iterations):
            u = 1.0 / (k @ v)      # rows of diag(u) K diag(v) sum to 1
            v = 1.0 / (u @ k)      # then its columns
            us.append(u)
            vs.append(v)
        p = k * u[:, None] * v[None, :]
        zeroed = p < torch.finfo(z.dtype).tiny
        ctx.tau, ctx.dtype = tau, z.dtype
        ctx.save_for_backward(k, torch.stack(us, 1), torch.stack(vs, 1), floored | zeroed, zeroed, row_max, col_max)
        return p.masked_fill_(zeroed, 0.0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        k, us, vs, no_grad_k, zeroed, row_max, col_max = ctx.saved_tensors   # us: u_1..u_T, vs: v_0..v_T
        grad = grad.double().masked_fill_(zeroed, 0.0)
        u_last, v_last = us[:, -1], vs[:, -1]
        grad_p_k = grad * k
        grad_u, grad_v = grad_p_k @ v_last, u_last @ grad_p_k    # ∂L/∂u_T, ∂L/∂v_T through the output
        col_terms, row_terms = torch.empty_like(vs[:, 1:]), torch.empty_like(us)
        for t in range(us.shape[1] - 1, -1, -1):
            col_terms[:, t] = -grad_v * vs[:, t + 1] ** 2       # ∂L/∂(Kᵀ u_{t+1}), since v_{t+1} = 1/(Kᵀ u_{t+1})
            grad_u = grad_u + k @ col_terms[:, t]
            row_terms[:, t] = -grad_u * us[:, t] ** 2           # ∂L/∂(K v_t), since u_{t+1} = 1/(K v_t)
            grad_v, grad_u = k.T @ row_terms[:, t], torch.zeros_like(grad_u)   # u_{t+1} reaches L only via v_{t+1}
        # ∂L/∂K: the output's direct dependence (grad ⊙ u_T v_Tᵀ) plus the iterations'; then through exp and /τ
        grad_k = torch.addmm(torch.addmm(grad * u_last[:, None] * v_last[None, :], us, col_terms.T),
                             row_terms, vs[:, :-1].T)
        grad_log_k = (grad_k * k).masked_fill_(no_grad_k, 0.0)
        # through the column, then the row shifts (x − max): the maximum's gradient, −Σ, shared by tied maxima
        for max_mask, dim in ((col_max, 0), (row_max, 1)):
            share = grad_log_k.sum(dim, keepdim=True) / max_mask.sum(dim, keepdim=True)
            grad_log_k -= max_mask * share
        return grad_log_k.div_(ctx.tau).to(ctx.dtype), None, None


def sinkhorn(z: Tensor, tau: float, iterations: int) -> Tensor:
    """The doubly stochastic matrix diag(u) K diag(v), K = exp(z/τ), balanced by `iterations` alternate row
    and column normalisations (columns then sum to 1 exactly); as τ → 0 it tends to the permutation
    maximising ⟨P, z⟩. Sinkhorn's algorithm in its scaling form (two matrix-vector products an iteration),
    in float64, started from K's column maxima (`Sinkhorn`): a scaling of K that the balanced limit does not
    see, which keeps u and v within n^±(iterations+1) at any τ (float32, or scalings started at 1, overflow
    in the gradient at τ ≈ 0.01). The same iterates as alternate logsumexp normalisations from that start
    (tests), at a small fraction of their cost."""
    return Sinkhorn.apply(z, tau, iterations)


def transform(spec: SymmetrySpec, state: dict[str, Tensor], latents: dict[str, Tensor], groups: dict[str, str],
              tau: float | None, iterations: int) -> dict[str, Tensor]:
    """B moved by the latents' relaxed element: polar factor for an orthogonal residual; for permutation
    spaces the Sinkhorn matrix at temperature `tau`, or (tau None) the hard permutation with the
    straight-through gradient. The residual goes first and alone: it shares parameters with the others, and
    alone each relaxed space acts linearly (`apply(..., relaxed=True)`)."""
    def soft(names: list[str]) -> dict[str, Tensor]:
        return {n: polar(latents[n]) if groups[n] == "orth" else
                ste_permutation(latents[n]) if tau is None else sinkhorn(latents[n], tau, iterations) for n in names}

    stages = [[n for n in latents if n == "residual"], [n for n in latents if n != "residual"]]
    for names in filter(None, stages):
        element = soft(names)
        state = apply(spec, state, element, relaxed=tau is not None and any(groups[n] == "perm" for n in names))
    return state


def uniform_pair(lo: float = 0.4, hi: float = 0.6):
    """Weights (c, 1 − c) for (A, B), c ~ U(lo, hi): GLMC's `narrow_uniform` sampler [official code]."""
    def sample(rng: np.random.Generator) -> np.ndarray:
        c = rng.uniform(lo, hi)
        return np.array([c, 1.0 - c])
    return sample


def dirichlet(alpha: float, n: int):
    """Weights λ ~ Dirichlet(α·1_n) over n models: GLMC's multi-model refinement (α = 0.1) [secondary]."""
    return lambda rng: rng.dirichlet(np.full(n, alpha))


@dataclass(frozen=True)
class LearningOptions:
    """How the latent alignment is trained (pairwise learned matching and multi-model refinement).
    Defaults: the official schedule [official code `run_merger.sh`, `train_merger.py`] except
    `perm_lr` (module docstring) and `steps`/`batch_size`, which each profile sets."""
    steps: int = 200                 # maximum optimisation steps (`epochs`, when given, sets it instead)
    epochs: float | None = None      # passes over the train split; official: up to 10
    batch_size: int = 32             # official: 32 blocks of 256 tokens
    lr: float = 3e-4                 # orthogonal residual latents [official code]
    perm_lr: float = 0.25            # permutation latents: Σ_t perm_lr_t ≈ 25 over 200 steps [inferred]
    # permutation latents in the forward pass: Sinkhorn(Z/τ), τ geometric from temperature[0] at the first
    # step to temperature[1] at the last [secondary: Peña et al. 2023, Sinkhorn re-basin], or "ste": the
    # hard permutation with a straight-through gradient [official code]; see the module docstring
    relaxation: Literal["sinkhorn", "ste"] = "sinkhorn"
    temperature: tuple[float, float] = (1.0, 0.01)
    sinkhorn_iterations: int = 10    # row+column normalisations a step (the planted test recovers at 8)
    weight_decay: float = 0.01       # AdamW, on the latents too [official code]
    warmup_frac: float = 0.05        # linear warm-up, then cosine decay to 0 [official code]
    eval_every: int = 50             # steps between validation evaluations [official code]
    patience: int | None = 10        # evaluations without improvement before stopping; None = never [official code]
    val_examples: int | None = None  # validation examples per evaluation; None = the whole split
    eval_batch_size: int = 64
    dropout: bool = False   # train mode (dropout on) for the interpolated model
    circuits: bool = True   # interpolate in the attention circuit form

    def total_steps(self, train_examples: int) -> int:
        """`steps`, or `epochs` passes over `train_examples` at `batch_size`."""
        if self.epochs is None:
            return self.steps
        return max(1, math.ceil(self.epochs * train_examples / self.batch_size))


@dataclass(frozen=True)
class LearnedOptions(LearningOptions):
    lambda_range: tuple[float, float] = (0.4, 0.6)  # c ~ U(lo, hi): GLMC's `narrow_uniform` [official code]


@dataclass(frozen=True)
class LearnedFromMatchingOptions(LearnedOptions):
    iterations: int = 15                    # rounds of the weight matching it starts from
    mlp_cost: Literal["l1", "cosine"] = "l1"
    token_freqs: bool = True                # that weight matching compares only tokens seen in training, as
                                            # `glmc_weight_matching` does (`active_tokens`) [official code]


def _hard(latents: dict[str, Tensor], groups: dict[str, str]) -> dict[str, Tensor]:
    """The group element the latents stand for: permutations as index tensors, orthogonal maps as matrices."""
    return {name: polar(z.detach()).cpu() if groups[name] == "orth" else match_units(z.detach().T).cpu()
            for name, z in latents.items()}


def moved(start: dict[str, Tensor], end: dict[str, Tensor], groups: dict[str, str]) -> dict[str, float]:
    """Per space: units whose assignment changed (permutations), or ‖O_end − O_start‖_F (orthogonal)."""
    return {name: float(torch.linalg.matrix_norm(end[name].double() - start[name].double())) if groups[name] == "orth"
            else int((end[name] != start[name]).sum()) for name in start}


def summarise_moves(per_space: dict[str, float]) -> dict:
    """Table columns: units moved in all head spaces, in all MLP spaces, and the residual's move
    (a distance for an orthogonal residual, a unit count for a permutation one)."""
    return {"moved_heads": sum(v for k, v in per_space.items() if k.endswith(".heads")),
            "moved_mlp": sum(v for k, v in per_space.items() if k.endswith(".mlp")),
            "residual_shift": per_space.get("residual", 0.0)}


def _train_examples(task) -> int:
    return len(task.eval_tensors("train")[1])


def train_latents(canon_a: nn.Module, states_b: list[dict[str, Tensor]], task, options: LearningOptions, seed: int,
                  residual: str = "orth", sampler=None, progress: bool = False) -> LearnedRun:
    """Train latents for the residual (orthogonal or permutation), heads and MLP units of each
    canonical B_k so that the mixture w_0·θ_A + Σ_k w_k·π_k(θ_B_k), w ~ `sampler`, has low task loss,
    with the schedule of the module docstring. A is the fixed gauge. Returns the aligned states of the
    B_k at the best evaluated step (hard projections), the history, and a record of the run."""
    spec = spec_for(canon_a).subset("residual", "blocks.*.heads", "blocks.*.mlp")
    groups = {s.name: ("orth" if (s.name == "residual" and residual == "orth") else "perm") for s in spec}
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    sampler = sampler or uniform_pair(*getattr(options, "lambda_range", (0.4, 0.6)))
    # fixed evaluation weights: the mean of many draws of the sampler (its centre), so every
    # evaluation scores the same mixture and the best step is chosen on a deterministic loss
    eval_rng = np.random.default_rng(seed + 1_000_003)
    eval_weights = np.mean([sampler(eval_rng) for _ in range(256)], axis=0)
    device = default_device()  # the latents, both states and the batches live on the GPU when there is one
    latents = [{s.name: (torch.eye(s.dim) + 0.01 * torch.randn(s.dim, s.dim, generator=generator))
                .to(device).requires_grad_() for s in spec} for _ in states_b]
    template = circuit_form(canon_a) if options.circuits else canon_a
    layout, circuit_layout = layout_for(canon_a), layout_for(template)
    to_space = (lambda sd: circuit_state_dict(sd, layout, circuit_layout)) if template is not canon_a else (lambda sd: sd)
    state_a = {k: v.to(device) for k, v in detached_state(template).items()}
    states_b = [{k: v.to(device) for k, v in sb.items()} for sb in states_b]
    template.to(device)
    floats = [k for k, v in state_a.items() if v.is_floating_point()]
    orth = [z for group in latents for n, z in group.items() if groups[n] == "orth"]
    perm = [z for group in latents for n, z in group.items() if groups[n] == "perm"]
    optimizers = [torch.optim.AdamW(orth, lr=options.lr, weight_decay=options.weight_decay)] if orth else []
    optimizers += [torch.optim.SGD(perm, lr=options.perm_lr, weight_decay=options.weight_decay)] if perm else []
    total = options.total_steps(_train_examples(task) if options.epochs is not None else 0)
    schedule = warmup_cosine(max(1, int(options.warmup_frac * total)), total)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, schedule) for o in optimizers]
    val_data = task.eval_tensors("val", options.val_examples)

    def mixture(weights, hard: bool, tau: float | None = None) -> dict[str, Tensor]:
        aligned = [to_space(transform(spec, sb, z, groups, tau, options.sinkhorn_iterations) if not hard else
                            apply(spec, sb, {n: (p.detach() if p.is_floating_point() else
                                                 perm_matrix(p, dtype=z[n].dtype).to(device))
                                             for n, p in _hard(z, groups).items()}))
                   for sb, z in zip(states_b, latents)]
        mixed = dict(state_a)
        for k in floats:
            mixed[k] = weights[0] * state_a[k] + sum(w * sd[k] for w, sd in zip(weights[1:], aligned))
        return mixed

    def validate() -> float:
        template.eval()
        with torch.no_grad():
            return evaluate(BoundModel(template, mixture(eval_weights, hard=True)), task, val_data,
                            options.eval_batch_size, device)["loss"]

    start = [_hard(z, groups) for z in latents]
    best = {"val_loss": validate(), "step": 0, "element": start}
    history, bad_evals, stopped_early = [{"step": 0, "val_loss": best["val_loss"]}], 0, False
    for step in tqdm(range(total), desc="learned matching", disable=not progress, mininterval=2.0):
        template.train(options.dropout)
        weights = sampler(rng)
        x, y = task.train_batch(step, options.batch_size, seed)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        tau = (options.temperature[0] * (options.temperature[1] / options.temperature[0]) ** (step / max(1, total - 1))
               if options.relaxation == "sinkhorn" else None)
        with autocast(device):
            loss_sum, _, n = task.score(BoundModel(template, mixture(weights, hard=False, tau=tau)), x, y)
        loss = loss_sum / n
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # no permutation latent moves by more than perm_lr a step: see the module docstring
            for z in perm:
                z.grad /= z.grad.abs().max().clamp_min(1e-30)
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
        record = {"step": step + 1, "weights": weights.round(4).tolist(), "loss": loss.item()}
        if (step + 1) % options.eval_every == 0 or step + 1 == total:
            record["val_loss"] = validate()
            log.info("learned matching step %d: train loss %.4f, val loss %.4f", step + 1, loss.item(), record["val_loss"])
            if record["val_loss"] < best["val_loss"]:
                best, bad_evals = {"val_loss": record["val_loss"], "step": step + 1,
                                   "element": [_hard(z, groups) for z in latents]}, 0
            else:
                bad_evals += 1
        history.append(record)
        if options.patience is not None and bad_evals >= options.patience:
            stopped_early = True
            log.info("learned matching: early stop at step %d (best step %d)", step + 1, best["step"])
            break
    template.cpu()
    aligned, per_space = [], {}
    for sb, first, chosen in zip(states_b, start, best["element"]):
        element = {n: (p if p.is_floating_point() else perm_matrix(p, dtype=torch.float32)) for n, p in chosen.items()}
        aligned.append({k: v.cpu() for k, v in apply(spec, {k: v.cpu() for k, v in sb.items()}, element).items()})
        for name, value in moved(first, chosen, groups).items():
            per_space[name] = per_space.get(name, 0) + value
    record = {**summarise_moves(per_space), "val_loss": best["val_loss"], "best_step": best["step"],
              "start_val_loss": history[0]["val_loss"], "steps_run": history[-1]["step"], "max_steps": total,
              "stopped_early": stopped_early, "moved": per_space}
    log.info("learned matching: best step %d (val %.4f, start %.4f); moved heads %d, mlp %d, residual %.3g",
             best["step"], best["val_loss"], record["start_val_loss"], record["moved_heads"], record["moved_mlp"],
             record["residual_shift"])
    return LearnedRun(aligned, best["element"], history, record)


def learn_alignment(canon_a: nn.Module, states_b: list[dict[str, Tensor]], task, options: LearningOptions, seed: int,
                    residual: str = "orth", sampler=None, progress: bool = False) -> tuple[list[dict], list[dict]]:
    """`train_latents`, returning only (aligned states, history)."""
    run = train_latents(canon_a, states_b, task, options, seed, residual, sampler, progress)
    return run.states, run.history


def _learned(model_a: nn.Module, model_b: nn.Module, context: MatchContext, residual: str, init: str) -> Alignment:
    if context.task is None:
        raise ValueError("learned matching trains on data: pass a task in the MatchContext")
    cfg = context.options
    if init == "weight_matching":
        canon_a, aligner = glmc_weight_matching_states(model_a, model_b, cfg.iterations, residual, cfg.mlp_cost,
                                                       tokens=active_tokens(context.task, cfg.token_freqs))
        state_b = aligner.state_b
    else:
        canon_a, state_b = ensure_canonical(model_a), detached_state(ensure_canonical(model_b))
    run = train_latents(canon_a, [state_b], context.task, cfg, context.seed, residual)
    columns = {k: run.record[k] for k in ("moved_heads", "moved_mlp", "residual_shift")}
    columns["matching_val_loss"] = run.record["val_loss"]
    # the chosen head/MLP (and permutation residual) assignments, on top of the start (index lists, new j = old idx[j])
    assignments = {name: p.tolist() for name, p in run.elements[0].items() if not p.is_floating_point()}
    return finish(canon_a, run.states[0], cfg.circuits, {"init": init, "residual": residual, "assignments": assignments,
                                                         "final_train_loss": run.history[-1].get("loss"),
                                                         "options": asdict(cfg), **run.record,
                                                         "columns": columns})


@register("learned_full", options=LearnedFromMatchingOptions)
def learned_full(model_a, model_b, context):
    """GLMC learned matching: orthogonal residual, relaxed head/MLP permutations, from the WM solution."""
    return _learned(model_a, model_b, context, "orth", "weight_matching")


@register("learned_perm_only", options=LearnedFromMatchingOptions)
def learned_perm_only(model_a, model_b, context):
    """Ablation: learned matching restricted to permutations (residual included)."""
    return _learned(model_a, model_b, context, "perm", "weight_matching")


@register("learned_identity_init", options=LearnedOptions)
def learned_identity_init(model_a, model_b, context):
    """Ablation: learned matching started from the identity instead of the WM solution."""
    return _learned(model_a, model_b, context, "orth", "identity")
