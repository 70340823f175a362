"""Would prefetching a layer's K/V into L2 ahead of its decode attention help at small batches (issue 14)?

Decode attention at batch 1-2, 2k context stays above 2x its HBM floor on one launch per layer (RESULTS.md,
sessions 13-20). A different mechanism: the layer's cached K/V (8.4 MB at batch 1, 2k, for Llama-3.1-8B) does not
depend on the step, so a kernel earlier in the layer could pull it into L2 (`prefetch.global.L2::evict_last`, or
Hopper's `cp.async.bulk.prefetch.L2`) while the QKV projection streams its weights, and the attention would then
read L2. This probe measures, on one GPU, `layers` distinct layers in one CUDA graph per sequence (per layer):

    attn_cold   attention alone, each layer's own cache (HBM; attention_bench's number)
    attn_hot    attention alone, every call on layer 0's cache (L2 holds it)
    gemv        the QKV projection alone (F.linear of [batch, 4096] by [6144, 4096] bf16, as the engine's)
    gemv_attn   projection then attention (attention's share: gemv_attn - gemv)
    pf_<v>_gemv_attn  a prefetch kernel, then projection, then attention (<v>: line | bulk)
    pf_<v>_attn       the prefetch right before the attention, no projection between
    pf_<v>            the prefetch alone

    python profiles/commands/kv_prefetch_probe.py --out kv_prefetch.json

Prints per case: us a layer of each sequence, and attention's share with and without the prefetch. Each graph's
layer-0 attention output is checked against the fp32 reference.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from shifttune.kernels import paged_attention as pa
from shifttune.profile.attention_bench import Step
from shifttune.profile.step_timing import measure_ceilings, summarize, time_fn

HQ, HK, D, BS, HIDDEN, QKV = 32, 8, 128, 16, 4096, 6144
CASES = [(1, 2048), (2, 2048), (4, 2048), (8, 2048), (1, 8192)]


@triton.jit
def _prefetch_lines_kernel(k_cache, v_cache, tables, seq_lens, dummy, width, block_stride, BS: tl.constexpr,
                           LINES: tl.constexpr):  # fmt: skip
    """One program per (sequence, block): every 128-byte line of the block's K and V into L2."""
    seq, j = tl.program_id(0), tl.program_id(1)
    n_blocks = tl.cdiv(tl.load(seq_lens + seq).to(tl.int32), BS)
    if j < n_blocks:
        block = tl.load(tables + seq * width + j)
        offs = block * block_stride + tl.arange(0, LINES) * 64  # 64 bf16 = 128 bytes
        got = tl.inline_asm_elementwise(
            "prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l", [k_cache + offs], dtype=tl.int32,
            is_pure=False, pack=1)  # fmt: skip
        got += tl.inline_asm_elementwise(
            "prefetch.global.L2::evict_last [$1]; mov.u32 $0, 0;", "=r,l", [v_cache + offs], dtype=tl.int32,
            is_pure=False, pack=1)  # fmt: skip
        if tl.sum(got) == 12345:  # never: keeps the asm's result alive
            tl.store(dummy, 1)


@triton.jit
def _prefetch_bulk_kernel(k_cache, v_cache, tables, seq_lens, dummy, width, block_stride, BS: tl.constexpr,
                          BYTES: tl.constexpr):  # fmt: skip
    """One program per (sequence, block): the block's K and V as two bulk L2 prefetches (sm_90)."""
    seq, j = tl.program_id(0), tl.program_id(1)
    n_blocks = tl.cdiv(tl.load(seq_lens + seq).to(tl.int32), BS)
    if j < n_blocks:
        block = tl.load(tables + seq * width + j)
        two = tl.arange(0, 2)
        ptrs = tl.where(two == 0, k_cache + block * block_stride, v_cache + block * block_stride)
        got = tl.inline_asm_elementwise(
            f"cp.async.bulk.prefetch.L2.global [$1], {BYTES}; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
            is_pure=False, pack=1)  # fmt: skip
        if tl.sum(got) == 12345:
            tl.store(dummy, 1)


def prefetch(kind: str, kc: torch.Tensor, vc: torch.Tensor, meta, dummy: torch.Tensor) -> None:
    tables = meta.block_tables
    grid = (tables.shape[0], tables.shape[1])
    block_stride = kc.stride(0)
    if kind == "line":
        lines = block_stride * 2 // 128
        _prefetch_lines_kernel[grid](kc, vc, tables, meta.seq_lens, dummy, tables.shape[1], block_stride, BS=BS,
                                     LINES=lines)  # fmt: skip
    else:
        _prefetch_bulk_kernel[grid](kc, vc, tables, meta.seq_lens, dummy, tables.shape[1], block_stride, BS=BS,
                                    BYTES=block_stride * 2)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    name, sms = torch.cuda.get_device_name(), pa.sm_count(dev)
    ceil = measure_ceilings(dev)
    print(f"{name}: {sms} SMs, copy rate {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s", flush=True)
    scale = D**-0.5
    weights = [torch.randn(QKV, HIDDEN, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
    dummy = torch.zeros(1, dtype=torch.int32, device=dev)
    rows = []
    for batch, context in CASES:
        step = Step([1] * batch, [context] * batch, HQ, HK, D, BS, args.layers, dev)
        ref = step.reference(scale)
        x = torch.randn(batch, HIDDEN, device=dev, dtype=torch.bfloat16)
        splits = pa.choose_num_splits(batch, batch, HQ, HK, None, sms)

        def attn(meta):
            return pa.paged_attention(step.q, step.k_cache, step.v_cache, meta, scale, num_splits=splits)

        def seq(parts: str, hot: bool = False):
            def run():
                outs = []
                for i, meta in enumerate(step.metas):
                    meta = step.metas[0] if hot else meta
                    for part in parts.split("+"):
                        if part == "gemv":
                            F.linear(x, weights[i])
                        elif part.startswith("pf_"):
                            prefetch(part[3:], step.k_cache, step.v_cache, meta, dummy)
                        elif part == "attn":
                            outs.append(attn(meta))
                return outs

            return run

        kv_bytes = 2 * batch * context * HK * D * 2
        row = dict(batch=batch, context=context, kv_bytes=kv_bytes, floor_us=1e6 * kv_bytes / ceil.hbm_bytes_per_s,
                   num_splits=splits, us={}, rel_err={}, errors={})  # fmt: skip
        named = {"attn_cold": ("attn", False), "attn_hot": ("attn", True), "gemv": ("gemv", False),
                 "gemv_attn": ("gemv+attn", False)}  # fmt: skip
        for v in ("line", "bulk"):
            named |= {f"pf_{v}_gemv_attn": (f"pf_{v}+gemv+attn", False), f"pf_{v}_attn": (f"pf_{v}+attn", False),
                      f"pf_{v}": (f"pf_{v}", False)}  # fmt: skip
        for label, (parts, hot) in named.items():
            run = seq(parts, hot)
            try:
                run()
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outs = run()
                ms = []
                for _ in range(2):  # two timings a sequence, as one
                    ms += time_fn(graph.replay, dev, 3, 20)
                row["us"][label] = 1e3 * summarize(ms)[0] / args.layers
                if outs:
                    row["rel_err"][label] = step.rel_err(outs[0], ref)
                del graph, outs
            except Exception as e:  # e.g. an instruction this card or PTX version lacks
                torch.cuda.synchronize()
                row["errors"][label] = f"{type(e).__name__}: {str(e)[:300]}"
        us = row["us"]
        if "gemv_attn" in us and "gemv" in us:
            row["attn_share_us"] = {"none": us["gemv_attn"] - us["gemv"]}
            for v in ("line", "bulk"):
                if f"pf_{v}_gemv_attn" in us:
                    row["attn_share_us"][v] = us[f"pf_{v}_gemv_attn"] - us["gemv"]
        rows.append(row)
        shares = " ".join(f"{k} {v:.1f}" for k, v in row.get("attn_share_us", {}).items())
        print(f"batch {batch} x {context}: floor {row['floor_us']:.1f} us; "
              + " ".join(f"{k} {v:.1f}" for k, v in us.items())
              + f"; attention's share: {shares}; errors: {list(row['errors'])}", flush=True)  # fmt: skip
        for k, e in row["errors"].items():
            print(f"  {k}: {e}", flush=True)
        step = None  # frees its caches before the next case
        torch.cuda.empty_cache()
    out = dict(card=name, sms=sms, copy_rate=ceil.hbm_bytes_per_s, layers=args.layers, command=" ".join(sys.argv),
               torch=torch.__version__, triton=triton.__version__, rows=rows)  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
