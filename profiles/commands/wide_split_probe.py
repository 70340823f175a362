"""Small-batch decode attention with many more, smaller split-KV programs (GPU; issue 14's batch 1-2 item).

    PYTHONPATH=$PWD python profiles/commands/wide_split_probe.py --out wide_split.json

`read_floor_probe.py` (session 16) found that reading batch 1's 8.4 MB of K/V takes 9.2 us with one 4-warp
program per SM, the layout of the engine's decode attention before session 19, and 4.7 us with eight. Earlier
sweeps of the attention kernel stopped at two programs per SM (`MAX_SPLITS` was 64, and the merge kernel loaded
all of a row's splits at once). This runs the engine's own `_paged_attention_kernel` with 1-8 programs per SM
(`choose_num_splits` at each option's count: up to MAX_SPLITS splits per query block and KV head), tiles of
16-64 keys, 1-3 stages, 2-4 warps, and merges the
partials with the engine's merge kernel either one program per (token, head) row, as before session 19 (`mengine`
in the option labels), or with d split over programs (`mdc32`: 32 columns each, so a row with hundreds of splits
is not one program's registers; the engine's merge since session 19). Both launches use programmatic dependent
launch, as the engine's do.

Phase 1 times every option on the `--search` rows (batch 1 and 2 at 2k by default); phase 2 times the engine's
default and the best `--keep` options of phase 1 on every row (`--batches` x `--contexts`), with the same rule for
the split count at every row (programs per SM, as `choose_num_splits`), since a CUDA graph's choice must hold for
every context length. Every timing is checked against the fp32 reference (`rel_err`); harness: attention_bench's
`time_layers` (`layers` calls on distinct caches in one CUDA graph).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton

from shifttune.kernels import paged_attention as pa
from shifttune.profile.attention_bench import Step, launch_floor_us, time_layers
from shifttune.profile.step_timing import measure_ceilings


class _NoLaunch:
    """Stands in for the merge kernel (`merge="none"`): indexing it by a grid gives a launch that does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def attention(q, kc, vc, meta, scale, splits: int, tile: int, warps: int, stages: int, merge_dc: int | None,
              merge: str = "kernel"):  # fmt: skip
    """The engine's paged attention with these launch options; merge_dc: the merge kernel's columns a program (None:
    all d, one program per row, as before session 19); merge: "kernel", "fused" (the last split merges) or "none"
    (no merge launch: what the attention launch alone costs; the output is not attention's)."""
    columns, pa.MERGE_COLUMNS = pa.MERGE_COLUMNS, merge_dc or q.shape[2]
    merge_kernel = pa._merge_splits_kernel
    if merge == "none":
        pa._merge_splits_kernel = _NoLaunch()
    try:
        return pa.paged_attention(q, kc, vc, meta, scale, num_splits=splits, tile=tile, num_warps=warps,
                                  num_stages=stages, merge="fused" if merge == "fused" else "kernel")  # fmt: skip
    finally:
        pa.MERGE_COLUMNS, pa._merge_splits_kernel = columns, merge_kernel


def options(args) -> list[dict]:
    grid = itertools.product(
        [int(x) for x in args.per_sm.split(",")],
        [int(x) for x in args.tiles.split(",")],
        [int(x) for x in args.warps.split(",")],
        [int(x) for x in args.stages.split(",")],
        [None if x == "engine" else int(x) for x in args.merges.split(",")],
        args.merge_modes.split(","),
    )
    return [dict(per_sm=p, tile=t, warps=w, stages=s, merge_dc=m, merge=mm) for p, t, w, s, m, mm in grid]


def parse_label(text: str) -> dict:
    """The option a `label` names (p2_t128_w4_s1_mdc32_fused -> per_sm 2, tile 128, ...)."""
    per_sm, tile, warps, stages, merge, *mode = text.split("_")
    dc = merge.removeprefix("m")
    return dict(
        per_sm=int(per_sm[1:]),
        tile=int(tile[1:]),
        warps=int(warps[1:]),
        stages=int(stages[1:]),
        merge_dc=None if dc == "engine" else int(dc.removeprefix("dc")),
        merge=mode[0] if mode else "kernel",
    )


def label(o: dict) -> str:
    merge = "engine" if o["merge_dc"] is None else f"dc{o['merge_dc']}"
    mode = "" if o["merge"] == "kernel" else f"_{o['merge']}"
    return f"p{o['per_sm']}_t{o['tile']}_w{o['warps']}_s{o['stages']}_m{merge}{mode}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--search", default="1x2048,2x2048", help="rows of phase 1, batch x context")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="2048,8192,32768")
    ap.add_argument("--per-sm", default="1,2,4,8")
    ap.add_argument("--tiles", default="16,32,64")
    ap.add_argument("--warps", default="2,4")
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--merges", default="engine,32")
    ap.add_argument(
        "--merge-modes",
        default="kernel",
        help="kernel, fused (the last split merges), none (no merge; coop, one cooperative launch, at b47b14d)",
    )
    ap.add_argument("--hq", type=int, default=32, help="query heads (Llama-3.1-8B: 32; a TP rank of 70B: 64 / TP)")
    ap.add_argument("--hk", type=int, default=8, help="KV heads")
    ap.add_argument("--q-len", type=int, default=1, help="new tokens a sequence (1: decode; more: prefill chunks whose "
                    "context counts them)")  # fmt: skip
    ap.add_argument("--keep", type=int, default=8, help="options of phase 1 timed on every row (0: no phase 2)")
    ap.add_argument("--options", default="", help="labels (p2_t128_w4_s1_mdc32[_fused|_none], ...) timed on every "
                    "row with no phase 1: --search and the option grid are ignored")  # fmt: skip
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("wide_split_probe needs a GPU")
    dev = torch.device("cuda")
    name, t0 = torch.cuda.get_device_name(), time.perf_counter()
    ceil = measure_ceilings(dev)
    hq, hk, d, bs, scale, sms = args.hq, args.hk, 128, 16, 128**-0.5, pa.sm_count(dev)
    print(f"{name}: {sms} SMs, copy rate {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s", flush=True)

    def run_row(b: int, c: int, opts: list[dict]) -> dict:
        kv_bytes = 2 * b * c * hk * d * 2
        layers = max(1, min(32, -(-(256 << 20) // kv_bytes)))
        step = Step([args.q_len] * b, [c] * b, hq, hk, d, bs, layers, dev)
        ref = step.reference(scale)
        row = dict(hq=hq, hk=hk, batch=b, q_len=args.q_len, context=c, layers_in_graph=layers,
                   floor_us=1e6 * kv_bytes / ceil.hbm_bytes_per_s,
                   engine_splits=pa.choose_num_splits(b * args.q_len, b, hq, hk, None, sms),
                   launch_floor_us=launch_floor_us(step, pa, hq, hk, sms),
                   engine=time_layers(step, lambda *a: pa.paged_attention(*a), dev, scale, ref),
                   options={})  # fmt: skip
        for o in opts:
            splits = pa.choose_num_splits(b * args.q_len, b, hq, hk, None, sms, o["per_sm"])
            call = (lambda o, s: lambda qq, kc, vc, meta, sc: attention(qq, kc, vc, meta, sc, s, o["tile"], o["warps"],
                    o["stages"], o["merge_dc"], o["merge"]))(o, splits)  # fmt: skip
            timing = time_layers(step, call, dev, scale, None if o["merge"] == "none" else ref)
            row["options"][label(o)] = dict(splits=splits, **timing)
        timed = [(v["us"], k) for k, v in row["options"].items() if "us" in v and (v["rel_err"] or 1) < 2e-2]  # merged
        best = min(timed) if timed else (float("nan"), None)
        row.update(best=best[1], best_us=best[0], best_over_floor=best[0] / row["floor_us"],
                   engine_over_floor=row["engine"].get("us", float("nan")) / row["floor_us"])  # fmt: skip
        print(f"b={b} C={c}: floor {row['floor_us']:.1f} us, launch {row['launch_floor_us']:.1f}, engine "
              f"{row['engine'].get('us', float('nan')):.1f} ({row['engine_over_floor']:.2f}x), best {best[1]} "
              f"{best[0]:.1f} ({row['best_over_floor']:.2f}x) [{time.perf_counter() - t0:.0f} s]",
              flush=True)  # fmt: skip
        del step
        return row

    search = []
    for bc in args.search.split(",") if not args.options else []:
        b, c = (int(x) for x in bc.split("x"))
        search.append(run_row(b, c, options(args)))
    # phase 2: the options with the best geometric mean over the search rows (errors excluded)
    scores = {}
    for k in search[0]["options"] if search else []:
        us = [r["options"][k].get("us") for r in search]
        ok = all(u is not None and (r["options"][k]["rel_err"] or 1) < 2e-2 for u, r in zip(us, search))
        if ok:
            scores[k] = sum(torch.tensor(us).log().tolist()) / len(us)
    keep = args.options.split(",") if args.options else sorted(scores, key=scores.get)[: args.keep]
    by_label = {k: parse_label(k) for k in keep}
    rows = [run_row(b, c, [by_label[k] for k in keep]) for b in map(int, args.batches.split(","))
            for c in map(int, args.contexts.split(","))] if keep else []  # fmt: skip
    result = dict(command="python profiles/commands/wide_split_probe.py " + " ".join(argv or sys.argv[1:]),
                  card=name, torch=torch.__version__, triton=triton.__version__, sms=sms,
                  hbm_bytes_per_s=ceil.hbm_bytes_per_s, search=search, kept=keep, rows=rows)  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
