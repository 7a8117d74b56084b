"""Group elements: sampling them and applying them to a state dict.

An element is a dict space name -> tensor:
  perm        an index tensor `idx` (new unit j = old unit idx[j]) or its permutation matrix
              P = perm_matrix(idx) (x P = x[..., idx]); the matrix form lets straight-through
              estimators push gradients through `apply`
  semiperm    S (n x m, m >= n): one non-zero per column, non-negative, rows summing to 1
              (glmc.md section 2, [inferred] reconstruction): writers x -> x S, readers x -> x T^T
              with T^T = (S != 0), so S T = I_n. It widens the space from n to m units.
  orth        O (n x m, O O^T = I_n; m = n for a symmetry, m > n embeds the space in a wider one)
  invertible  G (n x n): writers x -> x G, readers x -> x G^{-T}

`apply` uses only differentiable torch ops (index_select, matmul, cat), no loops over tensor
entries, and never modifies its input.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Iterable

import torch
from torch import Tensor

from lmcbench.symmetry.spec import Group, Space, SymmetrySpec

# which element classes each space class admits (its subgroups that we can represent)
ADMITS: dict[Group, tuple[Group, ...]] = {
    "perm": ("perm",),
    "semiperm": ("perm", "semiperm"),
    "orth": ("perm", "orth"),
    "invertible": ("perm", "orth", "invertible"),
}
_GENERALITY: tuple[Group, ...] = ("invertible", "orth", "semiperm", "perm")  # most general first


# ---------------------------------------------------------------------------------------------
# Random elements


def perm_matrix(idx: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """P with P[idx[j], j] = 1, so that x @ P == x[..., idx]."""
    n = idx.numel()
    p = torch.zeros(n, n, dtype=dtype, device=idx.device)
    p[idx, torch.arange(n, device=idx.device)] = 1
    return p


def random_permutation(n: int, generator: torch.Generator | None = None) -> Tensor:
    return torch.randperm(n, generator=generator)


def random_orthogonal(n: int, generator: torch.Generator | None = None, m: int | None = None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """Haar-distributed n x m matrix with orthonormal rows (m >= n; square by default).

    QR of a Gaussian with the signs of diag(R) moved into Q, which makes Q Haar (Mezzadri 2007).
    """
    m = n if m is None else m
    if m < n:
        raise ValueError(f"need m >= n, got {n} x {m}")
    q, r = torch.linalg.qr(torch.randn(m, n, generator=generator, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    signs[signs == 0] = 1
    return (q * signs).T.contiguous().to(dtype)


def random_invertible(n: int, generator: torch.Generator | None = None, cond: float = 4.0,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """U diag(s) V^T with Haar U, V and log-uniform singular values: condition number <= cond."""
    u = random_orthogonal(n, generator, dtype=torch.float64)
    v = random_orthogonal(n, generator, dtype=torch.float64)
    log_s = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * math.log(cond)
    return ((u * log_s.exp()) @ v.T).to(dtype)


def random_semiperm(n: int, m: int, generator: torch.Generator | None = None,
                    dtype: torch.dtype = torch.float32) -> Tensor:
    """n x m semi-permutation: every source unit split into >= 1 of the m targets with positive
    weights summing to 1 (ReLU: relu(z) = sum_k relu(a_k z) for a_k >= 0, sum a_k = 1)."""
    if m < n:
        raise ValueError(f"a semi-permutation cannot shrink: {n} -> {m}")
    extra = torch.randint(n, (m - n,), generator=generator)
    src = torch.cat([torch.arange(n), extra])[torch.randperm(m, generator=generator)]
    w = 0.2 + torch.rand(m, generator=generator, dtype=torch.float64)
    w = w / torch.zeros(n, dtype=torch.float64).index_add_(0, src, w)[src]
    s = torch.zeros(n, m, dtype=torch.float64)
    s[src, torch.arange(m)] = w
    return s.to(dtype)


def _draw(space: Space, cls: Group, generator, semiperm_ratio: float, dtype) -> Tensor:
    n = space.dim
    if cls == "perm":
        return random_permutation(n, generator)
    if cls == "semiperm":
        return random_semiperm(n, max(n, round(n * semiperm_ratio)), generator, dtype)
    if cls == "orth":
        return random_orthogonal(n, generator, dtype=dtype)
    return random_invertible(n, generator, dtype=dtype)


def sample_element(spec: SymmetrySpec, generator: torch.Generator | None = None,
                   classes: Iterable[Group] = ("perm", "semiperm", "orth", "invertible"),
                   semiperm_ratio: float = 2.0, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """A random element for every space: drawn from the most general class in `classes` that the
    space admits; spaces admitting none of them are left out (identity).

    E.g. classes=("perm",) gives a residual permutation even where the residual is orthogonal.
    Restrict spaces with `spec.subset(...)`. semiperm_ratio: target/source width of semi-permutations.
    """
    classes = set(classes)
    element = {}
    for space in spec:
        cls = next((c for c in _GENERALITY if c in classes and c in ADMITS[space.group]), None)
        if cls is not None:
            element[space.name] = _draw(space, cls, generator, semiperm_ratio, dtype)
    return element


# ---------------------------------------------------------------------------------------------
# Applying elements


def _unit_matmul(x: Tensor, g: Tensor, block: int) -> Tensor:
    """x (..., n*block) -> x (G kron I_block), units are contiguous runs of `block` coordinates."""
    g = g.to(dtype=x.dtype, device=x.device)
    if block == 1:
        return x @ g
    units = x.unflatten(-1, (g.shape[0], block)).transpose(-1, -2) @ g
    return units.transpose(-1, -2).flatten(-2)


def _unit_select(x: Tensor, idx: Tensor, block: int) -> Tensor:
    return x.unflatten(-1, (-1, block)).index_select(-2, idx.to(x.device)).flatten(-2)


def _check(ok: bool, space: Space, what: str) -> None:
    if not ok:
        raise ValueError(f"element for space {space.name!r} ({space.group}): {what}")


def _role_maps(space: Space, g: Tensor, relaxed: bool = False) -> dict[str, Callable[[Tensor], Tensor]]:
    """For each action role, the map on coordinates (space axis last). `relaxed`: see `apply`."""
    n, b = space.dim, space.block
    if not g.is_floating_point():  # index permutation: every role just reorders units
        _check(g.shape == (n,) and bool((g.sort().values == torch.arange(n, device=g.device)).all()),
               space, "index tensor is not a permutation of range(dim)")
        select = lambda x: _unit_select(x, g, b)  # noqa: E731
        return dict.fromkeys(("writer", "reader", "offset", "scale"), select)
    _check(g.ndim == 2 and g.shape[0] == n, space, f"expected a {n} x m matrix, got {tuple(g.shape)}")
    gd = g.detach()
    eye = torch.eye(n, dtype=gd.dtype, device=gd.device)
    ones = eye.diagonal()
    tol = max(1e-4, 10 * torch.finfo(gd.dtype).eps)
    if relaxed:   # the linear extension of the permutation action, in any space (all admit permutations)
        _check(gd.shape[1] == n and bool((gd >= 0).all()), space, "a relaxed permutation must be square and non-negative")
        reader, maps_scale = g, True
    elif space.group == "perm":
        _check(gd.shape[1] == n and bool(((gd == 0) | (gd == 1)).all())
               and torch.equal(gd.sum(0), ones) and torch.equal(gd.sum(1), ones),
               space, "not a permutation matrix")
        reader, maps_scale = g, True
    elif space.group == "semiperm":
        _check(bool((gd >= 0).all()) and bool(((gd != 0).sum(0) == 1).all())
               and torch.allclose(gd.sum(1), ones, atol=tol),
               space, "not a semi-permutation (non-negative, one non-zero per column, rows sum to 1)")
        reader, maps_scale = (g != 0).to(g.dtype), False
    elif space.group == "orth":
        _check(gd.shape[1] >= n and torch.allclose(gd @ gd.T, eye, atol=tol),
               space, "rows are not orthonormal")
        reader, maps_scale = g, False
    else:
        _check(gd.shape[1] == n, space, "an invertible map must be square")
        reader, maps_scale = torch.linalg.inv(g).mT, False
    write = lambda x: _unit_matmul(x, g, b)  # noqa: E731
    maps = {"writer": write, "offset": write, "reader": lambda x: _unit_matmul(x, reader, b)}
    if maps_scale:  # a gain vector permuted by a permutation matrix
        maps["scale"] = write
    return maps


def _transform_axis(t: Tensor, axis: int, segments: list[tuple[int, int, Callable]]) -> Tensor:
    """Replace the slices [start, start+length) of `axis` by fn(slice); slices may change length."""
    x = t.movedim(axis, -1)
    if len(segments) == 1 and segments[0][:2] == (0, x.shape[-1]):  # the whole axis: no concatenation (a copy)
        return segments[0][2](x).movedim(-1, axis)
    pieces, pos = [], 0
    for start, length, fn in sorted(segments, key=lambda s: s[0]):
        if start < pos or start + length > x.shape[-1]:
            raise ValueError(f"overlapping or out-of-range slice [{start}, {start + length}) on axis {axis}")
        pieces += [x[..., pos:start], fn(x[..., start:start + length])]
        pos = start + length
    pieces.append(x[..., pos:])
    return torch.cat(pieces, -1).movedim(-1, axis)


def apply(spec: SymmetrySpec, state_dict: dict[str, Tensor], element: dict[str, Tensor],
          relaxed: bool = False) -> dict[str, Tensor]:
    """The state dict transformed by `element`, composing its spaces in spec order.

    Pure: returns a new dict; transformed entries are new tensors, untouched ones are shared.
    `relaxed`: every element is a relaxed permutation, a non-negative square matrix S (e.g. doubly
    stochastic) acting as x -> x S in every role, as a permutation matrix does in any space; where a
    parameter is acted on by one space along one axis, the result is linear in S, so a mixture of
    permutations gives the same mixture of the permuted states (learned matching's Sinkhorn relaxation).
    """
    unknown = set(element) - set(spec.names)
    if unknown:
        raise KeyError(f"element names not in spec: {sorted(unknown)}")
    out = dict(state_dict)
    for space in spec:
        if space.name not in element:
            continue
        maps = _role_maps(space, element[space.name], relaxed)
        by_axis = defaultdict(list)
        for a in space.actions:
            if a.role not in maps:
                raise ValueError(f"{a.param} ({a.role}) in space {space.name!r} only admits permutations; "
                                 "canonicalize the model first")
            by_axis[a.param, a.axis].append((a.offset, space.size, maps[a.role]))
        for (param, axis), segments in by_axis.items():
            out[param] = _transform_axis(out[param], axis, segments)
    return out
