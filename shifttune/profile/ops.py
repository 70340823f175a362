"""`shifttune profile --ops`: the operator table of this GPU type for one model, measured on one local GPU.

For every P asked for and every layout a P-GPU deployment could run (TP mode over P; SP x TP mode
for each SP > 1 dividing P) whose weights and one longest sequence fit this GPU's memory, one rank is
built alone on this GPU: the engine's own `ModelRunner` at that rank's real sharded shapes (its slice
of every weight, its query and KV heads, its MLP and vocab rows, the Ulysses packing around
attention), with process groups of the right size that move no data, so each collective costs
nothing here and the collective model adds it back (`recommend/collectives.py`). The runner
allocates its KV cache and captures its CUDA graphs as in serving, and every point of the profile
grid is timed as `shifttune profile` times it (`step_timing.time_step` on a `synthetic_step`).

Each step is timed twice: with `layers` decoder layers (default a quarter of the model's, at least 2)
and with one. The difference over `layers` - 1 is one decoder layer (`layer_ms`); the one-layer run
less that is the rest of the step (`head_ms`: upload, embedding, final norm, LM head, graph replay). A full rank step
is head + num_layers x layer (format: `recommend/op_table.py`). Points whose KV blocks do not fit are
listed as skipped. With `breakdown` (GPU), chosen steps are also split by kernel category (GEMM,
attention, fused norm/RoPE/SiLU, other) for one layer and for the head, the same way. Every layout is
saved as it is measured; the same command resumes.
"""

from __future__ import annotations

import gc
import platform
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from shifttune.config import SP, TP, ConfigError, EngineConfig, ParallelConfig, load_model_config, resolve_model_path
from shifttune.engine.profile_schema import model_summary
from shifttune.kernels import split_kv
from shifttune.parallel.state import Group, ParallelState
from shifttune.profile.profiler import ProfileSettings
from shifttune.profile.step_sweep import step_shape
from shifttune.profile.step_timing import (
    blocks_needed,
    breakdown_step,
    fill_kv_cache_random,
    summarize,
    synthetic_step,
    time_step,
)
from shifttune.recommend.gpus import gpu_slug
from shifttune.recommend.op_table import OpEntry, OpTable, load_op_table
from shifttune.recommend.predict import factorizations
from shifttune.recommend.shapes import DTYPE_BYTES, memory_check
from shifttune.runner.model_runner import ModelRunner
from shifttune.telemetry.hardware import describe_hardware, describe_software


class LocalGroup(Group):
    """A process group of `len(ranks)` members that moves no data: each collective returns a tensor of
    the shape (and, for all-to-all, the memory layout) the real one would, so the rank's own work is
    exactly what it is in a P-GPU engine."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(0).expand(self.size, *x.shape)

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous()


@dataclass
class OpsSettings:
    model: str
    world_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    device: str = "cuda"
    dtype: str = "auto"
    tokens: list[int] = field(default_factory=list)  # empty: `shifttune profile`'s grid for the device
    contexts: list[int] = field(default_factory=list)
    max_decode: int = 256
    warmup: int = 3
    iters: int = 10
    rounds: int = 2  # passes over the grid per timed model; the lowest median of each point is kept
    layers: int | None = None  # decoder layers of the longer timed step; default a quarter of the model's (>= 2)
    breakdown: list[int] = field(default_factory=list)  # GPU: tokens per step split by kernel category
    gpu_memory_utilization: float = 0.9

    def __post_init__(self) -> None:
        grid = ProfileSettings(self.model, 1, self.device, tokens=self.tokens, contexts=self.contexts,
                               max_decode=self.max_decode, warmup=self.warmup, iters=self.iters)  # fmt: skip
        self.tokens, self.contexts, self.max_decode = grid.tokens, grid.contexts, grid.max_decode
        if not self.world_sizes or any(p < 1 for p in self.world_sizes):
            raise ConfigError("must be positive GPU counts", field="gpus")
        self.world_sizes = sorted(set(self.world_sizes))
        cfg, _ = load_model_config(resolve_model_path(self.model))
        if self.layers is None:
            self.layers = min(cfg.num_layers, max(2, cfg.num_layers // 4))
        if not 2 <= self.layers <= max(2, cfg.num_layers):
            raise ConfigError(f"must be between 2 and the model's {cfg.num_layers} layers", field="layers")


@dataclass
class OpsProgress:
    done: int
    total: int
    message: str


def layouts(world_size: int) -> list[tuple[str, int, int]]:
    """(mode, tp, sp) of every layout a deployment of P GPUs runs: TP mode, then each SP x TP."""
    return [(TP, world_size, 1)] + [(SP, tp, sp) for tp, sp in factorizations(world_size) if sp > 1]


def build_rank(settings: OpsSettings, tp: int, sp: int, layers: int) -> ModelRunner:
    """Rank 0 of a (tp, sp) engine, alone on this device, with `layers` decoder layers; KV cache allocated
    and graphs captured as the engine does it."""
    config = EngineConfig(
        model=settings.model,
        device=settings.device,
        dtype=settings.dtype,
        load_format="dummy",
        max_num_seqs=settings.max_decode,
        max_num_batched_tokens=max(settings.tokens),
        max_model_len=max(settings.contexts),
        gpu_memory_utilization=settings.gpu_memory_utilization,
        enable_prefix_caching=False,
    )  # validated for one device; then made the (tp, sp) rank it stands for
    config.tensor_parallel_size, config.sequence_parallel_size = tp, sp
    config.parallel = ParallelConfig(tp, sp)
    config.parallel.validate(config.model_config)
    config.model_config = replace(config.model_config, num_layers=layers)
    par = config.parallel
    state = ParallelState(
        rank=0,
        parallel=par,
        tp_group=LocalGroup(list(range(tp)), 0, None),
        sp_group=LocalGroup([s * tp for s in range(sp)], 0, None),
        world_group=LocalGroup(list(range(par.world_size)), 0, None),
        cpu_group=None,
    )
    runner = ModelRunner(config, state)
    runner.allocate_kv_cache(runner.num_kv_blocks)
    runner.capture_graphs()
    return runner


def _time_all(runner: ModelRunner, mode: str, points: list[tuple[int, int]], settings: OpsSettings) -> dict:
    """{(tokens, context): (median, p10, p90) ms} of the points whose KV blocks fit the cache: each point
    timed in `settings.rounds` rounds over the whole list, the round with the lowest median kept (what the
    GPU shares with other work slows some rounds, never speeds one up)."""
    fill_kv_cache_random(runner)
    bs = runner.config.block_size
    steps = {}
    for t, c in points:
        seqs, per = step_shape(t, c, settings.max_decode)
        if blocks_needed(seqs, c, bs) <= runner.num_kv_blocks:
            steps[(t, c)] = synthetic_step(mode, seqs, per, c, bs)
    out: dict[tuple[int, int], tuple[float, float, float]] = {}
    for _ in range(settings.rounds):
        for (t, c), step in steps.items():
            timed = summarize(time_step(runner, step, settings.warmup, settings.iters)[0])
            if (t, c) not in out or timed[0] < out[(t, c)][0]:
                out[(t, c)] = timed
    return out


def _breakdowns(runner: ModelRunner, mode: str, settings: OpsSettings) -> dict:
    """{(tokens, context): kernel ms per step by category} for the --breakdown steps (GPU only; eager runs
    under the profiler, `step_timing.breakdown_step`), at 2048 context or the grid's first."""
    if runner.device.type != "cuda" or not settings.breakdown:
        return {}
    c = 2048 if 2048 in settings.contexts else settings.contexts[0]
    out = {}
    for t in settings.breakdown:
        seqs, per = step_shape(t, c, settings.max_decode)
        if blocks_needed(seqs, c, runner.config.block_size) <= runner.num_kv_blocks:
            split = breakdown_step(runner, synthetic_step(mode, seqs, per, c, runner.config.block_size), 3)
            out[(t, c)] = {k: v for k, v in split.items() if isinstance(v, float)}
    return out


def _release(runner: ModelRunner) -> None:
    """Drops what the runner holds on the device (graphs, cache, weights) so the next one has the memory;
    the caller must drop its own reference too."""
    runner.release()
    gc.collect()
    if runner.device.type == "cuda":
        torch.cuda.empty_cache()


def memory_overhead(settings: OpsSettings) -> int:
    """Device memory a rank holds besides its weights and KV cache (context, buffers), measured on a
    one-layer TP=1 rank before its cache is allocated."""
    if settings.device != "cuda":
        return 0
    torch.cuda.empty_cache()
    config = EngineConfig(model=settings.model, device="cuda", dtype=settings.dtype, load_format="dummy",
                          max_model_len=max(settings.contexts))  # fmt: skip
    config.model_config = replace(config.model_config, num_layers=1)
    one = Group([0], 0, None)
    runner = ModelRunner(config, ParallelState(0, config.parallel, one, one, one, None))
    free, total = torch.cuda.mem_get_info()
    weights = sum(runner.weight_bytes.values())
    _release(runner)
    del runner
    return max(0, total - free - weights)


def new_table(settings: OpsSettings, command: str) -> OpTable:
    cfg, _ = load_model_config(resolve_model_path(settings.model))
    hardware = describe_hardware(settings.device)
    if settings.device == "cuda":
        name = torch.cuda.get_device_name(0)
        gpu = {"name": name, "slug": gpu_slug(name), "memory_bytes": torch.cuda.mem_get_info()[1]}
    else:
        gpu = {"name": platform.processor() or platform.machine(), "slug": "cpu", "memory_bytes": 0}
    dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if settings.device == "cuda" else "float32")
    return OpTable(
        method="measured",
        source=f"shifttune profile --ops on one {gpu['name']}: each rank's work timed alone, collectives excluded",
        gpu=gpu,
        model=model_summary(settings.model, cfg, dtype),
        engine={
            "block_size": EngineConfig.block_size,
            "max_decode_batch": settings.max_decode,
            "cuda_graphs": settings.device == "cuda",
            "cuda_graph_max_tokens": EngineConfig.cuda_graph_max_tokens,
            "chunk_split_graphs": _chunk_split_graphs(settings.device),
            "dtype": dtype,
            "warmup": settings.warmup,
            "iters": settings.iters,
            "layers_timed": settings.layers,
            "device": settings.device,
        },  # fmt: skip
        grid={"tokens": settings.tokens, "contexts": settings.contexts},
        memory_overhead_bytes=memory_overhead(settings),
        hardware=hardware,
        software=describe_software(),
        command=command,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _chunk_split_graphs(device: str) -> bool:
    """Whether this engine's CUDA graphs include split graphs for prefill chunks (none without CUDA graphs)."""
    return device == "cuda" and split_kv.CHUNK_SPLIT_GRAPHS


def _resume(out: Path, settings: OpsSettings) -> OpTable | None:
    if not out.exists():
        return None
    old = load_op_table(out)
    same = (
        old.model.get("name") == settings.model
        and old.grid == {"tokens": settings.tokens, "contexts": settings.contexts}
        and old.engine.get("layers_timed") == settings.layers
        and old.engine.get("device") == settings.device
        and old.engine.get("chunk_split_graphs", False) == _chunk_split_graphs(settings.device)
    )
    if not same:
        raise ConfigError(f"{out} holds an op table made with other settings; pass another --out or delete it")
    return old


def run_ops(settings: OpsSettings, out: Path, command: str, progress: Callable[[OpsProgress], None] = print) -> OpTable:
    """Measures every layout of every P asked for that fits this device and is not yet in `out`."""
    cfg, _ = load_model_config(resolve_model_path(settings.model))
    table = _resume(out, settings) or new_table(settings, command)
    elem = DTYPE_BYTES[table.model["dtype"]]
    memory = table.gpu["memory_bytes"]
    plan, reasons = [], {}
    for p in settings.world_sizes:
        for mode, tp, sp in layouts(p):
            try:
                ParallelConfig(tp, sp).validate(cfg)
                why = memory and memory_check(cfg, tp, sp, elem, memory, settings.gpu_memory_utilization,
                                              max(settings.contexts))  # fmt: skip
            except ConfigError as e:
                why = str(e)
            if why:
                reasons[(mode, tp, sp)] = why
            elif (mode, tp, sp) not in plan:
                plan.append((mode, tp, sp))
    for (mode, tp, sp), why in reasons.items():
        progress(OpsProgress(0, len(plan), f"{mode} mode TP={tp} SP={sp} skipped: {why}"))
    points = [(t, c) for c in settings.contexts for t in settings.tokens]
    for i, (mode, tp, sp) in enumerate(plan):
        have = {(e.tokens, e.context) for e in table.entries if (e.mode, e.tp, e.sp) == (mode, tp, sp)}
        todo = [x for x in points if x not in have]
        if not todo:
            continue
        label = f"{mode} mode TP={tp} SP={sp} (P={tp * sp})"
        progress(OpsProgress(i, len(plan), f"{label}: {len(todo)} points, {settings.layers} layers and 1"))
        runner = build_rank(settings, tp, sp, settings.layers)
        with_layers = _time_all(runner, mode, todo, settings)
        split_k = _breakdowns(runner, mode, settings)
        for model in runner.models.values():
            model.layers = model.layers[:1]
        runner.capture_graphs()
        one = _time_all(runner, mode, list(with_layers), settings)
        split_1 = _breakdowns(runner, mode, settings)
        _release(runner)
        del runner
        for (t, c), k_cats in split_k.items():
            layer = {cat: (v - split_1[(t, c)][cat]) / (settings.layers - 1) for cat, v in k_cats.items()}
            head = {cat: split_1[(t, c)][cat] - layer[cat] for cat in k_cats}
            table.breakdown = [b for b in table.breakdown if b["key"] != [mode, tp, sp, t, c]]
            table.breakdown.append({"key": [mode, tp, sp, t, c], "layer_ms": layer, "head_ms": head})
        for t, c in todo:
            if (t, c) not in with_layers or (t, c) not in one:
                reason = "KV cache too small on one GPU"
                table.skipped = [s for s in table.skipped if s.get("key") != [mode, tp, sp, t, c]]
                table.skipped.append({"key": [mode, tp, sp, t, c], "reason": reason})
                continue
            (med, p10, p90), one_ms = with_layers[(t, c)], one[(t, c)][0]
            seqs, per = step_shape(t, c, settings.max_decode)
            # NOTE: on a noisy host k layers can time at or below one; keep the entry valid (CPU only).
            layer = max((med - one_ms) / (settings.layers - 1), 1e-6)
            head = max(one_ms - layer, 0.0)
            table.add(OpEntry(mode, tp, sp, t, c, seqs, per, head, layer, {"p10": p10 / med, "p90": p90 / med}))
        table.save(out)
        progress(OpsProgress(i + 1, len(plan), f"{label}: done"))
    table.save(out)
    return table


def default_ops_path(settings: OpsSettings) -> Path:
    slug = gpu_slug(torch.cuda.get_device_name(0)) if settings.device == "cuda" else "cpu"
    return Path("profiles") / "op_tables" / f"{Path(settings.model).name.lower()}_{slug}.json"
