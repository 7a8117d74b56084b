"""Charged N-body simulation (the EGNN/SEGNN "charged" task, Kipf et al. 2018 style), generated locally.

Positions/velocities in 3-D, charges ±1 (p = ½), Coulomb-like pairwise forces q_i q_j (x_i − x_j)/r³,
leapfrog with dt = 0.001, saved every 100 steps [official code: EGNN generator settings].
Deviations [inferred], chosen to keep the symmetric data exactly E(3)-symmetric: no walls and no
force clipping by default (the official simulator clips force components at ±0.1/dt, which is not
rotation-equivariant; `clip=True` reproduces it). Instead a Plummer softening r² → r² + s²
(rotation-equivariant) keeps close encounters bounded; configs use s = 0.1. A constant external field E (force q_i·E) gives
the partially symmetric variant: SO(3) breaks to rotations about E.
Task: predict positions at frame `target_frame` from the state (x, v, q) at `input_frame`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmcbench.io import atomic_path

INPUT_FRAME, TARGET_FRAME = 30, 40   # saved frames: the task maps frame 30 to frame 40 [inferred; EGNN predicts 1000 steps ahead]


def simulate(n_sims: int, seed: int, n_balls: int = 5, dt: float = 1e-3, sample_freq: int = 100,
             n_frames: int = 41, loc_std: float = 1.0, vel_norm: float = 0.5, field=(0.0, 0.0, 0.0),
             clip: bool = False, softening: float = 0.0, dtype=np.float64) -> dict[str, np.ndarray]:
    """Simulate `n_sims` systems at once; returns loc/vel [S, frames, n, 3], charges [S, n, 1]."""
    rng = np.random.default_rng(seed)
    q = rng.choice(np.array([1.0, -1.0]), size=(n_sims, n_balls, 1)).astype(dtype)
    x = rng.normal(0.0, loc_std, size=(n_sims, n_balls, 3)).astype(dtype)
    v = rng.normal(size=(n_sims, n_balls, 3)).astype(dtype)
    v = v / np.linalg.norm(v, axis=-1, keepdims=True) * vel_norm
    field = np.asarray(field, dtype=dtype)
    qq = q * np.swapaxes(q, 1, 2)   # [S, n, n]

    def force(x):
        d = x[:, :, None, :] - x[:, None, :, :]               # x_i − x_j
        r2 = (d ** 2).sum(-1) + softening ** 2
        np.einsum("sii->si", r2)[:] = np.inf                   # no self-interaction
        f = (qq / r2 ** 1.5)[..., None] * d
        f = f.sum(2) + q * field
        if clip:
            f = np.clip(f, -0.1 / dt, 0.1 / dt)
        return f

    locs, vels = [x.copy()], [v.copy()]
    f = force(x)
    for step in range(1, (n_frames - 1) * sample_freq + 1):   # leapfrog (kick-drift-kick)
        v = v + 0.5 * dt * f
        x = x + dt * v
        f = force(x)
        v = v + 0.5 * dt * f
        if step % sample_freq == 0:
            locs.append(x.copy())
            vels.append(v.copy())
    return {"loc": np.stack(locs, 1), "vel": np.stack(vels, 1), "charges": q, "field": field}


def energy(loc: np.ndarray, vel: np.ndarray, charges: np.ndarray, field=(0.0, 0.0, 0.0),
           softening: float = 0.0) -> np.ndarray:
    """Total energy per system and frame: kinetic + pairwise Coulomb + external potential −q E·x."""
    kin = 0.5 * (vel ** 2).sum((-1, -2))
    d = loc[..., :, None, :] - loc[..., None, :, :]
    r = np.sqrt((d ** 2).sum(-1) + softening ** 2)
    n = loc.shape[-2]
    iu = np.triu_indices(n, 1)
    qq = (charges * np.swapaxes(charges, -1, -2))[:, None]
    pot = (qq[..., iu[0], iu[1]] / r[..., iu[0], iu[1]]).sum(-1)
    ext = -(charges[:, None] * (loc @ np.asarray(field))[..., None]).sum((-1, -2))
    return kin + pot + ext


def generate(path: str | Path, cfg: dict) -> Path:
    """Simulate train/val/test pools (separate fixed seeds) and cache them in one .npz; `cfg` is the effective
    ace.nbody.data block (seed and field from the default profile)."""
    arrays = {}
    sim_kw = {k: cfg[k] for k in ("n_balls", "dt", "sample_freq", "clip", "softening") if k in cfg}
    n_frames = TARGET_FRAME + 1
    for i, split in enumerate(("train", "val", "test")):
        sim = simulate(cfg[f"n_{split}"], seed=cfg["seed"] * 10 + i, n_frames=n_frames,
                       field=cfg["field"], **sim_kw)
        for key in ("loc", "vel", "charges"):
            arrays[f"{split}_{key}"] = sim[key].astype(np.float32)
    arrays["field"] = np.asarray(cfg["field"], dtype=np.float32)
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)
        # np.savez appends .npz when missing; the temp path already ends in .npz
    return Path(path)


def load(path: str | Path, input_frame: int = INPUT_FRAME, target_frame: int = TARGET_FRAME) -> dict:
    """{split: (loc, vel, charges, target_loc)} as float32 tensors; [B, n, 3] / [B, n, 1]."""
    z = np.load(path)
    out = {}
    for split in ("train", "val", "test"):
        loc, vel = z[f"{split}_loc"], z[f"{split}_vel"]
        out[split] = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in
                           (loc[:, input_frame], vel[:, input_frame], z[f"{split}_charges"], loc[:, target_frame]))
    return out
