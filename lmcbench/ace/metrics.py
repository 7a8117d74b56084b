"""Equivariance errors: relative, per mixed layer and at the output, over group elements.

rel_err(a, b) = ‖a − b‖ / ‖b‖ over the whole batch (N-body: relative to the predicted displacement,
`displacement_err`). For images the elements are the exact grid
symmetries (rot90 multiples, and flips for D_N) that belong to the group, enumerated, not sampled
[ace.md §3, inferred]; for N-body, Haar-random rotations (QR) with random translations.
The official code reports an absolute L2 error instead [official code]; a relative one is comparable
across layers and tasks.
"""
from __future__ import annotations

import torch
from torch import nn

from lmcbench.ace.layers import mixed_layers


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def grid_elements(group: str, N: int) -> list[tuple[int, int]]:
    """(flip, rotation index in Z_N) of every non-identity group element that maps the pixel grid to itself."""
    step = N // 4 if N % 4 == 0 else (N // 2 if N % 2 == 0 else None)
    rots = [] if step is None else list(range(0, N, step))
    flips = (0, 1) if group == "D" else (0,)
    return [(f, r) for f in flips for r in rots if (f, r) != (0, 0)]


def _element(model, flip: int, r: int):
    g = model.gspace.fibergroup
    return g.element((flip, r)) if model.gspace.flips_order > 0 else g.element(r)


def _capture(model: nn.Module, x: torch.Tensor):
    outs, hooks = {}, []
    for name, m in mixed_layers(model) or [(n, m) for n, m in model.named_modules() if type(m).__name__ == "MixedLayer"]:
        hooks.append(m.register_forward_hook(lambda mod, inp, out, name=name: outs.__setitem__(name, out)))
    try:
        y = model(x)
    finally:
        for h in hooks:
            h.remove()
    return y, outs


@torch.no_grad()
def image_equivariance(model: nn.Module, x: torch.Tensor, group: str = "C", N: int = 4) -> dict[str, float]:
    """Mean relative error over grid elements, per mixed layer (fields transformed by escnn) and for the
    invariant logits ("output"). Models without escnn types (relaxed conv) get the output error only,
    with rot90 inputs."""
    model.eval()
    steerable = hasattr(model, "gspace")
    y, outs = _capture(model, x) if steerable else (model(x), {})
    errs: dict[str, list[float]] = {}
    for flip, r in (grid_elements(group, N) if steerable else [(0, 1), (0, 2), (0, 3)]):
        if steerable:
            g = _element(model, flip, r)
            gx = model.in_type.transform(x, g)
            gy, gouts = _capture(model, gx)
            for name, out in outs.items():
                errs.setdefault(name, []).append(rel_err(gouts[name].tensor, out.transform(g).tensor))
        else:
            gy = model(torch.rot90(x, r, dims=(-2, -1)))
        errs.setdefault("output", []).append(rel_err(gy, y))
    return {k: sum(v) / len(v) for k, v in errs.items()}


def displacement_err(g_out: torch.Tensor, out: torch.Tensor, loc: torch.Tensor, R: torch.Tensor,
                     t: torch.Tensor) -> float:
    """‖g_out − (R out + t)‖ / ‖out − loc‖ over the whole batch."""
    return float((g_out - (out @ R.T + t)).norm() / (out - loc).norm().clamp_min(1e-12))


def haar_rotation(generator: torch.Generator, n: int = 1) -> torch.Tensor:
    """n Haar-random SO(3) matrices from the QR of Gaussian matrices (sign-fixed, det +1)."""
    a = torch.randn(n, 3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    det = torch.linalg.det(q)
    q[:, :, 0] *= det[:, None]
    return q.float()


@torch.no_grad()
def nbody_equivariance(model: nn.Module, loc, vel, q, n_samples: int = 3, seed: int = 0,
                       axis_only: bool = False) -> dict[str, float]:
    """Error of the positions after each layer and at the output under x → Rx + t, v → Rv, relative to the
    displacement the model predicts (‖f(Rx+t) − (Rf(x)+t)‖ / ‖f(x) − x‖): relative to the absolute positions
    it would shrink with the scale of the coordinates rather than with the error of the prediction.
    With `axis_only`, R are rotations about z only (the symmetry left by a field along z)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    y, layers = model(loc, vel, q, return_layers=True)
    errs: dict[str, list[float]] = {}
    for _ in range(n_samples):
        if axis_only:
            th = float(torch.rand(1, generator=gen)) * 2 * torch.pi
            c, s = torch.cos(torch.tensor(th)), torch.sin(torch.tensor(th))
            R = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        else:
            R = haar_rotation(gen)[0]
        t = torch.randn(3, generator=gen)
        gy, glayers = model(loc @ R.T + t, vel @ R.T, q, return_layers=True)
        for i, ((_, x), (_, gx)) in enumerate(zip(layers, glayers)):
            errs.setdefault(f"layers.{i}", []).append(displacement_err(gx, x, loc, R, t))
        errs.setdefault("output", []).append(displacement_err(gy, y, loc, R, t))
    return {k: sum(v) / len(v) for k, v in errs.items()}
