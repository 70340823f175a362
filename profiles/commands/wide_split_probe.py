"""Small-batch decode attention with many more, smaller split-KV programs (GPU; issue 14's batch 1-2 item).

    PYTHONPATH=$PWD python profiles/commands/wide_split_probe.py --out wide_split.json

`read_floor_probe.py` (session 16) found that reading batch 1's 8.4 MB of K/V takes 9.2 us with one 4-warp
program per SM, the layout the engine's decode attention uses (`PROGRAMS_PER_SM = 1`), and 4.7 us with eight.
Earlier sweeps of the attention kernel stopped at two programs per SM (`MAX_SPLITS`, and the merge kernel loads
all of a row's splits at once). This runs the engine's own `_paged_attention_kernel` with 1-8 programs per SM
(splits per query block and KV head up to 256, tiles of 16-64 keys, 1-3 stages, 2-4 warps) and merges the
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
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from shifttune.kernels import paged_attention as pa
from shifttune.kernels.launch import pdl_args
from shifttune.profile.attention_bench import Step, launch_floor_us, time_layers
from shifttune.profile.step_timing import measure_ceilings


def splits_for(num_tokens: int, num_seqs: int, hq: int, hk: int, sms: int, per_sm: int, cap: int) -> int:
    """`choose_num_splits` with another programs-per-SM count and split cap."""
    _, block_q, _ = pa.launch_shape(num_tokens, num_seqs, hq, hk)
    busy = max(num_seqs, triton.cdiv(num_tokens, block_q)) * hk
    return 1 if busy >= sms else max(1, min(triton.cdiv(per_sm * sms, busy), cap))


@triton.jit
def _coop_decode_kernel(out, q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, counters, scale,
                        stride_bt, num_tokens, num_splits, HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr,
                        BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr, DC: tl.constexpr,
                        SPLITS_P2: tl.constexpr, PDL: tl.constexpr):  # fmt: skip
    """Pure decode (token i of sequence i) in one cooperative launch: each split stores its partial, the splits of a
    (token, KV head) wait for each other at a counter, then the first G * D / DC of them merge DC columns of one
    head each; the last to finish puts the counters back to zero. NOTE: the waits need every program of the grid
    resident at once, which a cooperative launch guarantees (or refuses to launch)."""
    seq = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    G: tl.constexpr = HQ // HK
    seq_len = tl.load(seq_lens + seq)
    per_split = tl.cdiv(tl.cdiv(seq_len, num_splits), TILE) * TILE
    kv_lo = split * per_split
    kv_hi = tl.minimum(seq_len, kv_lo + per_split)
    rows = tl.arange(0, BLOCK_M)
    head = kv_head * G + rows
    row_ok = rows < G
    d = tl.arange(0, D)
    if PDL:
        gdc_wait()
    Q = tl.load(q + seq * HQ * D + head[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    q_pos = tl.zeros([BLOCK_M], tl.int32) + seq_len - 1
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    full_hi = kv_lo + tl.maximum(kv_hi - kv_lo, 0) // TILE * TILE
    block = pa._tile_blocks(block_tables, seq, stride_bt, kv_lo, kv_hi, BLOCK_SIZE, TILE)
    m_i, l_i, acc = pa._key_loops(Q, k_cache, v_cache, block_tables, seq, stride_bt, block, kv_lo, full_hi, kv_hi,
                                  q_pos, kv_head, scale * 1.4426950408889634, m_i, l_i, acc, HK, D, BLOCK_SIZE,
                                  TILE)  # fmt: skip
    if PDL:
        gdc_launch_dependents()
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tok = tl.zeros([BLOCK_M], tl.int32) + seq
    pa._store_partial(part_out, part_lse, o, m_i, l_i, split, num_tokens, tok, head, row_ok, HQ, D)
    tl.debug_barrier()
    arrived = counters + 2 * (seq * HK + kv_head)
    done = arrived + 1
    tl.atomic_add(arrived, 1, sem="release", scope="gpu")
    n = tl.atomic_add(arrived, 0, sem="acquire", scope="gpu")
    while n < num_splits:
        n = tl.atomic_add(arrived, 0, sem="acquire", scope="gpu")
    CHUNKS: tl.constexpr = D // DC
    if split < G * CHUNKS:
        row = seq * HQ + kv_head * G + split // CHUNKS
        c = (split % CHUNKS) * DC + tl.arange(0, DC)
        s = tl.arange(0, SPLITS_P2)
        s_ok = s < num_splits
        lse = tl.load(part_lse + s * num_tokens * HQ + row, mask=s_ok, other=float("-inf"), cache_modifier=".cg")
        top = tl.max(lse, 0)
        w = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - top), 0.0)
        off = (s * num_tokens * HQ + row).to(tl.int64)[:, None] * D + c[None, :]
        parts = tl.load(part_out + off, mask=s_ok[:, None], other=0.0, cache_modifier=".cg")
        merged = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
        tl.store(out + row.to(tl.int64) * D + c, merged.to(out.dtype.element_ty))
    if tl.atomic_add(done, 1, sem="acq_rel", scope="gpu") == num_splits - 1:
        tl.atomic_xchg(arrived, 0)
        tl.atomic_xchg(done, 0)


_COOP_COUNTERS: dict = {}


def coop_attention(q, kc, vc, meta, scale, splits: int, tile: int, warps: int, stages: int, merge_dc: int | None):
    """`_coop_decode_kernel` for a pure-decode step (one new token per sequence)."""
    t, hq, d = q.shape
    bs, hk = kc.shape[1], kc.shape[2]
    counters = _COOP_COUNTERS.get(q.device)
    if counters is None or counters.numel() < 2 * t * hk:
        counters = _COOP_COUNTERS[q.device] = torch.zeros(max(2 * t * hk, 4096), dtype=torch.int32, device=q.device)
    out = torch.empty_like(q)
    part_out = torch.empty((splits, t, hq, d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((splits, t, hq), dtype=torch.float32, device=q.device)
    dc = merge_dc or d
    assert splits >= (hq // hk) * (d // dc), "fewer splits than merge work items"
    _coop_decode_kernel[(t, hk, splits)](
        out, q, kc, vc, meta.block_tables, meta.seq_lens, part_out, part_lse, counters, scale,
        meta.block_tables.stride(0), t, splits, HQ=hq, HK=hk, D=d, BLOCK_SIZE=bs, BLOCK_M=16, TILE=tile, DC=dc,
        SPLITS_P2=triton.next_power_of_2(splits), **pdl_args(q.device), launch_cooperative_grid=True,
        num_warps=warps, num_stages=stages)  # fmt: skip
    return out


class _NoLaunch:
    """Stands in for the merge kernel (`merge="none"`): indexing it by a grid gives a launch that does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def attention(q, kc, vc, meta, scale, splits: int, tile: int, warps: int, stages: int, merge_dc: int | None,
              merge: str = "kernel"):  # fmt: skip
    """The engine's paged attention with these launch options; merge_dc: the merge kernel's columns a program (None:
    all d, one program per row, as before session 19); merge: "kernel", "fused" (the last split merges), "coop"
    (`_coop_decode_kernel`: one cooperative launch whose splits merge together; pure decode steps only) or "none"
    (no merge launch: what the attention launch alone costs; the output is not attention's)."""
    if merge == "coop":
        return coop_attention(q, kc, vc, meta, scale, splits, tile, warps, stages, merge_dc)
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
        help="kernel, fused (the last split merges), coop (one cooperative launch), none (no merge)",
    )
    ap.add_argument("--hq", type=int, default=32, help="query heads (Llama-3.1-8B: 32; a TP rank of 70B: 64 / TP)")
    ap.add_argument("--hk", type=int, default=8, help="KV heads")
    ap.add_argument("--cap", type=int, default=256, help="most splits per query block and KV head")
    ap.add_argument("--keep", type=int, default=8, help="options of phase 1 timed on every row (0: no phase 2)")
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
        step = Step([1] * b, [c] * b, hq, hk, d, bs, layers, dev)
        ref = step.reference(scale)
        row = dict(hq=hq, hk=hk, batch=b, context=c, layers_in_graph=layers,
                   floor_us=1e6 * kv_bytes / ceil.hbm_bytes_per_s,
                   engine_splits=pa.choose_num_splits(b, b, hq, hk, None, sms),
                   launch_floor_us=launch_floor_us(step, pa, hq, hk, sms),
                   engine=time_layers(step, lambda *a: pa.paged_attention(*a), dev, scale, ref),
                   options={})  # fmt: skip
        for o in opts:
            splits = splits_for(b, b, hq, hk, sms, o["per_sm"], args.cap)
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
    for bc in args.search.split(","):
        b, c = (int(x) for x in bc.split("x"))
        search.append(run_row(b, c, options(args)))
    # phase 2: the options with the best geometric mean over the search rows (errors excluded)
    scores = {}
    for k in search[0]["options"]:
        us = [r["options"][k].get("us") for r in search]
        ok = all(u is not None and (r["options"][k]["rel_err"] or 1) < 2e-2 for u, r in zip(us, search))
        if ok:
            scores[k] = sum(torch.tensor(us).log().tolist()) / len(us)
    keep = sorted(scores, key=scores.get)[: args.keep]
    by_label = {label(o): o for o in options(args)}
    rows = [run_row(b, c, [by_label[k] for k in keep]) for b in map(int, args.batches.split(","))
            for c in map(int, args.contexts.split(","))] if keep else []  # fmt: skip
    result = dict(command="python profiles/commands/wide_split_probe.py " + " ".join(argv or sys.argv[1:]),
                  card=name, torch=torch.__version__, triton=triton.__version__, sms=sms,
                  hbm_bytes_per_s=ceil.hbm_bytes_per_s, search=search, kept=keep, rows=rows)  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
