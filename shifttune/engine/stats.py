"""What the engine records: the shape of each step, one record per step, running totals, percentiles.

The mode policy reads `StepShape`; the server's metrics, the TUI, the profiler and the simulator read
`StepStats` and `EngineStats`. `percentile` is the one percentile helper every layer above uses.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from shifttune.config import MODES


@dataclass(frozen=True)
class StepShape:
    num_tokens: int
    num_seqs: int
    num_prefill_tokens: int
    num_decode_tokens: int
    context_lens: tuple[int, ...]

    @property
    def mean_context(self) -> float:
        return sum(self.context_lens) / max(1, len(self.context_lens))


@dataclass(frozen=True)
class StepStats:
    mode: str
    shape: StepShape
    duration_s: float
    timestamp: float = field(default_factory=time.time)


def _per_mode() -> dict[str, int]:
    return dict.fromkeys(MODES, 0)


@dataclass
class EngineStats:
    """What the profiler, the server's metrics and the TUI read."""

    steps: deque[StepStats] = field(default_factory=lambda: deque(maxlen=10_000))
    steps_per_mode: dict[str, int] = field(default_factory=_per_mode)  # counts since start
    tokens_per_mode: dict[str, int] = field(default_factory=_per_mode)
    num_preemptions: int = 0
    num_prefix_cache_hit_blocks: int = 0
    kv_blocks_total: int = 0
    kv_blocks_free: int = 0
    weight_bytes_per_rank: dict[str, int] = field(default_factory=dict)  # per mode
    kv_cache_bytes_per_rank: int = 0

    @property
    def num_steps(self) -> int:
        return sum(self.steps_per_mode.values())

    def record(self, step: StepStats) -> None:
        self.steps.append(step)
        self.steps_per_mode[step.mode] += 1
        self.tokens_per_mode[step.mode] += step.shape.num_tokens


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) by linear interpolation between order statistics; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = q * (len(s) - 1)
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
