"""Measures step times over a grid of tokens per step x context lengths, in every mode, with floors.

    python -m shifttune.profile.step_sweep --model llama-3.1-8b --tp 1 --device cuda --out profiles/runs/x.json

Tokens per step T at context C: T <= --max-decode is a decode step of T sequences at context C;
above, a prefill step of sequences that each add min(T, C) tokens up to context C. Writes one JSON
with the command, the device, the measured ceilings and every point.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from shifttune.config import MODES, TP, ConfigError, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.stats import percentile
from shifttune.profile.loop_overhead import decode_steps
from shifttune.profile.step_timing import (
    Ceilings,
    StepTiming,
    blocks_needed,
    breakdown_step,
    fill_kv_cache_random,
    measure_ceilings,
    step_floors,
    summarize,
    synthetic_step,
    time_step,
)

DECODE = [1, 2, 4, 8, 16, 32, 64, 128, 256]
PREFILL = [512, 1024, 2048, 4096, 8192, 16384]
# A GPU point whose runs spread wider than this ((p90 - p10) / median) is run `iters` times more, up to MAX_ROUNDS
# rounds, and summarized over all its runs. On 4 H100s, 5 runs of one SP step gave p10 43.6 / median 55.4 / p90
# 99.3 ms (profiles/runs/multi_gpu_4_h100_s14/profile_8b), enough to move the SP/TP crossover. On CPU the spread
# is the host's, not the step's: one round.
NOISY_SPREAD = 0.15
MAX_ROUNDS = 4


def spread(ms: list[float]) -> float:
    """(p90 - p10) / median of run times."""
    med, p10, p90 = summarize(ms)
    return (p90 - p10) / med if med > 0 else 0.0


def step_shape(tokens: int, context: int, max_decode: int) -> tuple[int, int]:
    """(num_seqs, tokens_per_seq) for a step of `tokens` tokens at `context`."""
    if tokens <= max_decode:
        return tokens, 1
    per = min(tokens, context)
    return max(1, tokens // per), per


def measure_point(
    engine: LLMEngine,
    mode: str,
    tokens: int,
    context: int,
    max_decode: int,
    warmup: int,
    iters: int,
    ceilings: Ceilings,
) -> tuple[StepTiming, int | None] | None:
    """Times one step shape on every rank (`iters` runs, more on a GPU when they spread wide: NOISY_SPREAD);
    None when the KV cache cannot hold it. Also returns rank 0's peak GPU memory during the runs."""
    runner, cfg = engine.executor.runner, engine.config
    seqs, per = step_shape(tokens, context, max_decode)
    if blocks_needed(seqs, context, cfg.block_size) > runner.num_kv_blocks:
        return None
    step = synthetic_step(mode, seqs, per, context, cfg.block_size)
    ms, peak = engine.executor.collective_rpc(time_step, step, warmup, iters)
    rounds = 1
    while cfg.device == "cuda" and rounds < MAX_ROUNDS and spread(ms) > NOISY_SPREAD:
        more, more_peak = engine.executor.collective_rpc(time_step, step, 1, iters)
        ms, peak, rounds = ms + more, max(peak, more_peak), rounds + 1
    med, p10, p90 = summarize(ms)
    b, f, bw, mm = step_floors(cfg, runner.weight_bytes, mode, seqs, per, context, ceilings)
    return StepTiming(mode, seqs, per, context, seqs * per, med, p10, p90, b, f, bw, mm), peak


def run_sweep(
    engine: LLMEngine,
    token_grid: list[int],
    contexts: list[int],
    modes: list[str],
    max_decode: int,
    warmup: int,
    iters: int,
    ceilings: Ceilings,
    log=print,
) -> list[StepTiming]:
    engine.executor.collective_rpc(fill_kv_cache_random)
    out = []
    for context in contexts:
        for tokens in token_grid:
            for mode in modes:
                measured = measure_point(engine, mode, tokens, context, max_decode, warmup, iters, ceilings)
                if measured is None:
                    log(f"skip T={tokens} C={context}: KV cache too small")
                    continue
                t = measured[0]
                out.append(t)
                log(
                    f"{mode:>2} T={tokens:>6} C={context:>6}: {t.median_ms:8.3f} ms (floor {t.floor_ms:7.3f}, "
                    f"x{t.median_ms / t.floor_ms:.2f})"
                )
    return out


def run_e2e(engine: LLMEngine, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Decode through the whole engine loop (schedule, inputs, step, sample, stop checks): the per-step
    wall time next to the model step alone shows what the host side costs."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    decode = decode_steps(engine, batch, prompt_len, lambda i: params)
    if not decode:
        return {"batch": batch, "skipped": "the KV cache never held the whole batch at once"}
    loop_ms = percentile([w for w, _ in decode], 0.5)
    step_ms = percentile([1e3 * s.duration_s for _, s in decode], 0.5)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "decode_steps": len(decode),
        "loop_ms_per_step": loop_ms,
        "execute_and_sample_ms_per_step": step_ms,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--sp", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", default=",".join(map(str, DECODE + PREFILL)))
    ap.add_argument("--contexts", default="2048")
    ap.add_argument("--max-decode", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--enforce-eager", action="store_true")
    ap.add_argument("--e2e", default="1,32", help="decode batch sizes to run through the whole engine loop")
    ap.add_argument(
        "--breakdown", default="32,8192", help="tokens per step to profile by kernel category (at the first context)"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    tokens = [int(x) for x in args.tokens.split(",")]
    contexts = [int(x) for x in args.contexts.split(",")]
    block_size = EngineConfig.block_size
    need = max(blocks_needed(step_shape(t, c, args.max_decode)[0], c, block_size) for t in tokens for c in contexts)
    e2e_batches = [int(x) for x in args.e2e.split(",") if x]
    e2e_prompt = min(512, max(contexts) - 64)
    if e2e_batches and e2e_prompt < 1:
        sys.exit(f"step_sweep: --e2e runs prompts of min(512, the largest context - 64) tokens, so it needs a context "
                 f"above 64 (--contexts {args.contexts}); or pass --e2e ''")  # fmt: skip
    if e2e_batches:
        need = max(need, blocks_needed(max(e2e_batches), e2e_prompt + 32, block_size))
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(
            "step_sweep: --device cuda needs a CUDA GPU and none is visible; use --device cpu (timings on CPU ranks)"
        )
    try:
        config = EngineConfig(
            model=args.model,
            tensor_parallel_size=args.tp,
            sequence_parallel_size=args.sp,
            device=args.device,
            load_format="dummy",
            max_num_seqs=max([args.max_decode, *e2e_batches]),
            max_num_batched_tokens=max(tokens),
            # on GPU the cache takes what memory allows (points that need more are skipped)
            max_model_len=max(contexts),
            num_kv_blocks=need if args.device == "cpu" else None,
            enforce_eager=args.enforce_eager,
        )
        t0 = time.time()
        engine = LLMEngine(config)
    except ConfigError as e:
        sys.exit(f"step_sweep: {e}")
    startup = time.time() - t0
    try:
        device = engine.executor.runner.device
        ceilings = measure_ceilings(device) if device.type == "cuda" else Ceilings(1e11, 1e12)
        print(
            f"ceilings: HBM {ceilings.hbm_bytes_per_s / 1e12:.2f} TB/s, "
            f"matmul {ceilings.matmul_flops_per_s / 1e12:.0f} TFLOP/s"
            + ("" if device.type == "cuda" else " (placeholders on CPU, not measured: the floors mean nothing here)")
        )
        modes = list(MODES) if args.sp > 1 else [TP]
        points = run_sweep(engine, tokens, contexts, modes, args.max_decode, args.warmup, args.iters, ceilings)
        e2e = []
        for b in e2e_batches:
            e2e.append(run_e2e(engine, b, e2e_prompt, 32))
            print("e2e", e2e[-1])
        breakdowns = []
        if device.type == "cuda":
            for t in [int(x) for x in args.breakdown.split(",") if x]:
                seqs, per = step_shape(t, contexts[0], args.max_decode)
                for mode in modes:
                    step = synthetic_step(mode, seqs, per, contexts[0], config.block_size)
                    b = engine.executor.collective_rpc(breakdown_step, step, 5)
                    breakdowns.append({"mode": mode, "tokens": t, "context": contexts[0]} | b)
                    print(
                        f"breakdown {mode} T={t}: "
                        + ", ".join(f"{k} {v:.3f}" for k, v in b.items() if k != "top_kernels")
                    )
    finally:
        weight_bytes = engine.executor.runner.weight_bytes
        engine.shutdown()
    result = {
        "command": "python -m shifttune.profile.step_sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "model": args.model,
        "tp": args.tp,
        "sp": args.sp,
        "startup_s": startup,
        "weight_bytes_per_rank": weight_bytes,
        "ceilings": {"hbm_bytes_per_s": ceilings.hbm_bytes_per_s, "matmul_flops_per_s": ceilings.matmul_flops_per_s},
        "points": [p.to_dict() for p in points],
        "breakdowns": breakdowns,
        "e2e": e2e,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
