"""A lone prompt's prefill step as the engine runs it, against the profile's timing of the same shape (GPU).

    python profiles/commands/prefill_probe.py --model llama-3.1-8b --tp 1,2 --prompt-len 4096 --out probe.json

On 4 GPUs (session 14) the server's step for a lone 4k prompt took 54.8 ms of device time where the profile had
40.1; on one GPU 97.7 against 106.9. Per TP degree this runs, in one process:
- `step_sweep.measure_point` of one fresh `--prompt-len` sequence: the profile's number (inputs uploaded once,
  runs queued back to back);
- `LLM.generate` of lone prompts of that length, one at a time, max_tokens 1 (the GPU idle before each): the
  step's device time as the engine records it (CUDA events from the start of the runner's `execute`), and on
  every rank when `execute` was entered (relative to rank 0) and how long its host took to return from it
  (the step's launch: inputs built, kernels queued), and each rank's device time from that entry to the end of
  what it queued (a rank whose time is its host's waited for its host).
A rank that enters late or launches slowly holds every collective of the step, and the device time shows it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from shifttune import LLM, SamplingParams
from shifttune.config import TP
from shifttune.profile.step_sweep import measure_point
from shifttune.profile.step_timing import Ceilings, measure_ceilings


def install_timer(runner) -> None:
    """Wraps this rank's `execute`: per call, the wall time at entry, the host seconds until it returned, and (GPU)
    CUDA events at entry and after the last work it queued, read by `gather_calls`."""
    runner.probe_calls = []
    execute = runner.execute
    cuda = runner.device.type == "cuda"

    def timed(delta):
        t0, c0 = time.time(), time.perf_counter()
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda else None
        if events:
            events[0].record()
        out = execute(delta)
        if events:
            events[1].record()
        runner.probe_calls.append((t0, time.perf_counter() - c0, events))
        return out

    runner.execute = timed


def gather_calls(runner) -> list[list[tuple[float, float, float | None]]]:
    """Every rank's recorded calls (rank order): (entry wall time, host s, this rank's device ms from entry to the
    end of what it queued, or None on CPU), then cleared."""
    if runner.device.type == "cuda":
        torch.cuda.synchronize()
    mine = [(t, h, ev[0].elapsed_time(ev[1]) if ev else None) for t, h, ev in runner.probe_calls]
    runner.probe_calls = []
    if runner.state.cpu_group is None:
        return [mine]
    out = [None] * dist.get_world_size(runner.state.cpu_group)
    dist.all_gather_object(out, mine, group=runner.state.cpu_group)
    return out


def probe(model: str, tp: int, prompt_len: int, lone: int, iters: int, device: str) -> dict:
    fmt = "dummy" if model != "tiny" else "auto"
    llm = LLM(model, tensor_parallel_size=tp, device=device, load_format=fmt, max_model_len=prompt_len + 64)
    cuda = device == "cuda"
    try:
        engine = llm.llm_engine
        ceilings = measure_ceilings(torch.device(device)) if cuda else Ceilings(1e11, 1e12)  # CPU: floors unused
        timing, _peak = measure_point(engine, TP, prompt_len, prompt_len, 256, 3, iters, ceilings)
        vocab = engine.config.model_config.vocab_size
        params = SamplingParams(temperature=0, max_tokens=1)
        for k in range(2):  # warm-up: the shape's kernels compile / tune
            llm.generate([[(k * 131 + j * 7) % (vocab - 10) + 5 for j in range(prompt_len)]], params)
        engine.executor.collective_rpc(install_timer)
        rows = []
        for k in range(lone):
            if cuda:
                torch.cuda.synchronize()
            time.sleep(0.05)  # as the server probe: the loop idle before each request
            t = time.perf_counter()
            llm.generate([[(k * 977 + j * 13 + 3) % (vocab - 10) + 5 for j in range(prompt_len)]], params)
            wall = time.perf_counter() - t
            step = engine.stats.steps[-1]
            assert step.shape.num_prefill_tokens == prompt_len, step.shape
            calls = engine.executor.collective_rpc(gather_calls)
            first = [c[0] for c in calls]  # each rank's (entry, host s, device ms) of the prefill's execute
            rows.append({
                "device_ms": 1e3 * step.duration_s,
                "generate_ms": 1e3 * wall,
                "entry_lag_ms": [1e3 * (c[0] - first[0][0]) for c in first],
                "execute_host_ms": [1e3 * c[1] for c in first],
                "rank_device_ms": [c[2] for c in first],
            })  # fmt: skip
            print(f"tp={tp} lone {k}: {rows[-1]}", flush=True)
        med = {key: statistics.median(r[key] for r in rows) for key in ("device_ms", "generate_ms")}
        return {"tp": tp, "profile_median_ms": timing.median_ms, "profile_p10_ms": timing.p10_ms,
                "profile_p90_ms": timing.p90_ms, "lone": rows, "lone_median": med}  # fmt: skip
    finally:
        llm.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--tp", default="1,2", help="TP degrees, comma-separated (each needs that many GPUs)")
    ap.add_argument("--prompt-len", type=int, default=4096)
    ap.add_argument("--lone", type=int, default=8, help="lone prompts per TP degree")
    ap.add_argument("--iters", type=int, default=10, help="the profile's timed runs")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (gloo ranks: a smoke test of this script)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("prefill_probe needs a GPU (or --device cpu)")
    out = {"command": " ".join(sys.argv), "card": torch.cuda.get_device_name(0) if cuda else "cpu",
           "model": args.model, "prompt_len": args.prompt_len, "runs": []}  # fmt: skip
    for tp in (int(x) for x in args.tp.split(",")):
        if cuda and tp > torch.cuda.device_count():
            print(f"skip tp={tp}: {torch.cuda.device_count()} GPUs", flush=True)
            continue
        out["runs"].append(probe(args.model, tp, args.prompt_len, args.lone, args.iters, args.device))
        args.out.write_text(json.dumps(out, indent=1))
        r = out["runs"][-1]
        print(
            f"tp={tp}: profile {r['profile_median_ms']:.1f} ms, lone prefill device {r['lone_median']['device_ms']:.1f}"
            f" ms (generate {r['lone_median']['generate_ms']:.1f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
