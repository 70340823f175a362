"""Re-runs the simulator on a `bench --compare` JSON's own workload and prints each request's TTFT, predicted
beside measured, per mode: for runs saved before `bench --compare` kept `ttft_ms_per_request`, or to see what a
simulator change predicts for a measured run.

    python profiles/commands/resimulate_bench.py BENCH_JSON PROFILE --tp 2 --sp 2 --threshold 1371

The arrivals are redrawn as `bench` draws them (rate, burstiness and --seed, default 0 as in `bench`); the engine
loop (budget, graphs, async, ingress and egress) is the one the JSON recorded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import median

from shifttune.bench.compare import MODE_POLICY
from shifttune.bench.validate import simulated
from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.simulator import EngineLoop
from shifttune.recommend.workload import Request, Workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json", type=Path)
    ap.add_argument("profile", type=Path)
    ap.add_argument("--tp", type=int, required=True)
    ap.add_argument("--sp", type=int, required=True)
    ap.add_argument("--threshold", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    prof = load_profile(args.profile)
    for rec in json.loads(args.bench_json.read_text())["results"]:
        burst = rec["burstiness"] or 1.0
        times = [r.arrival_s for r in Workload(rate=rec["request_rate"], num_requests=len(rec["ttfts"]),
                                               seed=args.seed, burstiness=burst).requests()]  # fmt: skip
        requests = [Request(t - times[0], n, o) for t, n, o in zip(times, rec["input_lens"], rec["output_lens"])]
        settings = {"tp": args.tp, "sp": args.sp, "policy": MODE_POLICY[rec["mode"]], "threshold": args.threshold}
        loop = EngineLoop(**rec["predicted"]["engine_loop"])
        pred = simulated(prof, str(args.profile), settings, requests, loop, per_request=True)["ttft_ms_per_request"]
        meas = [1e3 * t for t in rec["ttfts"]]
        print(f"{rec['mode']} at rate {rec['request_rate']} (burstiness {burst}): TTFT p50 predicted "
              f"{median(pred):.0f} ms, measured {median(meas):.0f} ms")  # fmt: skip
        print("  predicted", [round(x) for x in pred])
        print("  measured ", [round(x) for x in meas])


if __name__ == "__main__":
    main()
