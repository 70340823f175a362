"""The sampler on GPU as a few Triton launches over [rows, chunks of the vocabulary], whatever the
distribution: statistics (max, lowest finite value, mass) per chunk; the top-p cut by a 16-ary search over
the row's logit range (4 launches, each one read of the logits, no sort; rows with top-p < 1 only); the
Gumbel-max draw per chunk over what the top-k cut, the top-p cut and the min-p floor keep; the best chunk.
Same algorithm as `sampling_ref.sample_ref`.

NOTE: launches pass their results through small per-chunk buffers; every program folds the whole row's
buffers itself (in the same order, so every program of a row agrees), which needs no launch in between.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shifttune.kernels.sampling_ref import MIX, NUM_PASSES, NUM_THRESHOLDS

CHUNK = 8192  # vocabulary entries per program
BLOCK = 1024


@triton.jit
def _load(logits, row, stride, offs, vocab, inv_t, cut_k):
    mask = offs < vocab
    raw = tl.load(logits + row * stride + offs, mask=mask, other=float("-inf"))
    return tl.where(mask & (raw >= cut_k), raw * inv_t, float("-inf"))


@triton.jit
def _row_stats(stats, row, C: tl.constexpr):
    """(max, lowest finite, mass relative to the max) of a row from its chunks' [3, n, C] statistics."""
    n = tl.num_programs(0)
    cs = tl.arange(0, C)
    cm = tl.load(stats + row * C + cs)
    clo = tl.load(stats + (n + row) * C + cs)
    cmass = tl.load(stats + (2 * n + row) * C + cs)
    m = tl.max(cm, 0)
    total = tl.sum(tl.where(cm > float("-inf"), cmass * tl.exp(cm - m), 0.0), 0)
    return m, tl.min(clo, 0), total


@triton.jit
def _bracket(partial, row, m, lo, total, p, USED: tl.constexpr, C: tl.constexpr, NT: tl.constexpr):
    """Replays the search over the first USED passes' per-chunk masses [PASSES, n, C, NT]: (lo, hi)."""
    n = tl.num_programs(0)
    hi = m
    j = (tl.arange(0, NT) + 1).to(tl.float32)
    cs = tl.arange(0, C)
    for q in tl.static_range(USED):
        t = lo + (hi - lo) * j / NT
        block = tl.load(partial + ((q * n + row) * C + cs[:, None]) * NT + tl.arange(0, NT)[None, :])
        mass = tl.sum(block, 0)
        c = tl.sum((mass >= p * total).to(tl.int32), 0)
        new_lo = tl.where(c > 0, tl.sum(tl.where(j == c.to(tl.float32), t, 0.0), 0), lo)
        hi = tl.where(c < NT, tl.sum(tl.where(j == (c + 1).to(tl.float32), t, 0.0), 0), hi)
        lo = new_lo
    return lo, hi


@triton.jit
def _stats_kernel(logits, stride, inv_temp, cut_k, stats, vocab, C: tl.constexpr, CHUNK: tl.constexpr,
                  BLOCK: tl.constexpr):  # fmt: skip
    row, chunk, n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(0)
    inv_t, ck = tl.load(inv_temp + row), tl.load(cut_k + row)
    m = tl.full((), float("-inf"), tl.float32)
    lo = tl.full((), float("inf"), tl.float32)
    total = tl.full((), 0.0, tl.float32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        x = _load(logits, row, stride, start + tl.arange(0, BLOCK), vocab, inv_t, ck)
        new_m = tl.maximum(m, tl.max(x, 0))
        e = tl.where(x > float("-inf"), tl.exp(x - new_m), 0.0)
        total = tl.where(m > float("-inf"), total * tl.exp(m - new_m), 0.0) + tl.sum(e, 0)
        m = new_m
        lo = tl.minimum(lo, tl.min(tl.where(x > float("-inf"), x, float("inf")), 0))
    tl.store(stats + row * C + chunk, m)
    tl.store(stats + (n + row) * C + chunk, lo)
    tl.store(stats + (2 * n + row) * C + chunk, total)


@triton.jit
def _mass_kernel(logits, stride, inv_temp, cut_k, top_p, stats, partial, vocab, PASS: tl.constexpr,
                 C: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr, NT: tl.constexpr):  # fmt: skip
    row, chunk, n = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.num_programs(0)
    p = tl.load(top_p + row)
    if p < 1.0:
        inv_t, ck = tl.load(inv_temp + row), tl.load(cut_k + row)
        m, lo, total = _row_stats(stats, row, C)
        lo, hi = _bracket(partial, row, m, lo, total, p, PASS, C, NT)
        t = lo + (hi - lo) * (tl.arange(0, NT) + 1).to(tl.float32) / NT
        mass = tl.zeros((NT,), tl.float32)
        for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
            x = _load(logits, row, stride, start + tl.arange(0, BLOCK), vocab, inv_t, ck)
            e = tl.where(x > float("-inf"), tl.exp(x - m), 0.0)
            mass += tl.sum(tl.where(x[:, None] >= t[None, :], e[:, None], 0.0), 0)
        tl.store(partial + ((PASS * n + row) * C + chunk) * NT + tl.arange(0, NT), mass)


@triton.jit
def _draw_kernel(logits, stride, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, stats, partial, best_val,
                 best_idx, vocab, c0, c1, c2, c3, C: tl.constexpr, CHUNK: tl.constexpr, BLOCK: tl.constexpr,
                 NT: tl.constexpr, PASSES: tl.constexpr):  # fmt: skip
    row, chunk = tl.program_id(0).to(tl.int64), tl.program_id(1)
    inv_t, ck, p, mp = tl.load(inv_temp + row), tl.load(cut_k + row), tl.load(top_p + row), tl.load(min_p + row)
    is_greedy = tl.load(greedy + row) != 0
    m, lo, total = _row_stats(stats, row, C)
    cut = tl.full((), float("-inf"), tl.float32)
    if p < 1.0:
        cut, _ = _bracket(partial, row, m, lo, total, p, PASSES, C, NT)
    if mp > 0.0:
        cut = tl.maximum(cut, m + tl.log(tl.maximum(mp, 1e-30)))
    seed = tl.load(seeds + row).to(tl.uint64, bitcast=True)
    step = tl.load(steps + row).to(tl.uint64, bitcast=True)
    base = seed * c0 + step * c3
    bv = tl.full((), float("-inf"), tl.float32)
    bi = tl.full((), 0, tl.int64)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = _load(logits, row, stride, offs, vocab, inv_t, ck)
        h = base + offs.to(tl.uint64) * c0
        h = (h ^ (h >> 30)) * c1
        h = (h ^ (h >> 27)) * c2
        h = h ^ (h >> 31)
        u = ((h >> 40).to(tl.float32) + 0.5) / 16777216.0
        v = x + tl.where(is_greedy, 0.0, -tl.log(-tl.log(u)))
        v = tl.where(x >= cut, v, float("-inf"))
        m_blk = tl.max(v, 0)
        i_blk = tl.argmax(v, 0).to(tl.int64) + start
        better = m_blk > bv
        bi = tl.where(better, i_blk, bi)
        bv = tl.where(better, m_blk, bv)
    tl.store(best_val + row * C + chunk, bv)
    tl.store(best_idx + row * C + chunk, bi)


def sample(logits, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy) -> torch.Tensor:
    """Same draw as `sampling_ref.sample_ref`; logits [n, V] float32 (rows contiguous), per-row tensors [n]."""
    n, vocab = logits.shape
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=logits.device)
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    c = triton.next_power_of_2(-(-vocab // CHUNK))
    f32 = dict(dtype=torch.float32, device=logits.device)
    stats = torch.empty(3, n, c, **f32)
    partial = torch.empty(NUM_PASSES, n, c, NUM_THRESHOLDS, **f32)
    best_val, best_idx = torch.empty(n, c, **f32), torch.empty(n, c, dtype=torch.int64, device=logits.device)
    grid, shape = (n, c), dict(C=c, CHUNK=CHUNK, BLOCK=BLOCK)
    _stats_kernel[grid](logits, logits.stride(0), inv_temp, cut_k, stats, vocab, **shape)
    for q in range(NUM_PASSES):
        _mass_kernel[grid](logits, logits.stride(0), inv_temp, cut_k, top_p, stats, partial, vocab, PASS=q,
                           NT=NUM_THRESHOLDS, **shape)  # fmt: skip
    _draw_kernel[grid](logits, logits.stride(0), inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, stats, partial,
                       best_val, best_idx, vocab, *MIX, NT=NUM_THRESHOLDS, PASSES=NUM_PASSES, **shape)  # fmt: skip
    return best_idx.gather(1, best_val.argmax(dim=1, keepdim=True)).squeeze(1)
