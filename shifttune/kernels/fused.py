"""Fused small ops for GPU steps: residual add + RMSNorm, RoPE on q and k in one pass, SiLU(gate) * up.

Each replaces several elementwise launches with one; at decode sizes those launches, not bytes, are
what costs (a 70B step has hundreds of them). Same math as the torch code in `model/layers.py`
(float32 inside, cast back), which stays the CPU path and the reference in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _add_rms_norm_kernel(x, residual, weight, out, res_out, n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    v = tl.load(x + row * n_cols + cols, mask=mask, other=0.0)
    if HAS_RES:
        v = v + tl.load(residual + row * n_cols + cols, mask=mask, other=0.0)
        tl.store(res_out + row * n_cols + cols, v, mask=mask)
    vf = v.to(tl.float32)
    rstd = tl.rsqrt(tl.sum(vf * vf, 0) / n_cols + eps)
    w = tl.load(weight + cols, mask=mask, other=0.0)
    tl.store(out + row * n_cols + cols, w * (vf * rstd).to(v.dtype), mask=mask)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """RMSNorm(x) or, with a residual, (RMSNorm(x + residual), x + residual). x: [T, H] contiguous."""
    x = x.contiguous()
    out = torch.empty_like(x)
    res_out = torch.empty_like(x) if residual is not None else out
    n_rows, n_cols = x.shape[0], x.shape[-1]
    if n_rows:
        _add_rms_norm_kernel[(n_rows,)](
            x,
            residual if residual is not None else x,
            weight,
            out,
            res_out,
            n_cols,
            eps,
            HAS_RES=residual is not None,
            BLOCK=triton.next_power_of_2(n_cols),
            num_warps=8 if n_cols >= 4096 else 4,
        )
    return out if residual is None else (out, res_out)


@triton.jit
def _rope_kernel(qk, positions, cos_sin, stride_t, num_heads, HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rotates heads [0, num_heads) of token t in place (q and k heads side by side in one tensor)."""
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + t)
    d = tl.arange(0, HALF)
    cos = tl.load(cos_sin + pos * (2 * HALF) + d)
    sin = tl.load(cos_sin + pos * (2 * HALF) + HALF + d)
    h = tl.arange(0, BLOCK_H)
    hm = h < num_heads
    base = qk + t * stride_t + h[:, None] * (2 * HALF)
    x1 = tl.load(base + d[None, :], mask=hm[:, None], other=0.0)
    x2 = tl.load(base + HALF + d[None, :], mask=hm[:, None], other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    tl.store(base + d[None, :], (x1f * cos - x2f * sin).to(x1.dtype), mask=hm[:, None])
    tl.store(base + HALF + d[None, :], (x2f * cos + x1f * sin).to(x1.dtype), mask=hm[:, None])


def rope_(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """qk: [T, heads, d] view whose heads are contiguous rows of d (stride(1) == d); rotated in place."""
    t, heads, d = qk.shape
    assert qk.stride(2) == 1 and qk.stride(1) == d
    if t:
        _rope_kernel[(t,)](
            qk, positions, cos_sin, qk.stride(0), heads, HALF=d // 2, BLOCK_H=triton.next_power_of_2(heads)
        )


@triton.jit
def _silu_mul_kernel(gate_up, out, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(gate_up + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gate_up + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0)
    tl.store(out + row * n_cols + cols, ((g / (1.0 + tl.exp(-g))).to(u.dtype) * u), mask=mask)


def silu_and_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """[T, 2I] -> silu(gate_up[:, :I]) * gate_up[:, I:]."""
    n_rows, n_cols = gate_up.shape[0], gate_up.shape[1] // 2
    out = torch.empty((n_rows, n_cols), dtype=gate_up.dtype, device=gate_up.device)
    if n_rows:
        block = 1024
        _silu_mul_kernel[(n_rows, triton.cdiv(n_cols, block))](gate_up.contiguous(), out, n_cols, BLOCK=block)
    return out
