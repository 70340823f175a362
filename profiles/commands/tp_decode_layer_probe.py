"""Where one TP rank's decoder layer spends a decode step, against the layer's weight-read floor, on one GPU.

    python profiles/commands/tp_decode_layer_probe.py --model llama-3.3-70b --tp 4,8 --out tp_decode_layer.json

For each TP degree, rank 0 of a TP engine is built alone on this GPU at its real sharded shapes (the op tables'
`build_rank`: collectives move no data, so they cost nothing here) with --layers decoder layers, KV cache filled
with random values. For each decode batch at --context it records: the graphed step with --layers layers and with
one (their difference over layers - 1 is one layer, as `profile --ops` computes it); every kernel of an eager step
under the profiler, per layer (a kernel's time over the layers run); and each linear layer alone (F.linear on each
layer's weight in turn, in one CUDA graph, so the weights come from HBM as in a step), with the share of this card's
HBM rate its weight read reaches. Issue 13's decode bar is >= 70% of the weight-read floor; this says which kernels
hold a layer above it (all-reduces excluded: `all_reduce_probe.py` measures those across GPUs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from shifttune.config import TP
from shifttune.kernels import fused
from shifttune.profile.attention_bench import graph_time
from shifttune.profile.ops import OpsSettings, _release, build_rank
from shifttune.profile.step_timing import (
    fill_kv_cache_random,
    measure_ceilings,
    summarize,
    synthetic_step,
    time_step,
)

LINEARS = (("qkv_proj", "self_attn"), ("o_proj", "self_attn"), ("gate_up_proj", "mlp"), ("down_proj", "mlp"))


def eager_kernels(runner, step, iters: int, layers: int) -> dict[str, dict]:
    """{kernel name: {us per layer, calls per step}} of an eager step; kernels that run once per step are kept
    whole (the head's). NOTE: a kernel that runs in every layer and in the head too (a norm) counts its head call
    in the per-layer time (1/layers of it)."""
    from torch.profiler import ProfilerActivity, profile

    graphs, runner.graphs = runner.graphs, None
    try:
        runner.execute_model(step)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(iters):
                runner.execute_model(step)
            torch.cuda.synchronize()
    finally:
        runner.graphs = graphs
    out = {}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if us and evt.device_type.name == "CUDA":
            calls = evt.count / iters
            key, per = ("us_per_layer", layers) if calls >= layers else ("us_per_step", 1)
            out[evt.key] = {key: us / iters / per, "calls_per_step": calls}
    return dict(sorted(out.items(), key=lambda kv: -next(iter(kv[1].values()))))


def linear_alone(runner, batch: int, hbm: float) -> dict[str, dict]:
    """Each projection of every layer in turn, in one CUDA graph: us per layer and the HBM share of its weight read."""
    model = runner.models[TP]
    out = {}
    for name, parent in LINEARS:
        weights = [getattr(getattr(layer, parent), name).weight for layer in model.layers]
        x = torch.randn(batch, weights[0].shape[1], device=runner.device, dtype=weights[0].dtype)
        us = 1e3 * graph_time(lambda: [F.linear(x, w) for w in weights], runner.device, 50)[0] / len(weights)
        nbytes = weights[0].numel() * weights[0].element_size()
        out[name] = {"shape": list(weights[0].shape), "mbytes": nbytes / 1e6, "us": us,
                     "floor_us": 1e6 * nbytes / hbm, "of_hbm": nbytes / hbm / (us / 1e6)}  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.3-70b")
    ap.add_argument("--tp", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument(
        "--fused-pdl", choices=["off", "on"], default=None, help="RMSNorm, RoPE and SiLU with PDL (default: the tree's)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    if args.fused_pdl:
        fused.FUSED_PDL = args.fused_pdl == "on"
    if args.layers < 2:
        raise SystemExit("--layers: at least 2 (a layer is the difference between --layers layers and one)")
    ceilings = measure_ceilings(torch.device("cuda"))
    hbm = ceilings.hbm_bytes_per_s
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gpu": torch.cuda.get_device_name(0),
              "fused_pdl": fused.FUSED_PDL,
              "ceilings": {"hbm_bytes_per_s": hbm, "matmul_flops_per_s": ceilings.matmul_flops_per_s},
              "tp": {}}  # fmt: skip
    print(f"{result['gpu']}: HBM {hbm / 1e12:.2f} TB/s", flush=True)
    for tp in args.tp:
        settings = OpsSettings(args.model, [tp], tokens=args.batches, contexts=[args.context],
                               max_decode=max(args.batches), layers=args.layers)  # fmt: skip
        runner = build_rank(settings, tp, 1, args.layers)
        fill_kv_cache_random(runner)
        bs = runner.config.block_size
        layer0 = runner.models[TP].layers[0]
        layer_bytes = sum(p.numel() * p.element_size() for p in layer0.parameters())
        steps = {b: synthetic_step(TP, b, 1, args.context, bs) for b in args.batches}
        entry = {"layer_weight_mbytes": layer_bytes / 1e6, "layer_floor_us": 1e6 * layer_bytes / hbm, "batches": {}}
        for b, step in steps.items():
            many = summarize(time_step(runner, step, 5, args.iters)[0])[0]
            entry["batches"][b] = {"graphed_step_ms": many, "kernels": eager_kernels(runner, step, 5, args.layers),
                                   "linear_alone": linear_alone(runner, b, hbm)}  # fmt: skip
        for model in runner.models.values():
            model.layers = model.layers[:1]
        runner.capture_graphs()
        for b, step in steps.items():
            one = summarize(time_step(runner, step, 5, args.iters)[0])[0]
            row = entry["batches"][b]
            row["layer_us"] = 1e3 * (row["graphed_step_ms"] - one) / (args.layers - 1)
            row["of_floor"] = entry["layer_floor_us"] / row["layer_us"]
            kernel_sum = sum(k.get("us_per_layer", 0.0) for k in row["kernels"].values())
            row["eager_kernel_sum_us_per_layer"] = kernel_sum
            lin = ", ".join(f"{n} {v['us']:.1f} us ({v['of_hbm']:.0%})" for n, v in row["linear_alone"].items())
            floor = entry["layer_floor_us"]
            print(f"TP{tp} batch {b}: layer {row['layer_us']:.1f} us, floor {floor:.1f} us ({row['of_floor']:.0%}); "
                  f"eager kernels {kernel_sum:.1f} us a layer; alone: {lin}", flush=True)  # fmt: skip
            for name, k in list(row["kernels"].items())[:10]:
                if "us_per_layer" in k:
                    print(f"    {k['us_per_layer']:7.2f} us x{k['calls_per_step'] / args.layers:.0f}  {name[:100]}")
        _release(runner)
        del runner
        result["tp"][tp] = entry
        args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
