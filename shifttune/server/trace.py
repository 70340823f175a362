"""Per-request and per-step timestamps of a running server: where a request's time goes between the HTTP
handler, the pipe, the engine core's loop and the SSE stream (`GET /v1/shifttune/trace`; `recommend
--validate` reads it to split TTFT into its parts).

Both processes keep bounded rings of `time.monotonic()` stamps (one clock for every process of a host):
- the engine core (`CoreTrace`): per request, when its add message was applied, when its prompt was first
  scheduled, when its first token was read back (the engine's `first_token_time`), and when the step
  message carrying that token was handed on and written to the pipe; per engine step, when it was
  scheduled (its launch) and read back, its mode, tokens, prefill tokens, sequences, mean context
  (tokens each sequence holds after it) and device time.
- the HTTP process (`HttpTrace`): per request, when the handler had it parsed, when its engine request
  was queued for the core and written to the pipe, when its first output came back from the core and
  when the SSE chunk carrying it was handed to the transport.
A few stamps and a ring append per step and per request: cheap enough to stay on.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque

from shifttune.engine.scheduler import SchedulerOutput

STEP_RING = 65536
REQUEST_RING = 8192
ACTIVE_LIMIT = 65536  # requests in flight that are tracked (a runaway client must not grow it forever)

CORE_FIELDS = ("core_in", "scheduled", "first_token", "handed", "sent")
HTTP_FIELDS = ("http", "queued", "piped", "http_first", "sse_first")
# one row per engine step, from its launch (when it was scheduled) to the loop's read-back of its tokens
STEP_FIELDS = ("scheduled", "completed", "mode", "tokens", "prefill_tokens", "seqs", "mean_context", "device_ms")


class _Ring:
    """Records by request id while in flight, then in a bounded ring."""

    def __init__(self, fields: tuple[str, ...], done_limit: int = REQUEST_RING):
        self.fields = fields
        self.active: OrderedDict[str, list] = OrderedDict()
        self.done: deque[tuple[str, list]] = deque(maxlen=done_limit)

    def start(self, request_id: str) -> list:
        rec = self.active[request_id] = [None] * len(self.fields)
        if len(self.active) > ACTIVE_LIMIT:
            self.done.append(self.active.popitem(last=False))
        return rec

    def get(self, request_id: str) -> list | None:
        return self.active.get(request_id)

    def finish(self, request_id: str) -> None:
        rec = self.active.pop(request_id, None)
        if rec is not None:
            self.done.append((request_id, rec))

    def rows(self) -> list[tuple[str, list]]:
        return [*self.done, *self.active.items()]


class CoreTrace:
    """The engine core's side (its loop calls these; `on_schedule` hangs on the scheduler)."""

    def __init__(self, steps: int = STEP_RING):
        self.requests = _Ring(CORE_FIELDS)
        self.steps: deque[list] = deque(maxlen=steps)
        self.sent: deque[tuple[int, float]] = deque(maxlen=steps)  # (message number, when written to the pipe)
        self.num_messages = 0
        self._launched: deque[list] = deque()  # rows of steps launched and not read back yet (async: one)

    def added(self, request_id: str) -> None:
        self.requests.start(request_id)[0] = time.monotonic()

    def on_schedule(self, out: SchedulerOutput) -> None:
        """A step is about to be launched (its requests' first scheduling is stamped here)."""
        now = time.monotonic()
        prefill = context = 0
        for s in out.scheduled:
            seq = s.seq
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                prefill += s.num_new_tokens
            context += seq.num_computed_tokens + s.num_new_tokens
            if s.is_new:
                rec = self.requests.get(seq.request_id)
                if rec is not None and rec[1] is None:
                    rec[1] = now
        n = len(out.scheduled)
        row = [now, None, None, out.num_tokens, prefill, n, context / n, None]
        self._launched.append(row)
        self.steps.append(row)

    def completed(self, when: float, mode: str, device_s: float) -> None:
        """The loop read back the oldest launched step (the engine's `_complete`)."""
        if self._launched:
            row = self._launched.popleft()
            row[1], row[2], row[7] = when, mode, 1e3 * device_s

    def handed(self, outputs, when: float) -> int:
        """A step message with these outputs goes to the pipe; returns its number (for `message_sent`)."""
        self.num_messages += 1
        for out in outputs:
            rec = self.requests.get(out.request_id)
            if rec is not None:
                if rec[3] is None and out.outputs[0].token_ids:
                    rec[2] = out.metrics.get("first_token_time")
                    rec[3], rec[4] = when, self.num_messages
                if out.finished:
                    self.requests.finish(out.request_id)
        return self.num_messages

    def message_sent(self, number: int) -> None:
        """Once message `number` is in the pipe (from the thread that wrote it)."""
        self.sent.append((number, time.monotonic()))

    def finished(self, request_id: str) -> None:
        self.requests.finish(request_id)

    def to_json(self, since: float = 0.0) -> dict:
        sent = dict(self.sent)
        requests = {}
        for rid, rec in self.requests.rows():
            if rec[0] is not None and rec[0] >= since:
                row = dict(zip(CORE_FIELDS, rec))
                row["sent"] = sent.get(rec[4]) if rec[4] is not None else None
                requests[rid] = row
        return {"requests": requests, "steps": [list(s) for s in self.steps if s[0] >= since]}


class HttpTrace:
    """The HTTP process's side (AsyncEngine and Serving call these)."""

    def __init__(self):
        self.requests = _Ring(HTTP_FIELDS + ("prompt_tokens",))

    def received(self, request_id: str, prompt_tokens: int) -> None:
        rec = self.requests.start(request_id)
        rec[0], rec[5] = time.monotonic(), prompt_tokens

    def mark(self, request_id: str, index: int) -> None:
        """Stamps field `index` of HTTP_FIELDS now, unless it is stamped already."""
        rec = self.requests.get(request_id)
        if rec is not None and rec[index] is None:
            rec[index] = time.monotonic()

    def finished(self, request_id: str) -> None:
        self.requests.finish(request_id)

    def merged(self, core: dict, since: float = 0.0) -> dict:
        """This process's requests (received at or after `since`) joined with the core's by request id,
        in order of arrival, and the core's steps."""
        fields = HTTP_FIELDS + ("prompt_tokens",)
        rows = []
        for rid, rec in self.requests.rows():
            if rec[0] is None or rec[0] < since:
                continue
            rows.append({"id": rid} | dict(zip(fields, rec)) | core["requests"].get(rid, dict.fromkeys(CORE_FIELDS)))
        rows.sort(key=lambda r: r["http"])
        return {"clock": "time.monotonic() of the server's host, seconds", "now": time.monotonic(),
                "request_fields": ["id", *fields, *CORE_FIELDS], "step_fields": list(STEP_FIELDS),
                "requests": rows, "steps": core["steps"]}  # fmt: skip
