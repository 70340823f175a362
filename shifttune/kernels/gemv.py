"""Split-K GEMV for decode-sized linear layers: y[M, N] = x[M, K] @ w[N, K]^T for a few rows (M <= 16).

At decode batch sizes a linear layer is a read of its weight. cuBLAS tiles such a product by output columns, so a
weight with few rows (a TP rank's qkv or o_proj shard) leaves SMs idle: on one H200, llama-3.3-70b's TP4 qkv shard
([2560, 8192]) ran at 63% of the HBM rate and its TP8 one at 45% (`profiles/commands/tp_decode_layer_probe.py`).
Here the weight is cut into BLOCK_N rows x K / SPLIT_K columns per program, enough programs to keep every SM
streaming; each writes an fp32 partial and a second launch sums the SPLIT_K partials into y (dtype of x), or
(reduce="fused") the last split of each column tile to finish sums them in the same launch. Both
launch with programmatic dependent launch where it is on (`launch.py`): the GEMV waits for the launch before it
only after its first weight tile is on the way (the weights are not written by the step); the sum starts as the
GEMV programs leave their loops.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from shifttune.kernels.launch import pdl_args
from shifttune.kernels.paged_attention import sm_count, split_counters

MAX_ROWS = 16  # the most rows of x (tokens of a step) this path takes; tl.dot's smallest tile
BLOCK_N, BLOCK_K = 64, 128


@triton.jit
def _gemv_kernel(x, w, y, part, counters, M, N, K, stride_xm, stride_wn, k_per_split, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EARLY_W: tl.constexpr, FUSED: tl.constexpr,
                 PDL: tl.constexpr):  # fmt: skip
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.arange(0, BLOCK_M)
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(K, k_lo + k_per_split)
    n_ok = rn[:, None] < N
    m_ok = rm[:, None] < M
    w_rows = w + rn[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    if EARLY_W:
        # NOTE: the first weight tile is loaded before waiting for the launch before (it writes x, never w);
        # the loop carries the next tile by hand, so the compiler's pipelining (which could hoist x loads above
        # the wait) stays off (num_stages=1).
        rk = k_lo + tl.arange(0, BLOCK_K)
        w_tile = tl.load(w_rows + rk[None, :], mask=n_ok & (rk[None, :] < k_hi), other=0.0)
        if PDL:
            gdc_wait()
        for kk in range(0, k_per_split, BLOCK_K):
            rk = k_lo + kk + tl.arange(0, BLOCK_K)
            x_tile = tl.load(x + rm[:, None] * stride_xm + rk[None, :], mask=m_ok & (rk[None, :] < k_hi), other=0.0)
            nxt = rk + BLOCK_K
            w_next = tl.load(w_rows + nxt[None, :], mask=n_ok & (nxt[None, :] < k_hi), other=0.0)
            acc += tl.dot(x_tile, tl.trans(w_tile))
            w_tile = w_next
    else:
        if PDL:
            gdc_wait()
        for kk in range(0, k_per_split, BLOCK_K):
            rk = k_lo + kk + tl.arange(0, BLOCK_K)
            k_ok = rk[None, :] < k_hi
            w_tile = tl.load(w_rows + rk[None, :], mask=n_ok & k_ok, other=0.0)
            x_tile = tl.load(x + rm[:, None] * stride_xm + rk[None, :], mask=m_ok & k_ok, other=0.0)
            acc += tl.dot(x_tile, tl.trans(w_tile))
    if PDL:
        gdc_launch_dependents()
    offs = rm[:, None] * N + rn[None, :]
    ok = m_ok & (rn[None, :] < N)
    n_splits = tl.num_programs(1)
    if FUSED and n_splits == 1:
        tl.store(y + offs, acc.to(y.dtype.element_ty), mask=ok)
    else:
        tl.store(part + pid_k * M * N + offs, acc, mask=ok)
    if FUSED and n_splits > 1:
        # NOTE: as paged attention's fused merge: the barrier orders this program's partial stores before its
        # (acq_rel, GPU-scope) ticket; the last of the column tile's splits sums them (.cg: from L2, written by
        # other SMs) and puts the ticket back to zero for the next launch.
        tl.debug_barrier()
        counter = counters + pid_n
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == n_splits - 1:
            total = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in range(0, n_splits):
                total += tl.load(part + s * M * N + offs, mask=ok, other=0.0, cache_modifier=".cg")
            tl.store(y + offs, total.to(y.dtype.element_ty), mask=ok)
            tl.atomic_xchg(counter, 0)


@triton.jit
def _sum_splits_kernel(part, y, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < MN
    if PDL:
        gdc_wait()
    acc = tl.zeros([BLOCK], tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part + s * MN + offs, mask=ok, other=0.0)
    tl.store(y + offs, acc.to(y.dtype.element_ty), mask=ok)


def choose_split_k(n: int, k: int, num_sms: int, block_n: int = BLOCK_N, block_k: int = BLOCK_K) -> int:
    """Split-K ways so that the programs (N tiles x splits) reach about two per SM, each with a whole number of
    BLOCK_K columns; 1 when the N tiles alone do."""
    tiles = triton.cdiv(n, block_n)
    split = max(1, min(triton.cdiv(2 * num_sms, tiles), k // block_k))
    return triton.next_power_of_2(split) if split > 1 else 1


def gemv(x: torch.Tensor, w: torch.Tensor, split_k: int | None = None, block_n: int = BLOCK_N, block_k: int = BLOCK_K,
         early_w: bool = False, num_stages: int = 3, num_warps: int = 4,
         reduce: str = "kernel") -> torch.Tensor:  # fmt: skip
    """x [M, K] (unit stride along K), w [N, K] contiguous, M <= MAX_ROWS -> [M, N] in x's dtype (F.linear
    without bias), accumulated in float32. `reduce`: "kernel" (a second launch sums the splits) or "fused" (the
    last split of each column tile to finish sums them)."""
    m, k = x.shape
    n = w.shape[0]
    assert m <= MAX_ROWS and w.shape[1] == k and w.is_contiguous() and x.stride(1) == 1
    assert reduce in ("kernel", "fused")
    split_k = split_k or choose_split_k(n, k, sm_count(x.device), block_n, block_k)
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), block_k) * block_k
    split_k = triton.cdiv(k, k_per_split)  # splits that hold columns
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return y
    part = torch.empty((split_k, m, n), dtype=torch.float32, device=x.device)
    pdl = pdl_args(x.device)
    fused = reduce == "fused"
    tiles = triton.cdiv(n, block_n)
    counters = split_counters(x.device, tiles, "gemv") if fused and split_k > 1 else part
    _gemv_kernel[(tiles, split_k)](
        x, w, y, part, counters, m, n, k, x.stride(0), w.stride(0), k_per_split,
        BLOCK_M=MAX_ROWS, BLOCK_N=block_n, BLOCK_K=block_k, EARLY_W=early_w, FUSED=fused, **pdl,
        num_warps=num_warps, num_stages=1 if early_w else num_stages,
    )  # fmt: skip
    if fused:
        return y
    block = 1024
    _sum_splits_kernel[(triton.cdiv(m * n, block),)](part, y, m * n, SPLIT_K=split_k, BLOCK=block, **pdl)
    return y
