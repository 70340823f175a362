"""Times the Triton paged-attention kernel against its floors and against SDPA on contiguous K/V.

    python -m shifttune.profile.attention_bench --out attn.json   (needs a CUDA GPU)

Shapes default to a Llama-3.3-70B layer on one of 4 GPUs (16 query heads, 2 KV heads, d=128, bf16).
Decode: batch x context, floor = KV bytes / HBM bandwidth. Prefill: one causal sequence, floor =
attention FLOPs / matmul rate. Checks every case against the torch reference first.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shifttune.kernels.attention import AttentionMetadata
from shifttune.kernels.attention_ref import paged_attention_ref
from shifttune.profile.step_timing import measure_ceilings, summarize, time_fn


def graph_time(fn, dev, iters: int) -> tuple[float, float, float]:
    """Median/p10/p90 ms of `fn` replayed from a CUDA graph (no launch overhead in the numbers)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return summarize(time_fn(g.replay, dev, 3, iters))


def make(batch: int, q_len: int, context: int, hq: int, hk: int, d: int, bs: int, dev) -> tuple:
    blocks = -(-context // bs)
    perm = torch.randperm(batch * blocks + 1, device=dev)
    tables = perm[: batch * blocks].view(batch, blocks).to(torch.int32)
    k_cache = torch.randn(batch * blocks + 1, bs, hk, d, device=dev, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch * q_len, hq, d, device=dev, dtype=torch.bfloat16)
    qsl = list(range(0, batch * q_len + 1, q_len))
    lens = [context] * batch
    meta = AttentionMetadata(
        torch.zeros(0, dtype=torch.int64, device=dev),
        torch.tensor(qsl, dtype=torch.int32, device=dev),
        torch.tensor(lens, dtype=torch.int32, device=dev),
        tables,
        qsl,
        lens,
    )
    return q, k_cache, v_cache, meta


def rel_err(out, q, kc, vc, meta, scale, max_seqs=4):
    """Relative error against the float64 reference on the first few sequences."""
    n = min(max_seqs, len(meta.seq_lens_cpu))
    sub = AttentionMetadata(
        meta.slot_mapping.cpu(),
        meta.query_start_loc[: n + 1].cpu(),
        meta.seq_lens[:n].cpu(),
        meta.block_tables[:n].cpu(),
        meta.query_start_loc_cpu[: n + 1],
        meta.seq_lens_cpu[:n],
    )
    t = meta.query_start_loc_cpu[n]
    ref = paged_attention_ref(q[:t].double().cpu(), kc.double().cpu(), vc.double().cpu(), sub, scale)
    return ((out[:t].double().cpu() - ref).norm() / ref.norm()).item()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hq", type=int, default=16)
    ap.add_argument("--hk", type=int, default=2)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("attention_bench: times the Triton kernel on a CUDA GPU, and none is visible here")
    from shifttune.kernels.paged_attention import paged_attention  # NOTE: lazy: Triton is GPU-only

    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    hq, hk, d, bs = args.hq, args.hk, args.d, args.block_size
    scale = d**-0.5
    rows = []
    for batch, context in [(1, 2048), (8, 2048), (32, 2048), (128, 2048), (256, 2048), (32, 8192), (1, 32768)]:
        q, kc, vc, meta = make(batch, 1, context, hq, hk, d, bs, dev)
        out = paged_attention(q, kc, vc, meta, scale)
        err = rel_err(out, q, kc, vc, meta, scale)
        med, p10, p90 = graph_time(lambda: paged_attention(q, kc, vc, meta, scale), dev, 50)
        eager, _, _ = summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale), dev, 5, 50))
        kv_bytes = 2 * batch * context * hk * d * 2
        floor = 1e3 * kv_bytes / ceil.hbm_bytes_per_s
        # SDPA on contiguous K/V (GQA expanded by the kernel itself: enable_gqa)
        kq = torch.randn(batch, hk, context, d, device=dev, dtype=torch.bfloat16)
        vq = torch.randn_like(kq)
        qq = torch.randn(batch, hq, 1, d, device=dev, dtype=torch.bfloat16)
        sdpa, _, _ = graph_time(lambda: F.scaled_dot_product_attention(qq, kq, vq, enable_gqa=True), dev, 50)
        rows.append(
            dict(
                kind="decode",
                batch=batch,
                context=context,
                ms=med,
                p10=p10,
                p90=p90,
                floor_ms=floor,
                over_floor=med / floor,
                eager_ms=eager,
                sdpa_contiguous_ms=sdpa,
                rel_err=err,
            )
        )
        print(
            f"decode b={batch:4d} C={context:6d}: {1e3 * med:8.1f} us  floor {1e3 * floor:7.1f} us  x{med / floor:5.2f}  "
            f"sdpa {1e3 * sdpa:7.1f} us  err {err:.1e}"
        )
    for n in [2048, 8192, 16384]:
        q, kc, vc, meta = make(1, n, n, hq, hk, d, bs, dev)
        out = paged_attention(q, kc, vc, meta, scale)
        err = rel_err(out, q, kc, vc, meta, scale) if n <= 8192 else float("nan")
        configs = [
            dict(block_m=bm, tile=t, num_warps=w, num_stages=st)
            for bm in (64, 128)
            for t in (32, 64)
            for w in (4, 8)
            for st in (2, 3)
        ]
        tried = []
        for c in configs:
            try:
                tried.append(
                    (summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale, **c), dev, 2, 10))[0], c)
                )
            except Exception as e:  # a config that does not fit shared memory
                print("config failed", c, type(e).__name__)
        best_ms, best = min(tried, key=lambda x: x[0])
        med, p10, p90 = summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale, **best), dev, 3, 20))
        print(
            "best prefill config",
            best,
            "default",
            summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale), dev, 2, 10))[0],
        )
        flops = 4 * hq * d * n * (n + 1) / 2
        floor = 1e3 * flops / ceil.matmul_flops_per_s
        qq = torch.randn(1, hq, n, d, device=dev, dtype=torch.bfloat16)
        kq = torch.randn(1, hk, n, d, device=dev, dtype=torch.bfloat16)
        vq = torch.randn_like(kq)
        sdpa, _, _ = summarize(
            time_fn(lambda: F.scaled_dot_product_attention(qq, kq, vq, is_causal=True, enable_gqa=True), dev, 3, 20)
        )
        rows.append(
            dict(
                kind="prefill",
                batch=1,
                context=n,
                ms=med,
                p10=p10,
                p90=p90,
                floor_ms=floor,
                over_floor=med / floor,
                sdpa_contiguous_ms=sdpa,
                rel_err=err,
                config=best,
                all_configs=[dict(ms=m, **c) for m, c in tried],
            )
        )
        print(
            f"prefill n={n:6d}: {med:8.3f} ms  floor {floor:7.3f} ms  x{med / floor:5.2f}  sdpa {sdpa:7.3f} ms  err {err:.1e}"
        )
    result = {
        "command": "python -m shifttune.profile.attention_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": dict(hq=hq, hk=hk, d=d, block_size=bs, dtype="bfloat16"),
        "ceilings": {"hbm_bytes_per_s": ceil.hbm_bytes_per_s, "matmul_flops_per_s": ceil.matmul_flops_per_s},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
