"""The engine's decode step with and without programmatic dependent launch in the fused kernels (GPU).

    python profiles/commands/fused_pdl_probe.py --rules off,on,off,on --out fused_pdl.json

`fused.FUSED_PDL` launches RMSNorm, RoPE and SiLU with PDL (each waits for the launch before it first thing, so
its launch overlaps the one before). Session 13 measured it on against off in the loop at three batches on an
H100: batch 1 at 2k 1.4% faster, batch 128 0.4% faster, batch 32 1.6% slower (`profiles/runs/s13_h100/g_pdl_all`).
This times the decode step (its CUDA graph, `measure_point`, as `profile` does) at every batch of --batches and
--context under each rule, `off` or `on`, one engine per rule, in the order given (repeats labelled #2, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from decode_attention_marginal import label_repeats, step_ms

from shifttune.kernels import fused


def apply_rule(rule: str) -> None:
    """Sets fused.FUSED_PDL for `rule` (off or on), for engines built next."""
    if rule not in ("off", "on"):
        raise ValueError(f"{rule!r} is not off or on")
    fused.FUSED_PDL = rule == "on"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rules", default="off,on,off,on", help="rules to time, in order (see above)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("fused_pdl_probe needs a GPU")
    batches = [int(b) for b in args.batches.split(",")]
    specs = args.rules.split(",")
    saved = fused.FUSED_PDL
    for spec in set(specs):
        try:
            apply_rule(spec)
        except ValueError as e:
            ap.error(f"--rules: {e}")
    rules = label_repeats(specs)
    points = [(b, args.context) for b in batches]
    ms: dict[str, dict[str, float]] = {}
    floor_ms: dict[str, float] = {}  # NOTE: each engine measures the HBM rate again; rows keep the last one's floor
    try:
        for rule in rules:
            apply_rule(rule.partition("#")[0])
            print(f"rule {rule}", flush=True)
            ms[rule], _, _ = step_ms(args.model, points, args.iters, floor_ms)
    finally:
        fused.FUSED_PDL = saved
    rows = []
    for batch in batches:
        key = f"{batch}x{args.context}"
        per_rule = {r: ms[r][key] for r in rules}
        rows.append({"batch": batch, "context": args.context, "floor_ms": floor_ms[key], "step_ms": per_rule})
        parts = ", ".join(f"{r} {v:.4f}" for r, v in per_rule.items())
        print(f"b={batch} C={args.context}: step ms, floor {floor_ms[key]:.3f}: {parts}", flush=True)
    out = {"command": " ".join(sys.argv), "card": torch.cuda.get_device_name(0), "model": args.model, "rows": rows}
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
