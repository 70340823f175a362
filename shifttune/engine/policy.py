"""The switch: which layout runs each step, and the per-step record every policy decision leaves.

`threshold`: scheduled tokens <= threshold -> TP mode (all P ranks, low latency), else SP x TP mode
(Arctic Inference's rule). `tp` / `sp`: forced, for comparisons. A policy sees the whole step, so a
profile-driven policy (predicted time of both modes) plugs in with the same interface.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

TP, SP = "tp", "sp"


@dataclass(frozen=True)
class StepShape:
    num_tokens: int
    num_seqs: int
    num_prefill_tokens: int
    num_decode_tokens: int
    context_lens: tuple[int, ...]


@dataclass(frozen=True)
class StepStats:
    mode: str
    shape: StepShape
    duration_s: float
    timestamp: float = field(default_factory=time.time)


class ShiftPolicy(Protocol):
    name: str

    def choose(self, shape: StepShape) -> str: ...


@dataclass
class ThresholdPolicy:
    threshold: int
    name: str = "threshold"

    def choose(self, shape: StepShape) -> str:
        return TP if shape.num_tokens <= self.threshold else SP


@dataclass
class FixedPolicy:
    mode: str
    name: str = "fixed"

    def __post_init__(self) -> None:
        self.name = self.mode

    def choose(self, shape: StepShape) -> str:
        return self.mode


def make_policy(name: str, threshold: int, sp: int) -> ShiftPolicy:
    if sp == 1:  # one layout only: every step is plain TP
        return FixedPolicy(TP)
    if name == "threshold":
        return ThresholdPolicy(threshold)
    return FixedPolicy(name)
