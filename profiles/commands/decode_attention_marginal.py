"""What decode attention costs inside the engine's decode step, against its HBM floor (GPU).

    python profiles/commands/decode_attention_marginal.py --model llama-3.1-8b --out marginal.json

`attention_bench --decode` times the attention launches of one layer back to back in a graph; in the engine's
decode graph they sit between RoPE (which lets them launch early, PDL) and the output projection. This times
the engine's decode step (its CUDA graph, `measure_point`) at batch 1-8 and contexts 2k and 8k twice: as built,
and with paged attention replaced by an empty output (no launch; the tokens are garbage, the timing is not).
The difference over the layers is attention's cost per layer in the step, next to its floor (the layer's K/V
bytes over this card's measured HBM bandwidth). `--rules` times the step under other launch rules of the paged
kernel too, each `SMALL[/mCOLUMNS]`: SMALL is `default` (the tree's), `off` (no small steps: one program per
SM, DECODE_CONFIG and at most 64 splits at every batch, as before session 19) or `pP_tT_wW_sS` (small steps at
P programs per SM, tile T, W warps, S stages, any GQA group); COLUMNS the merge kernel's columns a program (128:
one program per row, as before session 19). E.g. `--rules default,off/m128,off,p2_t64_w4_s1`.
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
from shifttune.kernels import split_kv
from shifttune.profile.step_sweep import measure_point
from shifttune.profile.step_timing import measure_ceilings


def no_attention(q, k_cache, v_cache, meta, scale, **kwargs):
    return torch.empty_like(q)


RULE_KNOBS = (  # (module, name): the split rule's knobs live in split_kv, the launch configurations in pa
    (split_kv, "SMALL_STEP_RATIO"),
    (split_kv, "SMALL_STEP_PROGRAMS_PER_SM"),
    (split_kv, "WIDE_TILE_RATIO"),
    (pa, "SMALL_STEP_CONFIG"),
    (pa, "SMALL_STEP_CONFIG_WIDE_GROUP"),
    (pa, "MERGE_COLUMNS"),
    (split_kv, "MAX_SPLITS"),
)


def apply_rule(rule: str) -> None:
    """Sets the paged kernel's launch rule `SMALL[/mCOLUMNS]` (see the module docstring) for engines built next."""
    small, _, merge = rule.partition("/")
    if merge:
        if not (merge.startswith("m") and merge[1:].isdigit()):
            raise ValueError(f"merge part {merge!r} is not mCOLUMNS")
        pa.MERGE_COLUMNS = int(merge[1:])
    if small == "off":
        split_kv.SMALL_STEP_RATIO = 1 << 30  # no step is small
        split_kv.MAX_SPLITS = 64
    elif small != "default":
        try:
            p, t, w, st = (int(x[1:]) for x in small.split("_"))
        except ValueError:
            raise ValueError(f"{small!r} is not default, off or pP_tT_wW_sS") from None
        split_kv.SMALL_STEP_PROGRAMS_PER_SM = p
        split_kv.WIDE_TILE_RATIO = 0  # every small step takes this rule, none the wide tiles
        pa.SMALL_STEP_CONFIG = pa.SMALL_STEP_CONFIG_WIDE_GROUP = dict(tile=t, num_warps=w, num_stages=st)


def step_ms(
    model: str, points: list[tuple[int, int]], iters: int, floors: dict[str, float] | None = None
) -> tuple[dict[str, float], object, float]:
    """Decode step ms per (batch, context) point ("BxC"), the model's config, and the HBM bandwidth measured
    meanwhile; `floors` (when given) gets each point's weight + KV read floor in ms."""
    llm = LLM(model, device="cuda", load_format="dummy", max_model_len=max(c for _, c in points) + 64)
    try:
        engine, ceilings = llm.llm_engine, measure_ceilings(torch.device("cuda"))
        out = {}
        for batch, context in points:
            timing, _ = measure_point(engine, TP, batch, context, 256, 5, iters, ceilings)
            out[f"{batch}x{context}"] = timing.median_ms
            if floors is not None:
                floors[f"{batch}x{context}"] = timing.floor_ms
            print(f"b={batch} C={context}: {timing.median_ms:.4f} ms", flush=True)
        return out, engine.config.model_config, ceilings.hbm_bytes_per_s
    finally:
        llm.shutdown()


def label_repeats(specs: list[str]) -> list[str]:
    """Rule specs with repeats labelled: a,b,a -> a,b,a#2."""
    return [r if specs[:i].count(r) == 0 else f"{r}#{specs[:i].count(r) + 1}" for i, r in enumerate(specs)]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="2048,8192")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rules", default="default", help="launch rules of the paged kernel to time (see above)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("decode_attention_marginal needs a GPU")
    points = [(int(b), int(c)) for c in args.contexts.split(",") for b in args.batches.split(",")]
    # NOTE: the bandwidth as measured with the first engine up (as loop_overhead.py measures it): measured after
    # both engines shut down, it came out 2.58e12 B/s instead of ~3.0e12 (session 15's first run)
    specs = args.rules.split(",")
    rules = label_repeats(specs)
    rule_ms = {}
    for rule in rules:
        saved = {(m, k): getattr(m, k) for m, k in RULE_KNOBS}
        try:
            apply_rule(rule.partition("#")[0])
        except ValueError as e:
            ap.error(f"--rules {rule}: {e}")
        print(f"rule {rule}", flush=True)
        rule_ms[rule], cfg, hbm = step_ms(args.model, points, args.iters)
        for (m, k), v in saved.items():
            setattr(m, k, v)
    pa.paged_attention = no_attention  # NOTE: read when the next LLM's runner picks its backend
    bare_ms, _, _ = step_ms(args.model, points, args.iters)
    kv_bytes_per_token = 2 * cfg.num_kv_heads * cfg.head_dim * 2  # K and V, bf16, one layer
    rows = []
    for batch, context in points:
        key = f"{batch}x{context}"
        floor_us = 1e6 * batch * context * kv_bytes_per_token / hbm
        per_rule = {}
        for rule in rules:
            us = 1e3 * (rule_ms[rule][key] - bare_ms[key]) / cfg.num_layers
            per_rule[rule] = {"step_ms": rule_ms[rule][key], "attention_us_per_layer": us, "over_floor": us / floor_us}
        first = per_rule[rules[0]]
        rows.append({"batch": batch, "context": context, "step_ms": first["step_ms"], "step_without_attention_ms":
                     bare_ms[key], "attention_us_per_layer": first["attention_us_per_layer"], "floor_us": floor_us,
                     "over_floor": first["over_floor"], "rules": per_rule})  # fmt: skip
        parts = ", ".join(
            f"{r} {v['attention_us_per_layer']:.1f} ({v['over_floor']:.2f}x)" for r, v in per_rule.items()
        )
        print(f"b={batch} C={context}: attention us a layer in the step, floor {floor_us:.1f}: {parts}", flush=True)
    out = {"command": " ".join(sys.argv), "card": torch.cuda.get_device_name(0), "model": args.model,
           "hbm_bytes_per_s": hbm, "rows": rows}  # fmt: skip
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
