"""ACE experiment jobs: each trains the methods it needs and writes tidy records.csv,
trajectories.csv, curves.csv and provenance.json into its output directory.

Experiments (cfg = the profile's `ace` section):
  accuracy          every method in `experiments.accuracy.methods` × seeds, symmetric regime
  sample_efficiency n_train sweep × methods, symmetric regime
  partial_symmetry  strict / ace_equality / ace_resilient on partially symmetric data
                    (image: upright digits; nbody: external field along z)
  robustness        input perturbation on train and test (image: Gaussian pixel noise σ;
                    nbody: Gaussian noise on the input positions, σ) × methods
  dual_lr           ace_equality × dual learning rates
Records: experiment, task, regime, method, seed, n_train, dual_lr, perturbation, eval (eq | mixed),
headline, split, metric, layer, value, run_id.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from lmcbench.ace.report import TASK_METRIC, plateau_diagnostics
from lmcbench.io import provenance, run_id, write_json
from lmcbench.tables import write_csv
from lmcbench.training import seed_everything

log = logging.getLogger(__name__)
EXPERIMENTS = ("accuracy", "sample_efficiency", "partial_symmetry", "robustness", "dual_lr")
TIMING_METRICS = ("train_seconds",)   # wall-clock records: provenance.json only, never records.csv


# --------------------------------------------------------------------------- tasks
def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(angles), torch.sin(angles)
    theta = torch.stack([torch.stack([c, -s, torch.zeros_like(c)], -1), torch.stack([s, c, torch.zeros_like(c)], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class ImageTask:
    """mnist5k padded to 29×29 (odd size: rot90 about the centre pixel is exact); regime "rotated" rotates
    every example by a fixed random angle (seeded per split), "upright" leaves digits as they are."""

    def __init__(self, data_cfg: dict, regime: str, n_train: int | None, noise: float = 0.0,
                 group: str = "C", N: int = 4, eval_examples: int | None = None, data_seed: int = 0):
        from lmcbench.data import load_dataset

        data = load_dataset(data_cfg)
        self.group, self.N, self.regime = group, N, regime
        self.splits = {}
        for i, (split, (x, y)) in enumerate((("train", data.train), ("val", data.val), ("test", data.test))):
            limit = n_train if split == "train" else eval_examples
            x, y = (x[:limit], y[:limit]) if limit else (x, y)
            bg = float(x.min())
            x = F.pad(x - bg, (0, 1, 0, 1))
            gen = torch.Generator().manual_seed(1000 * data_seed + i)
            if regime == "rotated":
                x = _rotate(x, torch.rand(len(x), generator=gen) * 2 * math.pi)
            x = x + bg
            if noise:
                x = x + noise * torch.randn(x.shape, generator=gen)
            self.splits[split] = ((x,), y)
        self.n_train = len(self.splits["train"][1])

    def batches(self, batch_size: int, gen: torch.Generator):
        (x,), y = self.splits["train"]
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            yield (x[idx],), y[idx]

    def loss(self, pred, target):
        return F.cross_entropy(pred, target)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        model.eval()
        (x,), y = self.splits[split]
        pred = torch.cat([model(x[i:i + 500]) for i in range(0, len(y), 500)])
        return {"accuracy": float((pred.argmax(1) == y).float().mean()), "loss": float(F.cross_entropy(pred, y))}

    def equivariance_penalty(self, model, inputs, pred, gen):
        """Relative invariance error of the logits under a random exact rot90 (penalty baseline)."""
        k = int(torch.randint(1, 4, (1,), generator=gen))
        return (model(torch.rot90(inputs[0], k, dims=(-2, -1))) - pred).pow(2).sum() / pred.pow(2).sum().clamp_min(1e-8)

    def equivariance(self, model, split: str = "test", n: int = 64) -> dict[str, float]:
        from lmcbench.ace.metrics import image_equivariance

        return image_equivariance(model, self.splits[split][0][0][:n], self.group, self.N)


class NBodyTask:
    """Charged 5-body: predict positions 10 frames ahead from (x, v, q); metric MSE."""

    def __init__(self, path: str | Path, regime: str, n_train: int | None, noise: float = 0.0,
                 eval_examples: int | None = None, data_seed: int = 0):
        from lmcbench.ace.nbody import load

        self.regime = regime
        self.splits = {}
        for i, (split, (loc, vel, q, target)) in enumerate(load(path).items()):
            limit = n_train if split == "train" else eval_examples
            if limit:
                loc, vel, q, target = loc[:limit], vel[:limit], q[:limit], target[:limit]
            if noise:
                gen = torch.Generator().manual_seed(1000 * data_seed + i)
                loc = loc + noise * torch.randn(loc.shape, generator=gen)
            self.splits[split] = ((loc, vel, q), target)
        self.n_train = len(self.splits["train"][1])

    def batches(self, batch_size: int, gen: torch.Generator):
        inputs, y = self.splits["train"]
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), batch_size):
            idx = perm[i:i + batch_size]
            yield tuple(t[idx] for t in inputs), y[idx]

    def loss(self, pred, target):
        return F.mse_loss(pred, target)

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict[str, float]:
        model.eval()
        inputs, y = self.splits[split]
        return {"mse": float(F.mse_loss(model(*inputs), y))}

    def equivariance_penalty(self, model, inputs, pred, gen):
        from lmcbench.ace.metrics import haar_rotation

        loc, vel, q = inputs
        R, t = haar_rotation(gen)[0], torch.randn(3, generator=gen)
        target = pred @ R.T + t          # relative to the predicted displacement, not to the absolute positions
        return (model(loc @ R.T + t, vel @ R.T, q) - target).pow(2).sum() / (pred - loc).pow(2).sum().clamp_min(1e-8)

    def equivariance(self, model, split: str = "test", n: int = 200) -> dict[str, float]:
        from lmcbench.ace.metrics import nbody_equivariance

        loc, vel, q = self.splits[split][0]
        return nbody_equivariance(model, loc[:n], vel[:n], q[:n], axis_only=False)


# --------------------------------------------------------------------------- one run
def train_settings(cfg: dict, task: str):
    """`ace.<task>.train` as typed settings, defaults filled in (lmcbench.ace.baselines.TrainSettings)."""
    from lmcbench.ace.baselines import TrainSettings

    return TrainSettings.of(cfg[task]["train"], f"ace.{task}.train")


def _make_task(task: str, cfg: dict, regime: str, n_train, noise: float, nbody_files: dict):
    tcfg, eval_examples = cfg[task], train_settings(cfg, task).eval_examples
    if task == "image":
        arch = tcfg["arch"]
        return ImageTask(tcfg["data"], regime, n_train, noise, arch.get("group", "C"), arch["N"], eval_examples)
    return NBodyTask(nbody_files[regime], regime, n_train, noise, eval_examples)


def run_one(task_name: str, task, cfg: dict, method: str, seed: int, keys: dict, overrides: dict | None = None):
    """Train one model with registered ACE method `method` (options: `ace.options.<method>`, then
    `overrides`); return (records, trajectory, curves) as lists of dicts tagged with `keys`.
    Every run takes the optimisation steps of the default training-set size (`n_train`): a smaller training
    set gets proportionally more epochs, so that the sample-efficiency sweep compares trained models."""
    from lmcbench.ace.baselines import evaluation_form, method as make_method
    from lmcbench.ace.layers import gamma_parameters
    from lmcbench.ace.models import build_image_model, build_nbody_model

    tcfg, base = cfg[task_name], train_settings(cfg, task_name)
    n_default = base.n_train or task.n_train
    factor = max(1.0, n_default / task.n_train)   # evaluations keep the default's count too
    train = dataclasses.replace(base, epochs=math.ceil(base.epochs * factor),
                                eval_every=max(1, round(base.eval_every * factor)))
    seed_everything(seed)
    trainer = make_method(method, cfg.get("options", {}).get(method), **(overrides or {}))
    build = build_image_model if task_name == "image" else build_nbody_model
    model = build(tcfg, trainer.model)
    t0 = time.time()
    result = trainer.fit(model, task, train, seed, cfg["log_every"])
    seconds = time.time() - t0
    keys = {**keys, "method": method, "seed": seed, "n_train": task.n_train,
            "dual_lr": getattr(trainer.options, "dual_lr", float("nan"))}   # empty for a method without a dual step
    headline = trainer.headline_eval
    records = []
    for ev in trainer.evals(model):   # headline form last and kept: the model is left as reported
        with evaluation_form(model, ev, task.splits["train"][0], restore=ev != headline):
            base = {**keys, "eval": ev, "headline": ev == headline}
            for split in ("val", "test"):
                for metric, value in task.evaluate(model, split).items():
                    records.append({**base, "split": split, "metric": metric, "layer": "", "value": value})
            for layer, value in task.equivariance(model).items():
                records.append({**base, "split": "test", "metric": "equiv_err", "layer": layer, "value": value})
    diag = {**keys, "eval": headline, "headline": True, "layer": ""}
    gam = gamma_parameters(model)
    if gam:   # final max |γ| (the constraint check of ace_equality)
        records.append({**diag, "split": "train", "metric": "max_abs_gamma",
                        "value": max(abs(float(g.detach())) for g in gam)})
    n_val = len(task.splits["val"][1])
    for metric, value in plateau_diagnostics(result.curves, train.epochs, TASK_METRIC[task_name], n_val).items():
        records.append({**diag, "split": "val", "metric": metric, "value": value})
    records.append({**keys, "eval": headline, "headline": True, "split": "train",
                    "metric": "train_seconds", "layer": "", "value": seconds})
    log.info("%s %s seed %d (%s): %s in %.1fs", task_name, method, seed, keys.get("regime"),
             {r["metric"]: round(r["value"], 4) for r in records if r["split"] == "test" and r["headline"]
              and r["layer"] in ("", "output")}, seconds)
    traj = [{**keys, **row} for row in result.trajectory]
    curves = [{**keys, **row} for row in result.curves]
    return records, traj, curves


def experiment_methods(experiment: str, task_name: str, cfg: dict) -> list[str]:
    """The registered methods an experiment trains on a task: its `methods` (dual_lr: its one `method`), less
    those that do not apply to the task (a method's `tasks`: relaxed_conv is image-only)."""
    from lmcbench.ace.baselines import TRACK
    from lmcbench.methods import get, names as names_of

    ecfg = cfg["experiments"][experiment]
    names = [ecfg.get("method", "ace_equality")] if experiment == "dual_lr" else ecfg["methods"]
    if experiment == "dual_lr" and "dual_lr" not in get(TRACK, names[0]).defaults():
        with_dual = [n for n in names_of(TRACK) if "dual_lr" in get(TRACK, n).defaults()]
        raise ValueError(f"ace.experiments.dual_lr.method = {names[0]!r} has no dual_lr option; "
                         f"methods with one: {', '.join(with_dual)}")
    return [m for m in names if task_name in get(TRACK, m).obj.tasks]


def experiment_runs(experiment: str, task_name: str, cfg: dict, nbody_files: dict | None = None,
                    tasks: dict | None = None, rid: str = "", trained: dict | None = None) -> tuple[list, list, list]:
    """Train every run of one ACE experiment on one task; return (records, trajectories, curves).
    `tasks` caches the built task data by (regime, n_train, noise) across experiments of one process, and
    `trained` the rows of each run by (data, method, effective options, seed): a run another experiment of
    the process already made (dual_lr's default value is accuracy's seed-0 run) is not trained again, its
    rows are reused under this experiment's name (the same seed on the same data: the same bytes)."""
    from lmcbench.ace.baselines import method as make_method

    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown ACE experiment {experiment!r}; valid: {EXPERIMENTS}")
    ecfg = cfg["experiments"][experiment]
    seeds = ecfg.get("seeds", cfg["seeds"])
    symmetric = "rotated" if task_name == "image" else "symmetric"
    partial = "upright" if task_name == "image" else "field"
    tasks = {} if tasks is None else tasks
    runs = []   # (regime, n_train, noise, method, dual_lr override)
    n_default = train_settings(cfg, task_name).n_train
    methods = experiment_methods(experiment, task_name, cfg)
    if experiment == "accuracy":
        runs = [(symmetric, n_default, 0.0, m, None) for m in methods]
    elif experiment == "sample_efficiency":
        runs = [(symmetric, n, 0.0, m, None) for n in ecfg["n_train"] for m in methods]
    elif experiment == "partial_symmetry":
        runs = [(partial, n_default, 0.0, m, None) for m in methods]
    elif experiment == "robustness":
        runs = [(symmetric, n_default, s, m, None) for s in ecfg["levels"][task_name] for m in methods]
    elif experiment == "dual_lr":
        runs = [(symmetric, n_default, 0.0, m, lr) for m in methods for lr in ecfg["values"]]
    trained = {} if trained is None else trained
    records, trajs, curves = [], [], []
    for regime, n_train, noise, method, dual_lr in runs:
        key = (regime, n_train, noise)
        if key not in tasks:
            tasks[key] = _make_task(task_name, cfg, regime, n_train, noise, nbody_files or {})
        keys = {"experiment": experiment, "task": task_name, "regime": regime, "perturbation": noise,
                "dual_lr": dual_lr, "run_id": rid}   # dual_lr: run_one fills in the method's effective one
        overrides = {"dual_lr": dual_lr} if dual_lr is not None else None
        options = make_method(method, cfg.get("options", {}).get(method), **(overrides or {})).options
        for seed in seeds:
            run_key = (key, method, repr(options), seed)
            if run_key in trained:
                log.info("%s %s seed %d (%s): the run of experiment %s, reused", task_name, method, seed, regime,
                         trained[run_key][0][0]["experiment"])
                r, t, c = ([{**row, "experiment": experiment} for row in rows] for rows in trained[run_key])
            else:
                r, t, c = trained[run_key] = run_one(task_name, tasks[key], cfg, method, seed, keys, overrides)
            records += r
            trajs += t
            curves += c
    return records, trajs, curves


def _write_tables(out_dir: Path, records, trajs, curves, job: dict, rid: str) -> pd.DataFrame:
    """records.csv without wall-clock rows (same seed, same bytes); those go to provenance.json "timing"
    (results/tables/timing.csv collects them)."""
    table = pd.DataFrame(records)
    clock = table["metric"].isin(TIMING_METRICS)
    timing, table = table[clock], table[~clock].reset_index(drop=True)
    write_csv(table, out_dir / "records.csv")
    write_csv(pd.DataFrame(trajs, columns=["experiment", "task", "regime", "perturbation", "dual_lr", "run_id",
                                           "method", "seed", "n_train", "step", "layer", "gamma", "lambda", "u"]),
              out_dir / "trajectories.csv")
    write_csv(pd.DataFrame(curves), out_dir / "curves.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, None), "run_id": rid,
                                             "timing": timing.to_dict("records")})
    return table


def experiment_job(experiment: str, task_name: str, cfg: dict, out_dir: str | Path,
                   nbody_files: dict | None = None) -> pd.DataFrame:
    """Run one ACE experiment on one task ("image" | "nbody") and write its tables."""
    job = {"job": f"ace_{experiment}", "task": task_name, "ace": cfg, "nbody_files": nbody_files}
    rid = run_id(job)
    return _write_tables(Path(out_dir), *experiment_runs(experiment, task_name, cfg, nbody_files, rid=rid), job, rid)


def task_job(task_name: str, cfg: dict, out_dir: str | Path, nbody_files: dict | None = None,
             experiments: list[str] | None = None) -> pd.DataFrame:
    """Run every configured ACE experiment on one task sequentially in one process (one Snakemake job per
    task: Python/torch/escnn start-up is paid once, and the task data are built once and shared), and write
    records.csv / trajectories.csv / curves.csv / provenance.json for all of them together."""
    experiments = list(cfg["experiments"]) if experiments is None else list(experiments)
    job = {"job": "ace_experiment", "task": task_name, "experiments": experiments, "ace": cfg,
           "nbody_files": nbody_files}
    rid = run_id(job)
    records, trajs, curves, tasks, trained = [], [], [], {}, {}
    for experiment in experiments:
        t0 = time.time()
        r, t, c = experiment_runs(experiment, task_name, cfg, nbody_files, tasks, rid, trained)
        records += r
        trajs += t
        curves += c
        log.info("ACE %s / %s: %d runs in %.1fs", task_name, experiment,
                 sum(1 for x in r if x["metric"] == "train_seconds"), time.time() - t0)
    return _write_tables(Path(out_dir), records, trajs, curves, job, rid)


def nbody_data_job(out: dict, cfg: dict) -> None:
    """Simulate and cache the symmetric and the field (partially symmetric) N-body pools."""
    from lmcbench.ace.nbody import generate

    data = copy.deepcopy(cfg["nbody"]["data"])
    field = data.pop("field")
    generate(out["symmetric"], {**data, "field": (0.0, 0.0, 0.0)})
    generate(out["field"], {**data, "field": tuple(field)})
    write_json(Path(out["symmetric"]).with_name("provenance.json"), provenance({"job": "ace_nbody_data", **cfg["nbody"]["data"]}))
