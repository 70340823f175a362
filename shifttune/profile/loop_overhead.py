"""What the engine loop costs on top of the GPU: `LLMEngine.step` wall time against the same step shape
replayed as the runner's CUDA graph, for decode batches, greedy and sampled; batch-1 decode against the
weight-read floor, with where its GPU time goes; and offline throughput through `LLM.generate`.

    python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out profiles/loop_overhead_<card>.json

For each case, `batch` requests whose prompts fill the context decode together (each generates --new-tokens
more tokens than the steps its batch's prefill takes, and no prompt shares a prefix with another case's, so
every case decodes its whole batch for --new-tokens steps, alone or after others); loop_ms is the median
wall time of `step()` over the steps where all of them decode (schedule, inputs, model, sampling,
stop checks, outputs; with async scheduling, one call launches a step and reads back the one before);
gpu_ms is the device time of the same shape's CUDA graph replayed back to back with its inputs in place
(the model and its logits; no input building, no sampling, no host). ratio = loop_ms / gpu_ms.
gpu_engine_inputs_ms replays the graph on the inputs of one of the case's own full-batch decode steps (kept
while it ran: the engine's block tables rather than the synthetic step's contiguous ones); ratio_engine_inputs
= loop_ms / that: what the loop adds over the same step on the same KV-cache layout.
device_ms is the engine's own record of its steps (CUDA events around inputs, model and sampling), and
call_ms the profiler's measure (`time_step`: `execute_model` calls of the same step queued back to back).
Offline: 256 random 1024-token prompts, 128 tokens each,
temperature 0.8, top-p 0.95, a seed per request, output tokens per second of one `LLM.generate` call.
With --timeline (GPU), five decode steps in the middle of each case run under the torch profiler, and the
row gets where the device time between their first and last kernel went: busy (any kernel running) and
idle, the largest idle gaps with the kernels on either side, and kernel time by name. Where loop_ms exceeds
gpu_ms, this says whether the GPU waited for the host (idle) or ran work outside the graph (busy). Run it
apart from the timed run: the profiler slows the steps it records, which count in loop_ms.
The script uses the package's public API only, so the same file can time an older checkout.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

from shifttune import LLM
from shifttune.config import TP, ConfigError
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.stats import StepStats, percentile
from shifttune.kernels import split_kv
from shifttune.profile.step_timing import breakdown_step, measure_ceilings, step_floors, synthetic_step, time_step

GREEDY = "greedy"
SAMPLED = "temperature 0.8, top-p 0.95, per-request seed"
_REQUESTS = itertools.count()  # every request of the process; 131 k mod the vocabulary differs for k < vocabulary
CASES = [(1, 2048, GREEDY), (32, 2048, GREEDY), (32, 2048, SAMPLED), (128, 2048, GREEDY), (256, 1024, SAMPLED),
         (1, 8192, GREEDY), (32, 8192, SAMPLED), (256, 512, SAMPLED)]  # fmt: skip


def params(sampling: str, i: int, new_tokens: int) -> SamplingParams:
    if sampling == GREEDY:
        return SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.95, seed=i, max_tokens=new_tokens, ignore_eos=True)


def decode_steps(
    engine: LLMEngine, batch: int, prompt_len: int, params_of, timeline: dict | None = None, keep: dict | None = None
) -> list[tuple[float, StepStats]]:
    """Runs `batch` requests (prompts of `prompt_len` tokens, `params_of(i)`) to the end through
    `LLMEngine.step`; returns (wall ms, the step's record) of the steps where all of them decode. With
    `timeline` (a dict), the calls after the 2nd all-decode step until the 7th are profiled and the dict
    gets `timeline_summary`'s keys."""
    vocab = engine.config.model_config.vocab_size
    for i in range(batch):
        # NOTE: a first token no other request of this process had: no prompt shares a prefix (prefix cache)
        k = next(_REQUESTS)
        ids = [(k * 131 + j * 7) % vocab for j in range(prompt_len)]
        engine.add_request(f"loop-{batch}-{prompt_len}-{i}", ids, params_of(i))
    out, prof = [], None
    while engine.has_unfinished_requests():
        if timeline is not None and len(out) == 2 and prof is None:
            prof = start_profile()
        elif prof is not None and len(out) == 7:
            timeline.update(device_timeline(prof))
            prof = None
        before = engine.stats.num_steps
        start = time.perf_counter()
        engine.step()
        wall = 1e3 * (time.perf_counter() - start)
        if engine.stats.num_steps == before:  # the first call of an async loop reads nothing back yet
            continue
        step = engine.stats.steps[-1]
        if step.shape.num_prefill_tokens == 0 and step.shape.num_seqs == batch:
            out.append((wall, step))
            if keep is not None and len(out) == 3:  # GPU: the step in flight is a full-batch decode too
                keep["snapshot"] = engine.executor.collective_rpc(snapshot_graph_inputs, batch)
    if prof is not None:  # fewer decode steps than the window
        timeline.update(device_timeline(prof))
    return out


def start_profile():
    """The torch profiler (CPU and CUDA activities), started; `device_timeline` stops it."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.__enter__()
    return prof


def device_timeline(prof, top: int = 5) -> dict:
    """Stops `prof` (after the device's queued work) and sums up the kernels it saw (`timeline_summary`)."""
    import torch

    torch.cuda.synchronize()
    prof.__exit__(None, None, None)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return timeline_summary([(e.time_range.start, e.time_range.end, e.name) for e in kernels], top)


def timeline_summary(spans: list[tuple[float, float, str]], top: int = 5) -> dict:
    """Device kernels as (start us, end us, name): the window from the first start to the last end, the
    time some kernel ran (overlaps merged), the idle rest, the largest gaps and kernel time by name."""
    if not spans:
        return {"window_us": 0.0, "busy_us": 0.0, "idle_us": 0.0, "gaps": [], "kernels_us": {}}
    spans = sorted(spans)
    busy, gaps = 0.0, []
    cur_start, cur_end, cur_name = spans[0]
    for start, end, name in spans[1:]:
        if start > cur_end:
            busy += cur_end - cur_start
            gaps.append({"us": start - cur_end, "after": cur_name[:60], "before": name[:60]})
            cur_start, cur_end, cur_name = start, end, name
        elif end > cur_end:
            cur_end, cur_name = end, name
    busy += cur_end - cur_start
    window = cur_end - spans[0][0]
    by_name: dict[str, float] = {}
    for start, end, name in spans:
        by_name[name[:60]] = by_name.get(name[:60], 0.0) + end - start
    largest = sorted(gaps, key=lambda g: -g["us"])[:top]
    kernels = dict(sorted(by_name.items(), key=lambda kv: -kv[1])[:15])
    return {"window_us": window, "busy_us": busy, "idle_us": window - busy, "gaps": largest, "kernels_us": kernels}


def replay_ms(runner, step, iters: int) -> float:
    """Device ms of `step`'s CUDA graph replayed `iters` times back to back, inputs uploaded once (run on
    every rank through `collective_rpc`)."""
    import torch

    with torch.inference_mode():
        runner.execute_model(step)  # puts the inputs in the graph's buffers
        return _graph_ms(runner.graphs, step.mode, len(step.input_ids), iters)


def _graph_ms(graphs, mode: str, num_tokens: int, iters: int) -> float:
    """Device ms of one replay of the graph the step in the buffers replayed (`num_tokens` tokens in `mode`; its
    bucket's own graph or split one), on those inputs (3 replays first, then `iters` timed back to back)."""
    import torch

    graph = graphs.graph_for(mode, num_tokens, graphs.rows_in_use)
    for _ in range(3):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


GRAPH_INPUTS = ("ids", "pos", "slots", "qsl", "seq_lens", "block_tables", "samples")


def snapshot_graph_inputs(runner, batch: int) -> dict | None:
    """The graph's input buffers as the step in flight left them, when it holds the whole batch (None if
    not): that step's own block tables and lengths, to replay later (`replay_snapshot_ms`)."""
    graphs = runner.graphs
    if graphs is None or graphs.rows_in_use != batch:
        return None
    return {name: getattr(graphs, name).clone() for name in GRAPH_INPUTS}


def replay_snapshot_ms(runner, snapshot: dict, batch: int, iters: int) -> float:
    """Device ms of a decode step of `batch` rows replayed on `snapshot`'s inputs: the engine's own KV
    layout, where `replay_ms` has each sequence own a contiguous run of blocks. Its K/V writes land on the
    snapshot step's slots, with the values that step wrote there (the blocks are free, and unchanged)."""
    import torch

    graphs = runner.graphs
    with torch.inference_mode():
        for name, saved in snapshot.items():
            getattr(graphs, name).copy_(saved)
        graphs.rows_in_use = max(graphs.rows_in_use, batch)  # the next step resets these rows to scratch
        return _graph_ms(graphs, TP, batch, iters)


def measure(
    engine: LLMEngine, batch: int, context: int, sampling: str, new_tokens: int, timeline: bool = False
) -> dict:
    tl = {} if timeline else None
    keep: dict | None = {} if engine.config.device == "cuda" else None
    # NOTE: prompts are admitted one prefill chunk per step; the first ones decode meanwhile and would finish
    # before the last ones start: each request gets `new_tokens` more tokens than there are prefill steps.
    n = new_tokens + -(-batch * context // engine.config.max_num_batched_tokens) + 1
    if n >= context:
        raise ValueError(f"context {context} leaves no prompt for {n} new tokens per request (batch {batch})")
    steps = decode_steps(engine, batch, context - n, lambda i: params(sampling, i, n), tl, keep)
    snap = (keep or {}).get("snapshot")
    engine_ms = engine.executor.collective_rpc(replay_snapshot_ms, snap, batch, 20) if snap else None
    step = synthetic_step(TP, batch, 1, context, engine.config.block_size)
    call, _ = engine.executor.collective_rpc(time_step, step, 3, 20)
    loop_ms, call_ms = percentile([w for w, _ in steps], 0.5), percentile(call, 0.5)
    device_ms = percentile([1e3 * s.duration_s for _, s in steps], 0.5)
    gpu_ms = engine.executor.collective_rpc(replay_ms, step, 20) if engine.config.device == "cuda" else call_ms
    return {"batch": batch, "context": context, "sampling": sampling, "loop_ms": loop_ms, "gpu_ms": gpu_ms,
            "ratio": loop_ms / gpu_ms, "device_ms": device_ms, "call_ms": call_ms,
            "decode_steps": len(steps)} | ({"timeline_5_steps": tl} if tl else {}) | (
        {"gpu_engine_inputs_ms": engine_ms, "ratio_engine_inputs": loop_ms / engine_ms} if engine_ms else {}
    )  # fmt: skip


def offline_throughput(llm: LLM, num_prompts: int = 256, prompt_len: int = 1024, new_tokens: int = 128) -> dict:
    vocab = llm.llm_engine.config.model_config.vocab_size
    prompts = [[(i * 7919 + j * 31) % (vocab - 10) + 5 for j in range(prompt_len)] for i in range(num_prompts)]
    sp = [params(SAMPLED, i, new_tokens) for i in range(num_prompts)]
    llm.generate(prompts[:8], sp[:8])  # warm-up: the prefill shapes compile
    start = time.perf_counter()
    outs = llm.generate(prompts, sp)
    seconds = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    return {"num_prompts": num_prompts, "prompt_len": prompt_len, "output_len": new_tokens, "sampling": SAMPLED,
            "seconds": seconds, "output_tokens": tokens, "output_tokens_per_s": tokens / seconds}  # fmt: skip


def batch1_floor(engine: LLMEngine, context: int, loop_ms: float) -> dict:
    """Batch-1 decode against the weight (+ KV) read floor of this card, and its kernel time by category."""
    import torch

    ceilings = measure_ceilings(torch.device("cuda"))
    _, _, floor_ms, _ = step_floors(engine.config, engine.executor.runner.weight_bytes, TP, 1, 1, context, ceilings)
    step = synthetic_step(TP, 1, 1, context, engine.config.block_size)
    kernels = engine.executor.collective_rpc(breakdown_step, step, 10)
    return {"context": context, "loop_ms": loop_ms, "floor_ms": floor_ms, "floor_share": floor_ms / loop_ms,
            "hbm_bytes_per_s": ceilings.hbm_bytes_per_s, "kernel_ms_eager": kernels}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--cases", default="all", help="comma-separated case numbers (0-based) or all")
    ap.add_argument("--no-offline", action="store_true", help="skip the LLM.generate throughput run")
    ap.add_argument("--timeline", action="store_true", help="GPU: profile 5 decode steps per case (see above)")
    ap.add_argument(
        "--programs-per-sm",
        type=int,
        default=None,
        help="GPU: split-KV rule of the paged kernel at every batch, small steps too (default: split_kv's "
        "PROGRAMS_PER_SM, and SMALL_STEP_PROGRAMS_PER_SM with the kernel's SMALL_STEP_CONFIG for small steps), "
        "to compare rules",
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.programs_per_sm:
        split_kv.PROGRAMS_PER_SM = args.programs_per_sm
        split_kv.SMALL_STEP_RATIO = 1 << 30  # no step is small
    try:
        cases = CASES if args.cases == "all" else [CASES[int(i)] for i in args.cases.split(",")]
    except (ValueError, IndexError):
        ap.error(f"--cases: comma-separated numbers from 0 to {len(CASES) - 1}, or all")
    try:
        llm = LLM(args.model, device=args.device, load_format="dummy", max_model_len=max(c for _, c, _ in cases))
    except ConfigError as e:
        sys.exit(f"loop_overhead: {e}")
    engine = llm.llm_engine
    result = {"command": "python -m shifttune.profile.loop_overhead " + " ".join(argv or sys.argv[1:]),
              "model": args.model, "rows": []}  # fmt: skip
    try:
        measure(engine, 8, 512, SAMPLED, 8)  # warm-up: kernels compile, graphs replay once
        for batch, context, sampling in cases:
            r = measure(engine, batch, context, sampling, args.new_tokens, args.timeline and args.device == "cuda")
            result["rows"].append(r)
            print(f"batch {batch:>3} context {context:>5} {sampling:<45} loop {r['loop_ms']:7.2f} ms  "
                  f"gpu {r['gpu_ms']:7.2f} ms  x{r['ratio']:.3f}  device {r['device_ms']:7.2f}  "
                  f"call {r['call_ms']:7.2f}" + (f"  engine-input graph {r['gpu_engine_inputs_ms']:7.2f} "
                  f"x{r['ratio_engine_inputs']:.3f}" if "gpu_engine_inputs_ms" in r else ""), flush=True)  # fmt: skip
            if "timeline_5_steps" in r:
                t = r["timeline_5_steps"]
                gaps = [round(g["us"]) for g in t["gaps"]]
                print(f"  5 steps: window {t['window_us'] / 1e3:.2f} ms, busy {t['busy_us'] / 1e3:.2f}, "
                      f"idle {t['idle_us'] / 1e3:.2f}; largest gaps {gaps} us", flush=True)  # fmt: skip
        if args.device == "cuda":
            b1 = next((r for r in result["rows"] if r["batch"] == 1 and r["context"] == 2048), None)
            if b1 is not None:
                result["batch1_decode"] = batch1_floor(engine, 2048, b1["loop_ms"])
                print(f"batch-1 decode: floor {result['batch1_decode']['floor_ms']:.2f} ms = "
                      f"{100 * result['batch1_decode']['floor_share']:.1f}% of the loop", flush=True)  # fmt: skip
        if not args.no_offline:
            result["offline"] = offline_throughput(llm)
            print(f"offline: {result['offline']['output_tokens_per_s']:.0f} output tokens/s", flush=True)
    finally:
        llm.shutdown()
    result["card"] = "cpu"
    if args.device == "cuda":
        import torch

        result["card"] = torch.cuda.get_device_name()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
