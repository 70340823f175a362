"""The switch: which mode (TP or SP x TP) runs each step.

`threshold`: scheduled tokens <= threshold -> TP mode (all P ranks, low latency), else SP x TP mode
(Arctic Inference's rule). `profile`: predict both modes' time for this step from a measured profile
(tokens and context) and take the faster. `tp` / `sp`: forced, for comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from shifttune.config import SP, TP, ConfigError, ModelConfig
from shifttune.engine.profile_schema import MODEL_FIELDS, Profile, load_profile
from shifttune.engine.stats import StepShape
from shifttune.engine.step_model import StepTimeModel


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

    tp_model: StepTimeModel
    sp_model: StepTimeModel
    name: str = "profile"

    def choose(self, shape: StepShape) -> str:
        ctx = shape.mean_context
        return SP if self.sp_model.predict(shape.num_tokens, ctx) < self.tp_model.predict(shape.num_tokens, ctx) else TP


def load_policy_profile(profile_path: str | None, tp: int, sp: int, model: ModelConfig | None = None) -> Profile:
    """The profile the profile policy runs on, checked: of `model` (when given) and of P = tp x sp ranks."""
    if not profile_path:
        raise ConfigError("the profile policy needs a profile file from `shifttune profile`", field="shift_profile")
    profile = load_profile(profile_path)
    theirs = {k: profile.model.get(k) for k in MODEL_FIELDS}
    if model is not None and theirs != {k: getattr(model, k) for k in MODEL_FIELDS}:
        raise ConfigError(f"{profile_path} is a profile of {profile.model.get('name')!r}, whose shapes are not "
                          "this model's", field="shift_profile")  # fmt: skip
    if profile.world_size != tp * sp:
        raise ConfigError(
            f"{profile_path} was measured on {profile.world_size} ranks, not SP x TP = {tp * sp}",
            field="shift_profile",
        )
    return profile


def make_policy(
    name: str, threshold: int, tp: int, sp: int, profile_path: str | None = None, model: ModelConfig | None = None
) -> ShiftPolicy:
    """The policy `name`; "profile" reads `profile_path` (`load_policy_profile`; checked even at SP = 1, where every
    step is plain TP)."""
    if name == "profile":
        profile = load_policy_profile(profile_path, tp, sp, model)
    if sp == 1:  # one layout only: every step is plain TP
        return FixedPolicy(TP)
    if name == "threshold":
        return ThresholdPolicy(threshold)
    if name == "profile":
        return ProfilePolicy(StepTimeModel(profile, TP, tp, sp), StepTimeModel(profile, SP, tp, sp))
    return FixedPolicy(name)
