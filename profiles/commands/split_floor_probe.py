"""The least a split-KV decode attention can take here: read the K/V bytes, then merge the splits (GPU; issue 14).

    PYTHONPATH=$PWD python profiles/commands/split_floor_probe.py --out split_floor.json

Issue 14 asks for decode attention within 2x its HBM floor at batch 1-8; at batch 1 and 2k context (Llama-3.1-8B:
8 KV heads, d 128, bf16, 8.4 MB a layer) that is 5.6 us on an H100. `read_floor_probe.py` (session 16) found the bare
read of those bytes at 4.7 us. This adds, one at a time, what any split-KV attention must also do, with no attention
math: programs laid out as the engine's (KV head x split), launched with PDL as the engine's kernels are,
- `none`: read a contiguous chunk and store one float (the read alone, PDL on);
- `kernel`: also store the split's partial output (G query rows x d, fp32) and log-sum-exp, and merge the partials
  with the engine's own merge kernel in a second launch (`paged_attention._merge_splits_kernel`), as the engine's
  small decode steps do: at 32 columns a program and 4 warps as in the engine (`kernel`), or at `--merge-dc`
  columns a program and `--merge-warps` warps (`kernel_dc64_w2`, ...);
- `touch`: the same partials, and a second launch of one program that waits for the first (PDL), loads one value
  and stores it: what any second launch costs at the least, whatever its merge;
- `touchgrid`: the same, with the merge kernel's grid (a program per 32 columns of each row), each program loading one
  value: what the merge's launch costs without its loads and math;
- `ticket`: the same partials, merged in the same launch by the last split of each KV head to finish (the engine's
  `_FUSED_MERGE` path: barrier, acq_rel ticket, `_merge_block`);
each with contiguous chunks and with `paged` chunks (the chunk's index loaded from a shuffled table first: the one
dependent load a block table adds before the K/V, at its least). Grids of 1-8 programs per SM, loads of 1024-32768
elements, 4-16 warps. Timed as `attention_bench` times attention: `layers` calls on distinct buffers (256 MB in
all, over 5x the L2) in one CUDA graph, per call. In the same process the engine's attention at the same sizes
(`paged_attention`, its own launch rule) for comparison. A kernel that reads the bytes, merges splits and also
gathers blocks and does the math costs at least the best `kernel` / `ticket` time here.
Every configuration's output is checked against torch (the merged mean of each KV head's chunk means); on CPU,
`tests/test_kernels.py::test_split_floor_probe_kernels_match_torch` runs the same check in the interpreter.
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
from shifttune.kernels.launch import pdl_args, sm_count

HK, G, D = 8, 4, 128  # Llama-3.1-8B: 8 KV heads, 4 query heads each, d 128
HQ = HK * G
KV_ELEMS_PER_TOKEN = 2 * HK * D  # K and V, bf16
MODES = {"none": 0, "kernel": 1, "ticket": 2, "touch": 1, "touchgrid": 1}


@triton.jit
def _read_split_kernel(x, table, part_out, part_lse, counters, out, n, chunk, num_splits, HQ: tl.constexpr,
                       D: tl.constexpr, G: tl.constexpr, GP2: tl.constexpr, S_CHUNK: tl.constexpr,
                       BLOCK: tl.constexpr, MODE: tl.constexpr, PAGED: tl.constexpr, PDL: tl.constexpr):  # fmt: skip
    """Program (kv_head, split) sums chunk `table[prog]` (PAGED) or `prog` of x, then by MODE stores its mean (0), or
    stores it as a split's partial output of G rows and merges (1: by a second launch, 2: the last split here)."""
    kv_head = tl.program_id(0)
    split = tl.program_id(1)
    prog = kv_head * num_splits + split
    if PDL:
        gdc_wait()
    if PAGED:
        start = tl.load(table + prog).to(tl.int64) * chunk
    else:
        start = prog.to(tl.int64) * chunk
    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(0, chunk, BLOCK):
        idx = start + off + tl.arange(0, BLOCK)
        acc += tl.load(x + idx, mask=idx < n, other=0.0).to(tl.float32)
    if PDL:
        gdc_launch_dependents()
    mean = tl.sum(acc, 0) / chunk
    if MODE == 0:
        tl.store(out + prog, mean)
    else:
        rows = tl.arange(0, GP2)
        o = tl.zeros([GP2, D], tl.float32) + mean
        m_i = tl.zeros([GP2], tl.float32)
        l_i = tl.full([GP2], 1.0, tl.float32)
        pa._store_partial(part_out, part_lse, o, m_i, l_i, split, 1, 0, kv_head * G + rows, rows < G, HQ, D)
        if MODE == 2:  # NOTE: as the engine's fused merge (paged_attention._paged_attention_kernel)
            tl.debug_barrier()
            counter = counters + kv_head
            ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if ticket == num_splits - 1:
                pa._merge_block(out, part_out, part_lse, 0, 1, kv_head, num_splits, 1, HQ, D, G, GP2, S_CHUNK)
                tl.atomic_xchg(counter, 0)


@triton.jit
def _touch_kernel(part_out, out, D: tl.constexpr, DC: tl.constexpr, PDL: tl.constexpr):
    """Program (row, c) loads split 0's partial at (row, DC * c) and stores it at out[program]."""
    if PDL:
        gdc_wait()
    pid = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(out + pid, tl.load(part_out + tl.program_id(0) * D + tl.program_id(1) * DC))


def launch(x: torch.Tensor, table: torch.Tensor, mode: str, paged: bool, splits: int, block: int, warps: int,
           counters: torch.Tensor, merge_dc: int = 32, merge_warps: int = 4) -> torch.Tensor:  # fmt: skip
    """One layer: [HK * splits] float32 chunk means (none), the first (touch) or each row's first (touchgrid), or the
    merged [1, HQ, D] rows."""
    n, dev = x.numel(), x.device
    chunk = triton.cdiv(triton.cdiv(n, HK * splits), block) * block
    pdl = pdl_args(dev)
    part_out = torch.empty((splits, 1, HQ, D), dtype=torch.float32, device=dev)
    part_lse = torch.empty((splits, 1, HQ), dtype=torch.float32, device=dev)
    if mode in ("none", "touch", "touchgrid"):
        size = {"none": HK * splits, "touch": 1, "touchgrid": HQ * (D // pa.MERGE_COLUMNS)}[mode]
        out = torch.empty(size, dtype=torch.float32, device=dev)
    else:
        out = torch.empty((1, HQ, D), dtype=x.dtype, device=dev)
    gp2 = triton.next_power_of_2(G)
    _read_split_kernel[(HK, splits)](
        x, table, part_out, part_lse, counters, out, n, chunk, splits, HQ=HQ, D=D, G=G, GP2=gp2,
        S_CHUNK=min(triton.next_power_of_2(splits), max(1, pa.MERGE_ELEMS // (gp2 * D))), BLOCK=block,
        MODE=MODES[mode], PAGED=paged, num_warps=warps, **pdl)  # fmt: skip
    if mode == "kernel":
        pa._merge_splits_kernel[(HQ, D // merge_dc)](
            out, part_out, part_lse, 1, splits, HQ=HQ, D=D, DC=merge_dc, SPLITS_P2=triton.next_power_of_2(splits),
            num_warps=merge_warps, **pdl)  # fmt: skip
    elif mode in ("touch", "touchgrid"):
        grid = (1, 1) if mode == "touch" else (HQ, D // pa.MERGE_COLUMNS)
        _touch_kernel[grid](part_out, out, D=D, DC=pa.MERGE_COLUMNS, **pdl)
    return out


def reference(x: torch.Tensor, table: torch.Tensor, mode: str, splits: int, block: int) -> torch.Tensor:
    n = x.numel()
    chunk = triton.cdiv(triton.cdiv(n, HK * splits), block) * block
    padded = torch.zeros(HK * splits * chunk, dtype=torch.float64, device=x.device)
    padded[:n] = x.double()
    means = padded.view(HK * splits, chunk).sum(1) / chunk
    mine = means[table.long()]  # program p read chunk table[p] (the identity table when not paged)
    if mode == "none":
        return mine.float()
    if mode == "touch":  # split 0's partial of head 0's first row
        return mine[:1].float()
    if mode == "touchgrid":  # split 0's partial of each row, once per 32 columns
        return mine.view(HK, splits)[:, 0].repeat_interleave(G * (D // pa.MERGE_COLUMNS)).float()
    per_head = mine.view(HK, splits).mean(1)
    return per_head.repeat_interleave(G)[:, None].expand(HQ, D)[None].to(x.dtype)


def check(x, table, mode, splits, block, out) -> float:
    ref = reference(x, table, mode, splits, block)
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def configs(args) -> list[dict]:
    ints = [[int(v) for v in text.split(",")] for text in (args.per_sm, args.blocks, args.warps)]
    merges = [[int(v) for v in text.split(",")] for text in (args.merge_dc, args.merge_warps)]
    out = []
    for m, p, s, b, w in itertools.product(args.modes.split(","), [False, True], *ints):
        for dc, mw in itertools.product(*merges) if m == "kernel" else [(32, 4)]:
            out.append(dict(mode=m, paged=p, per_sm=s, block=b, warps=w, merge_dc=dc, merge_warps=mw))
    return out


def label(c: dict) -> str:
    """mode[_dcDC_wW]_{contig|paged}_pP_bB_wW (the merge's columns and warps where they are not the engine's)."""
    merge = "" if (c["merge_dc"], c["merge_warps"]) == (32, 4) else f"_dc{c['merge_dc']}_w{c['merge_warps']}"
    return f"{c['mode']}{merge}_{'paged' if c['paged'] else 'contig'}_p{c['per_sm']}_b{c['block']}_w{c['warps']}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON of every row")
    ap.add_argument("--tokens", default="2048,4096", help="batch x context tokens of K/V a layer reads")
    ap.add_argument("--modes", default="none,kernel,touch,touchgrid,ticket")
    ap.add_argument("--merge-dc", default="32", help="merge columns a program (kernel mode), comma-separated")
    ap.add_argument("--merge-warps", default="4", help="merge warps (kernel mode), comma-separated")
    ap.add_argument("--per-sm", default="1,2,4,8", help="programs per SM (splits = per_sm x SMs / 8 KV heads)")
    ap.add_argument("--blocks", default="1024,4096,16384,32768", help="elements a load")
    ap.add_argument("--warps", default="4,8,16")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("split_floor_probe needs a GPU")
    from shifttune.profile.attention_bench import Step, time_layers
    from shifttune.profile.step_timing import measure_ceilings, summarize, time_fn

    dev, t0 = torch.device("cuda"), time.perf_counter()
    sms, hbm = sm_count(dev), measure_ceilings(dev).hbm_bytes_per_s
    counters = torch.zeros(HK, dtype=torch.int32, device=dev)
    print(f"{torch.cuda.get_device_name()}: {sms} SMs, copy rate {hbm / 1e12:.2f} TB/s", flush=True)
    rows = []
    for tokens in map(int, args.tokens.split(",")):
        n = tokens * KV_ELEMS_PER_TOKEN
        layers = max(8, -(-(256 << 20) // (2 * n)))
        bufs = [torch.randn(n, device=dev, dtype=torch.bfloat16) for _ in range(layers)]
        row = dict(tokens=tokens, bytes=2 * n, layers_in_graph=layers, floor_us=1e6 * 2 * n / hbm, configs={})
        for c in configs(args):
            splits = -(-c["per_sm"] * sms // HK)
            gen = torch.Generator().manual_seed(splits)
            table = (torch.randperm(HK * splits, generator=gen) if c["paged"] else torch.arange(HK * splits)).int()
            table = table.to(dev)

            def one(b, c=c, s=splits, t=table):
                return launch(b, t, c["mode"], c["paged"], s, c["block"], c["warps"], counters, c["merge_dc"],
                              c["merge_warps"])  # fmt: skip

            outs = [one(b) for b in bufs]
            err = max(check(b, table, c["mode"], splits, c["block"], o) for b, o in zip(bufs[:2], outs[:2]))
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                outs = [one(b) for b in bufs]
            med, p10, p90 = summarize(time_fn(g.replay, dev, 3, 30))
            err = max(err, check(bufs[0], table, c["mode"], splits, c["block"], outs[0]))
            row["configs"][label(c)] = dict(splits=splits, us=1e3 * med / layers, p10_us=1e3 * p10 / layers,
                                            p90_us=1e3 * p90 / layers, rel_err=err)  # fmt: skip
            del g, outs
        for mode in [*MODES, "kernel_engine"]:  # kernel: any merge variant; kernel_engine: the engine's merge
            for paged in (False, True):
                mine = {
                    k: v
                    for k, v in row["configs"].items()
                    if v["rel_err"] < 1e-2 and ("_paged_" in k) == paged and k.split("_")[0] == mode.split("_")[0]
                    and (mode != "kernel_engine" or "_dc" not in k)
                }  # fmt: skip
                best = min(mine, key=lambda k: mine[k]["us"]) if mine else None
                key = f"{mode}_{'paged' if paged else 'contig'}"
                row[f"best_{key}"] = dict(config=best, us=mine[best]["us"] if best else None)
        del bufs
        b = tokens // 2048 if tokens % 2048 == 0 else None  # the same bytes as attention at batch b, 2k context
        if b:
            step = Step([1] * b, [2048] * b, HQ, HK, D, 16, layers, dev)
            row["engine_attention_batch_at_2k"] = b
            row["engine_attention"] = time_layers(step, lambda *a: pa.paged_attention(*a), dev, D**-0.5,
                                                  step.reference(D**-0.5))  # fmt: skip
            del step
        rows.append(row)
        print(f"{tokens} tokens ({2 * n / 1e6:.1f} MB): floor {row['floor_us']:.2f} us, bar {2 * row['floor_us']:.2f}; "
              + ", ".join(f"{k[5:]} {v['us']:.2f} ({v['config']})" for k, v in row.items()
                          if k.startswith("best_") and v["us"] is not None)
              + (f"; engine attention (batch {b}, 2k) {row['engine_attention'].get('us', float('nan')):.2f}"
                 if b else "") + f" [{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
    args.out.write_text(json.dumps(dict(
        command="python profiles/commands/split_floor_probe.py " + " ".join(argv or sys.argv[1:]),
        card=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__, sms=sms,
        hbm_bytes_per_s=hbm, rows=rows), indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
