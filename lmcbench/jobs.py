"""Job-level functions: what one Snakemake rule (or one CLI call) does, end to end.

Each job reads its inputs, computes, and writes its outputs atomically together with a
`provenance.json` (config, seed, git commit, package versions). Tidy records carry a `run_id` that
names the provenance they came from.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lmcbench.barrier import barriers, default_grid, interpolation_curve
from lmcbench.checkpoints import load_model, save_model
from lmcbench.data import load_dataset
from lmcbench.io import atomic_path, provenance, run_id, write_json
from lmcbench.matchers import MatchContext, get_matcher
from lmcbench.models import build_model
from lmcbench.tasks import make_task
from lmcbench.training import TrainConfig, seed_everything, train

log = logging.getLogger(__name__)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def train_job(out_dir: str | Path, model_name: str, model_cfg: dict, data_cfg: dict, seed: int,
              progress: bool = True) -> Path:
    """Train one seed of one model; writes model.safetensors, config.json, history.csv, provenance.json."""
    out_dir = Path(out_dir)
    job = {"job": "train", "model_name": model_name, "model": model_cfg, "data": data_cfg, "seed": seed}
    rid = run_id(job)
    seed_everything(seed)  # the initialisation depends on the seed too, not only the batches
    data = load_dataset(data_cfg)
    model = build_model(model_cfg, data.meta)
    task = make_task(data, model_cfg)
    log.info("training %s seed %d on %s: %d parameters", model_name, seed, data.name,
             sum(p.numel() for p in model.parameters()))
    result = train(model, task, TrainConfig.from_dict(model_cfg["train"]), seed, workdir=out_dir, progress=progress)
    history = pd.DataFrame(result.history).assign(model=model_name, dataset=data.name, seed=seed, run_id=rid)
    write_csv(out_dir / "history.csv", history)
    write_json(out_dir / "provenance.json", {**provenance(job, seed), "run_id": rid,
                                             "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                                             "stopped_early": result.stopped_early})
    save_model(out_dir, model.cpu(), model_cfg, data.meta, seed=seed, dataset=data.name, run_id=rid)
    (out_dir / "resume.pt").unlink(missing_ok=True)
    return out_dir


def pairwise_job(ckpt_a: str | Path, ckpt_b: str | Path, out_dir: str | Path, method: str, data_cfg: dict,
                 barrier_cfg: dict, matcher_cfg: dict | None = None, labels: dict | None = None,
                 seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Align checkpoint B to A with `method`, then write the interpolation curve and its barriers."""
    out_dir = Path(out_dir)
    model_a, info_a = load_model(ckpt_a)
    model_b, info_b = load_model(ckpt_b)
    if info_a["model"] != info_b["model"] or info_a["meta"] != info_b["meta"]:
        raise ValueError(f"{ckpt_a} and {ckpt_b} have different architectures "
                         f"({info_a['model']} vs {info_b['model']}); use a width-heterogeneous experiment instead")
    job = {"job": "pairwise", "a": str(ckpt_a), "b": str(ckpt_b), "method": method, "data": data_cfg,
           "barrier": barrier_cfg, "matcher": matcher_cfg or {}, "seed": seed}
    rid = run_id(job)
    seed_everything(seed)
    task = make_task(load_dataset(data_cfg), info_a["model"])
    alignment = get_matcher(method)(model_a, model_b, MatchContext(task, matcher_cfg or {}, seed))
    curve = interpolation_curve(alignment.template, task, alignment.state_a, alignment.state_b,
                                lambdas=default_grid(barrier_cfg["points"]), splits=barrier_cfg["splits"],
                                max_examples=barrier_cfg.get("max_examples"), batch_size=barrier_cfg["batch_size"],
                                progress=progress)
    keys = {"method": method, "seed_a": info_a["seed"], "seed_b": info_b["seed"], **(labels or {}), "run_id": rid}
    table = barriers(curve).assign(**keys)
    write_csv(out_dir / "curve.csv", curve.assign(**keys))
    write_csv(out_dir / "barriers.csv", table)
    write_json(out_dir / "provenance.json", {**provenance(job, seed), "run_id": rid, "alignment": alignment.info})
    log.info("%s: %s", method, table[["split", "metric", "barrier", "barrier_midpoint"]].to_string(index=False))
    return table
