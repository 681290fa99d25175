"""Cell-assignment kernel: ``argmax_i <x, y_i> + h_i`` for blocks of samples.

Everything the OT solver and the generator spend their time on is this one
reduction, so it is written for throughput and bounded memory:

* Samples are processed in blocks of ``block_rows`` rows and targets in chunks
  of ``chunk_cols`` columns. Each chunk's scores go into one preallocated
  ``(block_rows, chunk_cols)`` buffer (``torch.mm(out=)``), so the full
  ``N x n`` matrix never exists. The offsets ride inside the GEMM as one more
  column (``[x, 1] . [y_i, h_i]``): a separate ``+ h`` pass over the buffer, or
  ``addmm``'s bias path, costs a quarter of the GEMM at d=64 (measured).
* Per chunk we keep only the row maximum (``amax``), not the argmax: on CPU a
  fused ``max(dim)`` with indices costs about half a GEMM, ``amax`` a tenth.
* **Certified screening.** The chunk maxima only have to *screen*: every chunk
  whose maximum lies within ``2 * bound`` of the row's best maximum, where
  ``bound`` is a rigorous a-priori bound on the GEMM's rounding error for that
  row, is rescored in float64 for just the rows that flagged it, and the argmax
  of those float64 scores is the answer (lowest index on ties). The winning
  cell is always among the flagged chunks, so the result does not depend on
  how the screening GEMM rounds. In float32 one chunk per row is flagged
  (``1 / n_chunks`` extra work), with bf16 screening ~2.5 at d=64 (measured).
* That is what makes ``precision="screened"`` exact: the screening GEMM runs on
  bf16-rounded operands (products exact in fp32, fp32 accumulation), on the
  CPU's AMX tiles through oneDNN or on CUDA tensor cores, at ~2x the float32
  GEMM rate; its larger rounding error only widens the screening margin. Results
  are the same cells as ``precision="float32"`` (both are the argmax of the
  float64 scores; they can differ only where two scores agree to ~1e-15; see
  :class:`Assignment` for what the outputs promise).
  ``precision="auto"`` picks ``screened`` on hardware with fast bf16 GEMMs
  when d >= 48 (below that the wider margin costs more than the GEMM saves).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

Precision = Literal["auto", "float32", "screened"]

# CPU blocks: 4096 sample rows against 256 target columns, widened to 1024 columns only
# when n is so large that the per-chunk maxima (n / cols per row) would outgrow the score
# buffer. Measured on a 2-core AMD EPYC (AVX-512, no AMX), one thread, training mode
# (benchmarks/kernel_chunks.py; docs/BENCHMARKS.md, "Kernel column chunks"): 256 columns
# are the fastest or tied from n = 1e4 to 1e6 and d = 16 to 64, and 1.9x (d=16) / 2.4x
# (d=32) faster at n = 1e4 than the old n // 16 rule's 625 columns (unaligned rows, a
# 10 MB score tile). Narrow chunks also shrink the float64 rescoring of a row's flagged
# chunk, which dominates at small d. Column counts stay multiples of 64 floats.
CPU_BLOCK_ROWS = 4096
CPU_CHUNK_COLS = 256
CPU_MAX_CHUNKS = 1024
CPU_WIDE_COLS = 1024
# On CUDA: at least this many column chunks, so that rescoring stays a small share.
TARGET_CHUNKS = 16
# Screening pays off only when the GEMM dominates: at d=16 the bf16 margin flags ~5
# chunks per row on real codes and the argmax pass dominates anyway (measured).
SCREEN_MIN_DIM = 48
# Extra memory the kernel may use on an accelerator, as a share of free memory.
CUDA_MEMORY_SHARE = 0.25
# bf16 keeps 8 significant bits: round-to-nearest error <= 2^-8 relative.
_BF16_U = 2.0**-8
_FP32_U = 2.0**-24
# Screening margins are multiplied by this: the bounds are rigorous, the factor
# only buys insurance against library GEMMs that round worse than IEEE.
_SAFETY = 1.25


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

    On CPU the best shape is set by caches, not by memory: a few thousand sample
    rows against a few hundred target columns (measured; see ``CPU_CHUNK_COLS``),
    wider only when n is in the millions, so that the per-chunk row maxima stay
    smaller than the score buffer. On CUDA bigger tiles amortise launches; we
    size the score buffer to a share of free memory.
    """
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = int(free * CUDA_MEMORY_SHARE) // 4
        cols = min(n, 16384, max(1024, n // TARGET_CHUNKS))
        rows = max(1024, min(65536, budget // max(cols + -(-n // cols), 1)))
        return Chunking(rows, cols)
    del d  # the CPU optimum barely moves with d in 16..64 (measured)
    cols = CPU_CHUNK_COLS
    while -(-n // cols) > CPU_MAX_CHUNKS and cols < CPU_WIDE_COLS:
        cols *= 2
    return Chunking(CPU_BLOCK_ROWS, min(n, cols))


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True on x86 CPUs with AMX bf16 tiles (Sapphire Rapids and later)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " amx_bf16" in text


def resolve_precision(
    precision: Precision, device: torch.device | str, d: int = SCREEN_MIN_DIM
) -> Literal["float32", "screened"]:
    """``auto`` -> ``screened`` for ``d >= SCREEN_MIN_DIM`` where bf16 GEMMs are fast (AMX CPUs, CUDA sm80+)."""
    if precision not in ("auto", "float32", "screened"):
        raise ValueError(f"precision must be auto, float32 or screened, got {precision!r}")
    if precision != "auto":
        return precision
    if d < SCREEN_MIN_DIM:
        return "float32"
    device = torch.device(device)
    if device.type == "cuda":
        return "screened" if torch.cuda.get_device_capability(device) >= (8, 0) else "float32"
    return "screened" if device.type == "cpu" and cpu_has_fast_bf16() else "float32"


@dataclass
class Assignment:
    """Result of :func:`assign_counts`.

    What is promised, for every precision and chunking:

    * ``idx`` is the argmax of the float64 scores, lowest index on exact ties.
      Where the two best exact scores of a row differ by less than float64
      rounding (~1e-15 relative) either cell may come back, and which one can
      depend on the precision mode and the CPU's BLAS kernels.
    * ``max_scores`` is the float64 score of ``idx`` computed by one fixed
      row-wise formula, so equal ``idx`` gives bitwise equal ``max_scores`` on
      one machine, whatever precision screened the tiles. Its error against the
      exact score is float64 rounding: ``<= (d + 1) * 2**-53 * (sum_j |x_j y_ij| + |h_i|)``.
    * With ``margin > 0``: ``second`` is the runner-up cell where its float64
      score is within ``margin`` of the winner's (``-1`` elsewhere), and
      ``second_scores`` its score by the same row-wise formula (``-inf``
      elsewhere). The solver's Newton step estimates the Hessian from these pairs.
    """

    idx: torch.Tensor  # (N,) int64, winning cell per sample
    counts: torch.Tensor  # (n,) int64, samples per cell
    max_scores: torch.Tensor  # (N,) float64, u_h(x) = max_i <x, y_i> + h_i
    second: torch.Tensor | None = None  # (N,) int64, runner-up within margin, else -1
    second_scores: torch.Tensor | None = None  # (N,) float64, its score, else -inf


_GEMM_MODE_LOCK = threading.Lock()


@contextlib.contextmanager
def _gemm_mode(mode: Literal["float32", "screened"]):
    """float32 GEMMs in IEEE fp32, or on bf16 units (oneDNN fpmath on CPU, TF32 on CUDA).

    The screened operands are bf16-representable already, so running them on
    bf16/TF32 units rounds nothing: products are exact and accumulate in fp32.
    """
    cpu, cuda = torch.backends.mkldnn.matmul, torch.backends.cuda.matmul
    # The flags are process-wide: the lock keeps a float32 screening in one thread
    # from running under another thread's bf16 setting (and a too-small margin).
    with _GEMM_MODE_LOCK:
        old = cpu.fp32_precision, cuda.fp32_precision
        cpu.fp32_precision, cuda.fp32_precision = ("bf16", "tf32") if mode == "screened" else ("ieee", "ieee")
        try:
            yield
        finally:
            cpu.fp32_precision, cuda.fp32_precision = old


def _check_inputs(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2 or h.ndim != 1:
        raise ValueError(f"expected x (N,d), y (n,d), h (n,); got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(h.shape)}")
    if x.shape[1] != y.shape[1] or y.shape[0] != h.shape[0]:
        raise ValueError(f"shape mismatch: x {tuple(x.shape)}, y {tuple(y.shape)}, h {tuple(h.shape)}")
    if y.shape[0] == 0:
        raise ValueError("no targets")


def _bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


class _Operands:
    """Targets as the screening GEMM sees them, plus what the error bound needs.

    float32: ``[y, h]`` (K = d + 1). screened: ``[bf16(y), bf16(h), bf16(h - bf16(h)), 0...]``
    stored as bf16 (half the memory of y) with K padded to a multiple of 32, the
    AMX tile depth (K = 66 runs at ~70 % of K = 96's speed, measured).
    The y part is built once per thread and target tensor (:func:`_target_part`);
    each call only writes the ``h`` columns.
    """

    def __init__(self, y: torch.Tensor, h: torch.Tensor, mode: Literal["float32", "screened"]):
        n, d = y.shape
        self.mode, self.d = mode, d
        self.y, self.h64 = y, h.double()
        self.ys, self.ymax, self.ynorm = _target_part(y, mode)
        self.k = self.ys.shape[1]
        if mode == "float32":
            self.ys[:, d] = h
        else:
            h_hi = _bf16_round(h)
            self.ys[:, d] = h_hi
            self.ys[:, d + 1] = h - h_hi  # rounded to bf16 on assignment
        # Rigorous a-priori bound on |screening score - exact score|, per sample row:
        # coef * max_i sum_j |x_j y_ij| + const, where the sum is bounded both by
        # sum_j |x_j| max_i |y_ij| and by |x| max_i |y_i| (Cauchy-Schwarz).
        hmax = float(h.abs().max()) if n else 0.0
        gamma = self.k * _FP32_U / (1 - self.k * _FP32_U)
        if mode == "float32":
            self.coef, self.const = 2 * gamma, 2 * gamma * hmax
        else:
            self.coef = 2 * _BF16_U + _BF16_U**2 + 4 * gamma
            self.const = (2 * _BF16_U**2 + 4 * gamma) * hmax
        self.coef *= _SAFETY
        self.const = _SAFETY * self.const + 1e-30

    def rows(self, xb: torch.Tensor) -> torch.Tensor:
        """Sample rows padded like the targets: ``[x, 1]`` or ``[bf16(x), 1, 1, 0...]``."""
        out = torch.zeros(xb.shape[0], self.k, dtype=torch.float32, device=xb.device)
        if self.mode == "float32":
            out[:, : self.d] = xb
            out[:, self.d] = 1
        else:
            out[:, : self.d] = _bf16_round(xb)
            out[:, self.d : self.d + 2] = 1
        return out

    def bound(self, xb: torch.Tensor) -> torch.Tensor:
        x64 = xb.double()
        dot = torch.minimum(x64.abs() @ self.ymax, x64.norm(dim=1) * self.ynorm)
        return dot * self.coef + self.const


_TARGET_CACHE = threading.local()


def _target_part(y: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(ys with room for the h columns, max_i |y_ij|, max_i |y_i|)``, cached per thread.

    Building them reads all n targets (~0.3 s at n = 1e6), which is a large
    share of a solver slice; the solver and the Dask workers call the kernel
    with the same target tensor every time. The cache holds one entry per
    thread (threads write their own h columns) and keeps a reference to ``y``,
    so the identity check cannot be fooled by a recycled address; ``_version``
    catches in-place edits.
    """
    key = (mode, y._version)
    hit = getattr(_TARGET_CACHE, "entry", None)
    if hit is not None and hit[0] is y and hit[1] == key:
        return hit[2]
    n, d = y.shape
    if mode == "float32":
        ys = torch.empty(n, d + 1, dtype=torch.float32, device=y.device)
    else:
        ys = torch.zeros(n, -(-(d + 2) // 32) * 32, dtype=torch.bfloat16, device=y.device)
    ys[:, :d] = y
    part = (ys, y.abs().amax(0).double(), float(y.double().norm(dim=1).max()) if n else 0.0)
    _TARGET_CACHE.entry = (y, key, part)
    return part


class _Workspace:
    """Preallocated buffers for one (block_rows, chunking, n) shape."""

    def __init__(self, rows: int, chunking: Chunking, n: int, ops: _Operands):
        device = ops.y.device
        self.n_chunks = -(-n // chunking.chunk_cols)
        self.scores = torch.empty(rows, chunking.chunk_cols, device=device)
        self.chunk_max = torch.empty(self.n_chunks, rows, device=device)
        # bf16 targets are widened tile by tile into this fp32 buffer for the GEMM.
        self.tile = torch.empty(chunking.chunk_cols, ops.k, device=device) if ops.mode == "screened" else None


def _screen(xs: torch.Tensor, ops: _Operands, cols: int, ws: _Workspace) -> torch.Tensor:
    """Per-chunk row maxima of the screening scores, ``(n_chunks, m)``."""
    m, n = xs.shape[0], ops.ys.shape[0]
    cmax = ws.chunk_max[:, :m]
    with _gemm_mode(ops.mode):
        for c in range(ws.n_chunks):
            s, e = c * cols, min(n, (c + 1) * cols)
            yt = ops.ys[s:e] if ws.tile is None else ws.tile[: e - s].copy_(ops.ys[s:e])
            buf = ws.scores[:m, : e - s]
            torch.mm(xs, yt.T, out=buf)
            torch.amax(buf, dim=1, out=cmax[c])
    return cmax


def _block(
    xb: torch.Tensor, ops: _Operands, cols: int, ws: _Workspace, margin: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Argmax and max (float64) of one sample block against all targets (plus the runner-up within ``margin``)."""
    m, n = xb.shape[0], ops.y.shape[0]
    cmax = _screen(ops.rows(xb), ops, cols, ws)
    best = cmax.amax(dim=0).double()
    # A cell within `margin` of the best sits in a chunk whose screened max is within margin + 2 bound.
    threshold = (best - 2 * ops.bound(xb) - margin).float()
    flag = cmax >= threshold  # (n_chunks, m): chunks that may hold the row's argmax
    if not bool(flag.any(0).all()):
        raise ValueError("non-finite scores: the samples, targets or offsets contain NaN or inf")
    # Rescore the flagged (chunk, rows) pairs in float64; chunks in increasing
    # order and a strict '>' keep the lowest index on ties.
    pairs = flag.nonzero()  # sorted by chunk, then row
    per_chunk = torch.bincount(pairs[:, 0], minlength=ws.n_chunks).tolist()
    x64 = xb.double()
    best_v = torch.full((m,), float("-inf"), dtype=torch.float64, device=xb.device)
    idx = torch.zeros(m, dtype=torch.int64, device=xb.device)
    if margin > 0:
        sec_v = torch.full((m,), float("-inf"), dtype=torch.float64, device=xb.device)
        sec_i = torch.full((m,), -1, dtype=torch.int64, device=xb.device)
    a = 0
    for c, k in enumerate(per_chunk):
        if not k:
            continue
        rows = pairs[a : a + k, 1]
        a += k
        s, e = c * cols, min(n, (c + 1) * cols)
        sc = torch.addmm(ops.h64[s:e], x64[rows], ops.y[s:e].double().T)
        v, i = sc.max(dim=1)
        better = v > best_v[rows]
        if margin > 0:
            # Top two of {old best, old second, chunk best, chunk second}: the
            # runner-up is the better of the one that lost and the other's second.
            sc[torch.arange(k, device=sc.device), i] = float("-inf")
            v2, i2 = sc.max(dim=1) if e - s > 1 else (torch.full_like(v, float("-inf")), i)
            lose_v = torch.where(better, best_v[rows], v)
            lose_i = torch.where(better, idx[rows], i + s)
            other_v = torch.where(better, v2, sec_v[rows])
            other_i = torch.where(better, i2 + s, sec_i[rows])
            take = lose_v >= other_v
            sec_v[rows] = torch.where(take, lose_v, other_v)
            sec_i[rows] = torch.where(take, lose_i, other_i)
        best_v[rows] = torch.where(better, v, best_v[rows])
        idx[rows] = torch.where(better, i + s, idx[rows])
    # The winner's score once more, by one fixed row-wise formula: a float64 GEMM
    # rounds a score differently depending on which rows it was batched with
    # (which depends on the screening), so its values are not reproducible.
    best_v = (x64 * ops.y[idx].double()).sum(1) + ops.h64[idx]
    if margin <= 0:
        return idx, best_v, None, None
    near = (sec_i >= 0) & (sec_v > float("-inf"))
    safe = torch.where(near, sec_i, idx)
    sec_v = torch.where(near, (x64 * ops.y[safe].double()).sum(1) + ops.h64[safe], float("-inf"))
    near &= best_v - sec_v < margin
    return idx, best_v, torch.where(near, sec_i, -1), torch.where(near, sec_v, float("-inf"))


def assign_counts(
    x: torch.Tensor,
    y: torch.Tensor,
    h: torch.Tensor,
    *,
    chunking: Chunking | None = None,
    precision: Precision = "auto",
    want_idx: bool = True,
    margin: float = 0.0,
) -> Assignment:
    """Winning cell, cell counts and max score for every row of ``x``.

    ``x`` (N, d), ``y`` (n, d), ``h`` (n,) tensors on one device (computed in
    float32 with float64 rescoring). Extra memory is ``chunking.buffer_bytes(n)``
    plus the screening copy of the targets (``(d + 1)`` floats or ``~(d + 2)``
    bf16 values per target) and O(N) for the outputs. ``margin > 0`` also
    returns each row's runner-up cell when it scores within ``margin`` of the best.
    """
    _check_inputs(x, y, h)
    n = y.shape[0]
    x, y, h = x.float(), y.float().contiguous(), h.float().contiguous()
    chunking = chunking or choose_chunking(n, y.shape[1], y.device)
    cols = min(chunking.chunk_cols, n)
    ops = _Operands(y, h, resolve_precision(precision, y.device, y.shape[1]))
    rows = min(chunking.block_rows, max(x.shape[0], 1))
    ws = _Workspace(rows, Chunking(rows, cols), n, ops)
    counts = torch.zeros(n, dtype=torch.int64, device=y.device)
    idx_parts, max_parts, sec_parts, sec_v_parts = [], [], [], []
    with torch.no_grad():
        for a in range(0, x.shape[0], chunking.block_rows):
            idx, best, sec, sec_v = _block(x[a : a + chunking.block_rows], ops, cols, ws, margin)
            counts += torch.bincount(idx, minlength=n)
            if want_idx:
                idx_parts.append(idx)
            max_parts.append(best)
            if margin > 0:
                sec_parts.append(sec)
                sec_v_parts.append(sec_v)
    empty_i = torch.empty(0, dtype=torch.int64, device=y.device)
    empty_f = torch.empty(0, dtype=torch.float64, device=y.device)
    return Assignment(
        idx=torch.cat(idx_parts) if idx_parts else empty_i,
        counts=counts,
        max_scores=torch.cat(max_parts) if max_parts else empty_f,
        second=None if margin <= 0 else (torch.cat(sec_parts) if sec_parts else empty_i),
        second_scores=None if margin <= 0 else (torch.cat(sec_v_parts) if sec_v_parts else empty_f),
    )


def assign(x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, **kwargs) -> torch.Tensor:
    """Index of the power cell holding each sample: ``argmax_i <x, y_i> + h_i`` (lowest index on ties)."""
    return assign_counts(x, y, h, **kwargs).idx


def topk_cells(
    x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, k: int, *, chunking: Chunking | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best cells per sample, best first: ``(scores (N,k) float64, idx (N,k) int64)``.

    Candidates come from a chunked float32 pass with a running top-k merge, so
    targets may be far more than fit in one score matrix; they are then rescored
    in float64 and ordered by (score desc, index asc), so the ranking is exact
    and does not depend on the chunking (short of exact float32 ties for the
    k-th place, where which candidate survives is unspecified). Used by the
    generator to find the neighbouring cells of a sample.
    """
    _check_inputs(x, y, h)
    n = y.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    h64 = h.double()
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
                cs, ci = torch.topk(sc, min(k, e - s), dim=1, sorted=False)
                cand_s, cand_i = torch.cat([best_s, cs], 1), torch.cat([best_i, ci + s], 1)
                order = torch.argsort(cand_s, dim=1, descending=True, stable=True)[:, :k]
                best_s, best_i = cand_s.gather(1, order), cand_i.gather(1, order)
            exact = torch.einsum("bkd,bd->bk", y[best_i].double(), xb.double()) + h64[best_i]
            by_index = best_i.argsort(dim=1, stable=True)
            best_i, exact = best_i.gather(1, by_index), exact.gather(1, by_index)
            by_score = (-exact).argsort(dim=1, stable=True)
            out_s.append(exact.gather(1, by_score))
            out_i.append(best_i.gather(1, by_score))
    return torch.cat(out_s), torch.cat(out_i)
