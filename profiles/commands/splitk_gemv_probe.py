"""Decode-sized linear layers on one GPU: cuBLAS (F.linear) against the split-K GEMV (`kernels/gemv.py`) over its
launch options, at the weight shapes of TP ranks of llama-3.3-70b and llama-3.1-8b, against the HBM floor.

    python profiles/commands/splitk_gemv_probe.py --out splitk_gemv_probe.json

Each case runs R products in one CUDA graph, each on its own copy of the weight (R copies hold >= 4x the L2), so
every weight comes from HBM as in a step; time per product = graph replay / R (median of replays). The GEMV's
output is checked against F.linear's on the same inputs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shifttune.kernels.gemv import choose_split_k, gemv
from shifttune.kernels.paged_attention import sm_count
from shifttune.profile.step_timing import _time_cuda, measure_ceilings, summarize

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
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for w in copies:
            fn(x, w)  # compile / pick kernels outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in copies:
            fn(x, w)
    return 1e3 * summarize(_time_cuda(graph.replay, 3, 30))[0] / len(copies)


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
            base = choose_split_k(n, k, sms)
            splits = sorted({max(1, base // 2), base, base * 2})
            for split, reduce, stages, bn in itertools.product(splits, ("kernel", "fused"), (3, 4), (32, 64)):
                cfg = {"split_k": split, "reduce": reduce, "num_stages": stages, "block_n": bn}
                got = gemv(x, copies[0], **cfg).float()
                err = ((got - want).abs().max() / want.abs().max()).item()
                us = graph_us(lambda a, b, c=cfg: gemv(a, b, **c), copies, x)
                row["gemv"].append(cfg | {"us": us, "rel_err": err})
            best = min(row["gemv"], key=lambda c: c["us"])
            row["best"] = best
            print(f"{name:>16} [{n}x{k}] M={m:>2}: floor {floor_us:6.1f} us, cuBLAS {row['cublas_us']:6.1f} "
                  f"({floor_us / row['cublas_us']:.0%}), gemv {best['us']:6.1f} ({floor_us / best['us']:.0%}) "
                  f"split {best['split_k']} {best['reduce']} stages {best['num_stages']} bn {best['block_n']}"
                  f" err {best['rel_err']:.1e}", flush=True)  # fmt: skip
            result["cases"].append(row)
        del copies
        torch.cuda.empty_cache()
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
