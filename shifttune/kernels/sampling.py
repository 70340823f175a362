"""The sampler as one Triton kernel on GPU, one program per row, reading the logits a fixed number of
times whatever the distribution: max and mass (1 read), the top-p cut by a 16-ary search over the row's
logit range (4 reads, no sort; only rows with top-p < 1), then the Gumbel-max draw over the tokens the
top-k cut, the top-p cut and the min-p floor keep (1 read). Same algorithm as `sampling_ref.sample_ref`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shifttune.kernels.sampling_ref import MIX, NUM_PASSES, NUM_THRESHOLDS


@triton.jit
def _load_row(logits, row, stride, offs, vocab, inv_t, cut_k):
    mask = offs < vocab
    raw = tl.load(logits + row * stride + offs, mask=mask, other=float("-inf"))
    return tl.where(mask & (raw >= cut_k), raw * inv_t, float("-inf"))


@triton.jit
def _sample_kernel(logits, stride, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, out, vocab,
                   c0, c1, c2, c3, BLOCK: tl.constexpr, NT: tl.constexpr, PASSES: tl.constexpr):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    inv_t = tl.load(inv_temp + row)
    ck = tl.load(cut_k + row)
    p = tl.load(top_p + row)
    mp = tl.load(min_p + row)
    is_greedy = tl.load(greedy + row) != 0
    # read 1: max, lowest finite value, mass relative to the max
    m = tl.full((), float("-inf"), tl.float32)
    lo = tl.full((), float("inf"), tl.float32)
    total = tl.full((), 0.0, tl.float32)
    for start in range(0, vocab, BLOCK):
        x = _load_row(logits, row, stride, start + tl.arange(0, BLOCK), vocab, inv_t, ck)
        new_m = tl.maximum(m, tl.max(x, 0))
        e = tl.where(x > float("-inf"), tl.exp(x - new_m), 0.0)
        total = tl.where(m > float("-inf"), total * tl.exp(m - new_m), 0.0) + tl.sum(e, 0)
        m = new_m
        lo = tl.minimum(lo, tl.min(tl.where(x > float("-inf"), x, float("inf")), 0))
    cut = tl.full((), float("-inf"), tl.float32)
    if p < 1.0:
        hi = m
        j = (tl.arange(0, NT) + 1).to(tl.float32)
        for _ in tl.static_range(PASSES):
            t = lo + (hi - lo) * j / NT
            mass = tl.zeros((NT,), tl.float32)
            for start in range(0, vocab, BLOCK):
                x = _load_row(logits, row, stride, start + tl.arange(0, BLOCK), vocab, inv_t, ck)
                e = tl.where(x > float("-inf"), tl.exp(x - m), 0.0)
                mass += tl.sum(tl.where(x[:, None] >= t[None, :], e[:, None], 0.0), 0)
            c = tl.sum((mass >= p * total).to(tl.int32), 0)
            new_lo = tl.where(c > 0, tl.sum(tl.where(j == c.to(tl.float32), t, 0.0), 0), lo)
            hi = tl.where(c < NT, tl.sum(tl.where(j == (c + 1).to(tl.float32), t, 0.0), 0), hi)
            lo = new_lo
        cut = lo
    if mp > 0.0:
        cut = tl.maximum(cut, m + tl.log(tl.maximum(mp, 1e-30)))
    # last read: Gumbel-max over what the cuts keep
    seed = tl.load(seeds + row).to(tl.uint64, bitcast=True)
    step = tl.load(steps + row).to(tl.uint64, bitcast=True)
    base = seed * c0 + step * c3
    best_val = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int64)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = _load_row(logits, row, stride, offs, vocab, inv_t, ck)
        h = base + offs.to(tl.uint64) * c0
        h = (h ^ (h >> 30)) * c1
        h = (h ^ (h >> 27)) * c2
        h = h ^ (h >> 31)
        u = ((h >> 40).to(tl.float32) + 0.5) / 16777216.0
        v = x + tl.where(is_greedy, 0.0, -tl.log(-tl.log(u)))
        v = tl.where(x >= cut, v, float("-inf"))
        bm = tl.max(v, 0)
        bi = tl.argmax(v, 0).to(tl.int64) + start
        better = bm > best_val
        best_idx = tl.where(better, bi, best_idx)
        best_val = tl.where(better, bm, best_val)
    tl.store(out + row, best_idx)


def sample(logits, inv_temp, cut_k, top_p, min_p, seeds, steps, greedy) -> torch.Tensor:
    """Same draw as `sampling_ref.sample_ref`; logits [n, V] float32 (rows contiguous), per-row tensors [n]."""
    n, vocab = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n:
        _sample_kernel[(n,)](logits, logits.stride(0), inv_temp, cut_k, top_p, min_p, seeds, steps, greedy, out,
                             vocab, *MIX, BLOCK=1024, NT=NUM_THRESHOLDS, PASSES=NUM_PASSES, num_warps=8)  # fmt: skip
    return out
