"""The server's recent history for live views (`shifttune serve`'s terminal view, `shifttune top`): the last
steps (mode, scheduled tokens, step time) and the last requests (prompt and output tokens, TTFT, state).

`ServerMetrics` feeds it from the engine core's reports on the event loop (a few deque and dict operations
per step); `GET /v1/shifttune/live?after=N` returns the steps numbered above N, so a viewer polling it
sees every step while it keeps up, and the latest ones when it does not.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import asdict, dataclass

from shifttune.server.engine_core import StepReport

STEP_HISTORY = 1024
REQUEST_HISTORY = 32


@dataclass
class RequestRecord:
    id: str
    prompt_tokens: int
    output_tokens: int = 0
    ttft_s: float | None = None
    state: str = "waiting"  # waiting -> running (first token) -> its finish reason (length, stop, abort)


class LiveLog:
    def __init__(self, steps: int = STEP_HISTORY, requests: int = REQUEST_HISTORY):
        self.started = time.monotonic()
        self.num_steps = 0
        self.steps: deque[tuple[int, str, int, int, float]] = deque(maxlen=steps)  # seq, mode, tokens, prefill, s
        self.requests: OrderedDict[str, RequestRecord] = OrderedDict()
        self.max_requests = requests
        self.kv_blocks: tuple[int, int] | None = None  # used, total (after the first step)

    def arrived(self, request_id: str, prompt_tokens: int) -> None:
        self.requests[request_id] = RequestRecord(request_id, prompt_tokens)
        if len(self.requests) > self.max_requests:
            self.requests.popitem(last=False)

    def step(self, report: StepReport) -> None:
        """A step's report, or the state without a step (`mode` None)."""
        self.kv_blocks = (report.kv_blocks_used, report.kv_blocks_total)
        if report.mode is None:
            return
        self.num_steps += 1
        self.steps.append((self.num_steps, report.mode, report.num_tokens, report.num_prefill_tokens,
                           report.duration_s))  # fmt: skip

    def output(self, request_id: str, new_tokens: int, ttft_s: float | None, finish_reason: str | None) -> None:
        """One request's delta of one step; ttft_s with its first token, finish_reason when it ended."""
        rec = self.requests.get(request_id)
        if rec is None:
            return
        rec.output_tokens += new_tokens
        if ttft_s is not None:
            rec.ttft_s, rec.state = ttft_s, "running"
        if finish_reason is not None:
            rec.state = finish_reason

    def aborted(self, request_id: str) -> None:
        rec = self.requests.get(request_id)
        if rec is not None and rec.state in ("waiting", "running"):
            rec.state = "abort"

    def to_json(self, after: int = 0) -> dict:
        return {
            "uptime_s": time.monotonic() - self.started,
            "num_steps": self.num_steps,
            "steps": [list(s) for s in self.steps if s[0] > after],
            "requests": [asdict(r) for r in self.requests.values()],
            "kv_blocks": list(self.kv_blocks) if self.kv_blocks else None,
        }
