"""Prometheus metrics of a running server: vLLM V1's names and meanings where they match (so vLLM
dashboards work), plus shifttune's own (`shifttune:*`: the current mode, steps and step time per mode,
the policy and its threshold). It also keeps the recent steps and requests for live views (`live.py`).

The server's event loop calls `observe_step` with the core's report after every step; `/metrics` renders
the registry. Request latencies (TTFT, ITL, E2E) are measured here, from when a request arrived.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

from shifttune.config import MODES, SHIFT_POLICIES
from shifttune.engine.sequence import RequestOutput
from shifttune.server.engine_core import StepReport
from shifttune.server.live import LiveLog

LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                   20.0, 40.0, 80.0)  # fmt: skip
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
disable_created_metrics()  # as vLLM: no *_created series next to every counter


class ServerMetrics:
    def __init__(self, model_name: str):
        self.registry = r = CollectorRegistry()
        m = ["model_name"]
        self.running = Gauge("vllm:num_requests_running", "Requests in the running batch.", m, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Requests waiting to run.", m, registry=r)
        self.kv_usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage, 1 = full.", m, registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prefill tokens processed.", m, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Tokens generated.", m, registry=r)
        self.preemptions = Counter("vllm:num_preemptions", "Preemptions (recompute).", m, registry=r)
        self.success = Counter("vllm:request_success", "Finished requests.", [*m, "finished_reason"], registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Time to first token.", m, buckets=LATENCY_BUCKETS,
                              registry=r)  # fmt: skip
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Time between tokens.", m, buckets=LATENCY_BUCKETS,
                             registry=r)  # fmt: skip
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Request latency.", m, buckets=LATENCY_BUCKETS,
                             registry=r)  # fmt: skip
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds", "Per request: (E2E - TTFT) / (tokens - 1).",
                              m, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.iteration_tokens = Histogram("vllm:iteration_tokens_total", "Tokens per engine step.", m,
                                          buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
        self.mode = Gauge("shifttune:parallel_mode", "1 for the mode of the last step.", ["mode"], registry=r)
        self.steps = Counter("shifttune:steps", "Engine steps per mode.", ["mode"], registry=r)
        self.step_seconds = Histogram("shifttune:step_seconds", "Step time (model + sampling) per mode.", ["mode"],
                                      buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.threshold = Gauge("shifttune:shift_threshold", "Tokens per step up to which TP mode runs.", registry=r)
        self.policy = Gauge("shifttune:shift_policy", "1 for the active shift policy.", ["policy"], registry=r)
        self.kv_blocks_used = Gauge("shifttune:kv_blocks_used", "KV-cache blocks held by requests.", registry=r)
        self.model = model_name
        # children bound to this model's label once: a labels() lookup per output per step adds up
        self._generation, self._itl, self._ttft, self._e2e, self._tpot = (
            self.generation_tokens.labels(model_name),
            self.itl.labels(model_name),
            self.ttft.labels(model_name),
            self.e2e.labels(model_name),
            self.tpot.labels(model_name),
        )
        self.live = LiveLog()
        self._last_token: dict[str, float] = {}
        self._first_token: dict[str, tuple[float, int]] = {}  # request -> (time of its first token, tokens since)
        self._arrival: dict[str, float] = {}
        self._preemptions_seen = 0
        for mode in MODES:
            self.mode.labels(mode).set(0)
            self.steps.labels(mode)
        self.running.labels(model_name).set(0)
        self.waiting.labels(model_name).set(0)

    def observe_policy(self, policy: str, threshold: int) -> None:
        self.threshold.set(threshold)
        for name in SHIFT_POLICIES:
            self.policy.labels(name).set(1 if name == policy else 0)

    def arrived(self, request_id: str, prompt_tokens: int = 0) -> None:
        self._arrival[request_id] = time.monotonic()
        self.live.arrived(request_id, prompt_tokens)

    def observe_step(self, report: StepReport, outputs: list[RequestOutput]) -> None:
        """Everything one step changed: queue, cache, tokens, the mode, per-request latencies (a report without a
        step, `mode` None: only the queue and the cache)."""
        m, now = self.model, time.monotonic()
        self.running.labels(m).set(report.running)
        self.waiting.labels(m).set(report.waiting)
        self.kv_blocks_used.set(report.kv_blocks_used)
        self.kv_usage.labels(m).set(report.kv_blocks_used / report.kv_blocks_total if report.kv_blocks_total else 0.0)
        self.preemptions.labels(m).inc(report.num_preemptions - self._preemptions_seen)
        self._preemptions_seen = report.num_preemptions
        self.live.step(report)
        if report.mode is None:
            return
        for mode in MODES:
            self.mode.labels(mode).set(1 if mode == report.mode else 0)
        self.steps.labels(report.mode).inc()
        self.step_seconds.labels(report.mode).observe(report.duration_s)
        self.iteration_tokens.labels(m).observe(report.num_tokens)
        self.prompt_tokens.labels(m).inc(report.num_prefill_tokens)
        for out in outputs:
            self._observe_request(out, now)

    def _observe_request(self, out: RequestOutput, now: float) -> None:
        rid = out.request_id
        if rid not in self._arrival:
            # NOTE: a step already under way when a client left still returns that request's tokens; it was counted
            # as aborted (`aborted`), and its tokens are not a first token again
            return
        new = len(out.outputs[0].token_ids)
        self._generation.inc(new)
        last = self._last_token.get(rid)
        ttft = None
        if last is None and new:
            ttft = now - self._arrival.get(rid, now)
            self._ttft.observe(ttft)
            self._first_token[rid] = (now, new - 1)
        elif last is not None and new:
            self._itl.observe(now - last)
            first, since = self._first_token.get(rid, (now, 0))
            self._first_token[rid] = (first, since + new)
        if new:
            self._last_token[rid] = now
        reason = None
        if out.finished:
            reason = out.outputs[0].finish_reason or "abort"
            self._last_token.pop(rid, None)
            self._e2e.observe(now - self._arrival.pop(rid, now))
            first, since = self._first_token.pop(rid, (now, 0))
            if since > 0:
                self._tpot.observe((now - first) / since)
            self.success.labels(self.model, reason).inc()
        self.live.output(rid, new, ttft, reason)

    def aborted(self, request_id: str) -> None:
        """A request whose client went away (counted as finished with reason abort)."""
        self._last_token.pop(request_id, None)
        self._first_token.pop(request_id, None)
        self.live.aborted(request_id)
        if self._arrival.pop(request_id, None) is not None:
            self.success.labels(self.model, "abort").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
