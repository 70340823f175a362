"""Is an eager (uncaptured) prefill step of one rank bound by its host or by its GPU? (GPU; issue 13's SP x TP
layouts at P = 4 and 8, and the op tables' eager entries that move between machines.)

    python profiles/commands/eager_host_probe.py --out eager_host.json

For each layout (a rank built alone as `profile --ops` builds it: `ops.build_rank`, `--layers` decoder layers) and
each step of more tokens than the CUDA graphs hold: the step's wall time (synchronized, as `profile` times it); the
host's time to enqueue it while the GPU is held busy (`torch.cuda._sleep`), so nothing waits on the device; the
device's time for it with the host ahead (CUDA events around it, queued behind the sleep); and, for one run of the
step (`--profile`), torch.profiler's ops by self CPU time and cProfile's functions by own and cumulative time
(both inflated by the profilers; for proportions). With `--graph-max-tokens N` each layout is built a second time with
CUDA graphs for steps of up to N tokens (`cuda_graph_max_tokens`; the paged Triton kernel then runs their
attention, not cuDNN SDPA) and the same steps are timed replayed: what capturing them would gain. With
`--sp-graph-tokens-per-gpu N` the second build follows the engine's own rule instead
(EngineConfig's `sp_cuda_graph_tokens_per_gpu`: SP-mode graphs up to N tokens per GPU, TP mode as shipped;
it was `--sp-graph-tokens-per-rank`, N x SP tokens, when k_sp_graph_rule ran).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import pstats
import statistics
import time
from pathlib import Path

import torch

from shifttune.config import EngineConfig
from shifttune.profile import ops
from shifttune.profile.step_sweep import step_shape
from shifttune.profile.step_timing import fill_kv_cache_random, synthetic_step

SLEEP_CYCLES = 200_000_000  # ~0.1 s at 1.98 GHz: longer than any step's enqueue


def median_ms(fn, run, n: int) -> float:
    return statistics.median(fn(run) for _ in range(n))


def wall(run) -> float:
    """The step synchronized, as `profile` times it."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start)


def host(run) -> float:
    """The host's time to enqueue the step while the GPU sleeps (nothing waits on the device)."""
    torch.cuda._sleep(SLEEP_CYCLES)
    start = time.perf_counter()
    run()
    took = 1e3 * (time.perf_counter() - start)
    torch.cuda.synchronize()
    return took


def device(run) -> float:
    """The device's time for the step, queued behind a sleep so that the host is ahead."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda._sleep(SLEEP_CYCLES)
    a.record()
    run()
    b.record()
    b.synchronize()
    return a.elapsed_time(b)


def host_profiles(run) -> dict[str, str]:
    """One run of the step under torch.profiler (ops by self CPU time) and cProfile (functions by own and by
    cumulative time), the GPU held busy meanwhile so that the host never waits."""
    torch.cuda._sleep(SLEEP_CYCLES)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    torch.cuda.synchronize()
    torch.cuda._sleep(SLEEP_CYCLES)
    cp = cProfile.Profile()
    cp.enable()
    run()
    cp.disable()
    torch.cuda.synchronize()
    out = {"torch": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=50)}
    for key in ("tottime", "cumtime"):
        buf = io.StringIO()
        pstats.Stats(cp, stream=buf).sort_stats(key).print_stats(25)
        out[f"cprofile_{key}"] = buf.getvalue()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--layouts", default="tp:1:1,tp:4:1,sp:1:4,tp:8:1,sp:2:4,sp:1:8", help="mode:tp:sp, ...")
    ap.add_argument("--steps", default="4096x8192,8192x8192", help="tokens x context, ...")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--profile", action="store_true", help="also profile one run of each step on the host")
    ap.add_argument("--graph-max-tokens", type=int, default=None, help="also time the steps captured in graphs")
    ap.add_argument("--sp-graph-tokens-per-gpu", type=int, default=None, help="also time them under this SP rule")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    steps = [tuple(int(x) for x in s.split("x")) for s in args.steps.split(",")]
    settings = ops.OpsSettings(args.model, tokens=sorted({t for t, _ in steps}), contexts=sorted({c for _, c in steps}),
                               layers=args.layers)  # fmt: skip
    rows, profiles, t0 = [], {}, time.perf_counter()
    builds = [(spec, None, 0) for spec in args.layouts.split(",")]
    if args.graph_max_tokens or args.sp_graph_tokens_per_gpu:
        second = (args.graph_max_tokens, args.sp_graph_tokens_per_gpu or 0)
        builds = [(spec, *b) for spec in args.layouts.split(",") for b in ((None, 0), second)]
    for spec, graph_max, sp_per_gpu in builds:
        mode, tp, sp = spec.split(":")
        tp, sp = int(tp), int(sp)
        # NOTE: the probe's own knob: `profile --ops` builds ranks with the engine's default graph limit
        ops.EngineConfig = functools.partial(EngineConfig, cuda_graph_max_tokens=graph_max or 2048,
                                             sp_cuda_graph_tokens_per_gpu=sp_per_gpu)  # fmt: skip
        runner = ops.build_rank(settings, tp, sp, args.layers)
        ops.EngineConfig = EngineConfig
        fill_kv_cache_random(runner)
        for tokens, context in steps:
            seqs, per = step_shape(tokens, context, settings.max_decode)
            run = runner.prepare_model_step(synthetic_step(mode, seqs, per, context, runner.config.block_size))
            for _ in range(3):
                run()
            torch.cuda.synchronize()

            wall_ms, host_ms, device_ms = (median_ms(fn, run, args.iters) for fn in (wall, host, device))
            graphed = runner.graphs is not None and runner.graphs.can_run(tokens, seqs, seqs, mode)
            row = dict(mode=mode, tp=tp, sp=sp, tokens=tokens, context=context, layers=args.layers, graphed=graphed,
                       wall_ms=wall_ms, host_ms=host_ms, device_ms=device_ms)  # fmt: skip
            row["host_over_device"] = row["host_ms"] / row["device_ms"]
            rows.append(row)
            if args.profile and not graphed:
                profiles[f"{spec} {tokens}x{context}"] = host_profiles(run)
            label = f"{mode} TP={tp} SP={sp} {tokens}x{context}{' graphed' if graphed else ''}"
            print(f"{label}: wall {row['wall_ms']:.2f} ms, "
                  f"host {row['host_ms']:.2f}, device {row['device_ms']:.2f} "
                  f"(host/device {row['host_over_device']:.2f}) "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
        ops._release(runner)
        del runner
    result = dict(command="python profiles/commands/eager_host_probe.py " + " ".join(argv or []),
                  card=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows, profiles=profiles)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
