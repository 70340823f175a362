"""Decode-sized linear layers on one GPU: cuBLAS (F.linear) against a split-K GEMV (below) over its
launch options, at the weight shapes of TP ranks of llama-3.3-70b and llama-3.1-8b, against the HBM floor.

    python profiles/commands/splitk_gemv_probe.py --out splitk_gemv_probe.json

Each case runs R products in one CUDA graph, each on its own copy of the weight (R copies hold >= 4x the L2), so
every weight comes from HBM as in a step; time per product = graph replay / R (median of replays). Every setting's
output is checked against F.linear's on the same inputs (largest error over the largest output <= 1e-2); a setting
that fails is printed and never chosen.

The split-K GEMV, kept here with its measurements (not used by the engine: on an H200 it would save 1.9% of a 70B
TP4 layer and 4.6% of a TP8 one at best: `profiles/runs/s18_h200/README.md`): the weight is cut into BLOCK_N rows x
K / SPLIT_K columns per program, each program writes an fp32 partial, and a second launch sums them
(reduce="kernel") or the last split of each column tile to finish does (reduce="fused", tickets as paged attention's
fused merge). Both launch with programmatic dependent launch on Hopper; early_w loads the first weight tile before
waiting for the launch before.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from shifttune.kernels.launch import pdl_args
from shifttune.kernels.paged_attention import sm_count
from shifttune.profile.attention_bench import graph_time
from shifttune.profile.step_timing import measure_ceilings

MAX_ROWS = 16  # the most rows of x (tokens of a step) this path takes; tl.dot's smallest tile
BLOCK_N, BLOCK_K = 64, 128


_TICKETS: dict[torch.device, torch.Tensor] = {}


def _tickets(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tickets, one per column tile; the fused reduction puts each back to zero. NOTE: never freed
    or replaced while large enough: a captured graph keeps the address it saw."""
    if device not in _TICKETS or _TICKETS[device].numel() < n:
        _TICKETS[device] = torch.zeros(max(n, 1 << 12), dtype=torch.int32, device=device)
    return _TICKETS[device]


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
    counters = _tickets(x.device, tiles) if fused and split_k > 1 else part
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


MAX_REL_ERR = 1e-2  # of the largest output: bf16 inputs, fp32 sums in another order than cuBLAS's
SHAPES = {  # name: (N, K) of the weight, [out, in]
    "70b_tp4_qkv": (2560, 8192), "70b_tp4_o": (8192, 2048), "70b_tp4_gate_up": (14336, 8192),
    "70b_tp4_down": (8192, 7168),
    "70b_tp8_qkv": (1280, 8192), "70b_tp8_o": (8192, 1024), "70b_tp8_gate_up": (7168, 8192),
    "70b_tp8_down": (8192, 3584),
    "8b_tp1_qkv": (6144, 4096), "8b_tp1_o": (4096, 4096), "8b_tp1_gate_up": (28672, 4096),
    "8b_tp1_down": (4096, 14336),
    "8b_tp2_qkv": (3072, 4096), "8b_tp2_o": (4096, 2048), "8b_tp2_down": (4096, 7168),
}  # fmt: skip


def graph_us(fn, copies: list[torch.Tensor], x: torch.Tensor) -> float:
    """Microseconds per fn(x, w), one call per weight copy, all in one CUDA graph."""
    return 1e3 * graph_time(lambda: [fn(x, w) for w in copies], x.device, 30)[0] / len(copies)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16])
    ap.add_argument("--shapes", default=",".join(SHAPES))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    hbm = measure_ceilings(dev).hbm_bytes_per_s
    sms = sm_count(dev)
    l2 = torch.cuda.get_device_properties(dev).L2_cache_size
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gpu": torch.cuda.get_device_name(0),
              "hbm_bytes_per_s": hbm, "sms": sms, "cases": []}  # fmt: skip
    print(f"{result['gpu']}: HBM {hbm / 1e12:.2f} TB/s, {sms} SMs, L2 {l2 / 2**20:.0f} MiB", flush=True)
    for name in args.shapes.split(","):
        n, k = SHAPES[name]
        nbytes = n * k * 2
        copies = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(max(4, -(-4 * l2 // nbytes)))]
        floor_us = 1e6 * nbytes / hbm
        for m in args.rows:
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            want = F.linear(x, copies[0]).float()
            row = {"shape": name, "n": n, "k": k, "rows": m, "floor_us": floor_us,
                   "cublas_us": graph_us(lambda a, b: F.linear(a, b), copies, x), "gemv": []}  # fmt: skip
            variants = []
            for bn in (32, 64):
                base = choose_split_k(n, k, sms, block_n=bn)
                for split in sorted({max(1, base // 2), base, base * 2}):
                    for reduce, early, stages in (("kernel", False, 3), ("kernel", False, 4), ("fused", False, 3),
                                                  ("fused", False, 4), ("kernel", True, 1)):  # fmt: skip
                        k_per = triton.cdiv(triton.cdiv(k, split), BLOCK_K) * BLOCK_K
                        variants.append({"split_k": split, "effective_split_k": triton.cdiv(k, k_per), "reduce": reduce,
                                         "early_w": early, "num_stages": stages, "block_n": bn})  # fmt: skip
            for v in variants:
                cfg = {key: v[key] for key in ("split_k", "reduce", "early_w", "num_stages", "block_n")}
                got = gemv(x, copies[0], **cfg).float()
                err = ((got - want).abs().max() / want.abs().max()).item()
                us = graph_us(lambda a, b, c=cfg: gemv(a, b, **c), copies, x)
                row["gemv"].append(v | {"us": us, "rel_err": err})
                if err > MAX_REL_ERR:
                    print(f"  WRONG: {name} M={m} {cfg}: relative error {err:.1e}", flush=True)
            right = [c for c in row["gemv"] if c["rel_err"] <= MAX_REL_ERR]
            if not right:
                raise SystemExit(f"{name} M={m}: no setting of the GEMV matched F.linear")
            best = min(right, key=lambda c: c["us"])
            row["best"] = best
            how = f"split {best['effective_split_k']} {best['reduce']}{' early' * best['early_w']}"
            print(
                f"{name:>16} [{n}x{k}] M={m:>2}: floor {floor_us:6.1f} us, cuBLAS {row['cublas_us']:6.1f} "
                f"({floor_us / row['cublas_us']:.0%}), gemv {best['us']:6.1f} ({floor_us / best['us']:.0%}) {how} "
                f"stages {best['num_stages']} bn {best['block_n']} err {best['rel_err']:.1e}",
                flush=True,
            )
            result["cases"].append(row)
        del copies
        torch.cuda.empty_cache()
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
