"""Long prompts against the matmul floor (issue 14): time to first token of one prompt of 8k / 32k / 64k / 128k
tokens through `LLM.generate` (max_tokens=1), the first request of each length (cold for it) and warm ones,
for each prefill attention path; and per-layer attention TFLOP/s of those paths against plain torch SDPA
(cuDNN, flash) on contiguous tensors.

    python -m shifttune.profile.long_prompts --model llama-3.1-8b --out profiles/long_prompts_<card>.json
    python -m shifttune.profile.long_prompts --model tiny --device cpu --out /tmp/long_prompts_cpu.json

The GPU run takes about 5 minutes on an H100 (dummy weights). The floor of a prompt of L tokens is its
FLOPs at the card's bf16 matmul rate: linear layers 2 x (matmul parameters) x L, plus causal attention
4 x layers x query heads x head_dim x L (L + 1) / 2, plus the LM head on the one sampled row. The rate is
measured here with torch.matmul on square bf16 matrices (8192 and 16384; the faster one counts). On GPU the
rows also give the floor at the rate after SUSTAIN_S of back-to-back products (`floor_sustained_s`: a power-
limited card holds a lower clock through a long prefill than in the first seconds) and the SM clock and power
NVML saw during each length's requests (`gpu`).
"128k" is 131,071 tokens: the prompt must leave one token of room in the model's 131,072. Every request
has its own random token ids (prefix caching is off as well), and the same ids across paths, whose first
tokens the rows record. Lengths whose KV cache does not fit the card are skipped and listed as such.
Per layer (one sequence, the model's heads at TP = 1): `engine_paged` and `engine_sdpa` are the engine's
own eager attention calls over its paged cache (with the plan, copies and padding they make),
`torch_cudnn` and `torch_flash` torch SDPA on contiguous [1, heads, L, d] tensors; `chunk` rows are the
last 8192-token chunk of a chunked prompt (a cached prefix before it); `threshold` rows compare the two
engine paths on short chunks (what SDPA_MIN_PAIRS should be); `cudnn_new_shape` times the first and
second call of SDPA shapes no warm-up built (cuDNN plans one execution per shape).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from shifttune import LLM, SamplingParams
from shifttune.config import ModelConfig
from shifttune.kernels.attention import AttentionMetadata, attend
from shifttune.kernels.attention_ref import paged_attention_ref
from shifttune.kernels.prefill_attention import (
    SDPA_MIN_PAIRS,
    SDPA_MIN_TOKENS,
    SDPA_PAD,
    SdpaPrefill,
    StepAttention,
    probe_sdpa,
)
from shifttune.profile.loop_overhead import device_timeline, start_profile
from shifttune.profile.step_timing import summarize, time_fn
from shifttune.telemetry.nvml import clock_and_power, recording

GPU_LENGTHS = (8192, 32768, 65536, 131071)
SUSTAIN_S = 5.0  # seconds of back-to-back products before the sustained matmul rate is timed
CPU_LENGTHS = (64, 200, 520)
GPU_LAYER_LENGTHS = (8192, 16384, 32768, 65536)
CPU_LAYER_LENGTHS = (48, 96)


def log(msg: str) -> None:
    print(f"[long_prompts] {msg}", file=sys.stderr, flush=True)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> dict:
    """The card's matmul rate (FLOP/s): torch.matmul on square matrices, the median of a few runs; the
    fastest size counts. On GPU also the rate after SUSTAIN_S of back-to-back 8192^3 products: a long prefill
    runs at the clock the card holds under its power limit, not at the first seconds' boost."""
    sizes = (8192, 16384) if device.type == "cuda" else (512, 1024)
    rates = {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        ms = summarize(time_fn(lambda: torch.matmul(a, b), device, 3, 10))[0]
        rates[str(n)] = 2 * n**3 / (ms / 1e3)
    best = max(rates, key=rates.get)
    out = {
        "flops_per_s": rates[best],
        "how": f"torch.matmul {dtype} {best}x{best} @ {best}x{best}, median of 10 (sizes tried: {', '.join(rates)})",
        "by_size": rates,
    }
    if device.type == "cuda":
        n = sizes[0]
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        with recording(0.05) as clocks:
            until = time.perf_counter() + SUSTAIN_S
            while time.perf_counter() < until:
                for _ in range(20):
                    torch.matmul(a, b)
                torch.cuda.synchronize()
            ms = summarize(time_fn(lambda: torch.matmul(a, b), device, 0, 20))[0]
        out |= {
            "sustained_flops_per_s": 2 * n**3 / (ms / 1e3),
            "sustained_how": f"{n}^3 products back to back for {SUSTAIN_S:g} s, then the median of 20",
            "sustained_gpu": clock_and_power(clocks),
        }
    return out


def linear_flops(cfg: ModelConfig, tokens: int) -> float:
    """The decoder layers' matmuls on `tokens` tokens (no attention, no LM head)."""
    h, d = cfg.hidden_size, cfg.head_dim
    per_layer = h * (cfg.num_heads + 2 * cfg.num_kv_heads) * d + cfg.num_heads * d * h + 3 * h * cfg.intermediate_size
    return 2 * cfg.num_layers * per_layer * tokens


def prompt_flops(cfg: ModelConfig, tokens: int) -> float:
    """Linear layers on every prompt token, causal attention, the LM head on the one sampled row."""
    linear = linear_flops(cfg, tokens) + 2 * cfg.hidden_size * cfg.vocab_size
    return linear + cfg.num_layers * attention_flops(cfg.num_heads, cfg.head_dim, tokens, 0)


def attention_flops(hq: int, d: int, n: int, prefix: int) -> float:
    return 4 * hq * d * (n * prefix + n * (n + 1) / 2)


# ---- the engine, one prompt at a time ------------------------------------------------------------
def run_engine(
    args, path: str, lengths: list[int], rate: float, device: torch.device, sustained: float | None = None
) -> tuple[list, dict, list]:
    """TTFT rows of one prefill path; its start-up record; the lengths it skipped (with why)."""
    kw = dict(
        device=args.device,
        dtype=args.dtype,
        load_format=args.load_format,
        prefill_attention=path,
        max_model_len=args.max_model_len,
        max_num_seqs=1,
        max_num_batched_tokens=args.chunk,
        enable_prefix_caching=False,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    llm = LLM(args.model, **kw)
    startup = {"engine_s": time.perf_counter() - start}
    engine = llm.llm_engine
    runner = engine.executor.runner
    cfg = engine.config.model_config
    sdpa = runner.attention.sdpa
    support = sdpa.support.__dict__.copy() if sdpa else None
    startup |= {"runner": dict(runner.startup), "resolved_path": runner.attention.path, "sdpa_support": support}
    del runner
    reads = (lambda: dict(sdpa.prefix_reads)) if sdpa else dict  # in-process runner (one rank)
    log(f"{path}: engine up in {startup['engine_s']:.1f} s ({startup['runner']}), path {startup['resolved_path']}")
    rows, skipped = [], []
    params = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    for length in lengths:
        if length >= engine.config.max_model_len:
            why = f"max_model_len is {engine.config.max_model_len} (KV cache or model limit)"
            skipped.append({"path": path, "prompt_tokens": length, "why": why})
            log(f"{path}: skipping {length} tokens: {why}")
            continue
        times, device_s, request_clocks, profiles, first_token, in_place = [], [], [], [], None, []
        profile = args.profile_first and device.type == "cuda" and length == lengths[0]
        with recording(0.05) as clocks:  # no NVML (CPU): records nothing
            # a profiled warm request (the second) is timed but not counted: one more runs in its place
            for run in range(1 + args.repeats + (1 if profile else 0)):
                gen = torch.Generator().manual_seed(1000 * length + run)
                ids = torch.randint(10, cfg.vocab_size, (length,), generator=gen).tolist()
                before, seen, read = engine.stats.num_steps, len(clocks.history(0, "sm_clock")), reads()
                prof = start_profile() if profile and run < 2 else None
                t0 = time.perf_counter()
                out = llm.generate([ids], params)[0]
                times.append(time.perf_counter() - t0)
                if prof is not None:
                    profiles.append(device_timeline(prof, top=8))
                steps = list(engine.stats.steps)[before - engine.stats.num_steps :]
                n = {k: v - read.get(k, 0) for k, v in reads().items()}
                in_place.append(n["in_place"] / sum(n.values()) if sum(n.values()) else None)
                device_s.append(sum(st.duration_s for st in steps))
                mhz = clocks.history(0, "sm_clock")[seen:]
                request_clocks.append(statistics.median(mhz) if mhz else None)
                if run == 0:
                    first_token = out.outputs[0].token_ids[0]
        warm_from = 2 if profile else 1
        warm = statistics.median(times[warm_from:]) if len(times) > warm_from else times[0]
        floor = prompt_flops(cfg, length) / rate
        rows.append(
            {
                "path": path,
                "resolved_path": startup["resolved_path"],
                "prompt_tokens": length,
                "ttft_s": warm,
                "first_ttft_s": times[0],
                "warm_ttft_s": times[warm_from:],
                "floor_s": floor,
                "floor_over_ttft": floor / warm,
                "first_over_warm": times[0] / warm,
                # the engine's record of its steps' device time: a first request slower in wall time than
                # on the device waited for the host (compiles, plans, allocations), not for the GPU
                "first_device_s": device_s[0],
                "warm_device_s": device_s[warm_from:],
                "sm_clock_mhz_per_request": request_clocks,  # median NVML reading during each (first, warm...)
                "first_token": first_token,
                # per request (first, warm...): the share of SDPA calls whose cached prefix was read in place, not
                # gathered (`BlockSpan`; its blocks are one range of the cache as the block manager handed them
                # out); None for a prompt of one chunk (no prefix)
                "prefix_in_place_share": in_place,
                "chunk_tokens": args.chunk,
                "gpu": clock_and_power(clocks),
            }
            | (
                {
                    "floor_sustained_s": floor * rate / sustained,
                    "floor_sustained_over_ttft": floor * rate / sustained / warm,
                }
                if sustained
                else {}
            )
            | ({"profile_first_two": profiles} if profiles else {})
        )
        for name, prof in zip(("first", "second"), profiles):
            log(f"{path}: {length} tokens, {name} request profiled: busy {prof['busy_us'] / 1e3:.1f} ms, idle "
                f"{prof['idle_us'] / 1e3:.1f} ms, gaps {[round(g['us']) for g in prof['gaps']]} us")  # fmt: skip
        clock = rows[-1]["gpu"].get("sm_clock_mhz_median")
        log(f"{path}: {length:7d} tokens  first {times[0]:.3f} s (device {device_s[0]:.3f})  warm {warm:.3f} s "
            f"(device {statistics.median(device_s[warm_from:] or device_s):.3f})  floor {floor:.3f} s "
            f"({100 * floor / warm:.0f}% of floor)" + (f", SM clock {clock:.0f} MHz" if clock else "")
            + f", prefix read in place {in_place}")  # fmt: skip
    if device.type == "cuda":
        startup["peak_memory_bytes"] = torch.cuda.max_memory_allocated()
        if args.breakdown:
            startup["chunk_breakdown"] = chunk_breakdown(engine, args.chunk, rate)
    llm.shutdown()
    del llm, engine
    gc.collect()
    if device.type == "cuda":
        startup["memory_after_shutdown_bytes"] = torch.cuda.memory_allocated()
    return rows, startup, skipped


def chunk_breakdown(engine, chunk: int, rate: float) -> list[dict]:
    """Where the device time of one eager `chunk`-token prefill step goes (kernel time by category, profiled),
    from position 0, after 3 chunks of cached prefix and after the longest whole-chunk prefix the engine
    takes, beside its matmul and attention FLOPs at `rate`. The synthetic step's blocks are one range, so its
    prefix is read in place (the TTFT rows say how often the engine's own requests were)."""
    from shifttune.config import TP
    from shifttune.profile.step_timing import breakdown_step, synthetic_step

    cfg, out, longest = engine.config.model_config, [], engine.config.max_model_len - 1
    for prefix in sorted({0, 3 * chunk, longest // chunk * chunk - chunk}):
        if prefix < 0 or prefix + chunk > longest:
            continue
        step = synthetic_step(TP, 1, chunk, prefix + chunk, engine.config.block_size)
        kernels = engine.executor.collective_rpc(breakdown_step, step, 3)
        linear_ms = 1e3 * linear_flops(cfg, chunk) / rate
        attention_ms = 1e3 * cfg.num_layers * attention_flops(cfg.num_heads, cfg.head_dim, chunk, prefix) / rate
        out.append({"tokens": chunk, "prefix": prefix, "linear_floor_ms": linear_ms,
                    "attention_floor_ms": attention_ms, "kernel_ms": kernels})  # fmt: skip
        log(f"breakdown {chunk} tokens after {prefix}: gemm {kernels['gemm']:.1f} ms (floor {linear_ms:.1f}), "
            f"attention {kernels['attention']:.1f} ms (floor {attention_ms:.1f}), elementwise "
            f"{kernels['fused_elementwise']:.1f}, other {kernels['other']:.1f}, sum {kernels['kernel_sum_ms']:.1f}, "
            f"wall {kernels['wall_ms']:.1f}")  # fmt: skip
    return out


# ---- attention of one layer ------------------------------------------------------------------------
class LayerCase:
    """One sequence's chunk of n tokens after `prefix` cached ones, in a paged cache (random blocks)."""

    def __init__(self, n: int, prefix: int, hq: int, hk: int, d: int, dtype, device, block_size: int = 16):
        total = prefix + n
        blocks = -(-total // block_size)
        gen = torch.Generator(device=device).manual_seed(n + 7 * prefix)

        def randn(*shape):
            return torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).to(dtype)

        self.k_cache, self.v_cache = randn(blocks + 1, block_size, hk, d), randn(blocks + 1, block_size, hk, d)
        table = torch.randperm(blocks, generator=gen, device=device)
        # q, k and v as the model hands them over: views into one projection's rows (the SDPA path passes those to
        # cuDNN as they are; separate tensors would take its copying path, which the engine does not)
        self.q, self.k, self.v = randn(n, hq + 2 * hk, d).split([hq, hk, hk], dim=1)
        slots = (table[torch.arange(prefix, total, device=device) // block_size] * block_size
                 + torch.arange(prefix, total, device=device) % block_size)  # fmt: skip
        self.k_cache.view(-1, hk, d)[slots], self.v_cache.view(-1, hk, d)[slots] = self.k, self.v
        self.meta = AttentionMetadata(
            slots,
            torch.tensor([0, n], device=device),
            torch.tensor([total], device=device),
            table.view(1, -1),
            [0, n],
            [total],
        )
        self.n, self.prefix, self.scale = n, prefix, d**-0.5

    def engine(self, attention: StepAttention, paged):
        """The engine's eager call: the step's plan (built once, as the runner does per step), then attend."""
        meta = dataclasses.replace(self.meta, plan=attention.plan(self.meta))
        return lambda: attend(paged, self.q, self.k, self.v, self.k_cache, self.v_cache, meta, self.scale)

    def contiguous(self, backend: SDPBackend):
        """torch SDPA on contiguous [1, heads, L, d] tensors (prefix 0 only: torch's causal is top-left)."""
        q4 = self.q.transpose(0, 1).unsqueeze(0).contiguous()
        k4 = self.k.transpose(0, 1).unsqueeze(0).contiguous()
        v4 = self.v.transpose(0, 1).unsqueeze(0).contiguous()

        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=self.scale, enable_gqa=True)

        return call


def timed(fn, device: torch.device, iters: int) -> dict:
    try:
        ms = summarize(time_fn(fn, device, 2, iters))[0]
        return {"ms": ms}
    except Exception as e:  # a backend that cannot run this shape here: recorded, not fatal
        return {"error": f"{type(e).__name__}: {str(e)[:300]}"}


def layer_bench(args, cfg: ModelConfig, device: torch.device, dtype, paged, paged_name: str) -> dict:
    hq, hk, d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    cuda = device.type == "cuda"
    support = probe_sdpa(device, dtype, hq, hk, d)
    sdpa = StepAttention(SdpaPrefill(support, SDPA_PAD if cuda else 16), 2, False, hq, hk)
    pinned = StepAttention(None, 2, paged_name == "triton", hq, hk)
    iters = 5 if cuda else 2
    out = {"shape": {"hq": hq, "hk": hk, "d": d, "dtype": str(dtype)}, "sdpa_support": support.__dict__}

    def compare(n: int, prefix: int, plain: bool) -> dict:
        case = LayerCase(n, prefix, hq, hk, d, dtype, device)
        row = {"tokens": n, "prefix": prefix, "flops": attention_flops(hq, d, n, prefix)}
        fns = {"engine_paged": case.engine(pinned, paged), "engine_sdpa": case.engine(sdpa, paged)}
        if plain and cuda:
            fns |= {"torch_cudnn": case.contiguous(SDPBackend.CUDNN_ATTENTION),
                    "torch_flash": case.contiguous(SDPBackend.FLASH_ATTENTION)}  # fmt: skip
        elif plain:
            fns["torch_math"] = case.contiguous(SDPBackend.MATH)
        for name, fn in fns.items():
            row[name] = timed(fn, device, iters)
            if "ms" in row[name]:
                row[name]["tflops"] = row["flops"] / (row[name]["ms"] / 1e3) / 1e12
        try:  # the two engine paths agree (bf16: about 1e-2)
            a, b = fns["engine_paged"](), fns["engine_sdpa"]()
            row["rel_diff_sdpa_vs_paged"] = ((a.float() - b.float()).norm() / a.float().norm()).item()
        except Exception as e:
            row["rel_diff_sdpa_vs_paged"] = f"{type(e).__name__}: {e}"
        del case, fns
        return row

    lengths = GPU_LAYER_LENGTHS if cuda else CPU_LAYER_LENGTHS
    chunk = 8192 if cuda else 32
    out["whole_prompt"] = [compare(n, 0, True) for n in lengths]
    log("layer bench: whole prompts done")
    out["chunk"] = [compare(chunk, n - chunk, False) for n in lengths if n > chunk]
    q_lens, prefixes = ((256, 512, 1024, 2048, 4096), (0, 16384)) if cuda else ((8, 16, 32), (0, 40))
    out["threshold"] = [compare(n, p, False) for n in q_lens for p in prefixes]
    out["suggested_sdpa_min_pairs"] = suggest_min_pairs(out["threshold"])
    out["sdpa_min_pairs_in_use"] = SDPA_MIN_PAIRS
    out["sdpa_min_tokens_in_use"] = SDPA_MIN_TOKENS
    if cuda and support.backend == "cudnn":
        out["cudnn_new_shape"] = new_shape_stalls(sdpa, hq, hk, d, dtype, device)
    return out


def query_key_pairs(tokens: int, prefix: int) -> float:
    """What SDPA_MIN_PAIRS compares: a causal chunk's query-key pairs."""
    return tokens * (prefix + tokens / 2)


def suggest_min_pairs(rows: list[dict]) -> int | None:
    """The smallest query-key pair count from which the engine's SDPA path is at least as fast as the paged
    kernel on every measured chunk with as many pairs or more (None: SDPA never is)."""
    timed = [r for r in rows if "ms" in r["engine_sdpa"] and "ms" in r["engine_paged"]]
    best = None
    for r in sorted(timed, key=lambda r: -query_key_pairs(r["tokens"], r["prefix"])):
        if r["engine_sdpa"]["ms"] > r["engine_paged"]["ms"]:
            break
        best = int(query_key_pairs(r["tokens"], r["prefix"]))
    return best


def new_shape_stalls(sdpa: StepAttention, hq: int, hk: int, d: int, dtype, device) -> list[dict]:
    """First and second call of SDPA shapes that no warm-up built (first = plan build + run)."""
    rows = []
    # square blocks above SDPA_WARM_MAX_TOKENS and not the chunk; a prefix split whose chunk is not full
    for n, prefix in ((20480 + 3 * SDPA_PAD, 0), (24576 + SDPA_PAD, 0), (4096, 12288 + SDPA_PAD)):
        case = LayerCase(n, prefix, hq, hk, d, dtype, device)
        fn = case.engine(sdpa, paged_attention_ref)
        times = []
        for _ in range(2):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(1e3 * (time.perf_counter() - t0))
        rows.append({"tokens": n, "prefix": prefix, "first_ms": times[0], "second_ms": times[1]})
        del case
    return rows


def paged_backend(device: torch.device):
    if device.type == "cuda":
        from shifttune.kernels.paged_attention import paged_attention  # NOTE: lazy: Triton is GPU-only

        return paged_attention, "triton"
    return paged_attention_ref, "torch"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--load-format", default=None, help="default: auto for tiny (it ships weights), else dummy")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lengths", default=None, help="prompt lengths, comma-separated (default by device)")
    ap.add_argument("--paths", default="sdpa,paged", help="prefill attention paths, in run order")
    ap.add_argument("--repeats", type=int, default=3, help="warm requests per length (median)")
    ap.add_argument("--chunk", type=int, default=None, help="max_num_batched_tokens (default 8192; 128 on cpu)")
    ap.add_argument("--max-model-len", type=int, default=None, help="default: the longest prompt + 1")
    ap.add_argument("--no-layer-bench", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="GPU: kernel time by category of one chunk (profiled)")
    ap.add_argument(
        "--profile-first",
        action="store_true",
        help="GPU: profile the first 2 requests of the first length (the first's time includes the profiler; "
        "the second is not counted as warm: one more request runs)",
    )
    args = ap.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("long_prompts: --device cuda but no CUDA GPU is visible (use --model tiny --device cpu here)")
    device = torch.device("cuda" if cuda else "cpu")
    lengths = [int(x) for x in args.lengths.split(",")] if args.lengths else list(GPU_LENGTHS if cuda else CPU_LENGTHS)
    args.chunk = args.chunk or (8192 if cuda else 128)
    args.load_format = args.load_format or ("auto" if args.model == "tiny" else "dummy")
    args.max_model_len = args.max_model_len or max(lengths) + 1
    began = time.perf_counter()
    dtype = (
        torch.bfloat16
        if args.dtype == "auto" and cuda
        else torch.float32
        if args.dtype == "auto"
        else getattr(torch, args.dtype)
    )
    result = {
        "command": "python -m shifttune.profile.long_prompts " + " ".join(argv if argv is not None else sys.argv[1:]),
        "card": torch.cuda.get_device_name(device) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "versions": {
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
            "cuda": torch.version.cuda,
        },
        "model": args.model,
        "dtype": str(dtype),
        "chunk_tokens": args.chunk,
        "sdpa_pad": SDPA_PAD if cuda else "block size",
    }
    if cuda:
        import triton

        result["versions"]["triton"] = triton.__version__
    result["matmul"] = matmul_rate(device, dtype)
    rate = result["matmul"]["flops_per_s"]
    log(f"matmul: {rate / 1e12:.0f} TFLOP/s ({result['matmul']['how']})")
    rows, startup, skipped = [], {}, []
    result |= {"rows": rows, "startup": startup, "skipped": skipped}
    for path in args.paths.split(","):
        r, s, k = run_engine(args, path, lengths, rate, device, result["matmul"].get("sustained_flops_per_s"))
        rows += r
        startup[path] = s
        skipped += k
        save(args.out, result, began)  # a run cut short still leaves what it measured
    if not args.no_layer_bench:
        from shifttune.config import EngineConfig

        cfg = EngineConfig(model=args.model, device=args.device, load_format=args.load_format).model_config
        paged, name = paged_backend(device)
        with torch.inference_mode():
            result["attention_layer"] = layer_bench(args, cfg, device, dtype, paged, name)
    save(args.out, result, began)
    print_summary(result)
    return result


def save(out: Path, result: dict, began: float) -> None:
    result["seconds"] = time.perf_counter() - began
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))


def print_summary(result: dict) -> None:
    mm = result["matmul"]
    sustained = f", {mm['sustained_flops_per_s'] / 1e12:.0f} sustained" if "sustained_flops_per_s" in mm else ""
    print(f"{result['card']}: matmul {mm['flops_per_s'] / 1e12:.0f} TFLOP/s{sustained}")
    print(f"{'path':6} {'tokens':>8} {'first s':>9} {'warm s':>9} {'floor s':>9} {'floor/warm':>10} {'first/warm':>10}")
    for r in result["rows"]:
        at_sustained = (
            f" ({r['floor_sustained_over_ttft']:.1%} at the sustained rate)" if "floor_sustained_s" in r else ""
        )
        print(f"{r['path']:6} {r['prompt_tokens']:8d} {r['first_ttft_s']:9.3f} {r['ttft_s']:9.3f} {r['floor_s']:9.3f} "
              f"{r['floor_over_ttft']:10.1%} {r['first_over_warm']:10.2f}{at_sustained}")  # fmt: skip
    for s in result["skipped"]:
        print(f"skipped {s['path']} {s['prompt_tokens']}: {s['why']}")
    layer = result.get("attention_layer")
    if layer:
        for r in layer["whole_prompt"] + layer["chunk"]:
            cells = [f"{k} {v['tflops']:.0f}" for k, v in r.items() if isinstance(v, dict) and "tflops" in v]
            print(f"layer n={r['tokens']} prefix={r['prefix']}: TFLOP/s " + ", ".join(cells))
        best, used = layer["suggested_sdpa_min_pairs"], layer["sdpa_min_pairs_in_use"]
        print(f"suggested SDPA_MIN_PAIRS: {best} (in use: {used})")


if __name__ == "__main__":
    main()
