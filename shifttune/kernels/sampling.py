"""The sampler on GPU: four Triton launches whatever the batch's mix, grids that depend only on the batch
size; same algorithm and results as `sampling_ref.sample_ref`.

1. `_stats_kernel` [rows, chunks]: per chunk of CHUNK entries, max, lowest finite value and mass
   (relative to the chunk's max).
2. `_mass_kernel` [rows, chunks]: the first top-p pass, the mass at or above 16 thresholds in
   [max(lowest, max - span), max] (rows with top-p < 1 only).
3. `_split_kernel` [rows, chunks]: after that pass the cut lies in a bracket [lo1, hi1). Entries >= hi1 (and
   above the min-p floor) are kept for sure: their Gumbel-max draw is done here, best per chunk. Entries
   in the bracket, the only ones the other passes need, are counted per thread, then copied out (value,
   index) per chunk, up to COPY_CAP of them, by a second sweep over the chunk (from L2).
4. `_finish_kernel` [rows]: one program per row. The other passes over the row's bracket entries, all chunks
   at once in blocks of FINISH_BLOCK (from the copies, or from the logits of a chunk whose bracket overflowed
   them), then the draw among those the last cut keeps, the chunks' bests folded in. Then the row's step
   counter moves on.

A batch of greedy rows only takes one launch instead (`greedy_sample`): `_argmax_kernel` [rows, chunks] folds each
chunk's best into a per-row 64-bit key (value, then lowest index) with one atomic max, and the chunk that arrives
last writes the token, the row's next-step input and its step counter.

Logits come in the model's dtype (bf16 or fp32): every kernel widens them to fp32 on load, which is exact, so
the tokens are those of the reference on `logits.float()` without that copy.

NOTE: the first pass's per-chunk masses pass through a small buffer that every later program folds in the same
order; the other passes run in one program per row. CHUNK, COPY_CAP, FINISH_BLOCK and each kernel's num_warps
are fixed, not chosen per batch: the float sums (the masses) then come out bit for bit the same for a row alone or
in any batch, so a seeded request draws the same tokens wherever it is.
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
# bracket entries copied out per chunk, 8 bytes each (n * 256 KiB for a 128k vocabulary); past it, `_finish_kernel`
# reads that chunk's logits. A first bracket at the densest part of normal logits holds ~22% of the entries.
COPY_CAP = CHUNK // 4
# entries per step of `_finish_kernel`'s loops: FINISH_BLOCK // chunks copies of each chunk, or FINISH_BLOCK logits of
# a chunk whose bracket overflowed its copies
FINISH_BLOCK = 2048
SPLIT_SUB = 2048  # entries per step of `_split_kernel`'s loop over its chunk
# contiguous logits bytes a thread holds in each row of `_split_kernel`'s [SUB // W, W] blocks: W = 32 x warps x this
# / element size (at most CHUNK). H100, batch 256, device ms (profiles/runs/s14_h100/d_split_load, where it was named
# SPLIT_LOAD_BYTES): bf16 dummy-weight logits 0.697 / 0.543 / 0.503 at 8 / 16 / 32 bytes (8 was bf16's before: W was
# fixed for 16 bytes of float32), the same values in float32 0.595 / 0.512 / 0.509
SPLIT_ROW_BYTES = 32
# num_warps per kernel; `_split_kernel` with 4 rather than 8 (H100, `sampler_bench` sweep, session 13): batch 256
# 0.386 / 0.360 / 0.698 ms vs 0.399 / 0.378 / 0.802 (flat / peaked / dummy-weight logits), batch 1 +2 us. Session 15
# (profiles/runs/s15_h100/c_finish_loops), batch 256 flat / peaked / dummy: `_mass_kernel` with 4 0.348 / 0.328 /
# 0.376 vs 8 0.355 / 0.333 / 0.387; `_finish_kernel` with 8 0.349 / 0.328 / 0.389 vs 16 0.355 / 0.333 / 0.387 (32:
# +0.05 ms), batch 32 flat 0.073 vs 0.076
WARPS = {"stats": 8, "mass": 4, "split": 4, "finish": 8}

_LN2 = tl.constexpr(LN2)
_LOG2E = tl.constexpr(1 / LN2)
_H0, _H1, _H2 = (tl.constexpr(c) for c in MIX32)
_ONE_MINUS_ULP = tl.constexpr(1.0 - 2.0**-24)  # f - this, for f in [1, 2) on a 2**-23 grid: an odd multiple of 2**-24
_BIG = tl.constexpr(2**31 - 1)
_NO_KEY = tl.constexpr(-(2**63))
GREEDY_CHUNK = 4096  # vocabulary entries per program of `_argmax_kernel`


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
    """(max, lowest finite, mass relative to the max) of row i from its chunks' [3, n, C] statistics.

    NOTE: the mass is a sequential fold, chunk 0 first (as `_fold`): the kernels that call this run with
    different num_warps, and their first brackets (built on this mass) must agree to the bit."""
    cs = tl.arange(0, C)
    m = tl.max(tl.load(stats + i * C + cs), 0)
    total = tl.zeros((), tl.float32)
    for c in tl.static_range(C):
        mc = tl.load(stats + i * C + c)
        total += tl.where(mc > float("-inf"), tl.load(stats + (2 * n + i) * C + c) * tl.exp(mc - m), 0.0)
    return m, tl.min(tl.load(stats + (n + i) * C + cs), 0), total


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
def _fold(partial, i, C: tl.constexpr, NT: tl.constexpr):
    """[NT] the per-chunk masses [n, C, NT] of row i summed over its chunks, chunk 0 first.

    NOTE: a sequential fold, not tl.sum over [C, NT]: a tree reduction's order follows the layout, which
    follows num_warps, and every kernel that rebuilds a bracket must get the same bits."""
    ts = tl.arange(0, NT)
    acc = tl.load(partial + i * C * NT + ts)
    for c in tl.static_range(1, C):
        acc += tl.load(partial + (i * C + c) * NT + ts)
    return acc


@triton.jit
def _first_bracket(partial, i, m, lowest, total, p, vbits, C: tl.constexpr, NT: tl.constexpr):
    """(lo, hi, mass at or above hi) after the first pass, from its per-chunk masses [n, C, NT]."""
    return _narrow(_fold(partial, i, C, NT), _lowest_cut(m, lowest, p, vbits), m, p * total, NT)


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
                  C: tl.constexpr, CHUNK: tl.constexpr, SUB: tl.constexpr, W: tl.constexpr, KEEP: tl.constexpr,
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
    cols = tl.zeros((W,), tl.int32)  # bracket entries per column (per thread) so far
    for sub in range(CHUNK // SUB):  # not unrolled: one SUB block's registers
        offs = _sub_offsets(chunk, sub, CHUNK, SUB, W)
        x = _load(logits, stride, i, offs, vocab, inv_t, ck, HAS_K)
        if use_p:  # count within threads only; the copies are written by a second sweep below
            cols += tl.sum(((x >= lo) & (x < hi)).to(tl.int32), 0)
        if draw:
            v = x
            if g == 0:
                v = x + _gumbel(offs, k_lo, k_hi, FAST)
            v = tl.where(x >= sure, v, float("-inf"))
            better = v > best  # strictly: a position keeps its first (lowest) index on ties
            best, best_at = tl.where(better, v, best), tl.where(better, offs, best_at)
    if use_p:
        count = tl.sum(cols, 0)  # one block-wide sum and (when some entry is in) one scan, not one per SUB block
        if count > 0:  # the copies: column c's entries (every SUB block, in order) after those of columns < c
            run = tl.cumsum(cols, 0) - cols
            for sub in range(CHUNK // SUB):
                offs = _sub_offsets(chunk, sub, CHUNK, SUB, W)
                x = _load(logits, stride, i, offs, vocab, inv_t, ck, HAS_K)  # again: from L2
                inside = ((x >= lo) & (x < hi)).to(tl.int32)
                _copy_out(cand_x, cand_i, x, offs, inside, run[None, :] + tl.cumsum(inside, 0) - inside, i, chunk, C,
                          KEEP)  # fmt: skip
                run += tl.sum(inside, 0)
    best, best_at = _best(best, best_at)
    tl.store(counts + i * C + chunk, count)
    tl.store(best_val + i * C + chunk, best)
    tl.store(best_idx + i * C + chunk, best_at)


@triton.jit
def _sub_offsets(chunk, sub, CHUNK: tl.constexpr, SUB: tl.constexpr, W: tl.constexpr):
    """[SUB // W, W] vocabulary entries of block `sub` of `chunk`: each thread holds a few contiguous entries of
    every row (SPLIT_ROW_BYTES), so each column lies in one thread's registers."""
    return chunk * CHUNK + sub * SUB + tl.arange(0, SUB // W)[:, None] * W + tl.arange(0, W)[None, :]


@triton.jit
def _copy_out(cand_x, cand_i, x, offs, inside, pos, i, chunk, C: tl.constexpr, KEEP: tl.constexpr):
    """Writes the bracket entries (`inside`) of a block at their copy positions `pos` (the first KEEP only):
    row i's copies are [C, KEEP]."""
    ok = (inside > 0) & (pos < KEEP)
    at = (i * C + chunk) * KEEP + pos
    tl.store(cand_x + at, x, mask=ok)
    tl.store(cand_i + at, offs, mask=ok)


@triton.jit
def _copies(cand_x, cand_i, counts, i, j, C: tl.constexpr, KEEP: tl.constexpr, BLK: tl.constexpr):
    """Block j of row i's copies, BLK // C of each chunk: [BLK] (value, index), -inf past a chunk's count and in
    every chunk whose bracket overflowed its copies."""
    s = tl.arange(0, BLK)
    chunk, pos = s // (BLK // C), j * (BLK // C) + s % (BLK // C)
    count = tl.load(counts + i * C + chunk)
    ok = (pos < count) & (count <= KEEP)
    at = (i * C + chunk) * KEEP + pos
    return tl.load(cand_x + at, mask=ok, other=float("-inf")), tl.load(cand_i + at, mask=ok, other=0)


@triton.jit
def _chunk_bracket(logits, stride, i, chunk, b, vocab, inv_t, ck, lo1, hi1, HAS_K: tl.constexpr, CHUNK: tl.constexpr,
                   BLK: tl.constexpr):  # fmt: skip
    """Block b of `chunk`'s logits, -inf outside the first bracket [lo1, hi1): [BLK] (value, index)."""
    idx = chunk * CHUNK + b * BLK + tl.arange(0, BLK)
    x = _load(logits, stride, i, idx, vocab, inv_t, ck, HAS_K)
    return tl.where((x >= lo1) & (x < hi1), x, float("-inf")), idx


@triton.jit
def _add_masses(acc, x, m, t):
    """acc [NT, B] plus each entry's mass where it is at or above each threshold t [NT]: no reduction here, one
    per pass."""
    return acc + (x[None, :] >= t[:, None]).to(tl.float32) * tl.exp(x - m)[None, :]


@triton.jit
def _add_draw(top, top_at, x, idx, cut, k_lo, k_hi, FAST: tl.constexpr):
    """Per position of the block, the best (value + Gumbel noise, then the lower index) of the entries at or
    above `cut` so far."""
    return _merge(top, top_at, tl.where(x >= cut, x + _gumbel(idx, k_lo, k_hi, FAST), float("-inf")), idx)


@triton.jit
def _finish_kernel(logits, stride, rows, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, stats, partial,
                   masses, cand_x, cand_i, counts, best_val, best_idx, out, last_token, vocab, vbits, c0, c1, c2, c3,
                   ADVANCE: tl.constexpr, WRITE_LAST: tl.constexpr, HAS_K: tl.constexpr, C: tl.constexpr,
                   CHUNK: tl.constexpr, KEEP: tl.constexpr, BLK: tl.constexpr, NT: tl.constexpr,
                   PASSES: tl.constexpr, FAST: tl.constexpr):  # fmt: skip
    """One program per row: the chunks' bests; for top-p rows, passes 2 .. PASSES over the first bracket's
    entries (their masses into `masses` [PASSES - 1, n, NT]), then the draw among those the last cut keeps.
    Each pass and the draw walk the copies (blocks 0 .. nb - 1, the next block's loads issued before this one's
    math), then the logits of each chunk whose bracket overflowed its copies."""
    i, n = tl.program_id(0).to(tl.int64), tl.num_programs(0)
    r = tl.load(rows + i)
    p, g = tl.load(top_p + r), tl.load(greedy + r)
    cs = tl.arange(0, C)
    best, best_at = _best(tl.load(best_val + i * C + cs), tl.load(best_idx + i * C + cs))
    if (p < 1.0) & (g == 0):
        inv_t = tl.load(inv_temp + r)
        ck = tl.load(cut_k + i) if HAS_K else 0.0
        m, lowest, total = _row_stats(stats, i, n, C)
        lo1, hi1, above = _first_bracket(partial, i, m, lowest, total, p, vbits, C, NT)
        count = tl.load(counts + i * C + cs)
        nb = tl.cdiv(tl.max(tl.where(count > KEEP, 0, count), 0), BLK // C)
        lo, hi = lo1, hi1
        for k in tl.static_range(PASSES - 1):
            t = _thresholds(lo, hi, NT)
            acc = tl.zeros((NT, BLK), tl.float32)
            x, _idx = _copies(cand_x, cand_i, counts, i, 0, C, KEEP, BLK)
            for j in range(nb):
                x_next, _idx = _copies(cand_x, cand_i, counts, i, j + 1, C, KEEP, BLK)
                acc = _add_masses(acc, x, m, t)
                x = x_next
            for c in range(C):
                if tl.load(counts + i * C + c) > KEEP:
                    for b in range(CHUNK // BLK):
                        y, _iy = _chunk_bracket(logits, stride, i, c, b, vocab, inv_t, ck, lo1, hi1, HAS_K, CHUNK, BLK)
                        acc = _add_masses(acc, y, m, t)
            mass = tl.sum(acc, 1)
            tl.store(masses + (k * n + i) * NT + tl.arange(0, NT), mass)
            lo, hi, _above = _narrow(above + mass, lo, hi, p * total, NT)
        cut = tl.maximum(lo, _min_p_floor(m, tl.load(min_p + r)))
        k_lo, k_hi = _row_key(seeds, steps, r, c0, c1, c2, c3)
        top = tl.full((BLK,), float("-inf"), tl.float32)
        top_at = tl.full((BLK,), _BIG, tl.int32)
        x, idx = _copies(cand_x, cand_i, counts, i, 0, C, KEEP, BLK)
        for j in range(nb):
            x_next, idx_next = _copies(cand_x, cand_i, counts, i, j + 1, C, KEEP, BLK)
            top, top_at = _add_draw(top, top_at, x, idx, cut, k_lo, k_hi, FAST)
            x, idx = x_next, idx_next
        for c in range(C):
            if tl.load(counts + i * C + c) > KEEP:
                for b in range(CHUNK // BLK):
                    y, iy = _chunk_bracket(logits, stride, i, c, b, vocab, inv_t, ck, lo1, hi1, HAS_K, CHUNK, BLK)
                    top, top_at = _add_draw(top, top_at, y, iy, cut, k_lo, k_hi, FAST)
        top, top_at = _best(top, top_at)
        best, best_at = _merge(best, best_at, top, top_at)
    tl.store(out + i, best_at.to(tl.int64))
    if WRITE_LAST:
        tl.store(last_token + r, best_at.to(tl.int64))
    if ADVANCE:
        tl.store(steps + r, tl.load(steps + r) + 1)


@triton.jit
def _argmax_kernel(logits, stride, rows, keys, tickets, out, steps, last_token, vocab, CHUNK: tl.constexpr,
                   ADVANCE: tl.constexpr, WRITE_LAST: tl.constexpr):  # fmt: skip
    i, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    offs = chunk * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(logits + i * stride + offs, mask=offs < vocab, other=float("-inf")).to(tl.float32)
    top, top_at = _best(x, offs)
    bits = top.to(tl.int32, bitcast=True)
    # NOTE: an int32 that orders as the float does (negative floats: the low 31 bits flipped; -0 as +0, which
    # torch.argmax holds equal), above a low word that is larger for a lower index: the max key is the first max
    order = tl.where(bits == -(2**31), 0, bits ^ ((bits >> 31) & 0x7FFFFFFF))
    key = (order.to(tl.int64) << 32) | (top_at * -1 + _BIG).to(tl.int64)
    tl.atomic_max(keys + i, key, sem="acq_rel", scope="gpu")
    tl.debug_barrier()
    ticket = tl.atomic_add(tickets + i, 1, sem="acq_rel", scope="gpu")
    if ticket == tl.num_programs(1) - 1:  # the last chunk of the row: every other key is in
        best = tl.atomic_xchg(keys + i, _NO_KEY, sem="acq_rel", scope="gpu")  # back to the start state
        tl.atomic_xchg(tickets + i, 0)
        token = (best & 0xFFFFFFFF) * -1 + _BIG
        tl.store(out + i, token)
        r = tl.load(rows + i)
        if WRITE_LAST:
            tl.store(last_token + r, token)
        if ADVANCE:
            tl.store(steps + r, tl.load(steps + r) + 1)


def workspace(n: int, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """The launches' buffers for n rows (two allocations). `partial` [n, C, NT]: the first pass's per-chunk
    masses; `masses` [NUM_PASSES - 1, n, NT]: the other passes' masses (written for top-p rows only); `cand_*`
    [n, C, COPY_CAP]: the first bracket's copies."""
    c, nt, keep = triton.next_power_of_2(triton.cdiv(vocab, CHUNK)), NUM_THRESHOLDS, _keep()
    f_parts = _parts([3 * n * c, n * c * nt, (NUM_PASSES - 1) * n * nt, n * c * keep, n * c], torch.float32, device)
    i_parts = _parts([n * c * keep, n * c, n * c], torch.int32, device)
    names = ("stats", "partial", "masses", "cand_x", "best_val"), ("cand_i", "counts", "best_idx")
    return dict(zip(names[0], f_parts)) | dict(zip(names[1], i_parts))


def _keep() -> int:
    """Bracket entries copied out per chunk: COPY_CAP, at most CHUNK."""
    return min(COPY_CAP, CHUNK)


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
    last_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Same draw as `sampling_ref.sample_ref`: [n] int64 tokens of logits [n, V] (bf16 or float32; the
    reference runs on them as float32). Row i's settings are at rows[i] of inv_temp, top_p, min_p, seeds
    (int64), steps (int64), greedy (bool); cut_k [n] float32 is per logits row (None: no top-k in the batch).
    `advance`: steps[rows] += 1 after the draw; `last_token`: also writes each token at its row there."""
    n, vocab = logits.shape
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    c = triton.next_power_of_2(triton.cdiv(vocab, CHUNK))
    ws = workspace(n, vocab, logits.device)
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    has_k, vbits, fast = cut_k is not None, (vocab - 1).bit_length(), os.environ.get("TRITON_INTERPRET") != "1"
    ck = cut_k.contiguous() if has_k else inv_temp  # NOTE: read at i, unit stride (a topk column is not)
    head = (logits, logits.stride(0), rows, inv_temp, ck)
    grid = (n, c)
    _stats_kernel[grid](*head, ws["stats"], vocab, HAS_K=has_k, C=c, CHUNK=CHUNK, num_warps=WARPS["stats"])
    _mass_kernel[grid](*head, top_p, greedy, ws["stats"], ws["partial"], vocab, vbits, HAS_K=has_k, C=c, CHUNK=CHUNK,
                       NT=NUM_THRESHOLDS, num_warps=WARPS["mass"])  # fmt: skip
    copies = tuple(ws[k] for k in ("cand_x", "cand_i", "counts"))
    w, keep = min(CHUNK, 32 * WARPS["split"] * max(1, SPLIT_ROW_BYTES // logits.element_size())), _keep()
    sub = max(min(SPLIT_SUB, CHUNK), w)
    assert CHUNK % sub == 0 and sub % w == 0, "`_split_kernel` walks its chunk in whole [SUB // W, W] blocks"
    _split_kernel[grid](*head, top_p, min_p, seeds, steps, greedy, ws["stats"], ws["partial"], *copies, ws["best_val"],
                        ws["best_idx"], vocab, vbits, *MIX, HAS_K=has_k, C=c, CHUNK=CHUNK,
                        SUB=sub, W=w, KEEP=keep, NT=NUM_THRESHOLDS, FAST=fast, num_warps=WARPS["split"])  # fmt: skip
    blk = min(FINISH_BLOCK, CHUNK)
    assert blk % c == 0 and CHUNK % blk == 0, "`_finish_kernel` takes whole blocks of copies and of a chunk's logits"
    _finish_kernel[(n,)](*head, top_p, min_p, seeds, steps, greedy, ws["stats"], ws["partial"], ws["masses"], *copies,
                         ws["best_val"], ws["best_idx"], out, out if last_token is None else last_token, vocab, vbits,
                         *MIX, ADVANCE=advance, WRITE_LAST=last_token is not None, HAS_K=has_k, C=c, CHUNK=CHUNK,
                         KEEP=keep, BLK=blk, NT=NUM_THRESHOLDS, PASSES=NUM_PASSES, FAST=fast,
                         num_warps=WARPS["finish"])  # fmt: skip
    return out


def greedy_sample(
    logits: torch.Tensor,
    rows: torch.Tensor,
    steps: torch.Tensor,
    advance: bool = False,
    last_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """[n] int64: logits.argmax(-1) (the first largest entry of each row) in one launch; `advance` and
    `last_token` as in `sample`."""
    n, vocab = logits.shape
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    keys, tickets = _argmax_state(logits.device, n)
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    _argmax_kernel[(n, triton.cdiv(vocab, GREEDY_CHUNK))](
        logits, logits.stride(0), rows, keys, tickets, out, steps, out if last_token is None else last_token, vocab,
        CHUNK=GREEDY_CHUNK, ADVANCE=advance, WRITE_LAST=last_token is not None, num_warps=4)  # fmt: skip
    return out


_argmax_states: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _argmax_state(device: torch.device, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keys [>= n] int64 at the empty key, tickets [>= n] int32 at 0) shared by every `_argmax_kernel` launch on
    `device`. NOTE: each launch's last program per row puts its key and ticket back, which the next launch
    on this stream relies on."""
    state = _argmax_states.get(device)
    if state is None or state[0].numel() < n:
        size = max(n, 1024)
        state = (torch.full((size,), -(2**63), dtype=torch.int64, device=device),
                 torch.zeros(size, dtype=torch.int32, device=device))  # fmt: skip
        _argmax_states[device] = state
    return state
