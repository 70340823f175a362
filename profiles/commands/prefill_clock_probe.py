"""Does a prefill step take the same device time back to back (as `shifttune profile` times it) as between
decode steps or after an idle gap (as a server at a moderate rate runs it)? Issue 12's simulator-vs-server
check found the server's prefill steps at 0.89-0.91 x the profile's time for the same shape, decode at
1.01-1.02 x. A power-capped GPU lowers its SM clock under sustained matmul work; decode (memory-bound)
draws less power. This times one shape three ways on one GPU, with the SM clock and power NVML reports
meanwhile (`telemetry.nvml.recording`, every 5 ms):

    python profiles/commands/prefill_clock_probe.py --model llama-3.1-8b --out probe.json

1. back to back: 30 calls queued (the profile's `time_step` queues 2 + 5; the first 7's median is kept too);
2. after decode: 15 times, 20 decode steps (batch 32, context 1152) queued, then the prefill;
3. after idle: 15 times, 0.5 s of host sleep (GPU idle), then the prefill.
Each prefill is timed by CUDA events around its own call only. Shapes: one 1024-token prompt (a graph
bucket) and two (2048 tokens, the largest graph bucket), from position 0, as the validate workload's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from shifttune import LLM
from shifttune.config import TP
from shifttune.profile.step_timing import synthetic_step
from shifttune.telemetry.nvml import clock_and_power, recording


def timed(fn) -> tuple[torch.cuda.Event, torch.cuda.Event]:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    return start, end


@torch.inference_mode()
def probe(runner, block_size: int, prompts: int, reps: int) -> dict:
    prefill = runner.prepare_model_step(synthetic_step(TP, prompts, 1024, 1024, block_size))
    decode = runner.prepare_model_step(synthetic_step(TP, 32, 1, 1152, block_size))
    for _ in range(3):
        prefill(), decode()
    torch.cuda.synchronize()
    out = {}
    with recording(0.005) as clocks:
        events = [timed(prefill) for _ in range(2 * reps)]
        torch.cuda.synchronize()
    out["back_to_back"] = {"ms": [s.elapsed_time(e) for s, e in events]} | clock_and_power(clocks)
    out["back_to_back"]["first_7_median_ms"] = statistics.median(out["back_to_back"]["ms"][:7])  # the profile's 2 + 5
    with recording(0.005) as clocks:
        events = []
        for _ in range(reps):
            for _ in range(20):
                decode()
            events.append(timed(prefill))
            torch.cuda.synchronize()
    out["after_decode"] = {"ms": [s.elapsed_time(e) for s, e in events]} | clock_and_power(clocks)
    with recording(0.005) as clocks:
        events = []
        for _ in range(reps):
            time.sleep(0.5)
            events.append(timed(prefill))
            torch.cuda.synchronize()
    out["after_idle"] = {"ms": [s.elapsed_time(e) for s, e in events]} | clock_and_power(clocks)
    for v in out.values():
        v["median_ms"] = statistics.median(v["ms"])
    base = out["back_to_back"]["median_ms"]
    for v in out.values():
        v["over_back_to_back"] = v["median_ms"] / base
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    llm = LLM(args.model, device="cuda", load_format="dummy", max_model_len=4096)
    engine = llm.llm_engine
    result = {"command": "python profiles/commands/prefill_clock_probe.py " + " ".join(argv or sys.argv[1:]),
              "card": torch.cuda.get_device_name(), "model": args.model, "shapes": {}}  # fmt: skip
    try:
        for prompts in (1, 2):
            r = probe(engine.executor.runner, engine.config.block_size, prompts, args.reps)
            result["shapes"][f"{prompts}x1024"] = r
            print(f"{prompts} x 1024 tokens: " + "  ".join(
                f"{k} {v['median_ms']:.2f} ms (x{v['over_back_to_back']:.3f}, SM {v.get('sm_clock_mhz_median')} MHz, "
                f"{v.get('power_w_median')} W)" for k, v in r.items()), flush=True)  # fmt: skip
    finally:
        llm.shutdown()
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
