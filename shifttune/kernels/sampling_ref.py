"""The sampler's filters, noise and draw, in plain torch: the CPU path and the reference for `sampling.py`.

Counter-based noise: the uniform of row r at vocabulary entry v is a hash of (seed_r, step_r, v), so it
depends on nothing else (not the batch, not the device's RNG state): a 64-bit key per (seed, step)
(splitmix64's finalizer), then a 32-bit mix of (v, key) per entry. A token is drawn by the Gumbel-max
trick: argmax over v of logits[r, v] + Gumbel(u[r, v]), over the tokens that top-k, top-p and min-p keep.
"""

from __future__ import annotations

import torch

MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)  # unsigned 64-bit
_SIGNED = [c - (1 << 64) if c >= 1 << 63 else c for c in MIX]  # as torch's int64 lanes hold them (they wrap)
MIX32 = (0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35)  # odd 32-bit multipliers of the per-entry mix
_M32 = (1 << 32) - 1
LN2 = 0.6931471805599453


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (low, high) 32-bit halves of each row's 64-bit noise key, as int64 lanes."""
    x = seeds * _SIGNED[0] + steps * _SIGNED[3]
    x = (x ^ _shr(x, 30)) * _SIGNED[1]
    x = (x ^ _shr(x, 27)) * _SIGNED[2]
    x = x ^ _shr(x, 31)
    return x & _M32, _shr(x, 32)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, V] float32 uniforms in (0, 1): odd multiples of 2**-24."""
    k_lo, k_hi = (k.unsqueeze(1) for k in row_keys(seeds, steps))
    v = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    h = (v * MIX32[0] + k_lo) & _M32  # NOTE: products of two values < 2**32 wrap in int64; the low 32 bits hold
    h = h ^ (h >> 16)
    h = (h * MIX32[1]) & _M32
    h = h ^ (h >> 13) ^ k_hi
    h = (h * MIX32[2]) & _M32
    h = h ^ (h >> 16)
    return ((h >> 9) * 2 + 1).float() * 2.0**-24


def gumbel_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, V] Gumbel noise up to a constant: -ln 2 * log2(-log2 u) = -ln(-ln u) + ln(ln 2)."""
    return -LN2 * torch.log2(-torch.log2(uniform_noise(seeds, steps, vocab_size)))


# Top-p without a sort: the cut is found by a NUM_THRESHOLDS-ary search over the row's logit range, each
# pass one count of the mass at or above NUM_THRESHOLDS thresholds; after NUM_PASSES passes it is within
# range / 16**4 of the exact cut.
NUM_THRESHOLDS, NUM_PASSES = 16, 4


def search_span(vocab_size: int, top_p: torch.Tensor) -> torch.Tensor:
    """[n] a width L >= ln(V / (1 - top_p)), a power of two times ln 2 (integer work, so the kernel gets the
    same float). The cut is never below max - L: the tokens below it hold less than V e^-L <= 1 - top_p of
    the mass, relative to the likeliest token's, so less than 1 - top_p of the total."""
    exponent = ((1 - top_p).view(torch.int32) >> 23) & 0xFF  # 1 - p < 2 ** (exponent - 126)
    return ((vocab_size - 1).bit_length() + 127 - exponent).float() * LN2


def thresholds(lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """[n, NT] the search's thresholds: (lo, hi] in NT equal steps, non-decreasing, the last one hi itself
    (the kernel computes them the same way)."""
    j = torch.arange(1, NUM_THRESHOLDS + 1, device=lo.device, dtype=torch.float32)
    t = torch.minimum(lo.unsqueeze(1) + (hi - lo).unsqueeze(1) * j / NUM_THRESHOLDS, hi.unsqueeze(1))
    return torch.where(j == NUM_THRESHOLDS, hi.unsqueeze(1), t)


def top_p_cut_ref(x: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """[n] lowest logit to keep so that the kept tokens (x >= cut) hold at least `top_p` of the mass of
    the finite entries of x [n, V] (-inf: removed before); -inf where top_p >= 1."""
    finite = x > -torch.inf
    m = x.max(dim=-1).values
    e = torch.where(finite, (x - m.unsqueeze(1)).exp(), 0.0)
    total = e.sum(dim=-1)
    lo = torch.maximum(torch.where(finite, x, torch.inf).min(dim=-1).values, m - search_span(x.shape[1], top_p))
    hi = m
    for _ in range(NUM_PASSES):
        t = thresholds(lo, hi)  # [n, NT]
        mass = (e.unsqueeze(2) * (x.unsqueeze(2) >= t.unsqueeze(1))).sum(dim=1)  # [n, NT]
        c = (mass >= top_p.unsqueeze(1) * total.unsqueeze(1)).sum(dim=-1)  # thresholds that keep enough
        lo, hi = (torch.where(c > 0, t.gather(1, (c - 1).clamp(min=0).unsqueeze(1)).squeeze(1), lo),
                  torch.where(c < NUM_THRESHOLDS, t.gather(1, c.clamp(max=NUM_THRESHOLDS - 1).unsqueeze(1)).squeeze(1),
                              hi))  # fmt: skip
    return torch.where(top_p < 1, lo, -torch.inf)


def filter_ref(
    logits: torch.Tensor, inv_temp: torch.Tensor, cut_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor
) -> torch.Tensor:
    """logits [n, V] at or above `cut_k` (the k-th largest; -inf: no top-k), times 1/T, then with what
    top-p (sort-free cut, on what top-k kept) and min-p remove set to -inf."""
    x = torch.where(logits >= cut_k.unsqueeze(1), logits * inv_temp.unsqueeze(1), -torch.inf)
    m = x.max(dim=-1).values
    cut = torch.maximum(top_p_cut_ref(x, top_p), torch.where(min_p > 0, m + min_p.clamp(min=1e-30).log(), -torch.inf))
    return torch.where(x >= cut.unsqueeze(1), x, -torch.inf)


def sample_ref(
    logits: torch.Tensor,
    inv_temp: torch.Tensor,
    cut_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor,
    seeds: torch.Tensor,
    steps: torch.Tensor,
    greedy: torch.Tensor,
) -> torch.Tensor:
    """[n] tokens: `filter_ref`, then the Gumbel-max draw (argmax of the kept logits + Gumbel noise; no
    noise on greedy rows)."""
    x = filter_ref(logits, inv_temp, cut_k, top_p, min_p)
    noise = gumbel_noise(seeds, steps, logits.shape[1])
    return (x + torch.where(greedy.unsqueeze(1), 0.0, noise)).argmax(dim=-1)
