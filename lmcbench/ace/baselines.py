"""ACE training methods and baselines: registered methods of track "ace" (lmcbench.methods), each a set of
hooks on the one training loop `lmcbench.training.run_steps` with a typed options class holding its defaults.

  strict            equivariant backbone only (no branch)                              [official code "vanilla"]
  unconstrained     mixed model, γ trained freely, no constraint (evaluated mixed)      [official code]
  penalty           mixed model + w·relative equivariance error at a sampled group element (REMUL-style fixed weight)
  rpp               mixed model + Gaussian priors on both paths, the branch taken as γ·f_neq (Residual Pathway
                    Priors as MAP, Finzi et al. 2021) [inferred]; see `layers.rpp_penalty`
  relaxed_conv      relaxed C4 group CNN + α·Σ‖w(h) − w(h')‖² (Wang et al. 2022), image task only
  triangle_schedule γ not learned: the triangle schedule 0 → 1 → 0 over training, branch dropped at evaluation.
                    Only the schedule of Pertigkiozoglou et al. 2024 (`--cycle`): their Lie-derivative/‖Wx‖
                    regulariser and near-zero branch initialisation are not implemented, hence the name.
  ace_equality / ace_resilient / ace_eps   primal–dual (lmcbench.ace.constrained)

A method class says which backbone it trains (`model`: strict, mixed or relaxed), on which tasks, which form
it reports (`headline_eval`: "eq" = f_{θ,0}, branch dropped; "mixed" = f_{θ,γ}) and whether γ is learned; its
options come from the config key `ace.options.<name>` (defaults: the options class). A method of your own:
subclass `AceMethod` and register it (README "Add a method"; workflow/plugins/ace_warmup_penalty.py).

θ: torch.optim.Adam with cosine decay to 0 over the run (`train.lr_decay`, so a fixed budget ends at a plateau);
γ: `constrained.gamma_optimizer` (default "curvature": step tied to the curvature in γ, cannot oscillate).
Evaluating f_{θ,0} of a model trained with its branch first recomputes the BatchNorm statistics with the
branch off (`evaluation_form`).
"""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from lmcbench import methods
from lmcbench.ace.constrained import ace_defects, ace_optimizer, gamma_optimizer
from lmcbench.ace.layers import branch, mixed_layers, recompute_batchnorm, rpp_penalty
from lmcbench.training import Hooks, run_steps

TRACK = "ace"
CURVE_BN_EXAMPLES = 512   # training examples that recompute BN statistics for a validation-curve point


def triangle(t: float) -> float:
    """0 → 1 over the first half of training, back to 0 over the second (Pertigkiozoglou et al. `--cycle`)."""
    return 1.0 - abs(2.0 * t - 1.0)


@dataclass
class FitResult:
    trajectory: list[dict] = field(default_factory=list)   # step, layer, gamma, lambda, u
    curves: list[dict] = field(default_factory=list)       # step, eval, split, metric, value
    steps: int = 0


@contextlib.contextmanager
def evaluation_form(model, ev: str, train_inputs: tuple, restore: bool = True):
    """Switch `model` to the evaluated form ("eq": branch off, "mixed": branch on). A model that has a
    branch gets its BatchNorm statistics recomputed on `train_inputs` for the branch-off form (its training
    statistics were collected with the branch on). With `restore`, the BN buffers are put back afterwards."""
    recompute = ev == "eq" and bool(mixed_layers(model))
    saved = copy.deepcopy({k: v for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}) \
        if recompute and restore else None
    with branch(model, ev == "mixed"):
        if recompute:
            recompute_batchnorm(model, train_inputs)
        try:
            yield model
        finally:
            if saved:
                model.load_state_dict(saved, strict=False)


@dataclass(frozen=True)
class TrainSettings:
    """A task's ACE training settings (`ace.<task>.train`, checked by the schema), with their defaults."""
    epochs: int
    batch_size: int
    lr: float
    gamma_lr: float | None = None         # step of the γ scalars; None: lr
    gamma_optimizer: Literal["curvature", "adam", "sgd"] = "curvature"   # constrained.gamma_optimizer
    lr_decay: Literal["cosine", "constant"] = "cosine"   # θ (and γ) learning rate: cosine to 0 over the run
    n_train: int | None = None            # training examples; None: the whole training split
    eval_examples: int | None = None      # val/test examples; None: the whole splits
    eval_every: int = 1                   # epochs between validation-curve points (and at the last)

    @classmethod
    def of(cls, train: dict, where: str = "ace.<task>.train") -> "TrainSettings":
        return methods.parse_options(cls, train, where)


@dataclass
class Run:
    """What one training run's hooks see: the model and its mixed layers (found once: a module traversal
    hashes escnn's kernel bases, ~1 ms, and the hooks need the layers every step), task and training settings,
    the step count, the random generator of batches and sampled group elements, the γ scalars and their
    optimiser."""
    model: torch.nn.Module
    layers: list
    task: object
    train: TrainSettings
    total: int
    steps_per_epoch: int
    gen: torch.Generator
    log_every: int
    optimizers: list
    curvature: object = None      # constrained.CurvatureStep of the γ step, or None
    cosine: bool = True
    result: FitResult = field(default_factory=FitResult)

    @property
    def gammas(self) -> list[torch.nn.Parameter]:
        return [m.gamma for _, m in self.layers]


class AceMethod(Hooks):
    """An ACE training method: hooks on `lmcbench.training.run_steps` (the plain method: task loss, Adam on θ,
    γ learned when the model has a branch). Subclasses add a loss term (`extra_loss`), a constrained step
    (`constrained_step`), a γ schedule (`before_step`) or an end-of-training action (`end`), calling super()."""

    model = "mixed"                 # backbone: "strict" (no branch), "mixed" (f_eq + γ·f_neq), "relaxed" (image)
    tasks = ("image", "nbody")      # tasks it applies to
    headline_eval = "mixed"         # form of the trained model it reports: "eq" (branch dropped) or "mixed"
    learns_gamma = True             # whether γ is a trained parameter (False: set by the method)

    def __init__(self, options):
        self.options = options
        self.run: Run | None = None

    # ------------------------------------------------------------------ set-up (once per run)
    def setup(self, run: Run) -> None:
        """Called once the optimisers exist, before the first step."""
        self.run = run

    @property
    def multipliers(self) -> dict[str, float]:
        return {}

    @property
    def slacks(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ hooks
    def before_step(self, model, step: int) -> None:
        run = self.run
        if run.curvature is not None and run.cosine:   # θ and γ steps decay together: γ's noise too
            run.curvature.scale = 0.5 * (1 + math.cos(math.pi * step / run.total))

    def before_backward(self, loss) -> None:
        if self.run.curvature is not None:
            self.run.curvature.update(loss)

    def after_step(self, model, step: int, loss) -> bool:
        """γ/λ trajectory every `log_every` steps and at the last; validation curves of the headline form
        every `eval_every` epochs and at the last."""
        run, done = self.run, step - 1
        gam = run.gammas
        if gam and (done % run.log_every == 0 or done == run.total - 1):
            lam, slack = self.multipliers, self.slacks
            for (name, _), p in zip(run.layers, gam):
                run.result.trajectory.append({"step": done, "layer": name, "gamma": float(p.detach()), "lambda":
                                              lam.get(name, float("nan")), "u": slack.get(name, float("nan"))})
        if step % run.steps_per_epoch == 0:
            epoch = step // run.steps_per_epoch
            if epoch % run.train.eval_every == 0 or epoch == run.train.epochs:
                # validation curves: BN statistics (branch off) from the first CURVE_BN_EXAMPLES training examples
                bn_inputs = tuple(t[:CURVE_BN_EXAMPLES] for t in run.task.splits["train"][0])
                with evaluation_form(model, self.headline_eval, bn_inputs):
                    for metric, value in run.task.evaluate(model, "val").items():
                        run.result.curves.append({"step": step, "epoch": epoch, "eval": self.headline_eval,
                                                  "split": "val", "metric": metric, "value": value})
        return False

    # ------------------------------------------------------------------ the run
    def fit(self, model, task, train: TrainSettings, seed: int, log_every: int = 5) -> FitResult:
        """Train `model` on `task` with this method on `lmcbench.training.run_steps`; returns γ/λ trajectories
        and validation curves of the headline form."""
        gen = torch.Generator().manual_seed(seed)
        layers = mixed_layers(model)
        gam = [m.gamma for _, m in layers]
        gam_ids = {id(p) for p in gam}
        theta = [p for p in model.parameters() if id(p) not in gam_ids]
        steps_per_epoch = math.ceil(task.n_train / train.batch_size)
        total = train.epochs * steps_per_epoch
        optimizers, curvature = [torch.optim.Adam(theta, lr=train.lr)], None
        learn_gamma = bool(gam) and self.learns_gamma
        if learn_gamma:
            gopt, curvature = gamma_optimizer(train.gamma_optimizer, gam,
                                              train.gamma_lr if train.gamma_lr is not None else train.lr)
            optimizers.append(gopt)
        cosine = train.lr_decay == "cosine"
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.5 * (1 + math.cos(math.pi * t / total)))
                  for o in optimizers if cosine and not (curvature is not None and o is curvature.optimizer)]
        for p in gam:
            p.requires_grad_(learn_gamma)
        run = Run(model, layers, task, train, total, steps_per_epoch, gen, log_every, optimizers, curvature, cosine)
        self.setup(run)
        # epochs of shuffled batches, each epoch's order drawn from `gen` when the epoch starts
        batches = itertools.chain.from_iterable(task.batches(train.batch_size, gen) for _ in range(train.epochs))

        def objective(model, batch):
            inputs, target = batch
            pred = model(*inputs)
            return task.loss(pred, target), pred

        run.result.steps = run_steps(model, lambda step: next(batches), objective, optimizers, scheds, self, total)
        return run.result

    def evals(self, model) -> list[str]:
        """Which forms of a trained model to evaluate: both for mixed models, one otherwise; the headline form
        last, so that the model is left as the reported one."""
        if not mixed_layers(model):
            return [self.headline_eval]
        return sorted(["eq", "mixed"], key=lambda ev: ev == self.headline_eval)


def method(name: str, options: dict | None = None, **overrides) -> AceMethod:
    """A fresh instance of registered ACE method `name` with `options` (the config's `ace.options.<name>`,
    checked by name and type, defaults filled in) and `overrides` (e.g. an experiment's dual_lr)."""
    registered = methods.get(TRACK, name)
    parsed = registered.parse({**(options or {}), **overrides}, f"ace.options.{name}")
    return registered.obj(parsed)


def check_ranges(options, positive: tuple[str, ...] = (), nonnegative: tuple[str, ...] = ()) -> None:
    """Range checks of an options class's values (its `__post_init__`; names it lacks are skipped, so a base
    class checks its subclasses' options too): a one-line error naming the option."""
    for name, ok, bound in [(n, lambda v: v > 0, "> 0") for n in positive] + \
                           [(n, lambda v: v >= 0, ">= 0") for n in nonnegative]:
        value = getattr(options, name, None)
        if value is not None and not ok(value):
            raise ValueError(f"ACE option {name} = {value!r}: must be {bound}")


# ---------------------------------------------------------------------------------------------- baselines
@methods.register(TRACK, "strict")
class Strict(AceMethod):
    """Equivariant backbone only, no branch [official code "vanilla"]."""
    model = "strict"
    headline_eval = "eq"


@methods.register(TRACK, "unconstrained")
class Unconstrained(AceMethod):
    """Mixed model, γ trained freely without a constraint; reported mixed [official code]."""


@dataclass(frozen=True)
class PenaltyOptions:
    weight: float = 1.0    # w of w·relative equivariance error

    def __post_init__(self):
        check_ranges(self, nonnegative=("weight",))


@methods.register(TRACK, "penalty", options=PenaltyOptions)
class Penalty(AceMethod):
    """Mixed model + w·relative equivariance error at a sampled group element (REMUL-style fixed weight)."""

    def extra_loss(self, model, batch, pred):
        return self.options.weight * self.run.task.equivariance_penalty(model, batch[0], pred, self.run.gen)


@dataclass(frozen=True)
class RPPOptions:
    weight: float = 0.01       # prior weight on the branch taken as γ·f_neq
    eq_weight: float = 0.0001  # prior weight on the equivariant path

    def __post_init__(self):
        check_ranges(self, nonnegative=("weight", "eq_weight"))


@methods.register(TRACK, "rpp", options=RPPOptions)
class RPP(AceMethod):
    """Mixed model + Gaussian priors on both paths, the branch taken as γ·f_neq (Residual Pathway Priors as MAP)."""

    def extra_loss(self, model, batch, pred):
        return rpp_penalty(model, self.options.eq_weight, self.options.weight)


@dataclass(frozen=True)
class RelaxedOptions:
    weight: float = 0.1    # α of α·Σ‖w(h) − w(h')‖²

    def __post_init__(self):
        check_ranges(self, nonnegative=("weight",))


@methods.register(TRACK, "relaxed_conv", options=RelaxedOptions)
class RelaxedConv(AceMethod):
    """Relaxed C4 group CNN + α·Σ‖w(h) − w(h')‖² (Wang et al. 2022), image task only."""
    model = "relaxed"
    tasks = ("image",)

    def extra_loss(self, model, batch, pred):
        return self.options.weight * model.regulariser()


@methods.register(TRACK, "triangle_schedule")
class TriangleSchedule(AceMethod):
    """γ set by the triangle schedule 0 → 1 → 0 (Pertigkiozoglou et al. `--cycle`), branch dropped at evaluation."""
    headline_eval = "eq"
    learns_gamma = False

    def before_step(self, model, step):
        with torch.no_grad():
            for p in self.run.gammas:
                p.fill_(triangle(step / max(1, self.run.total - 1)))
        super().before_step(model, step)

    def end(self, model):
        with torch.no_grad():
            for p in self.run.gammas:
                p.fill_(0.0)


# ---------------------------------------------------------------------------------------------- ACE
@dataclass(frozen=True)
class DualOptions:
    """The primal–dual step (lmcbench.ace.constrained). aug_lag c = 1 [official code `auglag_const`; the
    paper's Algorithm 1 has c = 0]: with c = 0 the Lagrangian is bilinear in (γ, λ) wherever the loss is flat
    in γ and simultaneous GDA does not converge there (measured); c > 0 adds curvature 2c."""
    dual_lr: float = 0.05
    dual_optimizer: Literal["ascent", "adam", "sgd"] = "ascent"   # ascent = paper; adam / sgd = official code
    aug_lag: float = 1.0

    def __post_init__(self):
        check_ranges(self, positive=("dual_lr", "rho", "slack_lr"), nonnegative=("aug_lag", "eps"))


@dataclass(frozen=True)
class ResilientOptions(DualOptions):
    rho: float = 1.0                 # slack cost ρ/2·‖u‖²
    slack_lr: float | None = None    # None: the primal learning rate


@dataclass(frozen=True)
class EpsOptions(DualOptions):
    eps: float = 0.05                # |γ_i| ≤ ε


class ACE(AceMethod):
    """Primal–dual training of γ under the variant's per-layer constraint (`constrained.ace_defects`)."""

    def setup(self, run):
        super().setup(run)
        step = {k: v for k, v in asdict(self.options).items() if k != "eps"}   # eps enters the defects instead
        self.problem = ace_optimizer(self.variant, run.optimizers, [n for n, _ in run.layers], **step)

    variant = "ace_equality"   # constraint form (`constrained.ace_defects`)

    def defects(self, gam: torch.Tensor) -> torch.Tensor:
        return ace_defects(self.variant, gam)

    def constrained_step(self, loss) -> bool:
        self.problem.step(loss, self.defects(torch.stack(self.run.gammas)), self.run.curvature)
        return True

    @property
    def multipliers(self):
        return self.problem.multipliers

    @property
    def slacks(self):
        return self.problem.slacks or {}


@methods.register(TRACK, "ace_equality", options=DualOptions)
class AceEquality(ACE):
    """ACE Algorithm 1: γ_i = 0 per layer; reports f_{θ,0}."""
    headline_eval = "eq"


@methods.register(TRACK, "ace_resilient", options=ResilientOptions)
class AceResilient(ACE):
    """ACE Algorithm 2: |γ_i| ≤ u_i with slack cost ρ/2‖u‖²; reports f_{θ,γ}."""
    variant = "ace_resilient"


@methods.register(TRACK, "ace_eps", options=EpsOptions)
class AceEps(ACE):
    """|γ_i| ≤ ε per layer [official code `--epsilon`]; reports f_{θ,γ}."""
    variant = "ace_eps"

    def defects(self, gam):
        return ace_defects(self.variant, gam, self.options.eps)
