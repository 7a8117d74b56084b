"""The `train` job: one seed of one model of the profile (GLMC models and MoE backbones alike)."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from lmcbench.checkpoints import save_model
from lmcbench.data import load_dataset
from lmcbench.io import provenance, run_id, write_json
from lmcbench.models import build_model
from lmcbench.tables import write_csv
from lmcbench.tasks import make_task
from lmcbench.training import TrainConfig, seed_everything, train

log = logging.getLogger(__name__)


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
    result = train(model, task, TrainConfig.from_dict(model_cfg["train"]), seed, workdir=out_dir, progress=progress,
                   job=job)
    history = pd.DataFrame(result.history).assign(model=model_name, dataset=data.name, seed=seed, run_id=rid)
    write_csv(history, out_dir / "history.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, seed), "run_id": rid,
                                             "best_val_loss": result.best_val_loss, "best_step": result.best_step,
                                             "stopped_early": result.stopped_early})
    save_model(out_dir, model.cpu(), model_cfg, data.meta, seed=seed, dataset=data.name, run_id=rid)
    (out_dir / "resume.pt").unlink(missing_ok=True)
    return out_dir
