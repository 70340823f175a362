"""TTFT of a bursty stream of long prompts, fed to one engine in process, with and without `LLMEngine.step`'s
read-back rule (a step in which a prompt ends is read back before an eager step is launched), in one call.

    python profiles/commands/burst_probe.py --model llama-3.3-70b --tp 4 --out burst_probe.json

Requests arrive as `bench --burstiness` draws them (Gamma gaps; the same seed for both runs) and are added to the
engine at their arrival times; a request's TTFT is from its arrival to the `step` that hands its first token back
(no HTTP, no server). The runs alternate off / on `--repeats` times on the same engine. With --profile, the
simulator's TTFTs for the same arrivals (on that measured profile, with the rule) are written beside them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from statistics import median

import torch

import shifttune.engine.llm_engine as llm_engine
from shifttune.config import EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.stats import percentile
from shifttune.recommend.workload import Request, Workload


def one_run(engine: LLMEngine, arrivals: list[float], args: argparse.Namespace, tag: str) -> dict:
    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    vocab = engine.config.model_config.vocab_size
    start, i, first, done = time.monotonic(), 0, {}, {}
    while i < len(arrivals) or engine.has_unfinished_requests():
        now = time.monotonic() - start
        while i < len(arrivals) and arrivals[i] <= now:
            ids = [(i * 7919 + j * 31) % (vocab - 10) + 5 for j in range(args.input_len)]  # distinct prompts
            engine.add_request(f"{tag}-{i}", ids, params)
            i += 1
        if not engine.has_unfinished_requests():
            time.sleep(max(0.0, arrivals[i] - (time.monotonic() - start)))
            continue
        for out in engine.step():
            k = int(out.request_id.rsplit("-", 1)[1])
            t = time.monotonic() - start
            if out.outputs[0].token_ids and k not in first:
                first[k] = t
            if out.finished:
                done[k] = (t, len(out.outputs[0].token_ids))
    ttft = [1e3 * (first[k] - arrivals[k]) for k in range(len(arrivals))]
    tpot = [1e3 * (done[k][0] - first[k]) / (done[k][1] - 1) for k in range(len(arrivals)) if done[k][1] > 1]
    return {"ttft_ms": ttft, "ttft_p50_ms": median(ttft), "ttft_p99_ms": percentile(ttft, 0.99),
            "tpot_p50_ms": median(tpot), "duration_s": max(t for t, _ in done.values())}  # fmt: skip


def simulated(args: argparse.Namespace, arrivals: list[float]) -> dict:
    from shifttune.bench.validate import simulated as sim
    from shifttune.engine.profile_schema import load_profile
    from shifttune.recommend.simulator import EngineLoop

    prof = load_profile(args.profile)
    settings = {"tp": args.tp, "sp": args.sp, "policy": args.policy, "threshold": args.threshold}
    loop = EngineLoop(max_num_batched_tokens=args.max_num_batched_tokens, async_scheduling=True,
                      cuda_graph_max_tokens=2048)  # fmt: skip
    requests = [Request(a, args.input_len, args.output_len) for a in arrivals]
    return sim(prof, str(args.profile), settings, requests, loop)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.3-70b")
    ap.add_argument("--device", default="cuda", help="cpu: a smoke run (no CUDA graphs there, so no rule to test)")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--sp", type=int, default=1)
    ap.add_argument("--policy", default="tp", help="the engine's shift policy (tp, sp, threshold)")
    ap.add_argument("--threshold", type=int, default=256)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--burstiness", type=float, default=0.25)
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, default=4096)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=Path, help="a measured profile of these GPUs: add the simulator's TTFTs")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if args.device == "cuda" and (not torch.cuda.is_available() or torch.cuda.device_count() < args.tp * args.sp):
        raise SystemExit(f"needs {args.tp * args.sp} CUDA GPUs")
    work = Workload(rate=args.rate, num_requests=args.num_prompts, seed=args.seed, burstiness=args.burstiness)
    times = [r.arrival_s for r in work.requests()]
    arrivals = [t - times[0] for t in times]
    config = EngineConfig(model=args.model, tensor_parallel_size=args.tp, sequence_parallel_size=args.sp,
                          device=args.device, load_format="dummy", shift_policy=args.policy,
                          shift_threshold=args.threshold, max_num_batched_tokens=args.max_num_batched_tokens,
                          max_model_len=args.input_len + args.output_len, enable_prefix_caching=False)  # fmt: skip
    engine = LLMEngine(config)
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gpu": gpu,
              "arrivals_s": arrivals, "runs": []}  # fmt: skip
    try:
        one_run(engine, arrivals[:2], args, "warm")  # first use of the shapes
        for r in range(args.repeats):
            for rule in (False, True):
                llm_engine.READ_BACK_BEFORE_EAGER = rule
                run = one_run(engine, arrivals, args, f"r{r}{int(rule)}") | {"rule": rule, "repeat": r}
                result["runs"].append(run)
                print(
                    f"rule {'on ' if rule else 'off'} (repeat {r}): TTFT p50 {run['ttft_p50_ms']:.1f} ms, "
                    f"p99 {run['ttft_p99_ms']:.1f} ms, TPOT p50 {run['tpot_p50_ms']:.2f} ms, "
                    f"{run['duration_s']:.1f} s",
                    flush=True,
                )
    finally:
        llm_engine.READ_BACK_BEFORE_EAGER = True
        engine.shutdown()
    if args.profile:
        result["simulated"] = simulated(args, arrivals)
        print(f"simulated (rule on): TTFT p50 {result['simulated']['ttft_p50_ms']:.1f} ms")
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
