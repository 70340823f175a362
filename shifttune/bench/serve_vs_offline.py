"""The server against the offline engine on the same prompts: what serving over HTTP costs.

    python -m shifttune.bench.serve_vs_offline --model llama-3.1-8b --device cuda --out serve_vs_offline.json

For each concurrency c (1, 32, 256, and "inf": every prompt sent at once) the same random prompts (1024 in,
128 out, ignore_eos; each case and repeat its own, `case_seed`) run twice: offline, through the engine's own
loop with at most c sequences running (`LLMEngine.step` until done, as `LLM.generate` does), and served,
through `shifttune bench` with at most c requests in flight against `shifttune serve` (started as a subprocess
with the same engine settings). Rows: output throughput of both and their ratio, and TPOT (mean over requests
of (E2E - TTFT) / (output tokens - 1)) of both. Warm-up runs come first on each side. With `--repeats N` every
case runs N times on each side (cases interleaved: 1, 32, 256, inf, 1, 32, ...) and each row reports the
median throughput and TPOT over the repeats, with every repeat kept in the row.

`--cases inf,256` runs only those concurrencies. `--trace` keeps the server's `/v1/shifttune/trace` of each served
run (in `<out>.trace.json`) and puts a summary of it in the row's `server.trace`: when the first and last request
reached the handler after the bench started sending, how long their add messages took to reach the core, and how
many engine steps the run took before every sequence it can hold was running. `--server-path DIR` serves the tree
at DIR (its `shifttune` package first on the server's PYTHONPATH), measured by this tree's bench and offline engine:
two trees' servers in one call.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

import httpx

from shifttune.bench.compare import ServeProcess, free_port
from shifttune.bench.config import BenchConfig, LengthRange
from shifttune.bench.datasets import build_requests
from shifttune.bench.runner import run_bench
from shifttune.signals import Stopped, exit_status, sigterm_like_ctrl_c, stop_signal
from shifttune.bench.tokenizer import load_tokenizer
from shifttune.engine.stats import percentile

CASES = [(1, 8), (32, 64), (256, 512), (None, 512)]  # (concurrency, prompts); None: all at once
PROMPT_TOKENIZER = "tiny"  # random ids of exact lengths below every model's vocabulary; their text is noise


def case_seed(seed: int, repeat: int, case: int, num_cases: int) -> int:
    """The prompts' seed of a case (its index in the cases) in a repeat; warm-ups take `seed + 1`.
    NOTE: every case and repeat has its own prompts. With one seed, the cases of 256 and inf ran the same 512 prompts,
    and the second found all of them in the prefix cache the first had filled: decode only, offline and served alike
    (offline 256 steps in 4.7-4.9 s against 288 in 10.9-11.0 s for the case before, profiles/runs/s27_gpu b, i)."""
    return seed + 2 + repeat * num_cases + case


def bench_config(base_url: str, concurrency: int | None, num_prompts: int, args, seed: int) -> BenchConfig:
    return BenchConfig(
        base_url=base_url,
        concurrency=concurrency,
        num_prompts=num_prompts,
        input_len=LengthRange(args.input_len, args.input_len),
        output_len=LengthRange(args.output_len, args.output_len),
        tokenizer=PROMPT_TOKENIZER,
        seed=seed,
    )


def offline_run(engine, prompts, output_len: int, concurrency: int | None) -> dict:
    """Every prompt through the engine loop with at most `concurrency` sequences running."""
    from shifttune.engine.sampling_params import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    engine.scheduler.max_num_seqs = concurrency or engine.config.max_num_seqs
    first, done = {}, {}
    steps_before, busy_before = engine.stats.num_steps, _busy_s(engine.stats.steps)
    start = time.monotonic()
    for i, p in enumerate(prompts):
        engine.add_request(f"offline-{i}", p, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            now = time.monotonic()
            first.setdefault(out.request_id, now)
            if out.finished:
                done[out.request_id] = (now, len(out.outputs[0].token_ids))
    duration = time.monotonic() - start
    engine.scheduler.max_num_seqs = engine.config.max_num_seqs
    tokens = sum(n for _, n in done.values())
    tpots = [1e3 * (end - first[rid]) / (n - 1) for rid, (end, n) in done.items() if n > 1]
    return {"duration": duration, "total_output_tokens": tokens, "output_throughput": tokens / duration,
            "mean_tpot_ms": sum(tpots) / len(tpots), "median_tpot_ms": percentile(tpots, 0.5),
            "steps": engine.stats.num_steps - steps_before,
            "step_seconds": _busy_s(engine.stats.steps) - busy_before}  # fmt: skip


def _busy_s(steps) -> float:
    return sum(s.duration_s for s in steps)


def server_steps(base_url: str) -> tuple[float, float]:
    """(steps, seconds spent in steps) so far, from the server's /metrics."""
    steps = seconds = 0.0
    for line in httpx.get(f"{base_url}/metrics", timeout=10).text.splitlines():
        if line.startswith("shifttune:steps_total{"):
            steps += float(line.rsplit(" ", 1)[1])
        elif line.startswith("shifttune:step_seconds_sum{"):
            seconds += float(line.rsplit(" ", 1)[1])
    return steps, seconds


def measure_offline(args, cases) -> list[dict]:
    from shifttune.config import EngineConfig
    from shifttune.engine.llm_engine import LLMEngine

    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, load_format="dummy"))
    try:
        tok = load_tokenizer(PROMPT_TOKENIZER)

        def prompts(n: int, seed: int) -> list:
            return [r.prompt for r in build_requests(bench_config("http://x", None, n, args, seed), tok)]

        offline_run(engine, prompts(256, args.seed + 1), args.output_len, None)  # warm-up: every step shape
        runs = [[offline_run(engine, prompts(n, case_seed(args.seed, r, i, len(cases))), args.output_len, c)
                 for i, (c, n) in enumerate(cases)] for r in range(args.repeats)]  # fmt: skip
        return [_median_run([r[i] for r in runs]) for i in range(len(cases))]
    finally:
        engine.shutdown()


def trace_summary(trace: dict, max_num_seqs: int) -> dict:
    """What a served run's trace says of its start: times in s after the test request's last step (the bench sends
    one request before the run), on the host's one clock."""
    rows = sorted((r for r in trace["requests"] if r["http"] is not None), key=lambda r: r["http"])[1:]  # no test
    f = trace["step_fields"]
    steps = [dict(zip(f, s)) for s in trace["steps"]]
    if not rows:
        return {"requests": 0}
    first = rows[0]["http"]
    t0 = max((s["completed"] for s in steps if s["scheduled"] < first and s["completed"]), default=first)
    steps = [s for s in steps if s["scheduled"] >= first]
    full = min(len(rows), max_num_seqs)
    ramp = next((i for i, s in enumerate(steps) if s["seqs"] >= full), None)

    def mean_ms(a: str, b: str) -> float | None:
        d = [r[b] - r[a] for r in rows if r[a] is not None and r[b] is not None]
        return 1e3 * sum(d) / len(d) if d else None

    return {"requests": len(rows), "steps": len(steps), "first_http_s": first - t0,
            "last_http_s": max(r["http"] for r in rows) - t0,
            "last_core_in_s": max((r["core_in"] for r in rows if r["core_in"]), default=t0) - t0,
            "steps_until_full": ramp, "full_at_s": steps[ramp]["scheduled"] - t0 if ramp is not None else None,
            "http_to_piped_ms": mean_ms("http", "piped"), "piped_to_core_ms": mean_ms("piped", "core_in"),
            "seqs_first_steps": [s["seqs"] for s in steps[:40]]}  # fmt: skip


def served_run(cfg: BenchConfig) -> dict:
    """One bench run's record; KeyboardInterrupt where a signal cut it short (the server is then stopped)."""
    run = run_bench(cfg)
    if run.interrupted:
        raise Stopped(run.stop_signal or signal.SIGINT)
    return run.records[0]


def measure_server(args, cases, log: Path) -> list[dict]:
    port = free_port()
    run = ["-m", "shifttune.cli"]
    if args.server_path is not None:  # NOTE: -m and -c put the working directory first on sys.path; this goes before
        # it (the engine core, spawned, gets the server's sys.path)
        tree = str(args.server_path.resolve())
        run = ["-c", f"import sys; sys.path.insert(0, {tree!r}); import shifttune; from shifttune.cli.app import app; "
               "print('serving the tree at', shifttune.__file__, flush=True); app()"]  # fmt: skip
    cmd = [sys.executable, *run, "serve", args.model, "--device", args.device, "--load-format", "dummy", "--host",
           "127.0.0.1", "--port", str(port)]  # fmt: skip
    traces = []
    with ServeProcess(cmd, port, log) as server:
        server.wait_healthy(900)
        served_run(bench_config(server.base_url, None, 256, args, args.seed + 1))  # warm-up: every step shape
        max_num_seqs = httpx.get(f"{server.base_url}/v1/shifttune/live", timeout=10).json()["engine"]["max_num_seqs"]
        runs = []
        for r in range(args.repeats):
            runs.append([])
            for i, (c, n) in enumerate(cases):
                steps, busy = server_steps(server.base_url)
                started = time.monotonic()
                cfg = bench_config(server.base_url, c, n, args, case_seed(args.seed, r, i, len(cases)))
                record = served_run(cfg)
                steps_after, busy_after = server_steps(server.base_url)
                record = {k: v for k, v in record.items() if not isinstance(v, list)}
                record |= {"steps": steps_after - steps, "step_seconds": busy_after - busy}
                if args.trace:
                    trace = httpx.get(f"{server.base_url}/v1/shifttune/trace", params={"since": started}, timeout=60)
                    traces.append({"concurrency": c} | trace.json())
                    record["trace"] = trace_summary(traces[-1], max_num_seqs)
                runs[-1].append(record)
    if args.trace:
        args.out.with_suffix(".trace.json").write_text(json.dumps(traces))
    return [_median_run([r[i] for r in runs]) for i in range(len(cases))]


def _median_run(runs: list[dict]) -> dict:
    """The repeat with the median output throughput, with every repeat's throughput and TPOT alongside."""
    mid = sorted(runs, key=lambda r: r["output_throughput"])[len(runs) // 2]
    return mid | {"repeats": [{"output_throughput": r["output_throughput"], "mean_tpot_ms": r["mean_tpot_ms"],
                               "steps": r["steps"]} for r in runs]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--input-len", type=int, default=1024)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply the prompt counts (e.g. 0.1 for a smoke run)")
    ap.add_argument("--server-first", action="store_true", help="measure the server before the offline engine")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every case on each side (rows: the median)")
    ap.add_argument("--cases", default="1,32,256,inf", help="concurrencies to run, among 1, 32, 256 and inf")
    ap.add_argument("--trace", action="store_true", help="keep and summarize the server's trace of each run")
    ap.add_argument("--server-path", type=Path, help="serve the tree at this path (its shifttune package)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    wanted = args.cases.split(",")
    cases = [(c, max(1, int(n * args.scale))) for c, n in CASES if ("inf" if c is None else str(c)) in wanted]
    if not cases:
        ap.error(f"--cases: none of {args.cases!r} is among 1, 32, 256, inf")
    log = args.out.with_suffix(".serve.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sigterm_like_ctrl_c():  # NOTE: a `timeout` must not leave the server (and its GPU memory) behind
            if args.server_first:  # the order shows whether the GPU's state (clocks, heat) moves the numbers
                served, offline = measure_server(args, cases, log), measure_offline(args, cases)
            else:
                offline, served = measure_offline(args, cases), measure_server(args, cases, log)
    except KeyboardInterrupt as e:
        print(f"interrupted ({e or 'Ctrl-C'}): nothing written; the server, if started, was stopped", file=sys.stderr)
        sys.exit(exit_status(stop_signal(e)))
    rows = []
    for (c, n), off, srv in zip(cases, offline, served):
        rows.append({
            "concurrency": "inf" if c is None else c, "num_prompts": n,
            "offline_output_throughput": off["output_throughput"], "server_output_throughput": srv["output_throughput"],
            "throughput_ratio": srv["output_throughput"] / off["output_throughput"],
            "offline_mean_tpot_ms": off["mean_tpot_ms"], "server_mean_tpot_ms": srv["mean_tpot_ms"],
            "tpot_ratio": srv["mean_tpot_ms"] / off["mean_tpot_ms"],
            "server_median_ttft_ms": srv["median_ttft_ms"], "server_failed": srv["failed"],
            "offline": off, "server": {k: v for k, v in srv.items() if not isinstance(v, list) or k == "repeats"},
        })  # fmt: skip
        print(f"c={rows[-1]['concurrency']:>4}: offline {off['output_throughput']:9.1f} tok/s, server "
              f"{srv['output_throughput']:9.1f} tok/s ({rows[-1]['throughput_ratio']:.3f}); TPOT offline "
              f"{off['mean_tpot_ms']:.2f} ms, server {srv['mean_tpot_ms']:.2f} ms ({rows[-1]['tpot_ratio']:.3f}); "
              f"steps {off['steps']} / {srv['steps']:.0f}, in steps {off['step_seconds']:.2f} / "
              f"{srv['step_seconds']:.2f} s of {off['duration']:.2f} / {srv['duration']:.2f} s")  # fmt: skip
    device = "cpu"
    if args.device == "cuda":
        import torch

        device = torch.cuda.get_device_name()
    result = {"command": "python -m shifttune.bench.serve_vs_offline " + " ".join(argv or sys.argv[1:]),
              "device": device, "model": args.model, "input_len": args.input_len, "output_len": args.output_len,
              "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
