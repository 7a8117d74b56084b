"""The two solvers every weight-space matcher is built from, and the per-unit views they act on.

* `match_units`: a permutation from a linear assignment problem (scipy's Hungarian solver);
  `match_many`: several independent ones, in parallel threads.
* `orthogonal_from_gram`: the orthogonal map closest to aligning two sets of vectors (SVD).
* `cover_units`: a many-to-one assignment (semi-permutations: units split onto several).
* `l1_distances`: the L1 cost matrix of two sets of unit vectors (a fused kernel on the CPU).

Units-first views (`unit_features`) turn every parameter a space acts on into a matrix whose row j
holds everything unit j reads or writes, so one solver serves residual coordinates, heads (blocks
of head_dim coordinates) and MLP neurons alike.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from lmcbench.symmetry.spec import Action, Space


def action_rows(space: Space, action: Action, state: dict[str, Tensor]) -> Tensor:
    """(space.dim, k) view of the slice of `action.param` that `action` moves, row j = unit j (as stored:
    no dtype conversion; a copy only where the layout needs one)."""
    x = state[action.param].detach().movedim(action.axis, -1)[..., action.offset:action.offset + space.size]
    return x.unflatten(-1, (space.dim, space.block)).movedim(-2, 0).reshape(space.dim, -1)


def unit_features(space: Space, state: dict[str, Tensor], params: set[str] | None = None) -> Tensor:
    """(space.dim, k) float64 matrix: for every action of `space` (optionally only those on `params`),
    the slice it moves, reshaped so that row j is unit j."""
    blocks = [action_rows(space, action, state).double() for action in space.actions
              if params is None or action.param in params]
    if not blocks:
        raise ValueError(f"space {space.name!r} has no parameters to match on")
    return torch.cat(blocks, 1)


def l1_distances(a: Tensor, b: Tensor, kernel: str = "auto", tile_elements: int | None = None) -> Tensor:
    """(m, n) matrix of L1 distances Σ_k |a_ik − b_jk| (the [official code]'s MLP cost), never holding m·n·k.

    kernel "fused" (the default on a CPU): `lmcbench.matchers.l1_kernel`, sums kept in registers, ~9x
    the throughput of torch ops. kernel "torch" (the default on a GPU): tile by tile, one (rows, cols, k)
    difference buffer reused for every tile (sub into it, abs in place, sum into the output), sized by
    `tile_elements` (default 2^17 elements on a CPU, to stay in cache; 2^26 on a GPU, to fill it).
    With several CPU threads, each takes a contiguous share of the rows (the fused kernel releases the
    GIL; torch ops run single-threaded in each share): each entry is summed by one thread as with one
    thread, so the result does not depend on the thread count."""
    if kernel == "auto":
        kernel = "fused" if a.device.type == "cpu" else "torch"
    if kernel not in ("fused", "torch") or (kernel == "fused" and a.device.type != "cpu"):
        raise ValueError(f"l1_distances: kernel {kernel!r} on {a.device.type}; expected 'auto', 'torch' or "
                         "'fused' (CPU only)")
    m, n = a.shape[0], b.shape[0]
    out = torch.empty(m, n, dtype=a.dtype, device=a.device)
    if kernel == "fused":
        from lmcbench.matchers.l1_kernel import l1_block  # numba: imported (and compiled, cached) on first use

        a_np, b_np, out_np = a.detach().contiguous().numpy(), b.detach().contiguous().numpy(), out.numpy()

        def rows(i: int, j: int) -> None:
            l1_block(a_np[i:j], b_np, out_np[i:j])
    else:
        elements = tile_elements or (2 ** 17 if a.device.type == "cpu" else 2 ** 26)

        def rows(i: int, j: int) -> None:
            _l1_rows(a[i:j], b, out[i:j], elements)
    threads = torch.get_num_threads() if a.device.type == "cpu" else 1
    if threads == 1 or m < 2:
        rows(0, m)
        return out
    share = -(-m // threads)
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(-(-m // share)) as pool:
            list(pool.map(lambda i: rows(i, min(m, i + share)), range(0, m, share)))
    finally:
        torch.set_num_threads(threads)
    return out


def _l1_rows(a: Tensor, b: Tensor, out: Tensor, elements: int) -> None:
    (m, k), n = a.shape, b.shape[0]
    cols = min(n, max(8, elements // (4 * k)))
    rows = min(m, max(1, elements // (cols * k)))
    buffer = torch.empty(rows, cols, k, dtype=a.dtype, device=a.device)
    for i in range(0, m, rows):
        a_tile = a[i:i + rows, None]
        for j in range(0, n, cols):
            b_tile = b[None, j:j + cols]
            diff = torch.sub(a_tile, b_tile, out=buffer[:a_tile.shape[0], :b_tile.shape[1]])
            torch.sum(diff.abs_(), -1, out=out[i:i + rows, j:j + cols])


def match_units(score: Tensor, maximize: bool = True) -> Tensor:
    """idx such that unit j of the aligned B is unit idx[j] of B (x P = x[..., idx]), optimal for
    score[i, j] = similarity (or cost, with maximize=False) of A's unit i and B's unit j."""
    # a maximisation passed as the minimisation of -score (exact in any float dtype) and not converted
    # here: scipy makes its one float64 copy itself, where `maximize` or `.double()` would make another
    cost = score.detach().cpu()
    rows, cols = linear_sum_assignment((-cost if maximize else cost).numpy())
    idx = torch.empty(len(rows), dtype=torch.long)
    idx[torch.as_tensor(rows)] = torch.as_tensor(cols, dtype=torch.long)
    return idx


def match_many(scores: list[Tensor], maximize: bool = True, threads: int | None = None) -> list[Tensor]:
    """`match_units` of each score, `threads` problems at a time (default: torch's thread count).
    scipy's solver releases the GIL, so the problems run in parallel; each is solved as alone, so
    the result does not depend on `threads`. For independent steps whose cost matrices are computed
    first with torch's threads, which are idle while these run (no two pools compete for cores)."""
    threads = min(len(scores), threads or torch.get_num_threads())
    if threads <= 1:
        return [match_units(s, maximize) for s in scores]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda s: match_units(s, maximize), scores))


def cover_units(score: Tensor) -> Tensor:
    """src (m,) for an (m, n) similarity with m >= n: row unit i is assigned column unit src[i], every
    column at least once. The columns get distinct rows by a linear assignment (Hungarian), every
    other row its most similar column [inferred]; exact when rows are split copies of columns."""
    src = score.argmax(1)
    rows, cols = linear_sum_assignment(score.detach().cpu().double().numpy().T, maximize=True)
    src[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=src.dtype)
    return src


def orthogonal_from_gram(gram: Tensor) -> Tensor:
    """Orthogonal Procrustes: the O minimising ||F_A − Oᵀ F_B||_F for units-first features (rows are
    coordinates), given only their cross-Gram F_A F_Bᵀ, which is all it depends on (so feature blocks
    may be summed as Grams without being materialised): O = U Vᵀ from the SVD of F_B F_Aᵀ
    [official code `ortho_residual`]."""
    u, _, vh = torch.linalg.svd(gram.T)
    return u @ vh
