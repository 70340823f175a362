"""Predicted TP decode steps against the weight-read floor, with NCCL's and with the one-shot all-reduce, and the
op table's per-rank layer time against that layer's weight reads: where issue 13's decode bar (>= 70% at batch
1-32, 2k) stands for GPUs not measured yet. CPU only (the shipped op table and a collectives table).

    python profiles/commands/predict_tp_decode_floor.py --model llama-3.3-70b --gpu h200 --gpus 4,8 \
        --collectives profiles/runs/s17_h200x4/profile_70b/collectives_h200x4.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shifttune.profile.step_timing import Ceilings, fill_floors
from shifttune.recommend.collectives import NCCL, ONE_SHOT
from shifttune.recommend.gpus import gpu_spec
from shifttune.recommend.op_table import load_op_table, shipped_op_table
from shifttune.recommend.predict import PredictSettings, predict_profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.3-70b")
    ap.add_argument("--gpu", default="h200")
    ap.add_argument("--gpus", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8])
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--collectives", type=Path)
    args = ap.parse_args()
    spec = gpu_spec(args.gpu)
    ceilings = Ceilings(spec.hbm_bytes_per_s, spec.matmul_flops_per_s)
    table = load_op_table(shipped_op_table(args.model, args.gpu))
    print(f"ceilings of the {args.gpu}: HBM {spec.hbm_bytes_per_s / 1e12:.2f} TB/s (shipped)")
    for p in args.gpus:
        for backend in (NCCL, ONE_SHOT):
            settings = PredictSettings(args.model, p, args.gpu, tokens=args.batches, contexts=[args.context],
                                       collectives=args.collectives, all_reduce_backend=backend)  # fmt: skip
            prof = predict_profile(settings)
            fill_floors(prof, ceilings)
            rows = ", ".join(f"batch {pt.tokens} {pt.median_ms:.2f} ms ({pt.bandwidth_floor_ms / pt.median_ms:.0%})"
                             for pt in prof.points if pt.mode == "tp")  # fmt: skip
            print(f"TP{p} {backend}: {rows}")
        layers = prof.model["num_layers"]
        weights = next(f.weight_bytes_per_rank["tp"] for f in prof.factorizations if (f.tp, f.sp) == (p, 1))
        entry = table.get("tp", p, 1, 1, args.context)
        print(
            f"TP{p}: the op table's layer at batch 1 {1e3 * entry.layer_ms:.1f} us, its weight reads "
            f"{1e6 * weights / layers / spec.hbm_bytes_per_s:.1f} us (this rank's weights / {layers} layers)"
        )


if __name__ == "__main__":
    main()
