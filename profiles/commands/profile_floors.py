"""Adds the floors to a profile measured before `shifttune profile` kept them, and checks issue 13's bars.

    python profiles/commands/profile_floors.py PROFILE [--out FILE]

Ceilings: the profile's own when it has them, else the shipped ones of its card (`shifttune/data/gpus.json`).
Prints each TP decode step (batch 1-32, 2k context) against the weight-read floor (bar: >= 70%) and each SP x TP
step of 8k-16k tokens against the matmul floor (bar: >= 67%).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shifttune.config import SP, TP
from shifttune.engine.profile_schema import load_profile
from shifttune.profile.step_timing import Ceilings, fill_floors
from shifttune.recommend.gpus import gpu_slug, gpu_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--out", type=Path, help="write the profile with floors here (default: print only)")
    args = ap.parse_args()
    prof = load_profile(args.profile)
    if prof.hardware.get("device") != "cuda":
        raise SystemExit(f"{args.profile} was not measured on GPUs: its steps have no HBM or matmul floor")
    if not prof.ceilings:
        spec = gpu_spec(gpu_slug(prof.hardware.get("gpu_name", "")))
        source = f"shipped ceilings of the {spec.slug} (shifttune/data/gpus.json), not this run's"
        prof.ceilings = {"hbm_bytes_per_s": spec.hbm_bytes_per_s, "matmul_flops_per_s": spec.matmul_flops_per_s,
                         "source": source}  # fmt: skip
    c = prof.ceilings
    print(f"ceilings: HBM {c['hbm_bytes_per_s'] / 1e12:.2f} TB/s, matmul {c['matmul_flops_per_s'] / 1e12:.0f} TFLOP/s "
          f"({c.get('source', 'measured')})")  # fmt: skip
    fill_floors(prof, Ceilings(c["hbm_bytes_per_s"], c["matmul_flops_per_s"]))
    print(f"{'mode':>4} {'TP':>2} {'SP':>2} {'tokens':>6} {'ctx':>6} {'ms':>9} {'floor':>9} {'of floor':>8}  bar")
    for pt in sorted(prof.points, key=lambda q: (q.mode, -q.tp, q.context, q.tokens)):
        floor = pt.floor_ms
        if floor is None:  # a layout the profile has no weight sizes for
            continue
        bar = ""
        if pt.mode == TP and pt.tokens_per_seq == 1 and pt.tokens <= 32 and pt.context == 2048:
            bar = "weight-read >= 70%: " + ("met" if pt.bandwidth_floor_ms / pt.median_ms >= 0.70 else "NOT met")
        elif pt.mode == SP and 8192 <= pt.tokens <= 16384:
            bar = "matmul >= 67%: " + ("met" if pt.matmul_floor_ms / pt.median_ms >= 0.67 else "NOT met")
        print(f"{pt.mode:>4} {pt.tp:>2} {pt.sp:>2} {pt.tokens:>6} {pt.context:>6} {pt.median_ms:9.2f} {floor:9.2f} "
              f"{floor / pt.median_ms:8.0%}  {bar}")  # fmt: skip
    if args.out:
        prof.save(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
