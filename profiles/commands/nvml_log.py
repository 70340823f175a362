"""Logs what the live views' NVML sampler reads (one JSON line a second: per GPU utilization, power and NVLink
tx/rx GB/s) until killed or --seconds pass: a check of the sampler's numbers beside a GPU job.

    python profiles/commands/nvml_log.py --out nvml.jsonl --seconds 300 &

The NVLink rates are the sampler's own (all links of a GPU summed), so a run that moves known bytes over NVLink
checks them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from shifttune.telemetry.nvml import NvmlSampler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=600.0)
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    sampler = NvmlSampler(interval_s=args.interval)
    end = time.monotonic() + args.seconds
    with args.out.open("w") as f:
        while time.monotonic() < end:
            reading = sampler.sample()
            if not reading.available:
                f.write(json.dumps({"reason": reading.reason}) + "\n")
                break
            gb = lambda v: None if v is None else round(v / 1e9, 2)  # noqa: E731
            row = {"t": round(time.time(), 1),
                   "gpus": [{"i": g.index, "util": g.util_pct, "power_w": g.power_w, "nvlink_tx_gbs": gb(g.nvlink_tx),
                             "nvlink_rx_gbs": gb(g.nvlink_rx), "unsupported": sorted(g.unsupported)}
                            for g in reading.gpus]}  # fmt: skip
            f.write(json.dumps(row) + "\n")
            f.flush()
            time.sleep(args.interval)
    sampler.stop()


if __name__ == "__main__":
    main()
