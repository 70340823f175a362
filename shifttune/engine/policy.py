"""The switch: which layout runs each step, and the per-step record every policy decision leaves.

`threshold`: scheduled tokens <= threshold -> TP mode (all P ranks, low latency), else SP x TP mode
(Arctic Inference's rule). `profile`: predict both modes' time for this step from a measured profile
(tokens and context) and take the faster. `tp` / `sp`: forced, for comparisons.
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

    @property
    def mean_context(self) -> float:
        return sum(self.context_lens) / max(1, len(self.context_lens))


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


@dataclass
class ProfilePolicy:
    """Per step, the mode the profile predicts to be faster for this many tokens at this context."""

    tp_model: object  # profile.step_model.StepTimeModel
    sp_model: object
    name: str = "profile"

    def choose(self, shape: StepShape) -> str:
        ctx = shape.mean_context
        return SP if self.sp_model.predict(shape.num_tokens, ctx) < self.tp_model.predict(shape.num_tokens, ctx) else TP


def make_policy(name: str, threshold: int, tp: int, sp: int, profile_path: str | None = None) -> ShiftPolicy:
    if sp == 1:  # one layout only: every step is plain TP
        return FixedPolicy(TP)
    if name == "threshold":
        return ThresholdPolicy(threshold)
    if name == "profile":
        from shifttune.config import ConfigError
        from shifttune.profile.schema import load_profile
        from shifttune.profile.step_model import StepTimeModel

        if not profile_path:
            raise ConfigError("shift_policy='profile' needs shift_profile=<profile JSON from `shifttune profile`>")
        profile = load_profile(profile_path)
        if profile.world_size != tp * sp:
            raise ConfigError(
                f"profile {profile_path} was measured on {profile.world_size} ranks, not SP x TP = {tp * sp}"
            )
        return ProfilePolicy(StepTimeModel(profile, TP, tp, sp), StepTimeModel(profile, SP, tp, sp))
    return FixedPolicy(name)
