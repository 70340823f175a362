"""`shifttune profile` as a library: step times of both modes, for every SP x TP factorization of the
ranks, into a profile.

For each feasible factorization the engine starts once (dummy weights by default) and times steps
over the grid of tokens per step x context lengths: SP x TP mode for that factorization and, in the
first engine only, TP mode (the same layout for every factorization of P). Every point is saved as it
is measured, so Ctrl-C loses nothing and the same command resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from shifttune.config import SP, TP, ConfigError, EngineConfig, ParallelConfig, load_model_config, resolve_model_path
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.profile_schema import Factorization, Point, Profile, ProfileError, load_profile, model_summary
from shifttune.profile.step_sweep import DECODE, PREFILL, measure_point, step_shape
from shifttune.recommend.shapes import memory_check
from shifttune.profile.step_timing import Ceilings, blocks_needed, fill_floors, fill_kv_cache_random, measure_ceilings
from shifttune.telemetry.hardware import describe_hardware, describe_software

GPU_CONTEXTS = [512, 2048, 8192, 32768]
CPU_TOKENS, CPU_CONTEXTS = [1, 4, 16, 64, 256], [64, 256]


@dataclass
class ProfileSettings:
    model: str
    ranks: int
    device: str = "cuda"
    load_format: str = "dummy"
    dtype: str = "auto"
    tokens: list[int] = field(default_factory=list)  # empty: the device's default grid
    contexts: list[int] = field(default_factory=list)
    max_decode: int = 256
    warmup: int = 3
    iters: int = 10
    gpu_memory_utilization: float = 0.9
    all_reduce: str = "nccl"  # EngineConfig.all_reduce

    def __post_init__(self) -> None:
        cpu = self.device == "cpu"
        self.tokens = sorted(set(self.tokens or (CPU_TOKENS if cpu else DECODE + PREFILL)))
        self.contexts = sorted(set(self.contexts or (CPU_CONTEXTS if cpu else GPU_CONTEXTS)))
        if cpu and self.max_decode == 256:
            self.max_decode = 16
        for name, bad, rule in (
            ("ranks", self.ranks < 1, "must be >= 1"),
            ("tokens", any(t < 1 for t in self.tokens), "must be positive"),
            ("contexts", any(c < 2 for c in self.contexts), "must be >= 2"),
            ("warmup", self.warmup < 0, "must be >= 0"),
            ("iters", self.iters < 1, "must be >= 1"),
        ):
            if bad:
                raise ConfigError(rule, field=name)
        for t in self.tokens:  # prefill steps are whole chunks of min(T, C) tokens
            for c in self.contexts:
                if t > self.max_decode and t % min(t, c):
                    raise ConfigError(
                        f"{t} tokens per step is not a whole number of {min(t, c)}-token chunks at "
                        f"context {c}; pick token counts that are multiples of the contexts below them"
                    )


@dataclass
class ProgressEvent:
    done: int
    total: int
    label: str  # what is being measured now
    point: Point | None = None  # the point just measured
    message: str | None = None  # a line worth printing (skips, factorization starts)


def factorizations(ranks: int) -> list[tuple[int, int]]:
    """Every (TP, SP) with TP x SP = ranks, most TP first."""
    return [(ranks // sp, sp) for sp in range(1, ranks + 1) if ranks % sp == 0]


def check_factorization(settings: ProfileSettings, tp: int, sp: int) -> str | None:
    """Why (tp, sp) cannot run here, or None."""
    cfg, _ = load_model_config(resolve_model_path(settings.model))
    try:
        ParallelConfig(tp, sp).validate(cfg)
    except ConfigError as e:
        return str(e)
    if settings.device == "cuda":
        if torch.cuda.device_count() < tp * sp:
            return f"needs {tp * sp} GPUs, {torch.cuda.device_count()} visible"
        elem = 2 if settings.dtype in ("auto", "bfloat16", "float16") else 4
        total = torch.cuda.get_device_properties(0).total_memory
        return memory_check(cfg, tp, sp, elem, total, settings.gpu_memory_utilization, max(settings.contexts))
    return None


def _plan(settings: ProfileSettings, feasible: list[tuple[int, int]]) -> list[tuple[int, int, list[str]]]:
    """(tp, sp, modes) per engine to start: TP mode once (first engine), SP x TP mode where SP > 1."""
    plan, tp_done = [], False
    for tp, sp in feasible:
        modes = ([SP] if sp > 1 else []) + ([] if tp_done else [TP])
        tp_done = True
        if modes:
            plan.append((tp, sp, modes))
    return plan


def run_profile(
    settings: ProfileSettings,
    out: Path,
    command: str,
    progress: Callable[[ProgressEvent], None] = lambda e: None,
    stop: Callable[[], bool] = lambda: False,
) -> Profile:
    """Measures every planned point not already in `out`, saving after each. `stop()` is asked between
    points; when it says so, this raises KeyboardInterrupt with everything measured saved."""
    p = settings.ranks
    reasons = {(tp, sp): check_factorization(settings, tp, sp) for tp, sp in factorizations(p)}
    feasible = [f for f, why in reasons.items() if why is None]
    if not feasible:
        raise ConfigError(
            "no SP x TP factorization of %d can run: %s"
            % (p, "; ".join(f"TP={tp} SP={sp}: {why}" for (tp, sp), why in reasons.items()))
        )
    hardware, engine_settings = (
        describe_hardware(settings.device),
        {
            "max_decode_batch": settings.max_decode,
            "warmup": settings.warmup,
            "iters": settings.iters,
            "device": settings.device,
            "load_format": settings.load_format,
            "ranks": settings.ranks,
            "dtype": settings.dtype,
        }
        | ({"all_reduce": settings.all_reduce} if settings.all_reduce != "nccl" else {}),
    )
    grid = {"tokens": settings.tokens, "contexts": settings.contexts}
    profile = _resume(out, settings, hardware, grid, engine_settings)
    measured = {pt.key for pt in profile.points} if profile else set()
    plan = _plan(settings, feasible)
    if settings.all_reduce == "symm_mem" and len(plan) > 1:
        raise ConfigError("symm_mem sets torch's symmetric memory up once per process: profile one factorization "
                          "at a time (--gpus with one layout)", field="all_reduce")  # fmt: skip
    todo = [
        (tp, sp, mode, t, c)
        for tp, sp, modes in plan
        for c in settings.contexts
        for t in settings.tokens
        for mode in modes
    ]
    key = lambda tp, sp, mode, t, c: (mode, p, 1, t, c) if mode == TP else (mode, tp, sp, t, c)  # noqa: E731
    total, done = len(todo), sum(1 for x in todo if key(*x) in measured)
    for (tp, sp), why in reasons.items():
        if why:
            progress(ProgressEvent(done, total, "", message=f"TP={tp} SP={sp} skipped: {why}"))
    if done == total:
        progress(
            ProgressEvent(
                done, total, "done", message=f"{out} already holds all {total} points: nothing left to measure"
            )
        )
    elif done:
        progress(ProgressEvent(done, total, "resuming", message=f"resuming: {done} of {total} points already in {out}"))
    ceilings = _ceilings(settings, profile) if done < total else None
    too_big = []  # (KV tokens needed, tokens, context, KV tokens held, tp, sp) of each point the cache could not hold
    for tp, sp, modes in plan:
        remaining = [
            (t, c, m)
            for c in settings.contexts
            for t in settings.tokens
            for m in modes
            if key(tp, sp, m, t, c) not in measured
        ]
        if not remaining:
            continue
        progress(
            ProgressEvent(done, total, f"starting TP={tp} SP={sp}", message=f"starting the engine: TP={tp} SP={sp}")
        )
        config = EngineConfig(
            model=settings.model,
            tensor_parallel_size=tp,
            sequence_parallel_size=sp,
            device=settings.device,
            dtype=settings.dtype,
            load_format=settings.load_format,
            max_num_seqs=settings.max_decode,
            max_num_batched_tokens=max(settings.tokens),
            max_model_len=max(settings.contexts),
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enable_prefix_caching=False,
            all_reduce=settings.all_reduce,
        )
        engine = LLMEngine(config)
        try:
            runner = engine.executor.runner
            if profile is None:
                profile = Profile(
                    hardware=hardware,
                    software=describe_software(),
                    model=model_summary(config.model, config.model_config, config.dtype),
                    engine=engine_settings
                    | {
                        "block_size": config.block_size,
                        "cuda_graphs": config.device == "cuda",
                        "attention_backend": config.attention_backend,
                    },
                    grid=grid,
                    command=command,
                    created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                )
            if ceilings is not None:  # a resumed profile from before profiles kept floors gets them too
                _set_ceilings(profile, ceilings)
            # what a deployment of this layout could hold, not just what this sweep allocated
            capacity = runner.kv_blocks_memory_limit * config.block_size
            _set_factorization(
                profile,
                Factorization(
                    tp, sp, True, None, runner.weight_bytes, capacity, runner.kv_bytes_per_block // config.block_size
                ),
            )
            engine.executor.collective_rpc(fill_kv_cache_random)
            for t, c, mode in remaining:
                if stop():
                    raise KeyboardInterrupt
                label = f"TP={tp} SP={sp} {mode} mode, {t} tokens at context {c}"
                progress(ProgressEvent(done, total, label))
                got = measure_point(
                    engine, mode, t, c, settings.max_decode, settings.warmup, settings.iters, ceilings or Ceilings(1, 1)
                )
                done += 1
                if got is None:
                    progress(ProgressEvent(done, total, label, message=f"{label}: skipped, KV cache too small"))
                    need = blocks_needed(step_shape(t, c, settings.max_decode)[0], c, config.block_size)
                    too_big.append((need * config.block_size, t, c, runner.num_kv_blocks * config.block_size, tp, sp))
                    continue
                timing, peak = got
                ptp, psp = (p, 1) if mode == TP else (tp, sp)
                point = Point(
                    mode,
                    ptp,
                    psp,
                    t,
                    c,
                    timing.num_seqs,
                    timing.tokens_per_seq,
                    timing.median_ms,
                    timing.p10_ms,
                    timing.p90_ms,
                    peak,
                    capacity,
                    timing.bandwidth_floor_ms if ceilings else None,
                    timing.matmul_floor_ms if ceilings else None,
                )
                profile.points.append(point)
                profile.save(out)
                progress(ProgressEvent(done, total, label, point=point))
        finally:
            engine.shutdown()
    if profile is not None and not profile.points and too_big:  # NOTE: an empty profile fails later, in `recommend`
        need, t, c, held, tp, sp = min(too_big)
        fix = f"--tokens of at most {held}" if t > settings.max_decode else "shorter --contexts"
        raise ConfigError(
            f"no point was measured: the KV cache holds {held} tokens (TP={tp} SP={sp}) and every step asked for "
            f"needs more (the smallest, {t} tokens at context {c}, needs {need}); ask for {fix}"
        )
    for (tp, sp), why in reasons.items():
        if why:
            _set_factorization(profile, Factorization(tp, sp, False, why))
    profile.factorizations.sort(key=lambda f: -f.tp)
    profile.save(out)
    return profile


def _ceilings(settings: ProfileSettings, profile: Profile | None) -> Ceilings | None:
    """The card's HBM and matmul rates for the points' floors: a resumed profile's, else measured now (on a GPU;
    none on CPU, where floors mean little)."""
    if profile is not None and profile.ceilings:
        return Ceilings(profile.ceilings["hbm_bytes_per_s"], profile.ceilings["matmul_flops_per_s"])
    if settings.device != "cuda":
        return None
    ceilings = measure_ceilings(torch.device("cuda"))
    torch.cuda.empty_cache()  # its 2 GiB of buffers go back before the engines size their KV caches
    return ceilings


def _set_ceilings(profile: Profile, ceilings: Ceilings) -> None:
    if profile.ceilings:
        return
    profile.ceilings = {"hbm_bytes_per_s": ceilings.hbm_bytes_per_s, "matmul_flops_per_s": ceilings.matmul_flops_per_s,
                        "source": "measured on GPU 0 before the engines started"}  # fmt: skip
    if profile.points:
        fill_floors(profile, ceilings)


def _set_factorization(profile: Profile, fact: Factorization) -> None:
    profile.factorizations = [f for f in profile.factorizations if (f.tp, f.sp) != (fact.tp, fact.sp)] + [fact]


def _resume(out: Path, settings: ProfileSettings, hardware: dict, grid: dict, engine: dict) -> Profile | None:
    """The profile at `out` if it was measured with the same model, grid, machine and settings; refuse otherwise."""
    if not out.exists():
        return None
    old = load_profile(out)
    differ = [k for k, v in engine.items() if old.engine.get(k) != v]
    if old.engine.get("all_reduce", "nccl") != settings.all_reduce and "all_reduce" not in differ:
        differ.append("all_reduce")
    if old.model.get("name") != settings.model:
        differ.append("model")
    if old.grid != grid:
        differ.append("grid")
    if old.hardware.get("gpu_name") != hardware.get("gpu_name"):
        differ.append("machine")
    if differ:
        raise ProfileError(
            f"{out} holds a profile measured with other settings ({', '.join(differ)}); "
            "pass another --out, or delete it to start over"
        )
    return old


def default_profile_path(settings: ProfileSettings) -> Path:
    hw = describe_hardware(settings.device)
    where = (hw.get("gpu_name") or "gpu").replace(" ", "-").lower() if settings.device == "cuda" else "cpu"
    name = Path(settings.model).name.lower()
    return Path("profiles") / f"{name}_{where}x{settings.ranks}.json"
