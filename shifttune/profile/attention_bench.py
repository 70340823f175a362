"""Times the Triton paged-attention kernel against its floors (and against SDPA, or an older copy of the kernel).

    python -m shifttune.profile.attention_bench --out attn.json   (needs a CUDA GPU)
    python -m shifttune.profile.attention_bench --decode --old-kernel gpu_old/shifttune/kernels/paged_attention.py \
        --out decode.json   (the old file must have today's `paged_attention` signature)

Default mode: shapes of a Llama-3.3-70B layer on one of 4 GPUs (16 query heads, 2 KV heads, d=128,
bf16). Decode: batch x context, floor = KV bytes / HBM bandwidth. Prefill: one causal sequence, floor =
attention FLOPs / matmul rate. Checks every case against the torch reference first.

`--decode`: Llama-3.1-8B shapes (32 query heads, 8 KV heads, d=128, bf16), batch 1-128 x context
2k-32k (and 128k at batch 1), one layer's attention timed as `layers` calls on distinct KV caches
captured in one CUDA graph (so no launch overhead, and K/V come from HBM, not L2), per call. Floor =
K+V bytes / the card's measured copy rate (`floor_nominal_us`: at the datasheet bandwidth). Sweeps the
kernel's launch options one at a time around the defaults on every row, then runs the per-option
winners together; with `--old-kernel FILE` the same rows on an older paged_attention.py, in the same
process and on the same card; a few prefill rows show the prefill path did not change. Every output is
checked against an fp32 reference on the GPU. `--batches` / `--contexts` pick the decode rows (and drop the
extra 128k, prefill and batch-256 rows). Each row also gives `launch_floor_us`: the same graph of `layers`
launches of a kernel with the same grid whose programs only load one value and store it, which is what
any one-launch attention costs at least there.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch come without it: main() says so in one line
    triton = None

from shifttune.kernels import split_kv
from shifttune.kernels.attention import AttentionMetadata
from shifttune.kernels.attention_ref import paged_attention_ref
from shifttune.profile.step_timing import Ceilings, measure_ceilings, summarize, time_fn

DECODE_BATCHES = (1, 2, 4, 8, 32, 128)
DECODE_CONTEXTS = (2048, 8192, 32768)
# one launch option changed at a time around the defaults (paged_attention keyword arguments;
# programs_per_sm picks num_splits through choose_num_splits)
SWEEP = (
    ("splits_2_per_sm", dict(programs_per_sm=2)),  # the rule before session 12 (default: 1; small steps 4)
    ("splits_4_per_sm", dict(programs_per_sm=4)),
    ("merge_fused", dict(merge="fused")),
    ("tile_32", dict(tile=32)),
    ("tile_128", dict(tile=128)),
    ("warps_8", dict(num_warps=8)),
    ("stages_2", dict(num_stages=2)),
    ("stages_4", dict(num_stages=4)),
)
SPLIT_ONLY = {"programs_per_sm", "merge"}  # options that matter only where a step splits
SWEEP_CONTEXTS = (2048, 32768)  # rows the sweep runs on (every batch)


def graph_time(fn, dev, iters: int) -> tuple[float, float, float]:
    """Median/p10/p90 ms of `fn` replayed from a CUDA graph (no launch overhead in the numbers)."""
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return summarize(time_fn(g.replay, dev, 3, iters))


def make(batch: int, q_len: int, context: int, hq: int, hk: int, d: int, bs: int, dev) -> tuple:
    blocks = -(-context // bs)
    perm = torch.randperm(batch * blocks + 1, device=dev)
    tables = perm[: batch * blocks].view(batch, blocks).to(torch.int32)
    k_cache = torch.randn(batch * blocks + 1, bs, hk, d, device=dev, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(batch * q_len, hq, d, device=dev, dtype=torch.bfloat16)
    qsl = list(range(0, batch * q_len + 1, q_len))
    lens = [context] * batch
    meta = AttentionMetadata(
        torch.zeros(0, dtype=torch.int64, device=dev),
        torch.tensor(qsl, dtype=torch.int32, device=dev),
        torch.tensor(lens, dtype=torch.int32, device=dev),
        tables,
        qsl,
        lens,
    )
    return q, k_cache, v_cache, meta


def rel_err(out, q, kc, vc, meta, scale, max_seqs=4):
    """Relative error against the float64 reference on the first few sequences."""
    n = min(max_seqs, len(meta.seq_lens_cpu))
    sub = AttentionMetadata(
        meta.slot_mapping.cpu(),
        meta.query_start_loc[: n + 1].cpu(),
        meta.seq_lens[:n].cpu(),
        meta.block_tables[:n].cpu(),
        meta.query_start_loc_cpu[: n + 1],
        meta.seq_lens_cpu[:n],
    )
    t = meta.query_start_loc_cpu[n]
    ref = paged_attention_ref(q[:t].double().cpu(), kc.double().cpu(), vc.double().cpu(), sub, scale)
    return ((out[:t].double().cpu() - ref).norm() / ref.norm()).item()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decode", action="store_true", help="small-batch decode sweep (Llama-3.1-8B shapes by default)")
    ap.add_argument("--hq", type=int, default=None, help="query heads (default 16; --decode: 32)")
    ap.add_argument("--hk", type=int, default=None, help="KV heads (default 2; --decode: 8)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--old-kernel", type=Path, default=None, help="--decode: also time this paged_attention.py")
    ap.add_argument("--no-sweep", action="store_true", help="--decode: defaults only")
    ap.add_argument("--max-layers", type=int, default=32, help="--decode: calls per graph, on distinct caches")
    ap.add_argument(
        "--batches", default=None, help=f"--decode: batch sizes, comma-separated (default {DECODE_BATCHES})"
    )
    ap.add_argument("--contexts", default=None, help=f"--decode: contexts, comma-separated (default {DECODE_CONTEXTS})")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("attention_bench: times the Triton kernel on a CUDA GPU, and none is visible here")
    if triton is None:
        sys.exit("attention_bench: times the Triton kernel, and Triton is not installed here (pip install triton)")
    if args.decode:
        args.hq, args.hk = args.hq or 32, args.hk or 8
        return decode_main(args, argv)
    args.hq, args.hk = args.hq or 16, args.hk or 2
    from shifttune.kernels.paged_attention import paged_attention  # NOTE: lazy: Triton is GPU-only

    dev = torch.device("cuda")
    ceil = measure_ceilings(dev)
    hq, hk, d, bs = args.hq, args.hk, args.d, args.block_size
    scale = d**-0.5
    rows = []
    for batch, context in [(1, 2048), (8, 2048), (32, 2048), (128, 2048), (256, 2048), (32, 8192), (1, 32768)]:
        q, kc, vc, meta = make(batch, 1, context, hq, hk, d, bs, dev)
        out = paged_attention(q, kc, vc, meta, scale)
        err = rel_err(out, q, kc, vc, meta, scale)
        med, p10, p90 = graph_time(lambda: paged_attention(q, kc, vc, meta, scale), dev, 50)
        eager, _, _ = summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale), dev, 5, 50))
        kv_bytes = 2 * batch * context * hk * d * 2
        floor = 1e3 * kv_bytes / ceil.hbm_bytes_per_s
        # SDPA on contiguous K/V (GQA expanded by the kernel itself: enable_gqa)
        kq = torch.randn(batch, hk, context, d, device=dev, dtype=torch.bfloat16)
        vq = torch.randn_like(kq)
        qq = torch.randn(batch, hq, 1, d, device=dev, dtype=torch.bfloat16)
        sdpa, _, _ = graph_time(lambda: F.scaled_dot_product_attention(qq, kq, vq, enable_gqa=True), dev, 50)
        rows.append(
            dict(
                kind="decode",
                batch=batch,
                context=context,
                ms=med,
                p10=p10,
                p90=p90,
                floor_ms=floor,
                over_floor=med / floor,
                eager_ms=eager,
                sdpa_contiguous_ms=sdpa,
                rel_err=err,
            )
        )
        print(
            f"decode b={batch:4d} C={context:6d}: {1e3 * med:8.1f} us  floor {1e3 * floor:7.1f} us  "
            f"x{med / floor:5.2f}  sdpa {1e3 * sdpa:7.1f} us  err {err:.1e}"
        )
    for n in [2048, 8192, 16384]:
        q, kc, vc, meta = make(1, n, n, hq, hk, d, bs, dev)
        out = paged_attention(q, kc, vc, meta, scale)
        err = rel_err(out, q, kc, vc, meta, scale) if n <= 8192 else float("nan")
        configs = [
            dict(block_m=bm, tile=t, num_warps=w, num_stages=st)
            for bm in (64, 128)
            for t in (32, 64)
            for w in (4, 8)
            for st in (2, 3)
        ]
        tried = []
        for c in configs:
            try:
                tried.append(
                    (summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale, **c), dev, 2, 10))[0], c)
                )
            except Exception as e:  # a config that does not fit shared memory
                print("config failed", c, type(e).__name__)
        best_ms, best = min(tried, key=lambda x: x[0])
        med, p10, p90 = summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale, **best), dev, 3, 20))
        print(
            "best prefill config",
            best,
            "default",
            summarize(time_fn(lambda: paged_attention(q, kc, vc, meta, scale), dev, 2, 10))[0],
        )
        flops = 4 * hq * d * n * (n + 1) / 2
        floor = 1e3 * flops / ceil.matmul_flops_per_s
        qq = torch.randn(1, hq, n, d, device=dev, dtype=torch.bfloat16)
        kq = torch.randn(1, hk, n, d, device=dev, dtype=torch.bfloat16)
        vq = torch.randn_like(kq)
        sdpa, _, _ = summarize(
            time_fn(lambda: F.scaled_dot_product_attention(qq, kq, vq, is_causal=True, enable_gqa=True), dev, 3, 20)
        )
        rows.append(
            dict(
                kind="prefill",
                batch=1,
                context=n,
                ms=med,
                p10=p10,
                p90=p90,
                floor_ms=floor,
                over_floor=med / floor,
                sdpa_contiguous_ms=sdpa,
                rel_err=err,
                config=best,
                all_configs=[dict(ms=m, **c) for m, c in tried],
            )
        )
        print(
            f"prefill n={n:6d}: {med:8.3f} ms  floor {floor:7.3f} ms  x{med / floor:5.2f}  "
            f"sdpa {sdpa:7.3f} ms  err {err:.1e}"
        )
    result = {
        "command": "python -m shifttune.profile.attention_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "shape": dict(hq=hq, hk=hk, d=d, block_size=bs, dtype="bfloat16"),
        "ceilings": {"hbm_bytes_per_s": ceil.hbm_bytes_per_s, "matmul_flops_per_s": ceil.matmul_flops_per_s},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))


# ---- --decode --------------------------------------------------------------------------------------


def nominal_hbm_bytes_per_s(name: str) -> float | None:
    """Datasheet HBM bandwidth of the cards this project runs on (None for others)."""
    if "H200" in name:
        return 4.8e12
    if "H100" in name:
        return 2.0e12 if "PCIe" in name else 3.9e12 if "NVL" in name else 3.35e12
    return None


def load_kernel_module(path: Path) -> ModuleType:
    """An older paged_attention.py as its own module (it may import this tree's AttentionMetadata)."""
    spec = importlib.util.spec_from_file_location("old_paged_attention", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Step:
    """`layers` copies of one attention step (the same queries, different KV blocks of one big cache)."""

    def __init__(
        self,
        q_lens: list[int],
        seq_lens: list[int],
        hq: int,
        hk: int,
        d: int,
        bs: int,
        layers: int,
        dev,
        scattered: bool = True,
    ):
        self.q_lens, self.seq_lens, self.layers = q_lens, seq_lens, layers
        blocks = [-(-n // bs) for n in seq_lens]
        width, per_layer = max(blocks), sum(blocks)
        total = layers * per_layer + 1
        self.k_cache = torch.empty(total, bs, hk, d, device=dev, dtype=torch.bfloat16).normal_()
        self.v_cache = torch.empty_like(self.k_cache).normal_()
        # scattered blocks, as in a used cache (else each sequence's blocks in order, one after the other)
        perm = torch.randperm(total, device=dev) if scattered else torch.arange(total, device=dev)
        qsl = [0]
        for n in q_lens:
            qsl.append(qsl[-1] + n)
        self.q = torch.randn(qsl[-1], hq, d, device=dev, dtype=torch.bfloat16)
        # int64 metadata, as the engine's CUDA graphs hold it
        qsl_t = torch.tensor(qsl, dtype=torch.int64, device=dev)
        lens_t = torch.tensor(seq_lens, dtype=torch.int64, device=dev)
        self.metas = []
        for layer in range(layers):
            table = torch.zeros(len(seq_lens), width, dtype=torch.int64, device=dev)
            used = layer * per_layer
            for i, n in enumerate(blocks):
                table[i, :n] = perm[used : used + n]
                used += n
            empty = torch.zeros(0, dtype=torch.int64, device=dev)
            self.metas.append(AttentionMetadata(empty, qsl_t, lens_t, table, qsl, seq_lens))
        self.qsl = qsl

    def reference(self, scale: float, max_seqs: int = 2) -> list[torch.Tensor]:
        """fp32 attention of the first sequences in layer 0 (on the GPU: a 128k context is too big for the host)."""
        meta, (_, bs, hk, d) = self.metas[0], self.k_cache.shape
        outs = []
        for i in range(min(max_seqs, len(self.seq_lens))):
            n, length = self.q_lens[i], self.seq_lens[i]
            table = meta.block_tables[i, : -(-length // bs)].long()
            k = self.k_cache[table].reshape(-1, hk, d)[:length].float().transpose(0, 1)  # [Hk, L, d]
            v = self.v_cache[table].reshape(-1, hk, d)[:length].float().transpose(0, 1)
            q = self.q[self.qsl[i] : self.qsl[i + 1]].float().transpose(0, 1)  # [Hq, n, d]
            mask = (
                torch.arange(length, device=q.device)[None, :]
                <= torch.arange(length - n, length, device=q.device)[:, None]
            )
            o = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=True)
            outs.append(o[0].transpose(0, 1))
        return outs

    def rel_err(self, out: torch.Tensor, ref: list[torch.Tensor]) -> float:
        got = torch.cat([out[self.qsl[i] : self.qsl[i + 1]].float() for i in range(len(ref))])
        want = torch.cat(ref)
        return ((got - want).norm() / want.norm()).item()


def time_layers(step: Step, call, dev, scale: float, ref: list[torch.Tensor] | None, budget_ms: float = 25.0) -> dict:
    """Microseconds per call of `call(q, k_cache, v_cache, meta, scale)` with `step.layers` calls captured in
    one CUDA graph; the error is of layer 0's output of the captured graph after all the replays."""

    def layers() -> list[torch.Tensor]:
        return [call(step.q, step.k_cache, step.v_cache, m, scale) for m in step.metas]

    try:
        layers()  # compiles
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outs = layers()
        one = summarize(time_fn(graph.replay, dev, 2, 3))[0]
        iters = max(5, min(50, int(budget_ms / max(one, 1e-3))))
        med, p10, p90 = summarize(time_fn(graph.replay, dev, 1, iters))
        err = step.rel_err(outs[0], ref) if ref is not None else None
        del graph, outs
    except Exception as e:  # e.g. a launch option that does not fit shared memory
        torch.cuda.synchronize()
        return dict(error=f"{type(e).__name__}: {str(e)[:200]}")
    n = step.layers
    return dict(us=1e3 * med / n, p10_us=1e3 * p10 / n, p90_us=1e3 * p90 / n, rel_err=err)


if triton is not None:

    @triton.jit
    def _one_load_kernel(src, out):
        pid = (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * tl.num_programs(2) + tl.program_id(2)
        tl.store(out + pid, tl.load(src))


def launch_floor_us(step: Step, pa: ModuleType, hq: int, hk: int, sms: int) -> float:
    """Microseconds per launch of `_one_load_kernel` on the attention kernel's grid for this step, `step.layers`
    launches in one CUDA graph: the least a one-launch attention can take there."""
    t, n = step.q.shape[0], step.metas[0].block_tables.shape[0]
    grid = (pa.launch_shape(t, n, hq, hk)[2], hk, pa.choose_num_splits(t, n, hq, hk, None, sms))
    out = torch.empty(grid[0] * grid[1] * grid[2], dtype=torch.int32, device=step.q.device)

    def call(q, kc, vc, meta, scale):
        _one_load_kernel[grid](meta.seq_lens, out)
        return q

    return time_layers(step, call, step.q.device, 1.0, None)["us"]


def decode_main(args, argv) -> None:
    from shifttune.kernels import paged_attention as pa  # NOTE: lazy: Triton is GPU-only

    t0 = time.perf_counter()
    dev = torch.device("cuda")
    name = torch.cuda.get_device_name()
    ceil: Ceilings = measure_ceilings(dev)
    nominal = nominal_hbm_bytes_per_s(name)
    hq, hk, d, bs = args.hq, args.hk, args.d, args.block_size
    scale = d**-0.5
    sms = pa.sm_count(dev)
    old = load_kernel_module(args.old_kernel) if args.old_kernel else None
    print(
        f"{name}: {sms} SMs, copy rate {ceil.hbm_bytes_per_s / 1e12:.2f} TB/s (nominal {nominal}), {hq}/{hk} heads",
        flush=True,
    )

    def new_call(**opts):
        opts = dict(opts)
        per_sm = opts.pop("programs_per_sm", None)

        def call(q, kc, vc, meta, scale):
            t, n = q.shape[0], meta.block_tables.shape[0]
            splits = pa.choose_num_splits(t, n, hq, hk, None, sms, per_sm)
            return pa.paged_attention(q, kc, vc, meta, scale, num_splits=splits, **opts)

        return call

    batches = [int(x) for x in args.batches.split(",")] if args.batches else DECODE_BATCHES
    contexts = [int(x) for x in args.contexts.split(",")] if args.contexts else DECODE_CONTEXTS
    cases = [("decode", b, c) for b in batches for c in contexts]
    if not (args.batches or args.contexts):  # a long context, the prefill path, a big batch
        cases += [("decode", 1, 131072), ("prefill", 1, 2048), ("chunk", 512, 8192), ("decode", 256, 2048)]
    rows = []
    for kind, n, context in cases:
        if kind == "decode":
            q_lens, seq_lens = [1] * n, [context] * n
        elif kind == "prefill":
            q_lens, seq_lens = [context], [context]
        else:  # one chunk of n tokens after a cached prefix
            q_lens, seq_lens = [n], [context]
        kv_bytes = 2 * sum(seq_lens) * hk * d * 2
        layers = max(1, min(args.max_layers, math.ceil((256 << 20) / kv_bytes)))  # > 4x L2 per replay
        try:
            step = Step(q_lens, seq_lens, hq, hk, d, bs, layers, dev)
        except torch.cuda.OutOfMemoryError:
            print(f"{kind} {n} x {context}: does not fit", flush=True)
            continue
        ref = step.reference(scale)
        t = sum(q_lens)
        flops = 4 * hq * d * sum(s - q + j + 1 for q, s in zip(q_lens, seq_lens) for j in range(q))
        floor_us = 1e6 * max(kv_bytes / ceil.hbm_bytes_per_s, flops / ceil.matmul_flops_per_s)
        row = dict(
            kind=kind,
            batch=len(q_lens),
            tokens=t,
            context=context,
            layers_in_graph=layers,
            kv_bytes=kv_bytes,
            floor_us=floor_us,
            floor_nominal_us=1e6 * kv_bytes / nominal if nominal and kind == "decode" else None,
            num_splits=pa.choose_num_splits(t, len(q_lens), hq, hk, None, sms),
        )
        new = time_layers(step, new_call(), dev, scale, ref)
        row.update(us_per_layer=new.get("us"), ratio=new["us"] / floor_us if "us" in new else None, new=new)
        if kind == "decode":
            row["launch_floor_us"] = launch_floor_us(step, pa, hq, hk, sms)
        if old is not None:  # with its own defaults (an old file with today's `paged_attention` signature)
            row["old"] = time_layers(step, old.paged_attention, dev, scale, ref)
            if "us" in row["old"] and "us" in new:
                row["speedup_vs_old"] = row["old"]["us"] / new["us"]
        if not args.no_sweep and kind == "decode" and context in SWEEP_CONTEXTS:
            split = row["num_splits"] > 1  # split and merge options change nothing where the step does not split
            row["sweep"] = {
                label: time_layers(step, new_call(**opts), dev, scale, ref)
                if split or not SPLIT_ONLY & set(opts)
                else new
                for label, opts in SWEEP
            }
        rows.append(row)
        line = f"{kind:7s} n={n:4d} C={context:6d} L={layers:2d}: {new.get('us', float('nan')):8.1f} us"
        line += (
            f"  floor {floor_us:7.1f}  x{row['ratio'] or float('nan'):5.2f}  err {new.get('rel_err', float('nan')):.1e}"
            f"  one-load launch {row.get('launch_floor_us', float('nan')):5.1f}"
        )
        if old is not None:
            line += f"  old {row['old'].get('us', math.nan):8.1f}"
        if "sweep" in row:
            best = min(((v["us"], k) for k, v in row["sweep"].items() if "us" in v), default=(float("nan"), "-"))
            line += f"  best alt {best[1]} {best[0]:.1f}"
        print(line, f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        del step
        torch.cuda.empty_cache()

    summary = summarize_sweep(rows) if not args.no_sweep else {}
    if summary.get("combined"):
        combined = summary["combined"]
        print("combined winners:", combined, flush=True)
        for row in rows:
            if row["kind"] != "decode":
                continue
            n, context = row["batch"], row["context"]
            step = Step([1] * n, [context] * n, hq, hk, d, bs, row["layers_in_graph"], dev)
            row["combined"] = time_layers(step, new_call(**combined), dev, scale, step.reference(scale))
            del step
            torch.cuda.empty_cache()
        summary["combined_geomean_ratio"] = _geomean(
            [r["combined"]["us"] / r["floor_us"] for r in rows if "us" in r.get("combined", {})]
        )
    for row in rows:
        tried = {"default": row["new"], **row.get("sweep", {})}
        if "combined" in row:
            tried["combined"] = row["combined"]
        us, label = min(((v["us"], k) for k, v in tried.items() if "us" in v), default=(math.nan, "none"))
        row["best"] = dict(config=label, us=us, ratio=us / row["floor_us"])
    errors = [r["new"].get("rel_err", 1.0) for r in rows] + [
        v.get("rel_err", 0.0) for r in rows for v in r.get("sweep", {}).values()
    ]
    result = {
        "command": "python -m shifttune.profile.attention_bench "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": name,
        "num_sms": sms,
        "torch": torch.__version__,
        "triton": __import__("triton").__version__,
        "shape": dict(hq=hq, hk=hk, d=d, block_size=bs, dtype="bfloat16"),
        "floor_basis": "K+V bytes / measured device-to-device copy rate (bytes read + written); "
        "prefill rows: max of that and causal attention FLOPs / measured bf16 matmul rate; "
        "floor_nominal_us: K+V bytes / datasheet HBM bandwidth",
        "ceilings": {"hbm_bytes_per_s": ceil.hbm_bytes_per_s, "matmul_flops_per_s": ceil.matmul_flops_per_s},
        "nominal_hbm_bytes_per_s": nominal,
        "defaults": dict(
            decode=pa.DECODE_CONFIG,
            small_step=dict(pa.SMALL_STEP_CONFIG, programs_per_sm=split_kv.SMALL_STEP_PROGRAMS_PER_SM),
            small_step_wide_group=pa.SMALL_STEP_CONFIG_WIDE_GROUP,
            wide_tile=dict(pa.WIDE_TILE_CONFIG, programs_per_sm=split_kv.WIDE_TILE_PROGRAMS_PER_SM),
            prefill=pa.PREFILL_CONFIG,
            programs_per_sm=split_kv.PROGRAMS_PER_SM,
            merge=pa.MERGE,
            merge_columns=pa.MERGE_COLUMNS,
        ),
        "max_rel_err": max(errors),
        "sweep_summary": summary,
        "seconds": time.perf_counter() - t0,
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for r in rows:
        old_us = r.get("old", {}).get("us", math.nan)
        print(
            f"{r['kind']:7s} b={r['batch']:4d} C={r['context']:6d}: floor {r['floor_us']:8.1f} us  "
            f"old {old_us:8.1f} ({old_us / r['floor_us']:5.2f})  new {r['us_per_layer'] or math.nan:8.1f} "
            f"({r['ratio'] or math.nan:5.2f})  best {r['best']['us']:8.1f} ({r['best']['ratio']:5.2f}) "
            f"{r['best']['config']}"
        )
    small = [r for r in rows if r["kind"] == "decode" and r["batch"] <= 8 and r["ratio"]]
    print(
        f"batch 1-8: worst ratio {max((r['ratio'] for r in small), default=math.nan):.2f}, "
        f"max rel err {max(errors):.1e}, {result['seconds']:.0f} s"
    )


def _geomean(xs: list[float]) -> float | None:
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def summarize_sweep(rows: list[dict]) -> dict:
    """Each option's geometric-mean time relative to the defaults over the decode rows (all rows, and
    batch <= 8), and the combination of the options that beat the defaults by more than 2%."""
    decode = [r for r in rows if "sweep" in r and "us" in r["new"]]
    out: dict = {"relative_to_default": {}, "relative_to_default_batch_le_8": {}}
    for label, _ in SWEEP:
        for key, sel in (
            ("relative_to_default", decode),
            ("relative_to_default_batch_le_8", [r for r in decode if r["batch"] <= 8]),
        ):
            ok = [r for r in sel if "us" in r["sweep"][label]]
            out[key][label] = (
                _geomean([r["sweep"][label]["us"] / r["new"]["us"] for r in ok]) if len(ok) == len(sel) else None
            )
    combined: dict = {}
    for option in dict.fromkeys(k for _, opts in SWEEP for k in opts):  # alternatives for one option compete
        group = [label for label, opts in SWEEP if option in opts]
        # batch <= 8 is what these options are for; a winner must also not lose over all rows
        scored = [
            (out["relative_to_default_batch_le_8"][g], g)
            for g in group
            if out["relative_to_default_batch_le_8"][g] and (out["relative_to_default"][g] or 9.0) <= 1.0
        ]
        if scored and min(scored)[0] < 0.98:
            combined.update(dict(SWEEP)[min(scored)[1]])
    out["combined"] = combined
    return out


if __name__ == "__main__":
    main()
