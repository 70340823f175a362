"""Batch-1 decode is GEMV-bound (issue 10: GEMMs were 4.05 of 5.2 ms at batch 1 on an H200, against a 3.54 ms
weight-read floor for those weights). Which torch call reads a bf16 weight fastest for one row? Each of
llama-3.1-8b's matmul shapes, as `F.linear(x [M, K], W [N, K])` (what the engine runs), `torch.mv(W, x)`
(M = 1) and `W @ x.T`, captured 20 times in a CUDA graph and replayed (as the engine's decode graph runs
them); GB/s = weight bytes / time. On one GPU:

    python profiles/commands/gemv_probe.py --out gemv_probe.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}  # fmt: skip
REPS = 20


def graph_ms(fn) -> float:
    """Device ms per call of `fn`, REPS calls captured in one CUDA graph, median of 10 replays."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPS):
            fn()
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / REPS)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    dev, dtype = torch.device("cuda"), torch.bfloat16
    rows = []
    for name, (n, k) in SHAPES.items():
        # several weights, rotated, so that no call reads a weight L2 still holds from the call before
        weights = [torch.randn(n, k, device=dev, dtype=dtype) * 0.02 for _ in range(3)]
        for m in (1, 2, 4, 8):
            x = torch.randn(m, k, device=dev, dtype=dtype)
            calls = {"linear": lambda w: F.linear(x, w), "w_at_xt": lambda w: w @ x.T}
            if m == 1:
                calls["mv"] = lambda w: torch.mv(w, x[0])
            for how, call in calls.items():
                it = iter(range(1 << 30))
                ms = graph_ms(lambda: call(weights[next(it) % 3]))
                gbps = n * k * 2 / (ms / 1e3) / 1e9
                rows.append({"shape": name, "n": n, "k": k, "m": m, "call": how, "us": 1e3 * ms, "gb_per_s": gbps})
                print(f"{name:8} {n:6}x{k:5} m={m} {how:8} {1e3 * ms:8.1f} us {gbps:7.0f} GB/s", flush=True)
    out = {"command": "python profiles/commands/gemv_probe.py " + " ".join(argv or sys.argv[1:]),
           "card": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
