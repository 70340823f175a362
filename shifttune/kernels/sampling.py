"""The sampler's draw as one Triton kernel on GPU: per row, hash noise, Gumbel, running argmax over the
vocabulary in blocks. The torch version (`sampling_ref.py`) materializes several [n, V] int64 tensors
(~3 ms at 256 x 128k on an H100); this reads the logits once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shifttune.kernels.sampling_ref import MIX


@triton.jit
def _gumbel_argmax_kernel(logits, stride, seeds, steps, out, vocab, c0, c1, c2, c3, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    seed = tl.load(seeds + row).to(tl.uint64, bitcast=True)
    step = tl.load(steps + row).to(tl.uint64, bitcast=True)
    base = seed * c0 + step * c3
    best_val = tl.full((), float("-inf"), tl.float32)
    best_idx = tl.full((), 0, tl.int64)
    for start in range(0, vocab, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < vocab
        x = base + offs.to(tl.uint64) * c0
        x = (x ^ (x >> 30)) * c1
        x = (x ^ (x >> 27)) * c2
        x = x ^ (x >> 31)
        u = ((x >> 40).to(tl.float32) + 0.5) / 16777216.0
        v = tl.load(logits + row * stride + offs, mask=mask, other=float("-inf")) - tl.log(-tl.log(u))
        v = tl.where(mask, v, float("-inf"))
        m = tl.max(v, 0)
        i = tl.argmax(v, 0).to(tl.int64) + start
        better = m > best_val
        best_idx = tl.where(better, i, best_idx)
        best_val = tl.where(better, m, best_val)
    tl.store(out + row, best_idx)


def gumbel_argmax(logits: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """Same draw as `sampling_ref.gumbel_argmax_ref`; logits [n, V] float32 (rows contiguous)."""
    n, vocab = logits.shape
    logits = logits if logits.stride(1) == 1 else logits.contiguous()
    out = torch.empty(n, dtype=torch.int64, device=logits.device)
    if n:
        _gumbel_argmax_kernel[(n,)](logits, logits.stride(0), seeds, steps, out, vocab, *MIX, BLOCK=1024)
    return out
