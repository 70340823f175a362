"""GPU types the predictor knows (`shifttune/data/gpus.json`), and `--gpus 4xH200` parsing.

A GPU type is named by its slug: the first word of its NVML name after "NVIDIA", lowercased
("NVIDIA H100 80GB HBM3" -> "h100"). Op tables, collective tables and shipped profiles are found by it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from shifttune.config import ConfigError

GPUS_FILE = Path(__file__).resolve().parent.parent / "data" / "gpus.json"


def gpu_slug(name: str) -> str:
    words = [w for w in re.split(r"[\s_]+", name.strip()) if w and w.lower() != "nvidia"]
    return words[0].lower() if words else ""


@dataclass(frozen=True)
class GpuSpec:
    slug: str
    name: str
    memory_bytes: int
    hbm_bytes_per_s: float
    matmul_flops_per_s: float
    sm_count: int
    sources: dict = field(default_factory=dict, compare=False)


def known_gpus() -> dict[str, GpuSpec]:
    data = json.loads(GPUS_FILE.read_text())["gpus"]
    return {slug: GpuSpec(slug=slug, **facts) for slug, facts in data.items()}


def gpu_spec(slug: str) -> GpuSpec:
    gpus = known_gpus()
    if slug not in gpus:
        raise ConfigError(f"unknown GPU type {slug.upper()}; known: {', '.join(g.upper() for g in gpus)}", field="gpus")
    return gpus[slug]


@dataclass(frozen=True)
class GpuRequest:
    """What `--gpus` asked for: a count and, optionally, a GPU type."""

    count: int
    slug: str | None = None

    def __str__(self) -> str:
        return f"{self.count}x{self.slug.upper()}" if self.slug else str(self.count)


def parse_gpus(text: str) -> GpuRequest:
    """`4`, `4xH200`, `4 x h100`, `H200x4` -> GpuRequest."""
    s = text.strip().lower().replace(" ", "")
    count, name = None, None
    if m := re.fullmatch(r"(\d+)(?:[x*]([a-z][\w-]*))?", s):
        count, name = m.groups()
    elif m := re.fullmatch(r"([a-z][\w-]*)[x*](\d+)", s):
        name, count = m.groups()
    if count is None:
        raise ConfigError(f"expected a GPU count and type like 4xH200 (or a count), got {text!r}", field="gpus")
    if int(count) < 1:
        raise ConfigError("must be >= 1", field="gpus")
    return GpuRequest(int(count), gpu_slug(name) if name else None)
