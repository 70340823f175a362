"""How fast can any kernel read a small-batch decode step's K/V bytes? (GPU; issue 14's batch 1-2 target.)

    python profiles/commands/read_floor_probe.py --out read_floor.json

Decode attention at batch 1, 2k context reads 8.4 MB of K/V a layer (Llama-3.1-8B: 8 KV heads, d 128, bf16);
its HBM floor on an H100 is 2.8 us and the issue's target twice that. This times kernels that do nothing but
read that many contiguous bytes, as `attention_bench --decode` times attention: `layers` calls on distinct
buffers (more than 4x the L2 in all) captured in one CUDA graph, per call. A Triton kernel whose programs each
sum one contiguous chunk (grid of 1-16 programs per SM, loads of 512-4096 elements) and torch's own sum. The best
of them is what reading the bytes costs on this card at that size, before any attention math or merge.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

from shifttune.profile.step_timing import measure_ceilings, summarize, time_fn

KV_BYTES_PER_TOKEN = 2 * 8 * 128 * 2  # K and V, 8 KV heads, d 128, bf16: one layer


@triton.jit
def _read_kernel(x, out, n, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(pid * CHUNK, pid * CHUNK + CHUNK, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x + offs, mask=offs < n, other=0.0).to(tl.float32)
    tl.store(out + pid, tl.sum(acc, 0))


def graph_us(fn, bufs, dev) -> float:
    """Microseconds per call of fn(buf), one call per buffer, all captured in one CUDA graph."""
    for b in bufs:
        fn(b)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for b in bufs:
            fn(b)
    med, _, _ = summarize(time_fn(g.replay, dev, 3, 30))
    return 1e3 * med / len(bufs)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="2048,4096,8192,16384", help="batch x context tokens, comma-separated")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("read_floor_probe needs a GPU")
    dev = torch.device("cuda")
    sms = torch.cuda.get_device_properties(dev).multi_processor_count
    hbm = measure_ceilings(dev).hbm_bytes_per_s
    rows = []
    for tokens in (int(t) for t in args.tokens.split(",")):
        nbytes = tokens * KV_BYTES_PER_TOKEN
        n = nbytes // 2
        layers = max(8, -(-(256 << 20) // nbytes))
        bufs = [torch.randn(n, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        row = {"tokens": tokens, "bytes": nbytes, "layers_in_graph": layers, "floor_us": 1e6 * nbytes / hbm}
        for per_sm in (1, 2, 4, 8, 16):
            for block in (512, 1024, 4096):
                grid = sms * per_sm
                chunk = triton.cdiv(triton.cdiv(n, grid), block) * block
                out = torch.empty(grid, device=dev, dtype=torch.float32)
                row[f"triton_{per_sm}_per_sm_block_{block}_us"] = graph_us(
                    lambda b, g=grid, c=chunk, o=out, bl=block: _read_kernel[(g,)](b, o, n, CHUNK=c, BLOCK=bl),
                    bufs, dev)  # fmt: skip
        row["torch_sum_us"] = graph_us(lambda b: b.sum(dtype=torch.float32), bufs, dev)
        best = min(v for k, v in row.items() if k.endswith("_us") and k != "floor_us")
        row.update(best_us=best, best_over_floor=best / row["floor_us"])
        rows.append(row)
        print(f"{tokens} tokens, {nbytes / 1e6:.1f} MB: floor {row['floor_us']:.1f} us, best read {best:.1f} us "
              f"({best / row['floor_us']:.2f}x), torch sum {row['torch_sum_us']:.1f}", flush=True)  # fmt: skip
        del bufs
    out = {"command": "python profiles/commands/read_floor_probe.py " + " ".join(argv or sys.argv[1:]),
           "card": torch.cuda.get_device_name(0), "hbm_bytes_per_s": hbm, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
