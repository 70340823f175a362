"""Where the serving view's numbers come from: a running server over HTTP (`ServerSource`), or a fixed
snapshot (`StaticSource`, for tests and screenshots).

A shifttune server is read in full: `/metrics` (rates, latencies, shares of steps and step time per mode)
every `metrics_every_s`, and `/v1/shifttune/live` at every poll (each step's mode and tokens, the last
requests, the policy). A vLLM server is read from `/metrics` alone, by vLLM's documented metric names;
there the mode of a step is estimated from `vllm:iteration_tokens_total` (tokens per step) against a
threshold, and one timeline cell is one scrape interval. Policy changes go to our server's
`POST /v1/shifttune/policy` (with the API key when one is set).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from typing import Callable, Protocol

import httpx

from shifttune.bench.config import server_base_url
from shifttune.tui.scrape import Scrape, Window, bucket_delta, parse, quantile
from shifttune.tui.snapshot import SP, TP, ModeShare, Quantiles, RequestRow, ServingSnapshot, StepCell

DEFAULT_THRESHOLD = 256  # for estimating a vLLM server's modes when none is given (Arctic's documented default)
TPOT_SERIES = (  # first found wins: per-request TPOT (vLLM V1, ours), V0's name, then per-token ITL
    ("vllm:request_time_per_output_token_seconds", "TPOT"),
    ("vllm:time_per_output_token_seconds", "TPOT"),
    ("vllm:inter_token_latency_seconds", "ITL"),
)


class PolicyError(Exception):
    """A policy change the server refused (or that this server cannot take)."""


class Source(Protocol):
    can_set_policy: bool

    async def poll(self) -> ServingSnapshot: ...

    async def set_policy(self, policy: str | None = None, threshold: int | None = None) -> tuple[str, int]: ...

    async def aclose(self) -> None: ...


class StaticSource:
    """Always the same snapshot; policy changes are recorded and shown."""

    def __init__(self, snapshot: ServingSnapshot):
        self.snapshot, self.calls = snapshot, []
        self.can_set_policy = snapshot.kind == "shifttune"

    async def poll(self) -> ServingSnapshot:
        return self.snapshot

    async def set_policy(self, policy: str | None = None, threshold: int | None = None) -> tuple[str, int]:
        self.calls.append((policy, threshold))
        s = self.snapshot
        self.snapshot = dataclasses.replace(s, policy=policy or s.policy,
                                            threshold=s.threshold if threshold is None else threshold)  # fmt: skip
        return self.snapshot.policy, self.snapshot.threshold

    async def aclose(self) -> None:
        pass


def _vllm_estimate(buckets: list[tuple[float, float]], threshold: float) -> tuple[float, float]:
    """(steps at or below the threshold, steps above) from cumulative tokens-per-step buckets, linear in a bucket."""
    tp = sp = 0.0
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        n = cum - below
        if le <= threshold:
            tp += n
        elif lower >= threshold or math.isinf(le):
            sp += n
        else:
            part = (threshold - lower) / (le - lower)
            tp, sp = tp + n * part, sp + n * (1 - part)
        lower, below = le, cum
    return tp, sp


class ServerSource:
    def __init__(self, url: str, api_key: str | None = None, threshold: int | None = None,
                 client: httpx.AsyncClient | None = None, metrics_every_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):  # fmt: skip
        self.url = server_base_url(url)
        self.api_key_given = bool(api_key)
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = client or httpx.AsyncClient(base_url=self.url, timeout=2.0, headers=headers)
        self.threshold_arg = threshold
        self.metrics_every_s, self.clock, self.wall = metrics_every_s, clock, wall
        self.window = Window(span_s=60.0, rate_s=5.0)
        self.kind = ""
        self.status = "connecting…"
        self.cells: deque[StepCell] = deque(maxlen=1024)
        self.last_step = 0
        self.live: dict | None = None
        self.live_status = ""
        self._last_scrape = -math.inf

    @property
    def can_set_policy(self) -> bool:
        return self.kind == "shifttune"

    async def aclose(self) -> None:
        await self.http.aclose()

    # ---- polling ----------------------------------------------------------------------------------
    async def poll(self) -> ServingSnapshot:
        now = self.clock()
        try:
            if not self.kind or now - self._last_scrape >= self.metrics_every_s:
                await self._scrape(now)
            if self.kind == "shifttune":
                await self._poll_live()
        except httpx.HTTPError as e:
            self.status = f"cannot reach {self.url}: {str(e) or type(e).__name__}"
        return self.snapshot()

    async def _scrape(self, now: float) -> None:
        r = await self.http.get("/metrics")
        if r.status_code != 200:
            self.status = f"{self.url}/metrics answered {r.status_code}"
            return
        scrape = parse(r.text, now)
        self._last_scrape = now
        kind = "shifttune" if scrape.has("shifttune:steps_total") else "vllm" if _has_vllm(scrape) else ""
        if not kind:
            self.status = f"no vLLM or shifttune metrics at {self.url}/metrics"
            return
        previous = self.window.latest
        self.kind, self.status = kind, ""
        self.window.add(scrape)
        if kind == "vllm":
            self._vllm_cell(scrape, previous)

    async def _poll_live(self) -> None:
        r = await self.http.get("/v1/shifttune/live", params={"after": self.last_step})
        if r.status_code != 200:
            refused = "this server refused this --api-key" if self.api_key_given else "this server wants --api-key"
            self.live_status = refused if r.status_code in (401, 403) else f"live: {r.status_code}"
            return
        live = r.json()
        self.live, self.live_status = live, ""
        if live["num_steps"] < self.last_step:  # the server restarted
            self.cells.clear()
        for _, mode, tokens, _, seconds in live["steps"]:
            self.cells.append(StepCell(mode, tokens, seconds))
        self.last_step = live["num_steps"]

    def _vllm_cell(self, scrape: Scrape, previous: Scrape | None) -> None:
        """One timeline cell for the steps vLLM ran since the last scrape, its mode estimated."""
        if previous is None:
            return
        name = "vllm:iteration_tokens_total"
        steps = (scrape.value(f"{name}_count") or 0.0) - (previous.value(f"{name}_count") or 0.0)
        if steps <= 0:
            return
        tokens = ((scrape.value(f"{name}_sum") or 0.0) - (previous.value(f"{name}_sum") or 0.0)) / steps
        tp, sp = _vllm_estimate(bucket_delta(scrape.buckets(name), previous.buckets(name)), self._threshold())
        self.cells.append(StepCell(TP if tp >= sp else SP, tokens))

    def _threshold(self) -> int:
        return self.threshold_arg if self.threshold_arg is not None else DEFAULT_THRESHOLD

    # ---- the snapshot -------------------------------------------------------------------------------
    def snapshot(self) -> ServingSnapshot:
        m = self.window.latest
        if m is None:
            return ServingSnapshot(kind=self.kind, url=self.url, status=self.status)
        tpot_name, tpot = "TPOT", Quantiles()
        for series, label in TPOT_SERIES:
            if m.has(f"{series}_count"):
                tpot_name, tpot = label, self._quantiles(series)
                break
        kv = m.value("vllm:kv_cache_usage_perc")
        common = dict(
            kind=self.kind,
            url=self.url,
            status=self.status or self.live_status,
            model=next(iter(m.by_label("vllm:num_requests_running", "model_name")), None),
            cells=tuple(self.cells),
            mode=self.cells[-1].mode if self.cells else None,
            running=m.value("vllm:num_requests_running"),
            waiting=m.value("vllm:num_requests_waiting"),
            kv_usage=kv if kv is not None else m.value("vllm:gpu_cache_usage_perc"),
            prompt_tps=self.window.rate("vllm:prompt_tokens_total"),
            generation_tps=self.window.rate("vllm:generation_tokens_total"),
            ttft=self._quantiles("vllm:time_to_first_token_seconds"),
            tpot=tpot,
            tpot_name=tpot_name,
            latency_span=self._span(),
        )
        if self.kind == "vllm":
            return self._vllm_snapshot(m, common)
        return self._shifttune_snapshot(m, common)

    def _shifttune_snapshot(self, m: Scrape, common: dict) -> ServingSnapshot:
        live = self.live or {}
        steps = self.window.delta("shifttune:steps_total", "mode")
        seconds = self.window.delta("shifttune:step_seconds_sum", "mode")
        span = self._span()
        if sum(steps.values()) == 0:  # idle for the whole window: since the start
            steps, seconds, span = m.by_label("shifttune:steps_total", "mode"), m.by_label(
                "shifttune:step_seconds_sum", "mode"), "since start"  # fmt: skip
        policies = [p for p, v in m.by_label("shifttune:shift_policy", "policy").items() if v == 1]
        modes = [p for p, v in m.by_label("shifttune:parallel_mode", "mode").items() if v == 1]
        threshold = m.value("shifttune:shift_threshold")
        if common["mode"] is None and sum(m.by_label("shifttune:steps_total", "mode").values()) and modes:
            common["mode"] = modes[0]
        requests = None
        if "requests" in live:
            requests = tuple(RequestRow(r["id"], r["prompt_tokens"], r["output_tokens"], r["ttft_s"], r["state"])
                             for r in live["requests"])  # fmt: skip
        return ServingSnapshot(
            **common | {"model": live.get("model", common["model"])},
            tp=live.get("tp"),
            sp=live.get("sp"),
            device=live.get("device"),
            policy=live.get("policy", policies[0] if policies else None),
            threshold=live.get("threshold", int(threshold) if threshold is not None else None),
            uptime_s=live.get("uptime_s"),
            share=ModeShare(_shares(steps), _shares(seconds), span),
            kv_blocks=tuple(live["kv_blocks"]) if live.get("kv_blocks") else None,
            requests=requests,
        )

    def _vllm_snapshot(self, m: Scrape, common: dict) -> ServingSnapshot:
        threshold = self._threshold()
        tp, sp = _vllm_estimate(self.window.histogram("vllm:iteration_tokens_total"), threshold)
        started = m.value("process_start_time_seconds")
        given = "" if self.threshold_arg is not None else ", default"
        return ServingSnapshot(
            **common,
            threshold=threshold,
            uptime_s=self.wall() - started if started else None,
            cell_unit=f"{self.metrics_every_s:g} s",
            estimated=True,
            share=ModeShare(_shares({TP: tp, SP: sp}), None, f"{self._span()}, estimated at {threshold}{given}"),
        )

    def _quantiles(self, name: str) -> Quantiles:
        buckets = self.window.histogram(name)
        return Quantiles(quantile(0.5, buckets), quantile(0.99, buckets))

    def _span(self) -> str:
        scrapes = self.window.scrapes
        if len(scrapes) < 2:
            return "since start"
        return f"last {min(self.window.span_s, scrapes[-1].time - scrapes[0].time):.0f} s"

    # ---- keys -------------------------------------------------------------------------------------
    async def set_policy(self, policy: str | None = None, threshold: int | None = None) -> tuple[str, int]:
        if not self.can_set_policy:
            raise PolicyError("policy keys act on a shifttune server only")
        body = {k: v for k, v in (("policy", policy), ("threshold", threshold)) if v is not None}
        try:
            r = await self.http.post("/v1/shifttune/policy", json=body)
        except httpx.HTTPError as e:
            raise PolicyError(f"cannot reach {self.url}: {e}") from None
        if r.status_code != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise PolicyError(f"the server refused ({r.status_code}): {message}")
        state = r.json()
        if self.live is not None:
            self.live |= state
        return state["policy"], state["threshold"]


def _has_vllm(scrape: Scrape) -> bool:
    return any(name.startswith("vllm:") for name in scrape.series)


def _shares(values: dict[str, float]) -> dict[str, float]:
    total = sum(values.get(m, 0.0) for m in (TP, SP))
    return {m: values.get(m, 0.0) / total for m in (TP, SP)} if total > 0 else {}
