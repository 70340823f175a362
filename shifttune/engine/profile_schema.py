"""The profile file: measured step times of TP mode and SP x TP mode on one machine, for one model.

Schema (version 2), one JSON object:

    schema, version            "shifttune.profile", 1
    created, command           when and by what command it was measured
    hardware                   device, gpu_name, gpu_count, gpus[{name, memory_bytes}], driver,
                               pcie_topology (NVML common-ancestor matrix), active_nvlinks_per_gpu; or cpu
    software                   shifttune, torch, cuda, nccl, triton, python versions
    model                      name, architecture, num_params, hidden_size, num_layers, num_heads,
                               num_kv_heads, head_dim, intermediate_size, vocab_size, dtype
    engine                     block_size, max_decode_batch, warmup, iters, cuda_graphs, attention_backend
    grid                       tokens (per step), contexts
    factorizations[]           tp, sp, feasible, reason (why not), weight_bytes_per_rank {tp, sp} (the
                               weights each mode runs on; sp is 0 when SP = 1),
                               kv_capacity_tokens, kv_bytes_per_token_per_rank
    points[]                   mode ("tp" | "sp"), tp, sp, tokens, context, num_seqs, tokens_per_seq,
                               median_ms, p10_ms, p90_ms, peak_memory_bytes (rank 0; null on CPU),
                               kv_capacity_tokens
    predicted, sources         optional: true when the step times come from `shifttune profile --predict`
                               (one GPU's operator table plus a collective-cost model) rather than from
                               running the engine; sources says which table, which collectives, and how

TP-mode points carry tp = P, sp = 1: TP mode shards every weight P ways whatever the factorization,
so one TP curve serves every factorization of P. `load_profile` validates a file and refuses a bad
one with one clear message; it reads version 1 too (weights keyed by layout: base = sp, shift = tp).
It lives with the engine because the engine's profile policy reads it; `shifttune profile` writes it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shifttune.config import MODES, SP, TP, ConfigError, ModelConfig, read_json_file

SCHEMA, VERSION = "shifttune.profile", 2
V1_LAYOUT_NAMES = {"base": SP, "shift": TP}


class ProfileError(ConfigError):
    """A profile file that cannot be used."""


MODEL_FIELDS = ("architecture", "num_params", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                "intermediate_size", "vocab_size")  # fmt: skip


def model_summary(name: str, config: ModelConfig, dtype: str) -> dict:
    """The profile's `model` section."""
    return {"name": name} | {k: getattr(config, k) for k in MODEL_FIELDS} | {"dtype": dtype}


@dataclass
class Factorization:
    tp: int
    sp: int
    feasible: bool
    reason: str | None = None
    weight_bytes_per_rank: dict[str, int] = field(default_factory=dict)
    kv_capacity_tokens: int | None = None
    kv_bytes_per_token_per_rank: int | None = None


@dataclass
class Point:
    mode: str
    tp: int
    sp: int
    tokens: int
    context: int
    num_seqs: int
    tokens_per_seq: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    peak_memory_bytes: int | None = None
    kv_capacity_tokens: int | None = None
    # one rank's bytes / the card's HBM rate and FLOPs / its matmul rate (`Profile.ceilings`); None off GPUs
    bandwidth_floor_ms: float | None = None
    matmul_floor_ms: float | None = None

    @property
    def key(self) -> tuple:
        return (self.mode, self.tp, self.sp, self.tokens, self.context)

    @property
    def floor_ms(self) -> float | None:
        """The higher of the two floors: no run of this step on this card can be faster."""
        if self.bandwidth_floor_ms is None or self.matmul_floor_ms is None:
            return None
        return max(self.bandwidth_floor_ms, self.matmul_floor_ms)


@dataclass
class Profile:
    hardware: dict
    software: dict
    model: dict
    engine: dict
    grid: dict
    command: str = ""
    created: str = ""
    factorizations: list[Factorization] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    predicted: bool = False
    sources: dict = field(default_factory=dict)
    ceilings: dict = field(default_factory=dict)  # the card's hbm_bytes_per_s and matmul_flops_per_s, and their source

    @property
    def world_size(self) -> int:
        return max((f.tp * f.sp for f in self.factorizations), default=1)

    @property
    def max_decode_batch(self) -> int:
        """The most sequences a decode step of the profiled engine held (256 where the profile does not say)."""
        return int(self.engine.get("max_decode_batch", 256))

    def curve(self, mode: str, tp: int, sp: int, context: int) -> list[Point]:
        """Points of one mode and layout at one context, by tokens."""
        return sorted(
            (p for p in self.points if (p.mode, p.tp, p.sp, p.context) == (mode, tp, sp, context)),
            key=lambda p: p.tokens,
        )

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "version": VERSION, **asdict(self)}

    def save(self, path: Path) -> None:
        """Atomic write: an interrupted save never leaves a half-written profile behind."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a profile is made to be shared
        os.replace(tmp, path)


def _require(obj: dict, key: str, kind, where: str):
    if key not in obj:
        raise ProfileError(f"{where} lacks {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ProfileError(f"{where}.{key} should be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def profile_from_dict(data: dict, source: str = "profile") -> Profile:
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ProfileError(f'{source} is not a shifttune profile (no "schema": "{SCHEMA}")')
    version = data.get("version")
    if version not in (1, VERSION):
        raise ProfileError(f"{source} has profile version {version!r}; this shifttune reads 1 and {VERSION}")
    for key in ("hardware", "software", "model", "engine", "grid"):
        _require(data, key, dict, source)
    block_size = data["engine"].get("block_size", 16)
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ProfileError(f"{source}: engine.block_size must be a positive integer, got {block_size!r}")
    facts = []
    for i, f in enumerate(_require(data, "factorizations", list, source)):
        where = f"{source}: factorizations[{i}]"
        tp, sp = _require(f, "tp", int, where), _require(f, "sp", int, where)
        if tp < 1 or sp < 1:
            raise ProfileError(f"{where} has tp={tp}, sp={sp}; both must be >= 1")
        _require(f, "feasible", bool, where)
        for key, kind in (("kv_capacity_tokens", int), ("kv_bytes_per_token_per_rank", int), ("reason", str)):
            if f.get(key) is not None:
                _require(f, key, kind, where)
        weights = f.get("weight_bytes_per_rank", {})
        if isinstance(weights, dict) and version == 1:
            weights = {V1_LAYOUT_NAMES.get(k, k): v for k, v in weights.items()}
        if (
            not isinstance(weights, dict)
            or any(k not in MODES for k in weights)
            or any(not isinstance(v, int) or v < 0 for v in weights.values())
        ):
            raise ProfileError(f"{where}.weight_bytes_per_rank must map the modes tp and sp to byte counts")
        facts.append(
            Factorization(
                **{k: f.get(k) for k in Factorization.__dataclass_fields__ if k in f}
                | {"weight_bytes_per_rank": weights}
            )
        )
    points, seen = [], set()
    for i, p in enumerate(_require(data, "points", list, source)):
        where = f"{source}: points[{i}]"
        if _require(p, "mode", str, where) not in MODES:
            raise ProfileError(f"{where}.mode must be 'tp' or 'sp', got {p['mode']!r}")
        for key in ("tp", "sp", "tokens", "context", "num_seqs", "tokens_per_seq"):
            if _require(p, key, int, where) < 1:
                raise ProfileError(f"{where}.{key} must be >= 1")
        for key in ("median_ms", "p10_ms", "p90_ms", "bandwidth_floor_ms", "matmul_floor_ms"):
            if key.endswith("floor_ms") and p.get(key) is None:
                continue
            v = _require(p, key, (int, float), where)
            if not math.isfinite(v) or v <= 0:
                raise ProfileError(f"{where}.{key} must be a positive number, got {v!r}")
        point = Point(**{k: p.get(k) for k in Point.__dataclass_fields__ if k in p})
        if point.key in seen:
            raise ProfileError(f"{where} repeats the point {point.key}")
        seen.add(point.key)
        points.append(point)
    predicted = data.get("predicted", False)
    if not isinstance(predicted, bool) or not isinstance(data.get("sources", {}), dict):
        raise ProfileError(f"{source}: predicted must be true or false and sources an object")
    ceilings = data.get("ceilings", {})
    if not isinstance(ceilings, dict):
        raise ProfileError(f"{source}: ceilings must be an object")
    for key in ("hbm_bytes_per_s", "matmul_flops_per_s") if ceilings else ():
        v = _require(ceilings, key, (int, float), f"{source}: ceilings")
        if not math.isfinite(v) or v <= 0:
            raise ProfileError(f"{source}: ceilings.{key} must be a positive number, got {v!r}")
    return Profile(
        hardware=data["hardware"],
        software=data["software"],
        model=data["model"],
        engine=data["engine"],
        grid=data["grid"],
        command=data.get("command", ""),
        created=data.get("created", ""),
        factorizations=facts,
        points=points,
        predicted=predicted,
        sources=data.get("sources", {}),
        ceilings=data.get("ceilings", {}),
    )


def load_profile(path: Path) -> Profile:
    return profile_from_dict(read_json_file(path, "profile", ProfileError), str(path))
