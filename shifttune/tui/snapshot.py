"""What the serving view shows at one refresh, as plain data: a source (`sources.py`) builds it from a
server, the view (`serving_view.py`) only draws it, and tests build it by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# NOTE: 4 refreshes a second: at 10 a second the view took ~20% of a core (Textual's frame + two GETs) on the
# 2-core CPU machine, where that core is the engine's; at 4 it takes ~9% (docs/tui.md).
REFRESH_S = 0.25
TP, SP = "tp", "sp"  # as shifttune.config.MODES (the view does not import the engine's config)
MODE_NAMES = {TP: "TP", SP: "SP×TP"}


@dataclass(frozen=True)
class StepCell:
    """One engine step (or, estimated from a vLLM scrape, the steps of one scrape interval)."""

    mode: str  # TP or SP
    tokens: float  # scheduled tokens (mean over the interval when estimated)
    duration_s: float | None = None


@dataclass(frozen=True)
class RequestRow:
    id: str
    prompt_tokens: int
    output_tokens: int
    ttft_s: float | None
    state: str


@dataclass(frozen=True)
class Quantiles:
    p50: float | None = None
    p99: float | None = None


@dataclass(frozen=True)
class ModeShare:
    """Share of steps and of step time per mode; `span` says over what (e.g. "last 60 s")."""

    steps: dict[str, float] = field(default_factory=dict)
    time: dict[str, float] | None = None  # None where the server does not report step time per mode
    span: str = ""


@dataclass(frozen=True)
class ServingSnapshot:
    kind: str  # "shifttune" | "vllm" | "" (nothing reached yet)
    url: str
    status: str = ""  # one line when something is wrong or pending ("cannot reach …")
    model: str | None = None
    tp: int | None = None
    sp: int | None = None
    device: str | None = None
    policy: str | None = None
    threshold: int | None = None
    uptime_s: float | None = None
    mode: str | None = None  # of the last step
    cells: tuple[StepCell, ...] = ()  # oldest first
    cell_unit: str = "step"  # what one cell is
    estimated: bool = False  # modes inferred from token counts against the threshold (vLLM)
    share: ModeShare = ModeShare()
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # 0..1
    kv_blocks: tuple[int, int] | None = None  # used, total
    prompt_tps: float | None = None
    generation_tps: float | None = None
    ttft: Quantiles = Quantiles()
    tpot: Quantiles = Quantiles()
    tpot_name: str = "TPOT"
    latency_span: str = ""
    requests: tuple[RequestRow, ...] | None = None  # None: the server does not say

    @property
    def ranks(self) -> int | None:
        return self.tp * self.sp if self.tp and self.sp else None
