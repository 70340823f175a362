"""What the engine loop costs on top of the GPU: `LLMEngine.step` wall time against the same step shape
replayed as the runner's CUDA graph, for decode batches, greedy and sampled.

    python -m shifttune.profile.loop_overhead --model llama-3.1-8b --out profiles/loop_overhead_<card>.json

For each case, `batch` requests whose prompts fill the context decode together; loop_ms is the median
wall time of `step()` over the steps where all of them decode (schedule, inputs, model, sampling,
stop checks, outputs); gpu_ms is the median of the same shape run through `time_step` (graph replay,
logits included, no sampling). ratio = loop_ms / gpu_ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shifttune.config import TP, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.stats import StepStats, percentile
from shifttune.profile.step_timing import synthetic_step, time_step

GREEDY = "greedy"
SAMPLED = "temperature 0.8, top-p 0.95, per-request seed"
CASES = [(1, 2048, GREEDY), (32, 2048, GREEDY), (32, 2048, SAMPLED), (128, 2048, GREEDY), (256, 1024, SAMPLED)]


def params(sampling: str, i: int, new_tokens: int) -> SamplingParams:
    if sampling == GREEDY:
        return SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    return SamplingParams(temperature=0.8, top_p=0.95, seed=i, max_tokens=new_tokens, ignore_eos=True)


def decode_steps(engine: LLMEngine, batch: int, prompt_len: int, params_of) -> list[tuple[float, StepStats]]:
    """Runs `batch` requests (prompts of `prompt_len` tokens, `params_of(i)`) to the end through
    `LLMEngine.step`; returns (wall ms, the step's record) of the steps where all of them decode."""
    vocab = engine.config.model_config.vocab_size
    for i in range(batch):
        ids = [(i * 131 + j * 7) % vocab for j in range(prompt_len)]
        engine.add_request(f"loop-{batch}-{prompt_len}-{i}", ids, params_of(i))
    out = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        wall = 1e3 * (time.perf_counter() - start)
        step = engine.stats.steps[-1]
        if step.shape.num_prefill_tokens == 0 and step.shape.num_seqs == batch:
            out.append((wall, step))
    return out


def measure(engine: LLMEngine, batch: int, context: int, sampling: str, new_tokens: int) -> dict:
    walls = [w for w, _ in decode_steps(engine, batch, context - new_tokens, lambda i: params(sampling, i, new_tokens))]
    step = synthetic_step(TP, batch, 1, context, engine.config.block_size)
    gpu, _ = engine.executor.collective_rpc(time_step, step, 3, 20)
    loop_ms, gpu_ms = percentile(walls, 0.5), percentile(gpu, 0.5)
    return {"batch": batch, "context": context, "sampling": sampling, "loop_ms": loop_ms, "gpu_ms": gpu_ms,
            "ratio": loop_ms / gpu_ms, "decode_steps": len(walls)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    engine = LLMEngine(EngineConfig(model=args.model, device=args.device, load_format="dummy",
                                    max_model_len=max(c for _, c, _ in CASES)))  # fmt: skip
    try:
        measure(engine, 8, 512, SAMPLED, 8)  # warm-up: kernels compile, graphs replay once
        rows = []
        for batch, context, sampling in CASES:
            rows.append(measure(engine, batch, context, sampling, args.new_tokens))
            r = rows[-1]
            print(f"batch {batch:>3} context {context:>5} {sampling:<45} loop {r['loop_ms']:7.2f} ms  "
                  f"gpu {r['gpu_ms']:7.2f} ms  x{r['ratio']:.3f}")  # fmt: skip
    finally:
        engine.shutdown()
    card = "cpu"
    if args.device == "cuda":
        import torch

        card = torch.cuda.get_device_name()
    out = {"command": "python -m shifttune.profile.loop_overhead " + " ".join(argv or sys.argv[1:]), "card": card,
           "model": args.model, "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
