"""The sampler on GPU: four Triton launches whatever the batch's mix, grids that depend only on the batch
size; same algorithm and results as `sampling_ref.sample_ref`.

1. `_stats_kernel` [rows, chunks]: per chunk of CHUNK entries, max, lowest finite value and mass
   (relative to the chunk's max).
2. `_mass_kernel` [rows, chunks]: the first top-p pass, the mass at or above 16 thresholds in
   [max(lowest, max - span), max] (rows with top-p < 1 only).
3. `_split_kernel` [rows, chunks]: after that pass the cut lies in a bracket [lo, hi). Entries >= hi (and
   above the min-p floor) are kept for sure: their Gumbel-max draw is done here, best per chunk. Entries
   in the bracket, the only ones the three other passes need, are copied out (value, index) per chunk.
4. `_finish_kernel` [rows]: one program per row runs the three other passes on the copies (in registers),
   draws among those the cut keeps, folds in the chunks' bests and moves the row's step counter on. A row
   whose bracket holds more than CAP entries of some chunk (a cut in the densest part of a flat
   distribution) reads its logits again instead of the copies.

NOTE: launches pass results through small per-chunk buffers that every later program folds itself in the
same order (no launch in between). CHUNK and each kernel's num_warps are fixed, not chosen per batch: the
float sums (the masses) then come out bit for bit the same for a row alone or in any batch, so a seeded
request draws the same tokens wherever it is.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

from shifttune.kernels.sampling_ref import LN2, MIX, MIX32, NUM_PASSES, NUM_THRESHOLDS
from shifttune.kernels.upload import aligned_length

CHUNK = 8192  # vocabulary entries per program of the chunked kernels
CAP = CHUNK // 8  # bracket entries copied out per chunk (past it, the row reads its logits again)
SPLIT_SUB = 2048  # entries per step of `_split_kernel`'s loop over its chunk (~110 registers: 2 programs/SM)
WARPS = {"stats": 8, "mass": 8, "split": 8, "finish": 16}  # num_warps per kernel (the bench sweeps them)

_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(1 / LN2)
_H0, _H1, _H2 = (tl.constexpr(c) for c in MIX32)
_ONE_MINUS_ULP = tl.constexpr(1.0 - 2.0**-24)  # f - this, for f in [1, 2) on a 2**-23 grid: an odd multiple of 2**-24
_BIG = tl.constexpr(2**31 - 1)


@triton.jit
def _load(logits, stride, i, offs, vocab, inv_t, ck, HAS_K: tl.constexpr):
    """Logits at `offs` of row i after top-k (-inf below the k-th largest) and temperature."""
    raw = tl.load(logits + i * stride + offs, mask=offs < vocab, other=float("-inf"))
    x = raw * inv_t
    if HAS_K:
        x = tl.where(raw >= ck, x, float("-inf"))
    return x


@triton.jit
def _row_stats(stats, i, n, C: tl.constexpr):
    """(max, lowest finite, mass relative to the max) of row i from its chunks' [3, n, C] statistics."""
    cs = tl.arange(0, C)
    cm = tl.load(stats + i * C + cs)
    clo = tl.load(stats + (n + i) * C + cs)
    cmass = tl.load(stats + (2 * n + i) * C + cs)
    m = tl.max(cm, 0)
    total = tl.sum(tl.where(cm > float("-inf"), cmass * tl.exp(cm - m), 0.0), 0)
    return m, tl.min(clo, 0), total


@triton.jit
def _lowest_cut(m, lowest, p, vbits):
    """The search's first lower bound: max(lowest, m - span) as `sampling_ref.search_span` has it."""
    exponent = ((1.0 - p).to(tl.int32, bitcast=True) >> 23) & 0xFF
    return tl.maximum(lowest, m - (vbits + 127 - exponent).to(tl.float32) * _LN2)


@triton.jit
def _thresholds(lo, hi, NT: tl.constexpr):
    """[NT] the search's thresholds in [lo, hi], as `sampling_ref.thresholds`."""
    j = tl.arange(0, NT) + 1
    return tl.where(j == NT, hi, tl.minimum(lo + (hi - lo) * j.to(tl.float32) / NT, hi))


@triton.jit
def _narrow(mass, lo, hi, need, NT: tl.constexpr):
    """One search step: the bracket between the last threshold whose mass [NT] is >= need and the next one,
    and the mass at or above the bracket's upper end."""
    j = tl.arange(0, NT) + 1
    t = _thresholds(lo, hi, NT)
    c = tl.sum((mass >= need).to(tl.int32), 0)
    new_lo = tl.where(c > 0, tl.sum(tl.where(j == c, t, 0.0), 0), lo)
    new_hi = tl.where(c < NT, tl.sum(tl.where(j == c + 1, t, 0.0), 0), hi)
    return new_lo, new_hi, tl.sum(tl.where(j == tl.minimum(c + 1, NT), mass, 0.0), 0)


@triton.jit
def _masses(x, e, lo, hi, NT: tl.constexpr):
    """[NT] the mass e of the entries x [B] at or above each threshold of [lo, hi]."""
    t = _thresholds(lo, hi, NT)
    # thresholds on dim 0 stay in every thread's registers; flag * e + sum compiles to FSET + FFMA
    return tl.sum((x[None, :] >= t[:, None]).to(tl.float32) * e[None, :], 1)


@triton.jit
def _first_bracket(partial, i, m, lowest, total, p, vbits, C: tl.constexpr, NT: tl.constexpr):
    """(lo, hi, mass at or above hi) after the first pass, from its per-chunk masses [n, C, NT]."""
    block = tl.load(partial + (i * C + tl.arange(0, C)[:, None]) * NT + tl.arange(0, NT)[None, :])
    return _narrow(tl.sum(block, 0), _lowest_cut(m, lowest, p, vbits), m, p * total, NT)


@triton.jit
def _min_p_floor(m, mp):
    return tl.where(mp > 0.0, m + tl.log(tl.maximum(mp, 1e-30)), float("-inf"))


@triton.jit
def _row_key(seeds, steps, r, c0, c1, c2, c3):
    """The row's 64-bit noise key (splitmix64's finalizer of seed and step), as two 32-bit halves."""
    key = tl.load(seeds + r).to(tl.uint64, bitcast=True) * c0 + tl.load(steps + r).to(tl.uint64, bitcast=True) * c3
    key = (key ^ (key >> 30)) * c1
    key = (key ^ (key >> 27)) * c2
    key = key ^ (key >> 31)
    return (key & 0xFFFFFFFF).to(tl.uint32), (key >> 32).to(tl.uint32)


@triton.jit
def _gumbel(idx, k_lo, k_hi, FAST: tl.constexpr):
    """Gumbel noise (up to a constant) of vocabulary entries idx, as `sampling_ref.gumbel_noise`:
    -ln 2 * log2(w), w = -log2(u)."""
    h = idx.to(tl.uint32) * _H0 + k_lo
    h = h ^ (h >> 16)
    h = h * _H1
    h = h ^ (h >> 13) ^ k_hi
    h = h * _H2
    h = h ^ (h >> 16)
    u = ((h >> 9) | 0x3F800000).to(tl.float32, bitcast=True) - _ONE_MINUS_ULP
    if FAST:
        # NOTE: lg2.approx (one MUFU op; tl.log2 is a ~25-instruction polynomial) errs by ~2**-22.6 absolute,
        # not relative: near u = 1, where the winners' w is tiny, w comes from d = 1 - u (exact, the same
        # bit trick) and a series of -log2(1 - d) instead. The outer log2 only needs absolute accuracy.
        d = ((h ^ 0xFFFFFFFF) >> 9 | 0x3F800000).to(tl.float32, bitcast=True) - _ONE_MINUS_ULP
        series = d * (1.0 + d * (1 / 2 + d * (1 / 3 + d * (1 / 4 + d * (1 / 5 + d * (1 / 6)))))) * _LOG2E
        w = tl.where(d <= 0.0625, series, -libdevice.fast_log2f(u))  # series error < d**6 / 7 relative
        g = -_LN2 * libdevice.fast_log2f(w)
    else:  # the interpreter has no libdevice
        g = -_LN2 * tl.log2(-tl.log2(u))
    return g


@triton.jit
def _best(v, idx):
    """(max of v, lowest idx holding it), over all of v's entries."""
    top = tl.max(v)
    return top, tl.min(tl.where(v == top, idx, _BIG))


@triton.jit
def _merge(best, best_at, top, top_at):
    better = (top > best) | ((top == best) & (top_at < best_at))
    return tl.where(better, top, best), tl.where(better, top_at, best_at)


@triton.jit
def _stats_kernel(logits, stride, rows, inv_temp, cut_k, stats, vocab, HAS_K: tl.constexpr, C: tl.constexpr,
                  CHUNK: tl.constexpr):  # fmt: skip
    i, chunk, n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(0)
    r = tl.load(rows + i)
    ck = tl.load(cut_k + i) if HAS_K else 0.0
    x = _load(logits, stride, i, chunk * CHUNK + tl.arange(0, CHUNK), vocab, tl.load(inv_temp + r), ck, HAS_K)
    m = tl.max(x, 0)
    tl.store(stats + i * C + chunk, m)
    tl.store(stats + (n + i) * C + chunk, tl.min(tl.where(x > float("-inf"), x, float("inf")), 0))
    tl.store(stats + (2 * n + i) * C + chunk, tl.sum(tl.where(x > float("-inf"), tl.exp(x - m), 0.0), 0))


@triton.jit
def _mass_kernel(logits, stride, rows, inv_temp, cut_k, top_p, greedy, stats, partial, vocab, vbits,
                 HAS_K: tl.constexpr, C: tl.constexpr, CHUNK: tl.constexpr, NT: tl.constexpr):  # fmt: skip
    i, chunk, n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(0)
    r = tl.load(rows + i)
    p = tl.load(top_p + r)
    if (p < 1.0) & (tl.load(greedy + r) == 0):
        ck = tl.load(cut_k + i) if HAS_K else 0.0
        x = _load(logits, stride, i, chunk * CHUNK + tl.arange(0, CHUNK), vocab, tl.load(inv_temp + r), ck, HAS_K)
        m, lowest, total = _row_stats(stats, i, n, C)
        mass = _masses(x, tl.exp(x - m), _lowest_cut(m, lowest, p, vbits), m, NT)
        tl.store(partial + (i * C + chunk) * NT + tl.arange(0, NT), mass)


@triton.jit
def _split_kernel(logits, stride, rows, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, stats, partial,
                  cand_x, cand_i, counts, best_val, best_idx, vocab, vbits, c0, c1, c2, c3, HAS_K: tl.constexpr,
                  C: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, W: tl.constexpr, CAP: tl.constexpr,
                  NT: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    i, chunk, n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(0)
    r = tl.load(rows + i)
    p, g, inv_t = tl.load(top_p + r), tl.load(greedy + r), tl.load(inv_temp + r)
    ck = tl.load(cut_k + i) if HAS_K else 0.0
    m, lowest, total = _row_stats(stats, i, n, C)
    use_p = (p < 1.0) & (g == 0)
    sure = _min_p_floor(m, tl.load(min_p + r))  # at or above it, kept for sure
    lo, hi = sure, sure
    if use_p:
        lo, hi, _above = _first_bracket(partial, i, m, lowest, total, p, vbits, C, NT)
        sure = tl.maximum(sure, hi)
    k_lo, k_hi = _row_key(seeds, steps, r, c0, c1, c2, c3)
    draw = tl.load(stats + i * C + chunk) >= sure  # the chunk's max: no noise where nothing is sure
    count = tl.full((), 0, tl.int32)
    # per position of the [SUB // W, W] block, the best so far (value, index): one reduction after the loop
    best = tl.full((SUB // W, W), float("-inf"), tl.float32)
    best_at = tl.full((SUB // W, W), 0, tl.int32)
    for sub in range(CHUNK // SUB):  # not unrolled: one SUB block's registers
        # W = one vector load per thread: each column lies in one thread's registers
        offs = chunk * CHUNK + sub * SUB + tl.arange(0, SUB // W)[:, None] * W + tl.arange(0, W)[None, :]
        x = _load(logits, stride, i, offs, vocab, inv_t, ck, HAS_K)
        if use_p:
            inside = ((x >= lo) & (x < hi)).to(tl.int32)
            per_col = tl.sum(inside, 0)
            found = tl.sum(per_col, 0)
            if found > 0:  # copy out column by column: a scan of W column counts, the rest within threads
                pos = count + (tl.cumsum(per_col, 0) - per_col)[None, :] + tl.cumsum(inside, 0) - inside
                ok = (inside > 0) & (pos < CAP)
                tl.store(cand_x + (i * C + chunk) * CAP + pos, x, mask=ok)
                tl.store(cand_i + (i * C + chunk) * CAP + pos, offs, mask=ok)
            count += found
        if draw:
            v = x
            if g == 0:
                v = x + _gumbel(offs, k_lo, k_hi, FAST)
            v = tl.where(x >= sure, v, float("-inf"))
            better = v > best  # strictly: a position keeps its first (lowest) index on ties
            best, best_at = tl.where(better, v, best), tl.where(better, offs, best_at)
    best, best_at = _best(best, best_at)
    tl.store(counts + i * C + chunk, count)
    tl.store(best_val + i * C + chunk, best)
    tl.store(best_idx + i * C + chunk, best_at)


@triton.jit
def _finish_kernel(logits, stride, rows, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, stats, partial,
                   cand_x, cand_i, counts, best_val, best_idx, out, vocab, vbits, c0, c1, c2, c3,
                   HAS_K: tl.constexpr, ADVANCE: tl.constexpr, C: tl.constexpr, CAP: tl.constexpr,
                   NT: tl.constexpr, PASSES: tl.constexpr, FAST: tl.constexpr, SPILL_BLOCK: tl.constexpr):  # fmt: skip
    i, n = tl.program_id(0).to(tl.int64), tl.num_programs(0)
    r = tl.load(rows + i)
    p, g = tl.load(top_p + r), tl.load(greedy + r)
    cs = tl.arange(0, C)
    best, best_at = _best(tl.load(best_val + i * C + cs), tl.load(best_idx + i * C + cs))
    if (p < 1.0) & (g == 0):
        m, lowest, total = _row_stats(stats, i, n, C)
        lo1, hi1, above = _first_bracket(partial, i, m, lowest, total, p, vbits, C, NT)
        floor = _min_p_floor(m, tl.load(min_p + r))
        k_lo, k_hi = _row_key(seeds, steps, r, c0, c1, c2, c3)
        lo, hi = lo1, hi1
        if tl.max(tl.load(counts + i * C + cs)) > CAP:  # a chunk held more than its copies: read the logits
            inv_t = tl.load(inv_temp + r)
            ck = tl.load(cut_k + i) if HAS_K else 0.0
            for _ in tl.static_range(PASSES - 1):
                mass = tl.zeros((NT,), tl.float32)
                for b in range(tl.cdiv(vocab, SPILL_BLOCK)):
                    x = _load(logits, stride, i, b * SPILL_BLOCK + tl.arange(0, SPILL_BLOCK), vocab, inv_t, ck, HAS_K)
                    x = tl.where((x >= lo1) & (x < hi1), x, float("-inf"))
                    mass += _masses(x, tl.exp(x - m), lo, hi, NT)
                lo, hi, _above = _narrow(above + mass, lo, hi, p * total, NT)
            cut = tl.maximum(lo, floor)
            for b in range(tl.cdiv(vocab, SPILL_BLOCK)):
                idx = b * SPILL_BLOCK + tl.arange(0, SPILL_BLOCK)
                x = _load(logits, stride, i, idx, vocab, inv_t, ck, HAS_K)
                v = tl.where((x >= cut) & (x >= lo1) & (x < hi1), x + _gumbel(idx, k_lo, k_hi, FAST), float("-inf"))
                top, top_at = _best(v, idx)
                best, best_at = _merge(best, best_at, top, top_at)
        else:  # the copies [C, CAP], all in registers for the three passes and the draw
            s = tl.arange(0, C * CAP)
            ok = s % CAP < tl.load(counts + i * C + s // CAP)
            x = tl.load(cand_x + i * (C * CAP) + s, mask=ok, other=float("-inf"))
            e = tl.exp(x - m)
            for _ in tl.static_range(PASSES - 1):
                lo, hi, _above = _narrow(above + _masses(x, e, lo, hi, NT), lo, hi, p * total, NT)
            idx = tl.load(cand_i + i * (C * CAP) + s, mask=ok, other=0)
            v = tl.where(x >= tl.maximum(lo, floor), x + _gumbel(idx, k_lo, k_hi, FAST), float("-inf"))
            top, top_at = _best(v, idx)
            best, best_at = _merge(best, best_at, top, top_at)
    tl.store(out + i, best_at.to(tl.int64))
    if ADVANCE:
        tl.store(steps + r, tl.load(steps + r) + 1)


def workspace(n: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The launches' buffers for n rows (two allocations)."""
    c, nt = triton.next_power_of_2(triton.cdiv(vocab, CHUNK)), NUM_THRESHOLDS
    f_parts = _parts([3 * n * c, n * c * nt, n * c * CAP, n * c], torch.float32, device)
    i_parts = _parts([n * c * CAP, n * c, n * c], torch.int32, device)
    names = ("stats", "partial", "cand_x", "best_val"), ("cand_i", "counts", "best_idx")
    return dict(zip(names[0], f_parts)) | dict(zip(names[1], i_parts))


def _parts(sizes: list[int], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Views of one allocation, each starting on 16 bytes (`upload.aligned_length`: with small vocabularies and
    odd row counts, parts at odd offsets would compile new binaries at first use)."""
    padded = [aligned_length(s, dtype) for s in sizes]
    buf = torch.empty(sum(padded), dtype=dtype, device=device)
    return [p[:s] for p, s in zip(buf.split(padded), sizes)]


def sample(
    logits: torch.Tensor,
    rows: torch.Tensor,
    inv_temp: torch.Tensor,
    cut_k: torch.Tensor | None,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    greedy: torch.Tensor,
    advance: bool = False,
) -> torch.Tensor:
    """Same draw as `sampling_ref.sample_ref`: [n] int64 tokens of logits [n, V] float32. Row i's settings
    are at rows[i] of inv_temp, top_p, min_p, seeds (int64), steps (int64), greedy (bool); cut_k [n] is
    per logits row (None: no top-k in the batch). `advance`: steps[rows] += 1 after the draw."""
    n, vocab = logits.shape
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    c = triton.next_power_of_2(triton.cdiv(vocab, CHUNK))
    ws = workspace(n, vocab, logits.device)
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    has_k, vbits, fast = cut_k is not None, (vocab - 1).bit_length(), os.environ.get("TRITON_INTERPRET") != "1"
    ck = cut_k if has_k else inv_temp
    head = (logits, logits.stride(0), rows, inv_temp, ck)
    grid = (n, c)
    _stats_kernel[grid](*head, ws["stats"], vocab, HAS_K=has_k, C=c, CHUNK=CHUNK, num_warps=WARPS["stats"])
    _mass_kernel[grid](*head, top_p, greedy, ws["stats"], ws["partial"], vocab, vbits, HAS_K=has_k, C=c, CHUNK=CHUNK,
                       NT=NUM_THRESHOLDS, num_warps=WARPS["mass"])  # fmt: skip
    shared = (*head, top_p, min_p, seeds, steps, greedy, *(ws[k] for k in ("stats", "partial", "cand_x", "cand_i")),
              *(ws[k] for k in ("counts", "best_val", "best_idx")))  # fmt: skip
    w = 128 * WARPS["split"]  # one 16-byte load per thread
    _split_kernel[grid](*shared, vocab, vbits, *MIX, HAS_K=has_k, C=c, CHUNK=CHUNK, SUB=max(min(SPLIT_SUB, CHUNK), w),
                        W=w, CAP=CAP, NT=NUM_THRESHOLDS, FAST=fast, num_warps=WARPS["split"])  # fmt: skip
    _finish_kernel[(n,)](*shared, out, vocab, vbits, *MIX, HAS_K=has_k, ADVANCE=advance, C=c, CAP=CAP,
                         NT=NUM_THRESHOLDS, PASSES=NUM_PASSES, FAST=fast, SPILL_BLOCK=4096,
                         num_warps=WARPS["finish"])  # fmt: skip
    return out
