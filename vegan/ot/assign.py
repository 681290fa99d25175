"""Cell-assignment kernel: ``argmax_i <x, y_i> + h_i`` for blocks of samples.

Everything the OT solver and the generator spend their time on is this one
reduction, so it is written for throughput and bounded memory:

* Samples are processed in blocks of ``block_rows`` rows and targets in chunks
  of ``chunk_cols`` columns. Each chunk's scores ``X_b @ Y_c^T + h_c`` go into
  one preallocated ``(block_rows, chunk_cols)`` buffer (``torch.addmm(out=)``),
  so the full ``N x n`` matrix never exists.
* Per chunk we keep only the row maximum (``amax``), not the argmax: on CPU a
  fused ``max(dim)`` with indices costs about half a GEMM, ``amax`` a tenth.
  The argmax is then recovered by recomputing, for each sample, the scores of
  the single chunk that holds its maximum (``1 / n_chunks`` extra work).
* Ties are broken deterministically: the lowest target index wins (the first
  chunk reaching the maximum, then the first column inside it), matching
  ``torch.argmax`` on the full score row.

The same code runs on CPU and CUDA; ``precision`` selects TF32 or bf16 GEMMs
on CUDA (bf16 only chooses the chunk; the winning chunk is rescored in fp32).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

Precision = Literal["float32", "tf32", "bf16"]

# Measured on a 2-core Xeon (AVX-512): at d=64 a 4096 x 1024 fp32 buffer keeps the
# GEMM at ~240 GFLOP/s while amax + bookkeeping adds ~15 %; larger column chunks
# fall out of cache and the reduction starts to dominate (see benchmarks/ot_kernel.py).
CPU_BLOCK_ROWS = 4096
CPU_CHUNK_COLS = 1024
# Extra memory the kernel may use on an accelerator, as a share of free memory.
CUDA_MEMORY_SHARE = 0.25


@dataclass(frozen=True)
class Chunking:
    """Block sizes of one kernel call; the kernel's extra memory is bounded by them."""

    block_rows: int
    chunk_cols: int

    def buffer_bytes(self, n: int, itemsize: int = 4) -> int:
        """Bytes of the score buffer plus the per-chunk maxima of one sample block."""
        n_chunks = -(-n // self.chunk_cols)
        return self.block_rows * (self.chunk_cols + n_chunks) * itemsize


def choose_chunking(n: int, d: int, device: torch.device | str = "cpu") -> Chunking:
    """Block sizes from the problem size and, on CUDA, the free device memory.

    On CPU the best shape is set by cache sizes, not by memory: a few thousand
    sample rows against ~1k target columns (measured; see module docstring).
    On CUDA bigger tiles amortise launches; we size the score buffer to a share
    of free memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_MEMORY_SHARE) // 4
        cols = min(n, 16384)
        rows = max(1024, min(65536, budget // max(cols + -(-n // cols), 1)))
        return Chunking(rows, cols)
    del d  # the CPU optimum barely moves with d in 16..256 (measured)
    return Chunking(CPU_BLOCK_ROWS, min(n, CPU_CHUNK_COLS))


@dataclass
class Assignment:
    """Result of :func:`assign_counts`."""

    idx: torch.Tensor  # (N,) int64, winning cell per sample
    counts: torch.Tensor  # (n,) int64, samples per cell
    max_scores: torch.Tensor  # (N,) float32, u_h(x) = max_i <x, y_i> + h_i


@contextlib.contextmanager
def _matmul_precision(precision: Precision):
    """Allow TF32 GEMMs inside the block (a no-op on CPU)."""
    if precision != "tf32":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def _check_inputs(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or h.ndim != 1:
        raise ValueError(f"expected x (N,d), y (n,d), h (n,); got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(h.shape)}")
    if x.shape[1] != y.shape[1] or y.shape[0] != h.shape[0]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, y {tuple(y.shape)}, h {tuple(h.shape)}")
    if y.shape[0] == 0:
        raise ValueError("no targets")


class _Workspace:
    """Preallocated buffers for one (block_rows, chunking, n) shape."""

    def __init__(self, rows: int, chunking: Chunking, n: int, device, gemm_dtype):
        self.n_chunks = -(-n // chunking.chunk_cols)
        self.scores = torch.empty(rows, chunking.chunk_cols, device=device, dtype=gemm_dtype)
        self.chunk_max = torch.empty(self.n_chunks, rows, device=device, dtype=gemm_dtype)


def _block(
    xb: torch.Tensor,
    y: torch.Tensor,
    h: torch.Tensor,
    chunking: Chunking,
    ws: _Workspace,
    y_gemm: torch.Tensor,
    h_gemm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax and max of one sample block against all targets."""
    m = xb.shape[0]
    cols = chunking.chunk_cols
    n = y.shape[0]
    x_gemm = xb.to(y_gemm.dtype)
    cmax = ws.chunk_max[:, :m]
    for c in range(ws.n_chunks):
        s, e = c * cols, min(n, (c + 1) * cols)
        buf = ws.scores[:m, : e - s]
        torch.addmm(h_gemm[s:e], x_gemm, y_gemm[s:e].T, out=buf)
        torch.amax(buf, dim=1, out=cmax[c])
    best_g = cmax.amax(dim=0)
    # First chunk reaching the maximum (argmax returns the first of equal values).
    win = (cmax == best_g).to(torch.uint8).argmax(dim=0)
    best = best_g.float()
    idx = torch.empty(m, dtype=torch.int64, device=xb.device)
    exact = y_gemm.dtype == torch.float32
    # Rescore each sample against its winning chunk only (in fp32).
    order = torch.argsort(win, stable=True)
    win_sorted = win[order]
    chunks, sizes = torch.unique_consecutive(win_sorted, return_counts=True)
    starts = torch.cumsum(sizes, 0) - sizes
    for c, a, k in zip(chunks.tolist(), starts.tolist(), sizes.tolist()):
        rows = order[a : a + k]
        s, e = c * cols, min(n, (c + 1) * cols)
        sub = torch.addmm(h[s:e], xb[rows], y[s:e].T)
        idx[rows] = sub.argmax(dim=1) + s
        if not exact:
            best[rows] = sub.amax(dim=1)
    return idx, best


def assign_counts(
    x: torch.Tensor,
    y: torch.Tensor,
    h: torch.Tensor,
    *,
    chunking: Chunking | None = None,
    precision: Precision = "float32",
    want_idx: bool = True,
) -> Assignment:
    """Winning cell, cell counts and max score for every row of ``x``.

    ``x`` (N, d), ``y`` (n, d), ``h`` (n,) float32 tensors on one device. Extra
    memory is ``chunking.buffer_bytes(n)`` plus O(N) for the outputs.
    """
    _check_inputs(x, y, h)
    n = y.shape[0]
    x, y, h = x.float(), y.float().contiguous(), h.float().contiguous()
    chunking = chunking or choose_chunking(n, y.shape[1], y.device)
    chunking = Chunking(chunking.block_rows, min(chunking.chunk_cols, n))
    gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    y_gemm, h_gemm = y.to(gemm_dtype), h.to(gemm_dtype)
    rows = min(chunking.block_rows, max(x.shape[0], 1))
    ws = _Workspace(rows, chunking, n, y.device, gemm_dtype)
    counts = torch.zeros(n, dtype=torch.int64, device=y.device)
    idx_parts, max_parts = [], []
    with _matmul_precision(precision), torch.no_grad():
        for a in range(0, x.shape[0], chunking.block_rows):
            idx, best = _block(x[a : a + chunking.block_rows], y, h, chunking, ws, y_gemm, h_gemm)
            counts += torch.bincount(idx, minlength=n)
            if want_idx:
                idx_parts.append(idx)
            max_parts.append(best)
    empty_i = torch.empty(0, dtype=torch.int64, device=y.device)
    empty_f = torch.empty(0, dtype=torch.float32, device=y.device)
    return Assignment(
        idx=torch.cat(idx_parts) if idx_parts else empty_i,
        counts=counts,
        max_scores=torch.cat(max_parts) if max_parts else empty_f,
    )


def assign(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, **kwargs) -> torch.Tensor:
    """Index of the power cell holding each sample: ``argmax_i <x, y_i> + h_i`` (lowest index on ties)."""
    return assign_counts(x, y, h, **kwargs).idx


def topk_cells(
    x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, k: int, *, chunking: Chunking | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best cells per sample, best first: ``(scores (N,k) float32, idx (N,k) int64)``.

    Chunked like :func:`assign_counts` with a running top-k merge, so targets may
    be far more than fit in one score matrix. Used by the generator to find the
    neighbouring cells of a sample. Equal scores are listed lower index first;
    which of several equal scores survive at the k-th place is unspecified.
    """
    _check_inputs(x, y, h)
    n = y.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    x, y, h = x.float(), y.float().contiguous(), h.float().contiguous()
    chunking = chunking or choose_chunking(n, y.shape[1], y.device)
    cols = min(chunking.chunk_cols, n)
    out_s, out_i = [], []
    with torch.no_grad():
        for a in range(0, x.shape[0], chunking.block_rows):
            xb = x[a : a + chunking.block_rows]
            best_s = torch.full((xb.shape[0], 0), float("-inf"), device=x.device)
            best_i = torch.empty((xb.shape[0], 0), dtype=torch.int64, device=x.device)
            for s in range(0, n, cols):
                e = min(n, s + cols)
                sc = torch.addmm(h[s:e], xb, y[s:e].T)
                kk = min(k, e - s)
                cs, ci = torch.topk(sc, kk, dim=1, sorted=False)
                cand_s = torch.cat([best_s, cs], 1)
                cand_i = torch.cat([best_i, ci + s], 1)
                # Order equal scores by index before the stable sort.
                by_idx = torch.argsort(cand_i, dim=1)
                cand_s, cand_i = cand_s.gather(1, by_idx), cand_i.gather(1, by_idx)
                order = torch.argsort(cand_s, dim=1, descending=True, stable=True)[:, :k]
                best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
            out_s.append(best_s)
            out_i.append(best_i)
    return torch.cat(out_s), torch.cat(out_i)
