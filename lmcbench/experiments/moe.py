"""MoE-LMC experiment jobs and metrics: fine-tune MoE layers on a frozen dense backbone per seed,
align every seed pair with each method, interpolate, and write tidy CSVs + provenance.

Protocol (moe.md §5.1): one dense backbone is trained once (the `train` rule's checkpoint); for each
seed a freshly initialised MoE replaces the FFN of the chosen layers and only the MoE is fine-tuned
([secondary]; `train_backbone` unfreezes everything, which is outside the paper's protocol).

Metrics (moe.md §4): the chord barrier of `lmcbench.barrier` for loss and accuracy; the AUC relative
to the chord, trapezoid over λ of (metric − chord) for loss and (chord − metric) for accuracy, so
positive is worse in both [inferred]; ratio of each to the naive value of the same pair; and, per
pair, the rank of each method's expert order among all orders (each after Step 2) by the test loss
barrier, with the scaled excess barrier L̂ = (L_method − L_best)/(L_naive − L_best) × 100 [paper §6.3].
"""
from __future__ import annotations

import copy
import logging
import time
from itertools import combinations
from pathlib import Path

import pandas as pd
import torch

from lmcbench import methods as registry
from lmcbench.barrier import add_ratios, barriers, curve_metrics, default_grid, interpolation_curve, scaled_excess
from lmcbench.moe import diagnostics as D
from lmcbench.moe.diagnostics import order_rank
from lmcbench.checkpoints import load_model, save_model
from lmcbench.data import load_dataset
from lmcbench.io import provenance, run_id, write_json
from lmcbench.config import load_default_profile
from lmcbench.models.moe import MOE_KEYS, AuxLossTask, freeze_backbone, insert_moe, moe_layer_defaults
from lmcbench.moe.evaluation import PairEvaluator
from lmcbench.moe.full_model import align_full, moe_backbone_spec
from lmcbench.moe.router_init import kmeans_routers
from lmcbench.moe.matching import align, align_with_orders, all_orders, order_key
from lmcbench.tables import write_csv
from lmcbench.tasks import make_task
from lmcbench.training import TrainConfig, seed_everything, train

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- fine-tuning
def moe_layer_cfg(moe_cfg: dict) -> dict:
    """The MoE options `insert_moe` takes (and `build_model` stores in a checkpoint)."""
    return {k: moe_cfg[k] for k in MOE_KEYS if k in moe_cfg}


ROUTER_INIT_EXAMPLES = 512   # training inputs whose tokens the k-means router initialisation clusters


def initial_moe(backbone: torch.nn.Module, moe_cfg: dict, seed: int, task=None) -> torch.nn.Module:
    """A copy of `backbone` with fresh MoE layers initialised from `seed` (before any fine-tuning);
    with router_init "kmeans", the routers are set from the first training inputs of `task`."""
    generator = torch.Generator().manual_seed(seed)
    model = insert_moe(copy.deepcopy(backbone), moe_layer_cfg(moe_cfg), generator)
    moe_cfg = {**moe_layer_defaults(), **moe_cfg}
    if moe_cfg["router_init"] == "kmeans":
        if task is None:
            raise ValueError("router_init 'kmeans' needs the task's training data")
        inputs = task.eval_tensors("train", ROUTER_INIT_EXAMPLES)[0]
        kmeans_routers(model, inputs, moe_cfg["router_scale"], generator)
    return model


def finetune_moe(backbone: torch.nn.Module, task, moe_cfg: dict, train_cfg: dict, seed: int,
                 train_backbone: bool = False, progress: bool = False):
    """A copy of `backbone` with fresh MoE layers (initialised from `seed`) fine-tuned on `task`."""
    model = initial_moe(backbone, moe_cfg, seed, task)
    freeze_backbone(model, train_backbone)
    seed_everything(seed)
    task = AuxLossTask(task) if moe_cfg.get("aux_loss_coef") else task
    result = train(model, task, TrainConfig.from_dict(train_cfg), seed, progress=progress)
    return model.cpu().eval(), result


# --------------------------------------------------------------------------------------------- alignment
def eval_data(task, barrier_cfg: dict, splits) -> dict:
    """split -> (inputs, targets): the whole test split always; `max_examples` caps only the train split."""
    return {s: task.eval_tensors(s, None if s == "test" else barrier_cfg.get("max_examples")) for s in splits}


def _curve(model, task, state_a, state_b, barrier_cfg, splits=None):
    """One end-to-end interpolation curve (every tensor interpolated; whole test split)."""
    splits = splits or barrier_cfg["splits"]
    data = eval_data(task, barrier_cfg, splits)
    return pd.concat([interpolation_curve(model, task, state_a, state_b, lambdas=default_grid(barrier_cfg["points"]),
                                          splits=[s], max_examples=len(data[s][1]),
                                          batch_size=barrier_cfg["batch_size"]) for s in splits], ignore_index=True)


def _loss_barrier(curve: pd.DataFrame) -> float:
    return float(barriers(curve).query("split == 'test' and metric == 'loss'")["barrier"].iloc[0])


def align_pair(model: torch.nn.Module, task, state_a: dict, state_b: dict, barrier_cfg: dict,
               methods: list[str], max_orders: int, keys: dict | None = None,
               init_states: tuple[dict, dict] | None = None, data: dict | None = None,
               options: dict | None = None):
    """All `methods` (registered moe_order names; `options`: name -> options, config moe.options) on
    one pair. Returns (curves, barriers, ranks, orders, diagnostics) tables.

    A method that evaluates all orders (best_order) and the ranks of every method that orders every
    layer need every order of every layer evaluated (test split, loss barrier, on the `rank_points`
    grid); they are skipped (and logged) when there are more than `max_orders` orders. `init_states` (the two MoEs before fine-tuning) adds expert movement and whether Step 1
    on the initial weights already gives the same order; see `lmcbench.moe.diagnostics`."""
    keys = keys or {}
    splits = list(barrier_cfg["splits"])
    data = data or eval_data(task, barrier_cfg, sorted(set(splits) | {"test"}))
    evaluator = PairEvaluator(model, task, state_a, state_b, data, barrier_cfg["batch_size"])
    grid = default_grid(barrier_cfg["points"])
    rank_grid = default_grid(barrier_cfg.get("rank_points") or barrier_cfg["points"])
    searching = [m for m in methods if registry.get("moe_order", m).obj.evaluates_all_orders]
    states, taus = {}, {}
    for method in [m for m in methods if m not in searching]:
        states[method], taus[method] = align(state_a, state_b, method, (options or {}).get(method))
    orders = all_orders(state_a, max_orders) if searching else None
    if searching and orders is None:
        log.info("more than %d expert orders: %s and ranks skipped", max_orders, ", ".join(searching))
    order_table = pd.DataFrame()
    if orders is not None:
        order_rows = []
        for taus_o in orders:
            key = order_key(taus_o)
            curve = evaluator.curve(align_with_orders(state_a, state_b, taus_o), key, rank_grid, ["test"])
            row = curve_metrics(curve).query("metric == 'loss'").iloc[0]
            order_rows.append({"order": key, "barrier": row["barrier"], "auc": row["auc"],
                               "gate_cost": D.total_cost(state_a, state_b, taus_o, "gate_wm"),
                               "expert_cost": D.total_cost(state_a, state_b, taus_o, "expert_wm")})
        order_table = pd.DataFrame(order_rows)
        best = int(order_table["barrier"].idxmin())
        for method in searching:
            states[method], taus[method] = align_with_orders(state_a, state_b, orders[best]), orders[best]
    curves, tables = [], []
    for method, state in states.items():
        order = order_key(taus[method]) if taus[method] else "naive"
        curve = evaluator.curve(state, order, grid, splits)
        curves.append(curve.assign(method=method, **keys))
        tables.append(curve_metrics(curve).assign(method=method, order=order, **keys))
    ranks = []
    if orders is not None:
        naive_b = _loss_barrier(evaluator.curve(state_b, "naive", rank_grid, ["test"]))
        best_b = float(order_table["barrier"].min())
        lookup = dict(zip(order_table["order"], order_table["barrier"]))
        ranked = [m for m in taus if m not in searching and set(taus[m]) == set(orders[0])]  # orders every layer
        for method in ranked:
            b = lookup[order_key(taus[method])]
            ranks.append({"method": method, "order": order_key(taus[method]),
                          "rank": order_rank(b, order_table["barrier"]), "n_orders": len(order_table),
                          "barrier": b, "best_barrier": best_b, "naive_barrier": naive_b,
                          "scaled_excess": scaled_excess(b, best_b, naive_b), "split": "test", "metric": "loss",
                          **keys})
        order_table = order_table.assign(**keys)
    # the curves are done: the diagnostics run on the CPU, where the states are (the evaluator may be on a GPU)
    diag = D.pair_diagnostics(evaluator.model.cpu(), state_a, state_b, data["test"][0], taus, order_table, ranks,
                              init_states)
    return (pd.concat(curves, ignore_index=True), add_ratios(pd.concat(tables, ignore_index=True)),
            pd.DataFrame(ranks), order_table, pd.DataFrame([{**keys, **diag}]))


def moe_sweep_job(out_dir: str | Path, backbone_ckpt: str | Path, moe_cfg: dict, train_cfg: dict, data_cfg: dict,
                  seeds: list[int], barrier_cfg: dict, methods: list[str], labels: dict | None = None,
                  max_orders: int | None = None, train_backbone: bool = False, save_models: bool = True,
                  progress: bool = False, options: dict | None = None) -> pd.DataFrame:
    """One configuration (model, gating, n_experts, placement): fine-tune an MoE per seed on the frozen
    backbone, then align every seed pair with every method. Writes barriers.csv, curve.csv, ranks.csv,
    orders.csv, diagnostics.csv, history.csv, provenance.json and (save_models) seed{s}/ checkpoints into out_dir.
    `methods`: registered moe_order names; `options`: their options by name (config moe.options);
    `max_orders` None: the default profile's moe.max_orders."""
    out_dir = Path(out_dir)
    max_orders = load_default_profile()["moe"]["max_orders"] if max_orders is None else max_orders
    job = {"job": "moe_sweep", "backbone": str(backbone_ckpt), "moe": moe_cfg, "train": train_cfg, "data": data_cfg,
           "seeds": list(seeds), "barrier": barrier_cfg, "methods": list(methods), "max_orders": max_orders,
           "train_backbone": train_backbone, **({"options": options} if options else {})}
    rid = run_id(job)
    backbone, info = load_model(backbone_ckpt)
    data = load_dataset(data_cfg)
    task = make_task(data, info["model"])
    model_cfg = {**info["model"], "moe": moe_layer_cfg(moe_cfg)}
    states, inits, histories, timing = {}, {}, [], {}
    start = time.perf_counter()
    for seed in seeds:
        model, result = finetune_moe(backbone, task, moe_cfg, train_cfg, seed, train_backbone, progress)
        states[seed] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        inits[seed] = initial_moe(backbone, moe_cfg, seed, task).state_dict()
        histories.append(pd.DataFrame(result.history).assign(seed=seed, **(labels or {}), run_id=rid))
        log.info("fine-tuned seed %d: best val loss %.4f", seed, result.best_val_loss)
        if save_models:
            save_model(out_dir / f"seed{seed}", model, model_cfg, info["meta"], seed=seed, dataset=data.name,
                       backbone=str(backbone_ckpt), run_id=rid)
    timing["finetune_s"] = time.perf_counter() - start
    template = model
    evaluation = eval_data(task, barrier_cfg, sorted(set(barrier_cfg["splits"]) | {"test"}))
    curves, tables, ranks, orders, diags = [], [], [], [], []
    start = time.perf_counter()
    for a, b in combinations(seeds, 2):
        keys = {**(labels or {}), "seed_a": a, "seed_b": b, "run_id": rid}
        c, t, r, o, d = align_pair(template, task, states[a], states[b], barrier_cfg, methods, max_orders, keys,
                                   (inits[a], inits[b]), evaluation, options)
        curves.append(c), tables.append(t), ranks.append(r), orders.append(o), diags.append(d)
        log.info("pair %d-%d:\n%s\n%s", a, b, t.query("split == 'test'")[
            ["method", "metric", "barrier", "auc", "ratio_to_naive"]].to_string(index=False),
            d.drop(columns=list(keys)).T.to_string(header=False))
    timing["align_s"] = time.perf_counter() - start
    table = pd.concat(tables, ignore_index=True)
    write_csv(pd.concat(curves, ignore_index=True), out_dir / "curve.csv")
    write_csv(table, out_dir / "barriers.csv")
    write_csv(pd.concat(ranks, ignore_index=True), out_dir / "ranks.csv")
    write_csv(pd.concat(orders, ignore_index=True), out_dir / "orders.csv")
    write_csv(pd.concat(diags, ignore_index=True), out_dir / "diagnostics.csv")
    write_csv(pd.concat(histories, ignore_index=True), out_dir / "history.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, seeds[0]), "run_id": rid, "timing": timing})
    return table


def moe_pair_job(ckpt_a: str | Path, ckpt_b: str | Path, out_dir: str | Path, method: str, data_cfg: dict,
                 barrier_cfg: dict, options: dict | None = None, max_orders: int | None = None) -> pd.DataFrame:
    """Two MoE checkpoints (e.g. a sweep's seed{s}/ folders) aligned by registered moe_order `method` with
    `options` (checked like config moe.options.<method>), and naive as the reference of the ratios; writes
    barriers.csv, curve.csv, ranks.csv and provenance.json into out_dir (`lmcbench moe`); `max_orders` None:
    the default profile's moe.max_orders."""
    out_dir = Path(out_dir)
    max_orders = load_default_profile()["moe"]["max_orders"] if max_orders is None else max_orders
    methods = list(dict.fromkeys(["naive", method]))
    job = {"job": "moe_pair", "a": str(ckpt_a), "b": str(ckpt_b), "methods": methods, "options": options or {},
           "data": data_cfg, "barrier": barrier_cfg, "max_orders": max_orders}
    rid = run_id(job)
    (model, info_a), (model_b, info_b) = load_model(ckpt_a), load_model(ckpt_b)
    task = make_task(load_dataset(data_cfg), info_a["model"])
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in (model, model_b)]
    keys = {"seed_a": info_a.get("seed"), "seed_b": info_b.get("seed"), "run_id": rid}
    curves, table, ranks, _, _ = align_pair(model, task, *states, barrier_cfg, methods, max_orders, keys,
                                            options={method: options or {}})
    write_csv(curves, out_dir / "curve.csv")
    write_csv(table, out_dir / "barriers.csv")
    write_csv(ranks, out_dir / "ranks.csv")
    write_json(out_dir / "provenance.json", {**provenance(job), "run_id": rid})
    return table


def moe_full_model_job(out_dir: str | Path, backbone_ckpts: list[str | Path], moe_cfg: dict, train_cfg: dict,
                       data_cfg: dict, barrier_cfg: dict, methods: list[str], labels: dict | None = None,
                       options: dict | None = None, progress: bool = False) -> pd.DataFrame:
    """For every independently trained backbone: insert an MoE (initialised from the backbone's seed) and
    fine-tune it; then align every pair of whole models with each registered moe_full method (`options`:
    name -> its options) and interpolate. Writes barriers.csv, curve.csv, provenance.json."""
    out_dir = Path(out_dir)
    job = {"job": "moe_full_model", "backbones": [str(c) for c in backbone_ckpts], "moe": moe_cfg,
           "train": train_cfg, "data": data_cfg, "barrier": barrier_cfg, "methods": list(methods),
           "options": options or {}}
    rid = run_id(job)
    data, task, models, timing = None, None, {}, {}
    start = time.perf_counter()
    for ckpt in backbone_ckpts:
        backbone, info = load_model(ckpt)
        if task is None:
            data = load_dataset(data_cfg)
            task = make_task(data, info["model"])
        model, _ = finetune_moe(backbone, task, moe_cfg, train_cfg, info["seed"], progress=progress)
        models[info["seed"]] = model
    timing["finetune_s"] = time.perf_counter() - start
    seeds = sorted(models)
    template = models[seeds[0]]
    spec = moe_backbone_spec(template, info["model"], info["meta"])
    curves, tables = [], []
    start = time.perf_counter()
    for a, b in combinations(seeds, 2):
        state_a = {k: v.detach().clone() for k, v in models[a].state_dict().items()}
        state_b = {k: v.detach().clone() for k, v in models[b].state_dict().items()}
        keys = {**(labels or {}), "seed_a": a, "seed_b": b, "run_id": rid}
        for method in methods:
            aligned = align_full(spec, state_a, state_b, method, (options or {}).get(method))
            curve = _curve(copy.deepcopy(template), task, state_a, aligned, barrier_cfg)
            curves.append(curve.assign(method=method, **keys))
            tables.append(curve_metrics(curve).assign(method=method, order="", **keys))
    timing["align_s"] = time.perf_counter() - start
    table = add_ratios(pd.concat(tables, ignore_index=True))
    log.info("full-model alignment (test):\n%s", table.query("split == 'test'").groupby(["method", "metric"])
             [["barrier", "ratio_to_naive"]].mean().to_string())
    write_csv(pd.concat(curves, ignore_index=True), out_dir / "curve.csv")
    write_csv(table, out_dir / "barriers.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, seeds[0]), "run_id": rid, "timing": timing})
    return table
