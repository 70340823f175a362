"""Fused small ops for GPU steps: residual add + RMSNorm, RoPE on q and k in one pass (optionally also
writing the new K and V into the paged KV cache), the KV-cache write alone (K and V in one launch), SiLU(gate) * up,
and the merge of two attention parts by their log-sum-exp (a prefill chunk after a cached prefix on SDPA).

Each replaces several elementwise launches with one; at decode sizes those launches, not bytes, are what costs
(a 70B step has hundreds of them). RMSNorm, RoPE and SiLU can launch with programmatic dependent launch
(`launch.py`; FUSED_PDL): each waits for the launch before it first thing, so only its launch overlaps. Same
math as the torch code in `model/layers.py` (float32 inside, cast back) and `attention.write_kv`, which stays
the CPU path and the reference in the tests.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from shifttune.kernels.launch import pdl, pdl_args, sm_count

# Programmatic dependent launch for RMSNorm, RoPE and SiLU (each waiting for the launch before it): on. Llama-3.1-8B
# decode step at 2k, on against off alternately twice in one call (profiles/commands/fused_pdl_probe.py): H100 batch
# 1-16 0.6-0.8% faster (batch 1 6.32 -> 6.27 ms), 32-128 within 0.1%; H200 batch 1-32 0.8-1.1% faster, 64 0.25%,
# 128 within 0.1% (profiles/runs/s20_h100/c_fused_pdl, s20_h200/b_fused_pdl, s20_derived.txt). Session 13 had
# seen batch 32 1.6% slower on an H100 with the kernels of then (s13_h100/g_pdl_all); not again with today's.
FUSED_PDL = True
# RoPE that writes the KV cache lets paged attention (launched with PDL) start at once, before RoPE's own wait,
# when the step has fewer tokens x KV heads than the GPU has SMs (attention then splits its keys). H100,
# llama-3.1-8b decode graphs with FUSED_PDL off, in one call (profiles/runs/s14_h100/b_l2_prefetch): batch 1 at 2k
# 6.28 vs 6.34 ms without, but batch 32 9.38 vs 9.33 (also in a_register_prefetch: 9.45 vs 9.35), whose attention
# fills the GPU.
ROPE_EARLY_TRIGGER = True


@triton.jit
def _add_rms_norm_kernel(x, residual, weight, out, res_out, n_cols, eps, HAS_RES: tl.constexpr, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):  # fmt: skip
    if PDL:
        gdc_wait()
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
            **pdl_args(x.device, FUSED_PDL),
            num_warps=8 if n_cols >= 4096 else 4,
        )
    return out if residual is None else (out, res_out)


@triton.jit
def _rope_kernel(
    qk,
    positions,
    cos_sin,
    stride_t,
    num_heads,
    v,
    k_cache,
    v_cache,
    slots,
    stride_vt,
    num_kv,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    WRITE_KV: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    PDL: tl.constexpr,
    TRIGGER: tl.constexpr,
):
    """Rotates heads [0, num_heads) of token t in place (q and k heads side by side in one tensor). With
    WRITE_KV, the last num_kv of them (K) and token t's num_kv V heads also go to row slots[t] of the caches.
    TRIGGER: the next launch (attention) may start at once; it waits for this one before reading q."""
    if TRIGGER:
        gdc_launch_dependents()
    if PDL:
        gdc_wait()
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
    r1, r2 = (x1f * cos - x2f * sin).to(x1.dtype), (x2f * cos + x1f * sin).to(x1.dtype)
    tl.store(base + d[None, :], r1, mask=hm[:, None])
    tl.store(base + HALF + d[None, :], r2, mask=hm[:, None])
    if WRITE_KV:
        row = tl.load(slots + t).to(tl.int64) * num_kv * (2 * HALF)  # int64: a big cache passes 2**31 elements
        kh = h - (num_heads - num_kv)
        km = (hm & (kh >= 0))[:, None]
        dst = row + kh[:, None] * (2 * HALF) + d[None, :]
        tl.store(k_cache + dst, r1, mask=km)
        tl.store(k_cache + dst + HALF, r2, mask=km)
        _copy_heads(v + t * stride_vt, v_cache + row, num_kv, 2 * HALF, BLOCK_KV, 2 * HALF)


def rope_(qk: torch.Tensor, positions: torch.Tensor, cos_sin: torch.Tensor) -> None:
    """qk: [T, heads, d] view whose heads are contiguous rows of d (stride(1) == d); rotated in place."""
    _rope(qk, positions, cos_sin, None)


def rope_and_write_kv(
    qk: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """`rope_(qk, ...)`, whose last Hk = v.shape[1] heads are K, and in the same launch `write_kv` of those
    (rotated) and v: v [T, Hk, d] with stride(1) == d; caches [num_blocks, block_size, Hk, d]; slots [T]."""
    _rope(qk, positions, cos_sin, (v, k_cache, v_cache, slots))


def _rope(
    qk: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None,
) -> None:
    t, heads, d = qk.shape
    assert qk.stride(2) == 1 and qk.stride(1) == d
    v, k_cache, v_cache, slots = kv if kv is not None else (qk, qk, qk, positions)  # unused without kv
    num_kv = v.shape[1] if kv is not None else 0
    if kv is not None:
        assert v.shape == (t, num_kv, d) and v.stride(2) == 1 and v.stride(1) == d and num_kv <= heads
        assert slots.shape == (t,), "one slot per token (a padded token's slot is a scratch block's)"
        _check_caches(k_cache, v_cache, num_kv, d, qk.dtype)
    if t:
        early = ROPE_EARLY_TRIGGER and kv is not None and pdl(qk.device) and t * num_kv < sm_count(qk.device)
        _rope_kernel[(t,)](
            qk,
            positions,
            cos_sin,
            qk.stride(0),
            heads,
            v,
            k_cache,
            v_cache,
            slots,
            v.stride(0),
            num_kv,
            HALF=d // 2,
            BLOCK_H=triton.next_power_of_2(heads),
            WRITE_KV=kv is not None,
            BLOCK_KV=triton.next_power_of_2(max(num_kv, 1)),
            TRIGGER=early,
            **pdl_args(qk.device, FUSED_PDL),
        )


def _check_caches(k_cache: torch.Tensor, v_cache: torch.Tensor, num_kv: int, d: int, dtype: torch.dtype) -> None:
    for cache in (k_cache, v_cache):
        assert cache.is_contiguous() and cache.shape[2:] == (num_kv, d) and cache.dtype == dtype


@triton.jit
def _write_kv_kernel(
    k,
    v,
    k_cache,
    v_cache,
    slots,
    stride_kt,
    stride_vt,
    num_kv,
    D: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    row = tl.load(slots + t).to(tl.int64) * num_kv * D  # int64: a big cache passes 2**31 elements
    _copy_heads(k + t * stride_kt, k_cache + row, num_kv, D, BLOCK_KV, BLOCK_D)
    _copy_heads(v + t * stride_vt, v_cache + row, num_kv, D, BLOCK_KV, BLOCK_D)


@triton.jit
def _copy_heads(src, dst, num_kv, D: tl.constexpr, BLOCK_KV: tl.constexpr, BLOCK_D: tl.constexpr):
    """num_kv heads of D contiguous elements from `src` (one token's row) to `dst` (its cache slot)."""
    h = tl.arange(0, BLOCK_KV)[:, None]
    c = tl.arange(0, BLOCK_D)[None, :]
    m = (h < num_kv) & (c < D)
    tl.store(dst + h * D + c, tl.load(src + h * D + c, mask=m), mask=m)


def write_kv_fused(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """`attention.write_kv` in one launch: k, v [T, Hk, d] with stride(1) == d (views of a wider row are
    fine); caches [num_blocks, block_size, Hk, d]; token t goes to flat slot slots[t]."""
    t, num_kv, d = k.shape
    assert v.shape == k.shape and slots.shape == (t,)
    assert k.stride(2) == v.stride(2) == 1 and k.stride(1) == v.stride(1) == d
    _check_caches(k_cache, v_cache, num_kv, d, k.dtype)
    if t:
        _write_kv_kernel[(t,)](
            k,
            v,
            k_cache,
            v_cache,
            slots,
            k.stride(0),
            v.stride(0),
            num_kv,
            D=d,
            BLOCK_KV=triton.next_power_of_2(num_kv),
            BLOCK_D=triton.next_power_of_2(d),
        )


@triton.jit
def _silu_mul_kernel(gate_up, out, n_cols, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:
        gdc_wait()
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
        _silu_mul_kernel[(n_rows, triton.cdiv(n_cols, block))](
            gate_up.contiguous(), out, n_cols, BLOCK=block, **pdl_args(out.device, FUSED_PDL)
        )
    return out


@triton.jit
def _merge_lse_kernel(o1, o2, l1, l2, out, n, d, s1_t, s1_h, s2_t, s2_h, sl1, sl2, so_t, so_h, BLOCK_D: tl.constexpr,
                      BLOCK_T: tl.constexpr):  # fmt: skip
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.program_id(1).to(tl.int64)
    ok = t < n
    cols = tl.arange(0, BLOCK_D)
    m = ok[:, None] & (cols < d)[None, :]
    a = tl.load(l1 + h * sl1 + t, mask=ok, other=0.0)
    b = tl.load(l2 + h * sl2 + t, mask=ok, other=0.0)
    w = 1.0 / (1.0 + tl.exp(b - a))  # o1's share exp(a) / (exp(a) + exp(b)), in float32
    t64 = t.to(tl.int64)[:, None]
    x1 = tl.load(o1 + t64 * s1_t + h * s1_h + cols[None, :], mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(o2 + t64 * s2_t + h * s2_h + cols[None, :], mask=m, other=0.0).to(tl.float32)
    o = x2 + w[:, None] * (x1 - x2)
    tl.store(out + t64 * so_t + h * so_h + cols[None, :], o.to(out.dtype.element_ty), mask=m)


def merge_by_lse(o1: torch.Tensor, l1: torch.Tensor, o2: torch.Tensor, l2: torch.Tensor, out: torch.Tensor) -> None:
    """out = (exp(l1) * o1 + exp(l2) * o2) / (exp(l1) + exp(l2)) per token and head, in float32: o1, o2, out
    [n, H, d] (any strides, unit stride over d), l1, l2 [H, n] (unit stride over n). One launch; the torch
    expression in `SdpaPrefill.sequence` is the CPU path and the reference."""
    n, heads, d = out.shape
    assert o1.stride(2) == o2.stride(2) == out.stride(2) == 1 and l1.stride(1) == l2.stride(1) == 1
    block_d = triton.next_power_of_2(d)
    block_t = max(1, 4096 // block_d)
    _merge_lse_kernel[(triton.cdiv(n, block_t), heads)](
        o1, o2, l1, l2, out, n, d, o1.stride(0), o1.stride(1), o2.stride(0), o2.stride(1), l1.stride(0),
        l2.stride(0), out.stride(0), out.stride(1), BLOCK_D=block_d, BLOCK_T=block_t, num_warps=4)  # fmt: skip
