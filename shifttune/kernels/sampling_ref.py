"""The sampler's noise and draw, in plain torch: the CPU path and the reference for `sampling.py`.

Counter-based noise: the uniform of row r at vocabulary entry v is a splitmix64 hash of
(seed_r, step_r, v), so it depends on nothing else (not the batch, not the device's RNG state). A token
is drawn by the Gumbel-max trick: argmax over v of logits[r, v] + Gumbel(u[r, v]).
"""

from __future__ import annotations

import torch

MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, 0xD6E8FEB86659FD93)  # unsigned 64-bit
_SIGNED = [c - (1 << 64) if c >= 1 << 63 else c for c in MIX]  # as torch's int64 lanes hold them (they wrap)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 lanes (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def uniform_noise(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """[n, V] float32 uniforms in (0, 1)."""
    v = torch.arange(vocab_size, device=seeds.device, dtype=torch.int64)
    x = (seeds * _SIGNED[0] + steps * _SIGNED[3]).unsqueeze(1) + v * _SIGNED[0]
    x = (x ^ _shr(x, 30)) * _SIGNED[1]
    x = (x ^ _shr(x, 27)) * _SIGNED[2]
    x = x ^ _shr(x, 31)
    return (_shr(x, 40).float() + 0.5) / float(1 << 24)


def gumbel_argmax_ref(logits: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """[n] int64: argmax of logits + Gumbel noise per row (logits already scaled and filtered)."""
    u = uniform_noise(seeds, steps, logits.shape[1])
    return (logits - torch.log(-torch.log(u))).argmax(dim=-1)
