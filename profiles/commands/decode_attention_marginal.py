"""What decode attention costs inside the engine's decode step, against its HBM floor (GPU).

    python profiles/commands/decode_attention_marginal.py --model llama-3.1-8b --out marginal.json

`attention_bench --decode` times the attention launches of one layer back to back in a graph; in the engine's
decode graph they sit between RoPE (which lets them launch early, PDL) and the output projection. This times
the engine's decode step (its CUDA graph, `measure_point`) at batch 1-8 and contexts 2k and 8k twice: as built,
and with paged attention replaced by an empty output (no launch; the tokens are garbage, the timing is not).
The difference over the layers is attention's cost per layer in the step, next to its floor (the layer's K/V
bytes over this card's measured HBM bandwidth). `--compare-rule` also times the step with the launch rule from
before session 19 (no small steps: one program per SM and DECODE_CONFIG at every batch).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shifttune import LLM
from shifttune.config import TP
from shifttune.kernels import paged_attention as pa
from shifttune.profile.step_sweep import measure_point
from shifttune.profile.step_timing import measure_ceilings


def no_attention(q, k_cache, v_cache, meta, scale, **kwargs):
    return torch.empty_like(q)


def step_ms(model: str, points: list[tuple[int, int]], iters: int) -> tuple[dict[str, float], object, float]:
    """Decode step ms per (batch, context) point, the model's config, and the HBM bandwidth measured meanwhile."""
    llm = LLM(model, device="cuda", load_format="dummy", max_model_len=max(c for _, c in points) + 64)
    try:
        engine, ceilings = llm.llm_engine, measure_ceilings(torch.device("cuda"))
        out = {}
        for batch, context in points:
            timing, _ = measure_point(engine, TP, batch, context, 256, 5, iters, ceilings)
            out[f"{batch}x{context}"] = timing.median_ms
            print(f"b={batch} C={context}: {timing.median_ms:.4f} ms", flush=True)
        return out, engine.config.model_config, ceilings.hbm_bytes_per_s
    finally:
        llm.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="2048,8192")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--compare-rule", action="store_true", help="also the step without the small-step launch rule")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("decode_attention_marginal needs a GPU")
    points = [(int(b), int(c)) for c in args.contexts.split(",") for b in args.batches.split(",")]
    # NOTE: the bandwidth as measured with the first engine up (as loop_overhead.py measures it): measured after
    # both engines shut down, it came out 2.58e12 B/s instead of ~3.0e12 (session 15's first run)
    engine_ms, cfg, hbm = step_ms(args.model, points, args.iters)
    old_rule_ms = {}
    if args.compare_rule:
        ratio, pa.SMALL_STEP_RATIO = pa.SMALL_STEP_RATIO, 1 << 30  # no step is small
        old_rule_ms, _, _ = step_ms(args.model, points, args.iters)
        pa.SMALL_STEP_RATIO = ratio
    pa.paged_attention = no_attention  # NOTE: read when the next LLM's runner picks its backend
    bare_ms, _, _ = step_ms(args.model, points, args.iters)
    kv_bytes_per_token = 2 * cfg.num_kv_heads * cfg.head_dim * 2  # K and V, bf16, one layer
    rows = []
    for batch, context in points:
        key = f"{batch}x{context}"
        per_layer_us = 1e3 * (engine_ms[key] - bare_ms[key]) / cfg.num_layers
        floor_us = 1e6 * batch * context * kv_bytes_per_token / hbm
        rows.append({"batch": batch, "context": context, "step_ms": engine_ms[key], "step_without_attention_ms":
                     bare_ms[key], "attention_us_per_layer": per_layer_us, "floor_us": floor_us,
                     "over_floor": per_layer_us / floor_us})  # fmt: skip
        if key in old_rule_ms:
            rows[-1]["step_old_rule_ms"] = old_rule_ms[key]
            rows[-1]["attention_us_per_layer_old_rule"] = 1e3 * (old_rule_ms[key] - bare_ms[key]) / cfg.num_layers
        print(
            f"b={batch} C={context}: attention {per_layer_us:.1f} us a layer in the step, floor {floor_us:.1f} "
            f"({per_layer_us / floor_us:.2f}x)",
            flush=True,
        )
    out = {"command": " ".join(sys.argv), "card": torch.cuda.get_device_name(0), "model": args.model,
           "hbm_bytes_per_s": hbm, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
