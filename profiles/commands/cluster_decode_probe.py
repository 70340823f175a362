"""Decode attention at batch 1-2 in one launch, a thread-block cluster merging the splits (GPU, Hopper; issue 14).

    PYTHONPATH=$PWD python profiles/commands/cluster_decode_probe.py --out cluster_decode.json

Issue 14's last row: Llama-3.1-8B's decode attention (32 query / 8 KV heads, d 128, bf16) at batch 1, 2k context
within 2x its HBM floor, 5.6 us a layer on an H100; the engine's Triton kernel takes 8.2 us, and
`split_floor_probe.py` measured any split-KV design that merges in a second launch at 5.3 us or more before its math.
The route it left open is one launch whose splits merge on chip: a thread-block cluster and distributed shared memory
(CUDA). Session 16's such kernel took 11.1 us; `cluster_decode_probe.cu` reworks it (every key of a CTA in flight at
once, PDL, block-table reads before the wait) and has switches that take parts out. This times, per shape (batch x
context) and launch option (CTAs a cluster C, warps W):
- `full`: the attention (checked against the fp32 reference: `rel_err`), `full_nopre` with the block-table reads after
  the wait, `full_nopdl` launched without PDL;
- `nomath`: the same reads, the cluster merge, no attention math; `nomath_nomerge`: without the cluster merge (each CTA
  writes its own partial); `_nowmerge`: without the merge of a CTA's warps (warp 0's partial stands for the CTA's);
  `noload_nomath_nowmerge`: no K/V copies either (launch, metadata, q, the cluster merge);
next to the engine's `paged_attention` in the same process, as `attention_bench` times attention (`layers` calls on
distinct K/V in one CUDA graph, per call). Also, for each shape's best `full` option, of its `full`, `nomath_nowmerge`
and `noload_nomath_nowmerge`, a timeline: each CTA's %globaltimer at eight points of the kernel (start, block table
read, after the wait, first tile landed, math done, own partial ready, cluster barrier passed, end), in one replay of
the graph, as medians over the CTAs of each call, in us from that call's first CTA start, and the gap from each call's
last CTA end to the next call's first start; and the most clusters of each option the GPU runs at once
(cuOccupancyMaxActiveClusters).
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from shifttune.kernels import paged_attention as pa

HQ, HK, D, BS = 32, 8, 128, 16  # Llama-3.1-8B's heads; the engine's cache block size
G = HQ // HK
ROW = D + 8  # as #defined in the source
SOURCE = Path(__file__).with_name("cluster_decode_probe.cu")
SMEM_LIMIT = 227 * 1024
VARIANTS = {  # name: (MATH, MERGE, PRE, PDL, WMERGE, LOAD)
    "full": (1, 1, 1, True, 1, 1),
    "full_nopre": (1, 1, 0, True, 1, 1),
    "full_nopdl": (1, 1, 1, False, 1, 1),
    "nomath": (0, 1, 1, True, 1, 1),
    "nomath_nomerge": (0, 0, 1, True, 1, 1),
    "nomath_nowmerge": (0, 1, 1, True, 0, 1),
    "nomath_nowmerge_nomerge": (0, 0, 1, True, 0, 1),
    "noload_nomath_nowmerge": (0, 1, 1, True, 0, 0),
}
_MAX_DYNAMIC_SMEM, _NON_PORTABLE_CLUSTER = 8, 14  # CUfunction_attribute
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID


class _LaunchAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint), ("pad", ctypes.c_uint), ("value", ctypes.c_ubyte * 64)]


class _LaunchConfig(ctypes.Structure):
    _fields_ = [
        *((n, ctypes.c_uint) for n in ("gx", "gy", "gz", "bx", "by", "bz", "smem")),
        ("stream", ctypes.c_void_p),
        ("attrs", ctypes.POINTER(_LaunchAttr)),
        ("n_attrs", ctypes.c_uint),
    ]


def _lib():
    return torch.cuda._utils._get_gpu_runtime_library()


def _check(rc: int) -> None:
    if rc != 0:
        raise RuntimeError(f"CUDA driver error {rc}")


def stage_bytes(warps: int) -> int:
    return 2 * 16 * warps * ROW * 2  # a K and a V tile, bf16


def smem_bytes(stages: int, warps: int) -> int:
    merge = ((warps + 1) * 16 * D + (warps + 1) * 16 * 2) * 4  # the warps' and the CTA's partials, fp32
    return max(stages * stage_bytes(warps), merge)


def keys_per_cta(context: int, cluster: int, warps: int) -> int:
    tile = 16 * warps
    return -(-(-(-context // cluster)) // tile) * tile


def stages_for(context: int, cluster: int, warps: int) -> int | None:
    """Every tile of a CTA in flight at once (tiles + 1 stages), if shared memory holds them."""
    stages = keys_per_cta(context, cluster, warps) // (16 * warps) + 1
    return stages if smem_bytes(stages, warps) <= SMEM_LIMIT else None


@functools.cache
def compiled(cluster: int, warps: int, stages: int, variant: str, stamps: int, minb: int):
    math, merge, pre, _, wmerge, load = VARIANTS[variant]
    opts = ["--use_fast_math"] + [f"-D{k}={v}" for k, v in dict(
        STAGES=stages, WARPS=warps, MATH=math, MERGE=merge, PRE=pre, STAMPS=stamps, MINB=minb, WMERGE=wmerge,
        LOAD=load).items()]  # fmt: skip
    kernel = torch.cuda._compile_kernel(SOURCE.read_text(), f"cluster_decode<{cluster}, {G}, {BS}>", nvcc_options=opts)
    smem = smem_bytes(stages, warps)
    _check(_lib().cuFuncSetAttribute(kernel.func, _MAX_DYNAMIC_SMEM, smem))
    if cluster > 8:
        _check(_lib().cuFuncSetAttribute(kernel.func, _NON_PORTABLE_CLUSTER, 1))
    return kernel, smem


def _config(grid, block, smem: int, pdl: bool, attrs_keep: list) -> _LaunchConfig:
    attr = _LaunchAttr()
    attr.id = _PROGRAMMATIC_STREAM_SERIALIZATION
    ctypes.memmove(attr.value, ctypes.byref(ctypes.c_int(1)), 4)
    attrs_keep.append(attr)
    stream = torch.cuda.current_stream().cuda_stream
    return _LaunchConfig(*grid, *block, smem, stream, ctypes.pointer(attr) if pdl else None, 1 if pdl else 0)


def launch(kernel, grid, block, smem: int, args: list, pdl: bool) -> None:
    """cuLaunchKernelEx, with programmatic stream serialization (PDL) when `pdl`."""
    keep: list = []
    objs = []
    for a in args:
        if isinstance(a, torch.Tensor):
            objs.append(ctypes.c_void_p(a.data_ptr()))
        elif isinstance(a, float):
            objs.append(ctypes.c_float(a))
        elif a is None:
            objs.append(ctypes.c_void_p(0))
        else:
            objs.append(ctypes.c_int(a))
    params = (ctypes.c_void_p * len(objs))(*[ctypes.cast(ctypes.byref(o), ctypes.c_void_p) for o in objs])
    cfg = _config(grid, block, smem, pdl, keep)
    _check(_lib().cuLaunchKernelEx(ctypes.byref(cfg), kernel.func, params, None))


def max_active_clusters(kernel, grid, block, smem: int) -> int:
    n = ctypes.c_int(0)
    cfg = _config(grid, block, smem, False, [])
    rc = _lib().cuOccupancyMaxActiveClusters(ctypes.byref(n), kernel.func, ctypes.byref(cfg))
    return n.value if rc == 0 else -rc


def grid_of(q: torch.Tensor, meta, cluster: int) -> tuple[int, int, int]:
    return cluster, HK, q.shape[0] // (16 // G) + meta.block_tables.shape[0]


def make_call(cluster: int, warps: int, stages: int, variant: str, minb: int = 1, stamps: torch.Tensor | None = None):
    """A `paged_attention`-like call(q, k_cache, v_cache, meta, scale) of this option (stamps: [layers, CTAs, 8])."""
    pdl = VARIANTS[variant][3]
    kernel, smem = compiled(cluster, warps, stages, variant, int(stamps is not None), minb)
    layer = [0]

    def call(q, k_cache, v_cache, meta, scale):
        out = torch.empty_like(q)
        stamp = None
        if stamps is not None:
            stamp = stamps[layer[0] % stamps.shape[0]]
            layer[0] += 1
        args = [out, q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
                meta.block_tables.shape[0], meta.block_tables.stride(0), q.stride(0), HK,
                float(scale * 1.4426950408889634), stamp]  # fmt: skip
        launch(kernel, grid_of(q, meta, cluster), (32 * warps, 1, 1), smem, args, pdl)
        return out

    return call, kernel, smem


def timeline(stamps: torch.Tensor) -> dict:
    """Per-point medians over CTAs (us from each call's first CTA start), and the gaps between calls."""
    s = stamps.cpu().double()  # [layers, ctas, 8] ns
    s = s[:, s[0, :, 0] > 0]  # CTAs of empty query blocks return before their first stamp
    start = s[:, :, 0].min(1).values
    rel = (s - start[:, None, None]) / 1e3
    med = rel.median(1).values  # [layers, 8]
    keep = slice(1, None)  # the first call of the graph has no call before it
    ends = s[:, :, 7].max(1).values
    gaps = (start[1:] - ends[:-1]) / 1e3
    spans = (ends - start) / 1e3
    return dict(
        points=["start", "table", "waited", "first_tile", "math_done", "partial", "cluster_barrier", "end"],
        median_us=[round(statistics.median(med[keep, i].tolist()), 3) for i in range(8)],
        last_cta_end_us=round(statistics.median(spans[keep].tolist()), 3),
        gap_to_next_start_us=round(statistics.median(gaps.tolist()), 3),
        first_start_to_next_first_start_us=round(statistics.median(((start[1:] - start[:-1]) / 1e3).tolist()), 3),
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="JSON of every row")
    ap.add_argument("--shapes", default="1x2048,2x2048,1x4096", help="batch x context, comma-separated")
    ap.add_argument("--clusters", default="8,16")
    ap.add_argument("--warps", default="4,8")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        sys.exit("cluster_decode_probe needs a Hopper GPU")
    from shifttune.profile.attention_bench import Step, time_layers
    from shifttune.profile.step_timing import measure_ceilings

    dev, t0 = torch.device("cuda"), time.perf_counter()
    hbm = measure_ceilings(dev).hbm_bytes_per_s
    print(f"{torch.cuda.get_device_name()}: copy rate {hbm / 1e12:.2f} TB/s", flush=True)
    scale = D**-0.5
    rows = []
    for shape in args.shapes.split(","):
        batch, context = map(int, shape.split("x"))
        kv_bytes = batch * context * 2 * HK * D * 2
        layers = max(8, -(-(256 << 20) // kv_bytes))
        step = Step([1] * batch, [context] * batch, HQ, HK, D, BS, layers, dev)
        ref = step.reference(scale)
        row = dict(batch=batch, context=context, kv_bytes=kv_bytes, layers_in_graph=layers,
                   floor_us=1e6 * kv_bytes / hbm, options={})  # fmt: skip
        row["engine"] = time_layers(step, lambda *a: pa.paged_attention(*a), dev, scale, ref)
        for cluster in map(int, args.clusters.split(",")):
            for warps in map(int, args.warps.split(",")):
                stages = stages_for(context, cluster, warps)
                if stages is None:
                    continue
                minb = 2 if 2 * smem_bytes(stages, warps) <= 228 * 1024 else 1
                key = f"c{cluster}_w{warps}"
                opt = dict(stages=stages, smem=smem_bytes(stages, warps), min_blocks=minb, variants={})
                for variant in args.variants.split(","):
                    try:
                        call, kernel, smem = make_call(cluster, warps, stages, variant, minb)
                        if variant == "full":
                            grid = grid_of(step.q, step.metas[0], cluster)
                            opt["max_active_clusters"] = max_active_clusters(kernel, grid, (32 * warps, 1, 1), smem)
                            opt["clusters"] = grid[1] * grid[2]
                        res = time_layers(step, call, dev, scale, ref if variant.startswith("full") else None)
                    except Exception as e:  # noqa: BLE001 - a compile or launch failure is a row's result
                        torch.cuda.synchronize()
                        res = dict(error=f"{type(e).__name__}: {str(e)[:300]}")
                    opt["variants"][variant] = res
                row["options"][key] = opt
        good = {k: o["variants"]["full"]["us"] for k, o in row["options"].items()
                if "us" in o["variants"].get("full", {}) and o["variants"]["full"]["rel_err"] < 1e-2}  # fmt: skip
        if good:
            best = min(good, key=good.get)
            row["best_full"] = dict(option=best, us=good[best])
            o = row["options"][best]
            cluster, warps = (int(v[1:]) for v in best.split("_"))
            stamps = torch.zeros(layers, cluster * HK * grid_of(step.q, step.metas[0], cluster)[2], 8,
                                 dtype=torch.int64, device=dev)  # fmt: skip
            for variant in ("full", "nomath_nowmerge", "noload_nomath_nowmerge"):
                stamps.zero_()
                call, _, _ = make_call(cluster, warps, o["stages"], variant, o["min_blocks"], stamps)
                res = time_layers(step, call, dev, scale, ref if variant == "full" else None)
                row["best_full"][f"stamped_{variant}"] = dict(res, timeline=timeline(stamps))
        rows.append(row)
        summary = "; ".join(
            f"{k} " + " ".join(f"{v} {r.get('us', float('nan')):.2f}" for v, r in o["variants"].items())
            for k, o in row["options"].items()
        )
        best = row.get("best_full", {})
        lines = [f"  {k[8:]}: {v['us']:.2f} us, {v['timeline']}" for k, v in best.items() if k.startswith("stamped_")]
        print(f"batch {batch} x {context}: floor {row['floor_us']:.2f} us, bar {2 * row['floor_us']:.2f}; engine "
              f"{row['engine'].get('us', float('nan')):.2f}; {summary}; best {best.get('option')} "
              f"[{time.perf_counter() - t0:.0f} s]", *lines, sep="\n", flush=True)  # fmt: skip
        del step
    args.out.write_text(json.dumps(dict(
        command="python profiles/commands/cluster_decode_probe.py " + " ".join(argv or sys.argv[1:]),
        card=torch.cuda.get_device_name(), torch=torch.__version__, hbm_bytes_per_s=hbm, rows=rows),
        indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
