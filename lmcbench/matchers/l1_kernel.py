"""The fused L1 distance kernel behind `lmcbench.matchers.assignment.l1_distances` on the CPU (numba).

GLMC's L1 MLP cost is m·n·k absolute differences per layer (174 G per round at GPT-2 small). torch
has no fused op for it: a tiled sub/abs/sum writes and re-reads every difference (2.3–2.8 G/s per
core here, `torch.cdist(p=1)` 1.8 G/s). This kernel keeps the sums in registers: four rows of `a`
against one row of `b` at a time (each loaded value of `b` is used four times), over column blocks
of `b` that stay in cache, vectorised over k: 22–24 G/s per core on AVX2 (measured, 512 × 3072 × 1537
float32). Its sums are reassociated by LLVM's vectoriser, so their last bits depend on the vector
width of the target: the pinned numerics fix it (`NUMBA_CPU_NAME`, `lmcbench.numerics.PINNED_ENV`).
Each entry is summed by one call, so sharing rows between threads does not change a bit."""
from __future__ import annotations

from numba import njit

COLUMN_BLOCK = 128   # rows of b per block: 128 × k floats stay in L2 while all of a's rows pass (measured 64–256 alike)


@njit(fastmath={"reassoc"}, cache=True, nogil=True)
def l1_block(a, b, out):
    """out[i, j] = Σ_t |a[i, t] − b[j, t]| for C-contiguous a (m, k), b (n, k), out (m, n)."""
    m, k = a.shape
    n = b.shape[0]
    zero = out.dtype.type(0)
    for j0 in range(0, n, COLUMN_BLOCK):
        j1 = min(n, j0 + COLUMN_BLOCK)
        for i in range(0, m - 3, 4):
            for j in range(j0, j1):
                s0, s1, s2, s3 = zero, zero, zero, zero
                for t in range(k):
                    x = b[j, t]
                    s0 += abs(a[i, t] - x)
                    s1 += abs(a[i + 1, t] - x)
                    s2 += abs(a[i + 2, t] - x)
                    s3 += abs(a[i + 3, t] - x)
                out[i, j], out[i + 1, j], out[i + 2, j], out[i + 3, j] = s0, s1, s2, s3
        for i in range(m - m % 4, m):
            for j in range(j0, j1):
                s = zero
                for t in range(k):
                    s += abs(a[i, t] - b[j, t])
                out[i, j] = s
