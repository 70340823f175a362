"""TP decode steps with NCCL's all-reduce and with torch's symmetric-memory one-shot all-reduce, on this host's GPUs.

    python profiles/commands/all_reduce_probe.py --model llama-3.3-70b --tp 4 --out all_reduce_probe.json

For each all-reduce (NCCL first: torch sets symmetric memory up once per process), one engine in TP mode on --tp
GPUs (dummy weights) times decode steps of each batch at --context (the profile's synthetic steps, CUDA graphs)
next to their floors (this card's measured ceilings), and generates --tokens greedy tokens for a few prompts: the
two engines' tokens are compared (the sums' order differs and dummy weights give near-flat logits, so they part after
a few tokens: the GPU HF-oracle test is the correctness check). Issue 13's bar:
TP decode >= 70% of the weight-read floor at batch 1-32, 2k.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shifttune.config import TP, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.profile.step_sweep import measure_point
from shifttune.profile.step_timing import fill_kv_cache_random, measure_ceilings


def run(args: argparse.Namespace, all_reduce: str, ceilings) -> dict:
    config = EngineConfig(model=args.model, tensor_parallel_size=args.tp, device="cuda", load_format="dummy",
                          max_num_seqs=max(args.batches), max_model_len=args.context + args.tokens,
                          enable_prefix_caching=False, all_reduce=all_reduce)  # fmt: skip
    engine = LLMEngine(config)
    try:
        engine.executor.collective_rpc(fill_kv_cache_random)
        steps = {}
        for b in args.batches:
            got = measure_point(engine, TP, b, args.context, max(args.batches), 3, args.iters, ceilings)
            if got is None:
                print(f"{all_reduce:>8} batch {b:>3}: skipped, the KV cache cannot hold it", flush=True)
                continue
            timing, _ = got
            steps[b] = {"median_ms": timing.median_ms, "p10_ms": timing.p10_ms, "p90_ms": timing.p90_ms,
                        "bandwidth_floor_ms": timing.bandwidth_floor_ms,
                        "of_floor": timing.bandwidth_floor_ms / timing.median_ms}  # fmt: skip
            print(
                f"{all_reduce:>8} batch {b:>3}: {timing.median_ms:8.3f} ms, "
                f"{timing.bandwidth_floor_ms / timing.median_ms:.1%} of the weight-read floor",
                flush=True,
            )
        prompts = [[(7 * i + 3 * j) % 1000 + 10 for j in range(64)] for i in range(4)]
        params = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
        for i, p in enumerate(prompts):
            engine.add_request(str(i), p, params)
        tokens: dict[str, list[int]] = {}
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    tokens[out.request_id] = out.outputs[0].token_ids
        return {"steps": steps, "tokens": [tokens[str(i)] for i in range(len(prompts))]}
    finally:
        engine.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama-3.3-70b")
    ap.add_argument("--tp", type=int, default=torch.cuda.device_count() if torch.cuda.is_available() else 1)
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    if not torch.cuda.is_available() or torch.cuda.device_count() < args.tp:
        raise SystemExit(f"needs {args.tp} CUDA GPUs")
    c = measure_ceilings(torch.device("cuda"))
    torch.cuda.empty_cache()
    ceilings = {"hbm_bytes_per_s": c.hbm_bytes_per_s, "matmul_flops_per_s": c.matmul_flops_per_s}
    result = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "gpu": torch.cuda.get_device_name(0),
              "gpus": args.tp, "model": args.model, "context": args.context, "ceilings": ceilings}  # fmt: skip
    for all_reduce in ("nccl", "symm_mem"):
        try:
            result[all_reduce] = run(args, all_reduce, c)
        except Exception as e:  # the one-shot path failing is a result too
            result[all_reduce] = {"error": f"{type(e).__name__}: {e}"[:500]}
            print(f"{all_reduce}: {result[all_reduce]['error']}", flush=True)
    if "tokens" in result["nccl"] and "tokens" in result["symm_mem"]:
        pairs = list(zip(result["nccl"]["tokens"], result["symm_mem"]["tokens"]))
        same = sum(a == b for a, b in pairs)
        result["same_greedy_tokens"] = f"{same} of {len(pairs)} prompts"
        # NOTE: dummy weights give near-flat logits, so a sum's order flips tokens often; the HF-oracle GPU test
        # (test_hf_oracle_with_the_symmetric_memory_all_reduce) is the correctness check, this only a sanity one.
        result["first_tokens_agreeing"] = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))
                                           for a, b in pairs]  # fmt: skip
        print("same greedy tokens:", result["same_greedy_tokens"], "; first tokens agreeing per prompt:",
              result["first_tokens_agreeing"])  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
