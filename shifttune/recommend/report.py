"""`shifttune recommend` as a library: profile + workload + objectives in, the whole plan as data out.

`recommend()` returns what `shifttune recommend --json` prints; the CLI only renders it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from shifttune.config import ConfigError
from shifttune.engine.profile_schema import Profile, load_profile
from shifttune.recommend.planner import Plan, plan
from shifttune.recommend.shipped import pick_shipped_profile
from shifttune.recommend.workload import Workload, load_azure_trace


@dataclass
class RecommendRequest:
    profile: Path | None = None  # None: the shipped profile of `model` on `gpus`
    model: str | None = None
    gpus: int | None = None
    context: int | None = None  # where the threshold is read; default: the input length, else the median
    rates: list[float] | None = None  # Poisson arrival rates to predict at
    trace: Path | None = None  # or an Azure trace CSV
    input_len: int = 2048
    output_len: int = 256
    spread: float = 0.25
    num_requests: int = 300
    slo_ttft_ms: float | None = None  # p99 objectives
    slo_tpot_ms: float | None = None

    def validate(self) -> None:
        for name, bad, rule in (
            ("context", self.context is not None and self.context < 1, "must be >= 1"),
            ("input_len", self.input_len < 1, "must be >= 1"),
            ("output_len", self.output_len < 1, "must be >= 1"),
            ("num_requests", self.num_requests < 1, "must be >= 1"),
            ("spread", not 0 <= self.spread < 1, "must be in [0, 1)"),
            ("rate", self.rates is not None and not all(math.isfinite(r) and r > 0 for r in self.rates),
             "must be positive numbers"),
            ("slo_ttft", self.slo_ttft_ms is not None and not self.slo_ttft_ms > 0, "must be > 0 (ms)"),
            ("slo_tpot", self.slo_tpot_ms is not None and not self.slo_tpot_ms > 0, "must be > 0 (ms)"),
        ):  # fmt: skip
            if bad:
                raise ConfigError(rule, field=name)

    def workloads(self) -> list[Workload]:
        if self.trace is not None:
            return [Workload(trace=load_azure_trace(self.trace, limit=self.num_requests))]
        return [
            Workload(rate=r, num_requests=self.num_requests, input_len=self.input_len, output_len=self.output_len,
                     spread=self.spread)
            for r in self.rates or []
        ]  # fmt: skip


def meets_slo(prediction: dict, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    return (slo_ttft_ms is None or prediction["ttft_p99_ms"] <= slo_ttft_ms) and (
        slo_tpot_ms is None or prediction["tpot_p99_ms"] <= slo_tpot_ms
    )


def recommend(req: RecommendRequest) -> tuple[Profile, Plan, dict]:
    """The profile, the plan, and the plan as data (with the SLO verdicts when objectives are given)."""
    req.validate()
    path = req.profile or pick_shipped_profile(req.model, req.gpus)
    prof = load_profile(path)
    context = req.context or (req.input_len if req.rates else None)
    result = plan(prof, context, req.workloads(), str(path))
    data = result.to_dict() | {"profile": str(path)}
    if req.slo_ttft_ms is not None or req.slo_tpot_ms is not None:
        data["slo"] = {"ttft_p99_ms": req.slo_ttft_ms, "tpot_p99_ms": req.slo_tpot_ms}
        for p in data["predictions"]:
            p["meets_slo"] = meets_slo(p, req.slo_ttft_ms, req.slo_tpot_ms)
        rated = [p for p in data["predictions"] if p["rate"] is not None]
        data["max_rate_meeting_slo"] = {
            label: max((p["rate"] for p in rated if p["label"] == label and p["meets_slo"]), default=None)
            for label in dict.fromkeys(p["label"] for p in rated)
        }
    return prof, result, data
