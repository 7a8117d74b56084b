"""GLMC experiment jobs: pairwise alignment and interpolation (`pairs_job`, width-heterogeneous pairs
included) and the multi-model simplex (`multi_model_job`). See `lmcbench.experiments`."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from lmcbench.barrier import barriers, default_grid, interpolation_curve, simplex_barriers, simplex_surface
from lmcbench.symmetry.canonical import canonicalize, embed_like
from lmcbench.checkpoints import load_model, save_model
from lmcbench.data import load_dataset
from lmcbench.io import provenance, run_id, write_json
from lmcbench.matchers import MatchContext, get_matcher
from lmcbench.matchers.universe import align_many
from lmcbench.symmetry import layout_for
from lmcbench.tables import write_csv
from lmcbench.tasks import make_task
from lmcbench.training import seed_everything

log = logging.getLogger(__name__)


def _check_same_architecture(info_a: dict, info_b: dict, where: str) -> None:
    if info_a["model"] != info_b["model"] or info_a["meta"] != info_b["meta"]:
        raise ValueError(f"{where}: the checkpoints have different architectures ({info_a['model']} vs "
                         f"{info_b['model']}); to align a narrower model to a wider one use "
                         "`lmcbench align WIDE NARROW --experiment width_hetero` (or the workflow's glmc.width_hetero)")


def _same_architecture(ckpt_a, ckpt_b, seed: int = 0):
    """Pairwise preparation: both checkpoints as saved, which must share one architecture."""
    model_a, info_a = load_model(ckpt_a)
    model_b, info_b = load_model(ckpt_b)
    _check_same_architecture(info_a, info_b, f"{ckpt_a} vs {ckpt_b}")
    return model_a, model_b, info_a, info_b, {}


def _embedded_narrow(ckpt_wide, ckpt_narrow, seed: int = 0):
    """Width-heterogeneous preparation: the canonical wide model, and the narrow one embedded exactly
    into its width and MLP width with a random semi-orthogonal map (GLMC §5, canonical form)."""
    wide, info_w = load_model(ckpt_wide)
    narrow, info_n = load_model(ckpt_narrow)
    if info_w["meta"] != info_n["meta"]:
        raise ValueError(f"{ckpt_wide} and {ckpt_narrow} were trained on different data ({info_w['meta']} vs {info_n['meta']})")
    canon_wide = canonicalize(wide)
    try:
        embedded = embed_like(canonicalize(narrow), canon_wide, generator=torch.Generator().manual_seed(seed))
    except ValueError as err:
        raise ValueError(f"cannot embed {ckpt_narrow} into {ckpt_wide}: {err}") from None
    width = layout_for(canon_wide).width
    return canon_wide, embedded, info_w, info_n, {"width_a": width, "width_b": layout_for(narrow).width}


PREPARE = {"pairwise": _same_architecture, "width_hetero": _embedded_narrow}


def _task_for(data_cfg: dict, info: dict, ckpt) -> object:
    """The barrier's task on `data_cfg`, which must be data of the kind the checkpoint was trained on."""
    data = load_dataset(data_cfg)
    shape_keys = ("num_classes", "in_chans", "img_size", "vocab_size")  # what the model's shapes depend on
    differ = [f"{k} {info['meta'].get(k)} vs {data.meta.get(k)}" for k in shape_keys
              if info["meta"].get(k) != data.meta.get(k)]
    if differ:
        raise ValueError(f"{ckpt} was trained on {info.get('dataset', 'other data')}, which does not fit the barrier "
                         f"dataset {data.name} ({', '.join(differ)}): evaluate on the data it was trained on "
                         f"(`lmcbench align … --dataset {info.get('dataset', '<its dataset>')}`)")
    return make_task(data, info["model"])


def pairs_job(pairs: list[tuple[str | Path, str | Path]], out_dir: str | Path, method: str, data_cfg: dict,
              barrier_cfg: dict, matcher_cfg: dict | None = None, labels: dict | None = None, seed: int = 0,
              experiment: str = "pairwise", export: bool = False, progress: bool = True) -> pd.DataFrame:
    """For each (A, B) checkpoint pair: align B to A with `method` and interpolate. Writes curve.csv
    and barriers.csv (all pairs, one row set per pair), provenance.json, and with `export` each
    aligned B as a checkpoint `aligned_s{a}-s{b}/` that computes what the aligned model computes.

    experiment: "pairwise" (one architecture) or "width_hetero" (B narrower, embedded into A's width).
    One job per (model, method) loads the data once and amortises start-up over the pairs."""
    out_dir = Path(out_dir)
    job = {"job": experiment, "pairs": [[str(a), str(b)] for a, b in pairs], "method": method, "data": data_cfg,
           "barrier": barrier_cfg, "matcher": matcher_cfg or {}, "seed": seed}
    rid = run_id(job)
    task, curves, tables, infos = None, [], [], []
    for ckpt_a, ckpt_b in pairs:
        model_a, model_b, info_a, info_b, extra = PREPARE[experiment](ckpt_a, ckpt_b, seed=seed)
        if task is None:
            task = _task_for(data_cfg, info_a, ckpt_a)
        seed_everything(seed)
        alignment = get_matcher(method)(model_a, model_b, MatchContext(task, matcher_cfg or {}, seed))
        curve = interpolation_curve(alignment.template, task, alignment.state_a, alignment.state_b,
                                    lambdas=default_grid(barrier_cfg["points"]), splits=barrier_cfg["splits"],
                                    max_examples=barrier_cfg.get("max_examples"),
                                    batch_size=barrier_cfg["batch_size"], progress=progress)
        keys = {"method": method, "seed_a": info_a["seed"], "seed_b": info_b["seed"], **(labels or {}), **extra,
                "run_id": rid}
        curves.append(curve.assign(**keys))
        # a matcher's per-run columns (learned matching: units moved, chosen validation loss) join its rows
        tables.append(barriers(curve).assign(**keys, **alignment.info.get("columns", {})))
        infos.append({"a": str(ckpt_a), "b": str(ckpt_b), "form": alignment.form, **alignment.info})
        log.info("%s s%s-s%s: %s", method, info_a["seed"], info_b["seed"],
                 tables[-1][["split", "metric", "barrier", "barrier_midpoint"]].to_string(index=False))
        if export:
            alignment.template.load_state_dict(alignment.state_b)
            save_model(out_dir / f"aligned_s{info_a['seed']}-s{info_b['seed']}", alignment.template,
                       info_a["model"], info_a["meta"], form=alignment.form, seed=info_b["seed"],
                       aligned_to=str(ckpt_a), method=method, run_id=rid)
    table = pd.concat(tables, ignore_index=True)
    write_csv(pd.concat(curves, ignore_index=True), out_dir / "curve.csv")
    write_csv(table, out_dir / "barriers.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, seed), "run_id": rid, "alignments": infos})
    return table


def multi_model_job(ckpts: list[str | Path], out_dir: str | Path, method: str, data_cfg: dict, simplex_cfg: dict,
                    matcher_cfg: dict | None = None, labels: dict | None = None, seed: int = 0,
                    progress: bool = True) -> pd.DataFrame:
    """Align N ≥ 3 checkpoints to a universe (GLMC §5) and evaluate their mixtures on a simplex grid."""
    if len(ckpts) < 3:
        raise ValueError(f"multi-model alignment needs at least 3 checkpoints, got {len(ckpts)}")
    loaded = [load_model(c) for c in ckpts]
    for (_, info), ckpt in zip(loaded[1:], ckpts[1:]):
        _check_same_architecture(loaded[0][1], info, f"{ckpts[0]} vs {ckpt}")
    job = {"job": "multi_model", "models": [str(c) for c in ckpts], "method": method, "data": data_cfg,
           "simplex": simplex_cfg, "matcher": matcher_cfg or {}, "seed": seed}
    seed_everything(seed)
    task = _task_for(data_cfg, loaded[0][1], ckpts[0])
    template, states, info = align_many([m for m, _ in loaded], method, MatchContext(task, matcher_cfg or {}, seed))
    surface = simplex_surface(template, task, states, simplex_cfg["resolution"], simplex_cfg["splits"],
                              simplex_cfg.get("max_examples"), simplex_cfg["batch_size"], progress=progress)
    keys = {"method": method, "seeds": "-".join(str(i["seed"]) for _, i in loaded), **(labels or {}),
            "run_id": run_id(job)}
    table = simplex_barriers(surface).assign(**keys)
    out_dir = Path(out_dir)
    write_csv(surface.assign(**keys), out_dir / "surface.csv")
    write_csv(table, out_dir / "barriers.csv")
    write_json(out_dir / "provenance.json", {**provenance(job, seed), "run_id": keys["run_id"], "alignment": info})
    return table
