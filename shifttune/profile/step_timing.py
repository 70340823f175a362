"""Step timing: how long one engine step of a given shape takes in a given mode, next to its physical floors.

`synthetic_step` builds a realistic step (real block tables over a cache filled to the context
length); `time_step` runs it on every rank through `Executor.collective_rpc` (CUDA events on GPU,
warm-up first, graphs when the graphs cover the step); `step_floors` gives the two floors of that step
on one rank: bytes it must read / HBM bandwidth and FLOPs it must do / matmul rate. `measure_ceilings`
measures the bandwidth and matmul rate of this device; `kernel_breakdown` splits a step's GPU time by
kernel category. `shifttune profile`, the step sweep and the attention bench all measure with these.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import torch

from shifttune.config import SP, TP, EngineConfig
from shifttune.engine.stats import percentile
from shifttune.runner.model_runner import ModelRunner
from shifttune.runner.step_input import ScheduledTokens, StepInput, build_step_input


@dataclass
class Ceilings:
    hbm_bytes_per_s: float  # device-to-device copy, bytes read + written
    matmul_flops_per_s: float  # large bf16 matmul


@dataclass
class StepTiming:
    mode: str
    num_seqs: int
    tokens_per_seq: int
    context: int
    num_tokens: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    bytes_per_rank: float
    flops_per_rank: float
    bandwidth_floor_ms: float
    matmul_floor_ms: float

    @property
    def floor_ms(self) -> float:
        return max(self.bandwidth_floor_ms, self.matmul_floor_ms)

    def to_dict(self) -> dict:
        return asdict(self) | {"floor_ms": self.floor_ms, "over_floor": self.median_ms / self.floor_ms}


def synthetic_step(mode: str, num_seqs: int, tokens_per_seq: int, context: int, block_size: int) -> StepInput:
    """`num_seqs` sequences that each hold `context` tokens after this step, `tokens_per_seq` of them new
    (1 = decode). Sequence i owns a contiguous run of blocks (so prefill attention reads its cached prefix in
    place, as for a long prompt in a cache that was not through use); the last token of each is sampled."""
    assert tokens_per_seq <= context
    blocks, start = -(-context // block_size), context - tokens_per_seq
    seqs = (
        ScheduledTokens(
            [(i * 7919 + p) % 1000 + 10 for p in range(start, context)],
            start,
            list(range(i * blocks, (i + 1) * blocks)),
            True,
        )
        for i in range(num_seqs)
    )
    return build_step_input(mode, seqs, block_size)


def blocks_needed(num_seqs: int, context: int, block_size: int) -> int:
    return num_seqs * -(-context // block_size)


def step_floors(
    config: EngineConfig,
    weight_bytes: dict[str, int],
    mode: str,
    num_seqs: int,
    tokens_per_seq: int,
    context: int,
    ceilings: Ceilings,
) -> tuple[float, float, float, float]:
    """(bytes, FLOPs, bandwidth floor ms, matmul floor ms) of one step on one rank."""
    cfg, par = config.model_config, config.parallel
    elem = torch.empty(0, dtype=config.torch_dtype).element_size()
    p = par.world_size
    kv_heads = max(1, cfg.num_kv_heads // p)
    heads = cfg.num_heads // p
    sp_layout = mode == SP and par.sp > 1
    w = weight_bytes[SP] if sp_layout else weight_bytes[TP]
    shards = par.tp if sp_layout else p
    # every token goes through every matmul once, spread over the ranks either way (T/SP tokens x W/TP,
    # or T tokens x W/P); the embedding is a lookup, the LM head runs on sampled rows only.
    tokens = num_seqs * tokens_per_seq
    emb = cfg.vocab_size * cfg.hidden_size / shards
    matmul_params = w / elem - emb * (1 if cfg.tie_word_embeddings else 2)
    flops = 2 * matmul_params * tokens * (shards / p) + 2 * emb * num_seqs
    # attention: each new token sees its prefix (causal inside the new chunk)
    visible = sum(context - tokens_per_seq + j + 1 for j in range(tokens_per_seq)) * num_seqs
    flops += 4 * cfg.num_layers * heads * cfg.head_dim * visible
    kv_bytes = 2 * cfg.num_layers * kv_heads * cfg.head_dim * elem * context * num_seqs
    total_bytes = w + kv_bytes  # activations: small next to weights at decode sizes, hidden by matmuls above
    return (total_bytes, flops, 1e3 * total_bytes / ceilings.hbm_bytes_per_s, 1e3 * flops / ceilings.matmul_flops_per_s)


def measure_ceilings(device: torch.device) -> Ceilings:
    """HBM bandwidth from copying 1 GiB on the device, matmul rate from 8192^3 bf16 products (random data)."""
    n = 1 << 29  # bf16 elements: 1 GiB
    a = torch.randn(n, device=device, dtype=torch.bfloat16)
    b = torch.empty_like(a)
    copy_ms = _time_cuda(lambda: b.copy_(a), warmup=10, iters=100)  # ~0.1 s of each: the clocks settle
    hbm = 2 * a.numel() * a.element_size() / (percentile(copy_ms, 0.5) / 1e3)
    x = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    y = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = _time_cuda(lambda: x @ y, warmup=10, iters=100)
    return Ceilings(hbm, 2 * 8192**3 / (percentile(mm_ms, 0.5) / 1e3))


def _time_cuda(fn, warmup: int, iters: int) -> list[float]:
    """Device ms per call, the calls queued back to back: while the GPU runs one call the host prepares the
    next (as the engine's async scheduling does), so a call's host work counts only where the GPU would wait
    for it. NOTE: timing each call from an idle GPU instead puts all its host work inside the events, which
    made one-layer steps of the op tables host-bound and noisy (issue 12)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def time_fn(fn, device: torch.device, warmup: int, iters: int) -> list[float]:
    """Milliseconds per call: CUDA events on GPU, the host clock on CPU."""
    if device.type == "cuda":
        return _time_cuda(fn, warmup, iters)
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t))
    return out


def summarize(ms: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90)."""
    return percentile(ms, 0.5), percentile(ms, 0.1), percentile(ms, 0.9)


# ---- run on every rank through Executor.collective_rpc(fn, *args) ----------------------------------
@torch.inference_mode()
def fill_kv_cache_random(runner: ModelRunner, seed: int = 0) -> None:
    """Random K/V (timing on zeros can flatter the kernels)."""
    gen = torch.Generator(device=runner.device).manual_seed(seed + runner.state.rank)
    for cache in (runner.k_cache, runner.v_cache):
        for layer in cache:
            layer.normal_(generator=gen)


@torch.inference_mode()
def time_step(runner: ModelRunner, step: StepInput, warmup: int, iters: int) -> tuple[list[float], int | None]:
    """Runs `step` warmup + iters times, its inputs uploaded once; returns milliseconds per run and this rank's
    peak GPU memory meanwhile (None on CPU). The cache is written at the step's slots each time: the same work
    every run."""
    device = runner.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = time_fn(runner.prepare_model_step(step), device, warmup, iters)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return ms, peak


@torch.inference_mode()
def breakdown_step(runner: ModelRunner, step: StepInput, iters: int) -> dict:
    """Where the time of `step` goes on this rank, by kernel category (eager: graphs hide kernels)."""
    graphs, runner.graphs = runner.graphs, None
    try:
        return kernel_breakdown(lambda: runner.execute_model(step), iters)
    finally:
        runner.graphs = graphs


KERNEL_CATEGORIES = (
    ("attention", ("_paged_attention", "_merge_splits", "flash", "fmha")),
    ("collectives", ("nccl", "allreduce", "all_reduce", "allgather", "alltoall", "sendrecv", "one_shot")),
    ("gemm", ("gemm", "gemv", "cutlass", "nvjet", "xmma", "cublas", "matmul", "splitk")),
    ("fused_elementwise", ("_add_rms_norm", "_rope", "_silu_mul")),
)


def kernel_category(name: str) -> str:
    low = name.lower()
    for category, keys in KERNEL_CATEGORIES:
        if any(k in low for k in keys):
            return category
    return "other"


def kernel_breakdown(fn, iters: int) -> dict[str, float]:
    """GPU kernel time per call of `fn` (eager launches, so the profiler sees each kernel), by category.
    Also `kernel_sum_ms` and the `wall_ms` of the same calls: their difference is launch gaps."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / iters
    out = {c: 0.0 for c, _ in KERNEL_CATEGORIES} | {"other": 0.0}
    top: dict[str, float] = {}
    for evt in prof.key_averages():
        device_us = getattr(evt, "device_time_total", None)
        if device_us is None:
            device_us = getattr(evt, "cuda_time_total", 0.0)
        if device_us and evt.device_type.name == "CUDA":
            out[kernel_category(evt.key)] += device_us / 1e3 / iters
            top[evt.key[:80]] = device_us / 1e3 / iters
    out["kernel_sum_ms"] = sum(v for k, v in out.items())
    out["wall_ms"] = 1e3 * wall
    out["top_kernels"] = dict(sorted(top.items(), key=lambda kv: -kv[1])[:12])
    return out


def fill_floors(profile, ceilings: Ceilings) -> int:
    """Sets each point's floors of `profile` (a `Profile` measured before profiles kept them) from its model,
    its factorizations' weight bytes and `ceilings`; returns how many points got them. The model must be one
    that `EngineConfig` resolves (a built-in name or a local checkpoint)."""
    name, dtype = profile.model["name"], profile.model.get("dtype", "bfloat16")
    p = profile.world_size
    weights = {(f.tp, f.sp): f.weight_bytes_per_rank for f in profile.factorizations if f.feasible}
    configs: dict[tuple[int, int], EngineConfig] = {}
    n = 0
    for pt in profile.points:
        layout = (p, 1) if pt.mode == TP else (pt.tp, pt.sp)
        if layout not in weights:
            continue
        if layout not in configs:  # the CPU engine's config: the shapes and dtype are all a floor needs
            configs[layout] = EngineConfig(model=name, tensor_parallel_size=layout[0], sequence_parallel_size=layout[1],
                                           device="cpu", dtype=dtype, load_format="dummy")  # fmt: skip
        _, _, pt.bandwidth_floor_ms, pt.matmul_floor_ms = step_floors(
            configs[layout], weights[layout], pt.mode, pt.num_seqs, pt.tokens_per_seq, pt.context, ceilings
        )
        n += 1
    return n
