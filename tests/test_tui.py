"""The live serving view (`shifttune serve` in a terminal, `shifttune top`) driven for real.

Textual's Pilot drives the app against `shifttune serve` on 2 CPU ranks: its keys change the engine's
threshold and policy (seen in the engine's steps and in /metrics), and the mode badge follows the steps
the engine ran (SP x TP through a chunked-prefill burst above a low threshold, TP while decoding). The
NVML sampler against a stand-in NVML (cached handles, "not supported" fields, NVLink rates) and with no
driver; `top` against a canned vLLM /metrics; the screen against an SVG snapshot (fixed data, no
clocks); `serve` and `top` in a pseudo-terminal, where q stops the server gracefully.
"""

from __future__ import annotations

import contextlib

import asyncio
import fcntl
import os
import pty
import signal
import statistics
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from shifttune.telemetry.nvml import NvmlSampler, clock_and_power, recording
from shifttune.tui.scrape import Window, parse, quantile
from shifttune.tui.serving_view import ServingApp, make_app
from shifttune.tui.snapshot import SP, TP, ModeShare, Quantiles, RequestRow, ServingSnapshot, StepCell
from shifttune.tui.sources import PolicyError, ServerSource, StaticSource, _vllm_estimate
from shifttune.tui.widgets import GLYPHS, big_mode, token_chart

from test_server import SERVE, _alive, free_port, metric, server

PROFILE = Path(__file__).resolve().parent.parent / "shifttune" / "data" / "profiles" / "tiny_cpux2.json"
THRESHOLD = 16


# ---- a stand-in for pynvml ----------------------------------------------------------------------------
class FakeNvml:
    """pynvml's surface that the sampler uses; GPU i's readings move with each query; `unsupported[i]` lists
    the sampler's field names this GPU answers NVML_ERROR_NOT_SUPPORTED for."""

    NVML_SUCCESS, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_DRIVER_NOT_LOADED = 0, 3, 9
    NVML_TEMPERATURE_GPU, NVML_CLOCK_SM = 0, 1
    NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX = 138, 139

    class NVMLError(Exception):
        def __init__(self, value: int):
            super().__init__(f"NVML error {value}")
            self.value = value

    def __init__(self, gpus: int = 2, unsupported: dict[int, set[str]] | None = None, driver: bool = True,
                 per_link: frozenset[int] = frozenset()):  # fmt: skip
        self.n, self.unsupported, self.driver, self.per_link = gpus, unsupported or {}, driver, per_link
        self.calls: Counter = Counter()
        self.reads: Counter = Counter()

    def _call(self, what: str, h: int) -> int:
        self.calls[(what, h)] += 1
        if what in self.unsupported.get(h, ()):
            raise self.NVMLError(self.NVML_ERROR_NOT_SUPPORTED)
        return self.calls[(what, h)]

    def nvmlInit(self):
        if not self.driver:
            raise self.NVMLError(self.NVML_ERROR_DRIVER_NOT_LOADED)

    def nvmlShutdown(self):
        pass

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlDeviceGetCount(self):
        return self.n

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls[("handle", i)] += 1
        return i

    def nvmlDeviceGetName(self, h):
        return "NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        self._call("power_limit", h)
        return 700_000

    def nvmlDeviceGetUtilizationRates(self, h):
        k = self._call("util", h)
        return SimpleNamespace(gpu=(40 + 7 * k + 10 * h) % 101, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        k = self._call("memory", h)
        return SimpleNamespace(used=(50 + k % 7) * 2**30, total=80 * 2**30)

    def nvmlDeviceGetPowerUsage(self, h):
        return (300 + 20 * (self._call("power", h) % 9)) * 1000

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 55 + self._call("temperature", h) % 5

    def nvmlDeviceGetClockInfo(self, h, clock):
        return 1755 + 15 * (self._call("sm_clock", h) % 3)

    def nvmlDeviceGetFieldValues(self, h, ids):
        """NVLink KiB totals: k MiB sent and 2k received on each link at the k-th query; a GPU in `per_link`
        refuses the all-links scope (a per-field status), as an older driver might."""
        k = self._call("nvlink", h)
        out = []
        for field_id, scope in ids:
            assert scope == 0xFFFFFFFF or h in self.per_link  # every link's traffic, never link 0's alone
            status = 2 if scope == 0xFFFFFFFF and h in self.per_link else 0
            out.append(
                SimpleNamespace(nvmlReturn=status, value=SimpleNamespace(ullVal=k * (1 << 20) * (field_id - 137)))
            )
        return out

    def nvmlDeviceGetNvLinkState(self, h, link):
        if link >= 8:
            raise self.NVMLError(2)
        return int(link < 3)  # links 0-2 active


def fake_sampler(samples: int = 24, **kw) -> NvmlSampler:
    """A sampler over FakeNvml, read `samples` times one second apart (no thread, no real clock)."""
    now = [100.0]
    sampler = NvmlSampler(nvml=FakeNvml(**kw), clock=lambda: now[0])
    for _ in range(samples):
        sampler.sample()
        now[0] += 1.0
    return sampler


# ---- NVML ---------------------------------------------------------------------------------------------
def test_recording_gives_the_clock_and_power_a_benchmark_ran_at():
    """`recording` samples in a thread for its block; `clock_and_power` sums up what it saw (benchmarks record the
    SM clock a step ran at: a power-limited GPU runs sustained matmuls ~20% slower than after idle)."""
    with recording(0.001, nvml=FakeNvml(gpus=1)) as sampler:
        time.sleep(0.05)
    got, clocks, power = clock_and_power(sampler), sampler.history(0, "sm_clock"), sampler.history(0, "power")
    assert got["samples"] == len(clocks) >= 3 and set(clocks) <= {1755.0, 1770.0, 1785.0}
    assert got["sm_clock_mhz_median"] == statistics.median(clocks) and got["sm_clock_mhz_min"] == min(clocks)
    assert got["power_w_median"] == statistics.median(power) and got["power_w_max"] == max(power) <= 460
    with recording(0.001, nvml=FakeNvml(driver=False)) as sampler:
        time.sleep(0.01)
    assert clock_and_power(sampler) == {}  # no driver: nothing recorded, no error


def test_the_nvml_sampler_caches_handles_and_never_asks_twice_for_an_unsupported_field():
    fake = FakeNvml(gpus=2, unsupported={1: {"power", "nvlink", "power_limit"}})
    now = [0.0]
    sampler = NvmlSampler(nvml=fake, clock=lambda: now[0])
    for _ in range(3):
        reading = sampler.sample()
        now[0] += 0.5
    assert reading.available and reading.driver == "550.54.15" and len(reading.gpus) == 2
    assert fake.calls[("handle", 0)] == fake.calls[("handle", 1)] == 1  # handles looked up once
    assert fake.calls[("power_limit", 0)] == 1  # the limit too
    assert fake.calls[("power", 1)] == 1 and fake.calls[("nvlink", 1)] == 1  # "not supported" is remembered
    assert fake.calls[("power", 0)] == 3 and fake.calls[("util", 1)] == 3
    g0, g1 = reading.gpus
    assert g0.power_limit_w == 700 and g0.power_w == 300 + 20 * 3 and g0.mem_total == 80 * 2**30
    assert g0.util_pct == (40 + 21) % 101 and g0.temp_c == 55 + 3 % 5 and g0.sm_clock_mhz == 1755
    # NVLink counters are KiB totals: the rate is the growth since the last reading, per second
    assert g0.nvlink_tx == pytest.approx((1 << 20) * 1024 / 0.5) and g0.nvlink_rx == pytest.approx(2 * g0.nvlink_tx)
    assert g1.unsupported == {"power", "nvlink"} and g1.power_w is None and g1.power_limit_w is None
    assert sampler.history(0, "util") == [float((40 + 7 * k) % 101) for k in (1, 2, 3)]
    assert len(sampler.history(0, "nvlink")) == 2  # no rate from the first reading


def test_nvlink_traffic_adds_up_the_active_links_where_the_driver_refuses_the_all_links_scope():
    fake = FakeNvml(gpus=2, per_link=frozenset({1}))
    now = [0.0]
    sampler = NvmlSampler(nvml=fake, clock=lambda: now[0])
    for _ in range(3):
        reading = sampler.sample()
        now[0] += 0.5
    g0, g1 = reading.gpus
    assert g0.nvlink_tx == pytest.approx((1 << 20) * 1024 / 0.5)  # one all-links counter
    assert g1.nvlink_tx == pytest.approx(3 * (1 << 20) * 1024 / 0.5) and g1.nvlink_rx == pytest.approx(2 * g1.nvlink_tx)
    assert "nvlink" not in g1.unsupported and fake.calls[("nvlink", 1)] == 4  # refused once, then links 0-2


def test_without_an_nvidia_driver_the_sampler_says_so_and_the_view_still_works():
    sampler = NvmlSampler(nvml=FakeNvml(driver=False))
    reading = sampler.sample()
    assert not reading.available and "no NVIDIA driver" in reading.reason and reading.gpus == ()
    sampler.start()  # the thread sees nothing will change and ends
    sampler._thread.join(5)
    assert not sampler._thread.is_alive()
    real = NvmlSampler().sample()  # this machine's own NVML: a reason or GPUs, never an exception
    assert real.available or real.reason

    async def run() -> str:
        app = ServingApp(StaticSource(fixed_snapshot()), sampler)
        async with app.run_test(size=(150, 46)) as pilot:
            await app.tick()
            await pilot.pause()
            assert "tensor parallel over 4 ranks" in str(app.query_one("#mode").content)
            return str(app.query_one("#gpus").render())

    assert "no NVIDIA driver" in asyncio.run(run())


# ---- pieces -------------------------------------------------------------------------------------------
def test_quantiles_and_mode_estimates_from_buckets():
    buckets = [(0.01, 10.0), (0.02, 60.0), (0.04, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01 + 0.01 * (50 - 10) / 50)
    assert quantile(0.99, buckets) == pytest.approx(0.02 + 0.02 * (99 - 60) / 40)
    assert quantile(0.5, [(1.0, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(1.0, 1.0), (float("inf"), 5.0)]) == 1.0  # beyond the last bound: the bound
    tokens = [(128.0, 80.0), (256.0, 90.0), (512.0, 95.0), (float("inf"), 100.0)]
    assert _vllm_estimate(tokens, 256) == (90.0, 10.0)
    tp, sp = _vllm_estimate(tokens, 192)  # halfway through the (128, 256] bucket: half its 10 steps
    assert (tp, sp) == (pytest.approx(85.0), pytest.approx(15.0))


def test_the_token_chart_draws_the_threshold_and_the_badge_spells_the_mode():
    cells = [StepCell(TP, 4)] * 5 + [StepCell(SP, 500)]
    rows = token_chart(cells, 20, 4, 16).plain.split("\n")
    assert len(rows) == 4 and all(len(r) == 20 for r in rows)
    line = [r for r in rows if "≤16" in r]
    assert len(line) == 1 and "╌" in line[0] and line[0][5] == "█"  # the SP step crosses the line
    assert rows[0][5] == "█" and rows[0][:5] == "     "  # only the SP step reaches the top
    assert big_mode(SP)[1] == " ".join(GLYPHS[c][1] for c in "SP×TP")
    assert big_mode(None) == ["", "idle", ""]


def test_help_opens_and_closes_and_the_log_pane_follows_its_file(tmp_path):
    log = tmp_path / "serve.log"
    log.write_text("first line\nsecond li")

    async def run() -> tuple[str, list[str], list[str]]:
        app = ServingApp(StaticSource(fixed_snapshot()), interval_s=60, log_file=log)
        async with app.run_test(size=(150, 46)) as pilot:
            await pilot.pause()
            pane = app.query_one("#log")
            first = [strip.text for strip in pane.lines]
            with log.open("a") as f:
                f.write("ne\nthird line\n")
            assert pane.poll() == 2 and pane.poll() == 0
            await pilot.press("question_mark")
            await pilot.pause()
            shown = str(app.screen.query_one("Static").content)
            await pilot.press("x")
            await pilot.pause()
            assert app.screen is app.screen_stack[0]  # any key closed it
            return shown, first, [strip.text for strip in pane.lines]

    shown, first, after = asyncio.run(run())
    assert "force SP×TP mode on every step" in shown and "[b]q[/b]       quit\n" in shown
    assert first == ["first line"]  # the unfinished line waits for its end
    assert after == ["first line", "second line", "third line"]


# ---- the app on a CPU server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cpu_server():
    args = ("tiny", "--device", "cpu", "--sequence-parallel-size", "2", "--shift-threshold", str(THRESHOLD),
            "--profile", str(PROFILE), "--max-num-batched-tokens", "64")  # fmt: skip
    with server(*args) as (url, proc):
        yield url, proc


def policy(url: str) -> dict:
    return httpx.get(f"{url}/v1/shifttune/policy", timeout=10).json()


async def until(condition, timeout: float = 30.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(step)


def test_keys_change_the_engines_threshold_and_policy(cpu_server):
    url, _ = cpu_server
    prompt = {"prompt": list(range(3, 43)), "max_tokens": 3, "ignore_eos": True}  # a 40-token prefill

    async def run() -> None:
        app = ServingApp(ServerSource(url), NvmlSampler(nvml=FakeNvml(driver=False)))
        async with app.run_test(size=(150, 46)) as pilot:
            await until(lambda: app.snapshot is not None and app.snapshot.kind == "shifttune")
            assert app.threshold == THRESHOLD and app.policy == "threshold"
            for key, expected in (("plus", 32), ("minus", 16), ("minus", 8)):
                await pilot.press(key)
                await app.workers.wait_for_complete()
                assert policy(url) == {"policy": "threshold", "threshold": expected}
                assert metric(url, "shifttune:shift_threshold") == expected
            for key, name in (("t", "tp"), ("s", "sp"), ("p", "profile"), ("a", "threshold")):
                await pilot.press(key)
                await app.workers.wait_for_complete()
                assert policy(url)["policy"] == name
                assert metric(url, f'shifttune:shift_policy{{policy="{name}"') == 1
                if name == "tp":  # forced TP: a 40-token prefill above the threshold of 8 still runs TP
                    sp_steps = metric(url, 'shifttune:steps_total{mode="sp"')
                    async with httpx.AsyncClient(timeout=60) as http:
                        assert (await http.post(f"{url}/v1/completions", json=prompt)).status_code == 200
                    assert metric(url, 'shifttune:steps_total{mode="sp"') == sp_steps
            # the view shows it at its next refresh (every REFRESH_S; a fixed pause here was sometimes too short)
            await until(lambda: app.snapshot.policy == "threshold" and app.snapshot.threshold == 8, timeout=10)
            await pilot.pause()
            assert "threshold 8" in str(app.query_one("#header").content)

    try:
        asyncio.run(run())
    finally:
        httpx.post(f"{url}/v1/shifttune/policy", json={"policy": "threshold", "threshold": THRESHOLD}, timeout=10)


def test_the_mode_badge_follows_the_steps_the_engine_runs(cpu_server, tmp_path):
    """Threshold 16, steps of at most 64 tokens: a burst of long prompts is prefilled in chunks of 64 (SP x TP)
    for a while, then 4 sequences decode (4 tokens a step: TP). At every refresh the badge shows the mode of
    the last step run; over the run it shows both; the timeline holds the server's steps, mode by tokens."""
    url, _ = cpu_server
    seen: list[tuple[str | None, str | None]] = []  # (badge's mode, mode of the last step) at each refresh
    badge_text = {TP: "\n".join(big_mode(TP)) + "\ntensor parallel", SP: "\n".join(big_mode(SP)) + "\nUlysses SP 2"}

    class Watched(ServingApp):
        def show(self, snap: ServingSnapshot) -> None:
            super().show(snap)
            content = str(self.query_one("#mode").content)
            shown = [m for m, row in badge_text.items() if row in content]
            seen.append((shown[0] if shown else None, snap.cells[-1].mode if snap.cells else None))

    async def run() -> ServingApp:
        timing = tmp_path / "timing.json"
        # NOTE: /metrics every 0.2 s (1 s by default): on a fast machine the burst and the pause below took less than
        # a second, and the last snapshot's mode share still came from the scrape before the burst
        source = ServerSource(url, metrics_every_s=0.2)
        app = Watched(source, NvmlSampler(nvml=FakeNvml(driver=False)), interval_s=0.1, timing_path=timing)
        async with app.run_test(size=(150, 46)) as pilot:
            await until(lambda: app.snapshot is not None and app.snapshot.kind == "shifttune")
            first = app.source.last_step
            body = {"max_tokens": 24, "ignore_eos": True}
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                rs = await asyncio.gather(*(http.post("/v1/completions", json=body | {
                    "prompt": [5 + (i * 7 + j) % 200 for j in range(240)]}) for i in range(4)))  # fmt: skip
            assert all(r.status_code == 200 for r in rs)
            await pilot.pause(0.5)
            live = httpx.get(f"{url}/v1/shifttune/live", params={"after": first}, timeout=10).json()
            app.server_steps = live["steps"]
            await until(lambda: sum(app.snapshot.share.steps.values()) > 0)  # a scrape after the burst is shown
            await until(lambda: len(app.timings) >= 10)  # NOTE: a loaded machine refreshes less often in the same time
            await pilot.pause()
        return app

    app = asyncio.run(run())
    steps = app.server_steps
    cells = list(app.snapshot.cells)[-len(steps) :]
    assert [(c.mode, c.tokens) for c in cells] == [(s[1], s[2]) for s in steps]  # every step, as run
    assert all((c.mode == SP) == (c.tokens > THRESHOLD) for c in cells)
    assert sum(c.mode == SP for c in cells) >= 10 and cells[-1].mode == TP  # a burst, then decode
    assert all(shown == last for shown, last in seen if last is not None)
    assert {shown for shown, _ in seen} >= {TP, SP}
    rows = [r for r in app.snapshot.requests if r.prompt_tokens == 240]
    assert len(rows) == 4 and all(r.output_tokens == 24 and r.state == "length" and r.ttft_s > 0 for r in rows)
    share = app.snapshot.share
    assert share.steps[SP] > 0 and share.steps[TP] > 0 and sum(share.time.values()) == pytest.approx(1)
    # the refresh time (poll + widgets + the frame painted), measured on this machine under this load
    refreshes = [total for _, _, total, _ in app.timings]
    assert len(refreshes) >= 10 and statistics.median(refreshes) < 0.1, refreshes


# ---- vLLM ---------------------------------------------------------------------------------------------
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} 3.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} 0.42
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {prompt}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {generation}
# HELP vllm:iteration_tokens_total Histogram of number of tokens per engine_step.
# TYPE vllm:iteration_tokens_total histogram
vllm:iteration_tokens_total_sum{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {it_sum}
vllm:iteration_tokens_total_bucket{{engine="0",le="1.0",model_name="meta-llama/Llama-3.1-8B"}} 0.0
vllm:iteration_tokens_total_bucket{{engine="0",le="128.0",model_name="meta-llama/Llama-3.1-8B"}} {it128}
vllm:iteration_tokens_total_bucket{{engine="0",le="256.0",model_name="meta-llama/Llama-3.1-8B"}} {it256}
vllm:iteration_tokens_total_bucket{{engine="0",le="512.0",model_name="meta-llama/Llama-3.1-8B"}} {it512}
vllm:iteration_tokens_total_bucket{{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B"}} {itinf}
vllm:iteration_tokens_total_count{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {itinf}
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_sum{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} 3.0
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.02",model_name="meta-llama/Llama-3.1-8B"}} {t20}
vllm:time_to_first_token_seconds_bucket{{engine="0",le="0.04",model_name="meta-llama/Llama-3.1-8B"}} {t40}
vllm:time_to_first_token_seconds_bucket{{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B"}} {t40}
vllm:time_to_first_token_seconds_count{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {t40}
# HELP vllm:request_time_per_output_token_seconds Histogram of time_per_output_token_seconds per request.
# TYPE vllm:request_time_per_output_token_seconds histogram
vllm:request_time_per_output_token_seconds_sum{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} 0.5
vllm:request_time_per_output_token_seconds_bucket{{engine="0",le="0.01",model_name="meta-llama/Llama-3.1-8B"}} {p10}
vllm:request_time_per_output_token_seconds_bucket{{engine="0",le="+Inf",model_name="meta-llama/Llama-3.1-8B"}} {p10}
vllm:request_time_per_output_token_seconds_count{{engine="0",model_name="meta-llama/Llama-3.1-8B"}} {p10}
# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.
# TYPE process_start_time_seconds gauge
process_start_time_seconds 1000.0
"""


def vllm_text(k: int) -> str:
    """The k-th scrape: per scrape, 100 steps (80 of at most 128 tokens, 10 of 129-256, 5 of 257-512, 5 more),
    1000 prompt and 400 generated tokens, 10 first tokens (4 within 20 ms), 5 finished requests."""
    return VLLM_METRICS.format(running=10 + k, prompt=1000 * k, generation=400 * k, it_sum=9000 * k, it128=80 * k,
                               it256=90 * k, it512=95 * k, itinf=100 * k, t20=4 * k, t40=10 * k, p10=5 * k)  # fmt: skip


def test_top_reads_a_vllm_server_by_its_metric_names():
    scrapes, sent = iter(range(1, 100)), []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path))
        if request.url.path == "/metrics":
            return httpx.Response(200, text=vllm_text(next(scrapes)))
        return httpx.Response(404, json={"detail": "Not Found"})

    now = [0.0]
    client = httpx.AsyncClient(base_url="http://vllm.test", transport=httpx.MockTransport(handler))
    source = ServerSource("http://vllm.test", threshold=256, client=client, metrics_every_s=0.5, clock=lambda: now[0],
                          wall=lambda: 1090.0)  # fmt: skip

    async def run() -> tuple[ServingSnapshot, ServingApp]:
        for _ in range(3):
            snap = await source.poll()
            now[0] += 0.5
        app = ServingApp(source, NvmlSampler(nvml=FakeNvml(driver=False)), interval_s=60)
        async with app.run_test(size=(150, 46)) as pilot:
            await pilot.pause()
            await pilot.press("t")
            await app.workers.wait_for_complete()
            await pilot.pause()
        return snap, app

    snap, app = asyncio.run(run())
    assert snap.kind == "vllm" and snap.model == "meta-llama/Llama-3.1-8B" and snap.estimated
    assert (snap.running, snap.waiting, snap.kv_usage) == (13, 3, 0.42)
    assert snap.prompt_tps == pytest.approx(1000 / 0.5) and snap.generation_tps == pytest.approx(400 / 0.5)
    assert snap.share.steps[TP] == pytest.approx(0.9) and snap.share.time is None  # 90 of 100 at <= 256 tokens
    assert "estimated at 256" in snap.share.span
    assert [c.mode for c in snap.cells] == [TP, TP] and snap.cells[-1].tokens == pytest.approx(90.0)
    assert snap.ttft.p50 == pytest.approx(0.02 + 0.02 * (5 - 4) / 6)  # the window's 20 first tokens, 8 in 20 ms
    assert snap.tpot_name == "TPOT" and snap.tpot.p50 == pytest.approx(0.005)
    assert snap.uptime_s == 90.0 and snap.requests is None
    assert ("POST", "/v1/shifttune/policy") not in sent  # keys do not act on vLLM
    assert any("shifttune server only" in m for m in app.messages)


def test_top_sends_the_api_key_and_shows_a_refusal():
    """Against a shifttune server with --api-key (stood in for): the key goes with /live and the policy POST."""
    seen = []
    metrics = 'shifttune:steps_total{mode="tp"} 3.0\nshifttune:shift_threshold 16.0\n'
    live = {"model": "tiny", "tp": 1, "sp": 2, "device": "cpu", "policy": "threshold", "threshold": 16, "uptime_s": 5.0,
            "num_steps": 3, "steps": [[1, "sp", 40, 40, 0.03], [2, "tp", 1, 0, 0.01], [3, "tp", 1, 0, 0.01]],
            "requests": [], "kv_blocks": [2, 100]}  # fmt: skip

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers.get("authorization")))
        if request.url.path == "/metrics":
            return httpx.Response(200, text=metrics)
        if request.headers.get("authorization") != "Bearer sekret":
            return httpx.Response(401, json={"error": {"message": "a valid API key is required"}})
        if request.url.path == "/v1/shifttune/live":
            return httpx.Response(200, json=live)
        return httpx.Response(400, json={"error": {"message": "shift_profile: the profile policy needs a profile"}})

    async def run(key: str | None) -> tuple[ServingSnapshot, str]:
        headers = {"authorization": f"Bearer {key}"} if key else {}
        client = httpx.AsyncClient(base_url="http://st.test", transport=httpx.MockTransport(handler), headers=headers)
        source = ServerSource("http://st.test", api_key=key, client=client)
        snap = await source.poll()
        try:
            await source.set_policy("profile")
        except PolicyError as e:
            return snap, str(e)
        return snap, ""

    snap, refusal = asyncio.run(run("sekret"))
    assert [c.mode for c in snap.cells] == [SP, TP, TP] and snap.ranks == 2 and snap.kv_blocks == (2, 100)
    assert "refused (400)" in refusal and "needs a profile" in refusal
    assert ("/v1/shifttune/policy", "Bearer sekret") in seen
    snap, refusal = asyncio.run(run(None))
    assert snap.status == "this server wants --api-key" and "refused (401)" in refusal and snap.cells == ()
    snap, refusal = asyncio.run(run("wrong"))  # a key was given: the server refused it, it did not ask for one
    assert snap.status == "this server refused this --api-key" and "refused (401)" in refusal and snap.cells == ()


@pytest.mark.parametrize("url", ["http://st.test:8000", "http://st.test:8000/", "http://st.test:8000/v1",
                                 "http://st.test:8000/v1/"])  # fmt: skip
def test_top_takes_the_openai_client_s_base_url(url):
    assert ServerSource(url).url == "http://st.test:8000"  # its requests start with /v1 (bench's server_base_url)


# ---- the snapshot -------------------------------------------------------------------------------------
def fixed_snapshot() -> ServingSnapshot:
    cells = []
    for burst in range(6):
        cells += [StepCell(SP, 512 + 64 * burst, 0.031)] * 4 + [StepCell(TP, 8 + burst, 0.012)] * 30
    states = ["length"] * 6 + ["running"] * 3 + ["waiting"] * 2
    requests = tuple(RequestRow(f"cmpl-{i:04x}", 200 + 13 * i, 32 if i < 6 else 5 * (i - 5), 0.044 + 0.003 * i,
                                state) for i, state in enumerate(states))  # fmt: skip
    return ServingSnapshot(
        kind="shifttune", url="http://127.0.0.1:8000", model="llama-3.3-70b", tp=2, sp=2, device="cuda",
        policy="threshold", threshold=256, uptime_s=3725.0, mode=TP, cells=tuple(cells),
        share=ModeShare({TP: 0.88, SP: 0.12}, {TP: 0.61, SP: 0.39}, "last 60 s"), running=9, waiting=2,
        kv_usage=0.63, kv_blocks=(5161, 8192), prompt_tps=18250.0, generation_tps=2140.0,
        ttft=Quantiles(0.081, 0.412), tpot=Quantiles(0.0121, 0.0187), latency_span="last 60 s",
        requests=requests,
    )  # fmt: skip


def test_the_screen_matches_its_snapshot(snap_compare):
    app = ServingApp(StaticSource(fixed_snapshot()), fake_sampler(gpus=2, unsupported={1: {"nvlink"}}),
                     interval_s=60)  # fmt: skip

    async def first_refresh(pilot) -> None:
        await pilot.pause()
        await pilot.app.tick()

    assert snap_compare(app, terminal_size=(150, 46), run_before=first_refresh)


# ---- in a terminal ------------------------------------------------------------------------------------
class Terminal:
    """A command on a pseudo-terminal of cols x rows; `output` collects what it draws."""

    def __init__(self, argv: list[str], cols: int = 150, rows: int = 46):
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = os.environ | {"OMP_NUM_THREADS": "1", "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.master, self.output = master, bytearray()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.output += data

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while text.encode() not in self.output:
            assert self.proc.poll() is None, self.output[-3000:].decode(errors="replace")
            assert time.time() < deadline, f"{text!r} not drawn"
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        os.close(self.master)


def test_top_in_a_terminal_shows_a_running_server_and_q_quits(cpu_server):
    url, _ = cpu_server
    term = Terminal([sys.executable, "-m", "shifttune.cli", "top", "--url", url])
    try:
        term.wait_for("P=2 (SP 2", 60)
        term.wait_for("no NVIDIA driver")
        os.write(term.master, b"q")
        assert term.proc.wait(20) == 0
        assert httpx.get(f"{url}/health").status_code == 200  # top's q leaves the server alone
    finally:
        term.close()


def _left_the_alternate_screen(output: bytearray) -> bool:
    return output.rfind(b"\x1b[?1049l") > output.rfind(b"\x1b[?1049h") >= 0


def test_top_and_the_profile_view_stopped_by_sigterm_give_the_terminal_back(cpu_server, tmp_path):
    """SIGTERM's default action ended them at once, in the alternate screen with the mouse on (exit -15). Now the
    profile view stops after the point in flight (what was measured is kept, as on Ctrl-C), top quits; both 143."""
    url, _ = cpu_server
    term = Terminal([sys.executable, "-m", "shifttune.cli", "top", "--url", url])
    try:
        term.wait_for("P=2 (SP 2", 60)
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(20) == 143
        time.sleep(0.5)
        assert _left_the_alternate_screen(term.output)
    finally:
        term.close()
    out = tmp_path / "p.json"
    term = Terminal([sys.executable, "-m", "shifttune.cli", "profile", "--device", "cpu", "--out", str(out)])
    try:
        term.wait_for("measuring", 60)
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(60) == 143
        time.sleep(0.5)
        assert _left_the_alternate_screen(term.output) and b"interrupted" in term.output
    finally:
        term.close()


def descendants(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [d for p in map(int, found) for d in (p, *descendants(p))]


def test_serve_in_a_terminal_shows_the_view_and_q_stops_it_gracefully(tmp_path):
    port, log = free_port(), tmp_path / "serve.log"
    url = f"http://127.0.0.1:{port}"
    term = Terminal([*SERVE, "tiny", "--device", "cpu", "--tensor-parallel-size", "2", "--shift-threshold", "16",
                     "--port", str(port), "--log-file", str(log)])  # fmt: skip
    try:
        term.wait_for("P=2 (SP 1", 120)
        term.wait_for("stop server")
        os.write(term.master, b"+")
        deadline = time.time() + 20
        while metric(url, "shifttune:shift_threshold") != 32:
            assert time.time() < deadline
            time.sleep(0.1)
        children = descendants(term.proc.pid)  # the view, the engine core, rank 1, multiprocessing's tracker
        lines = []
        with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1500,
                          "ignore_eos": True, "stream": True}, timeout=60) as r:  # fmt: skip
            for line in filter(None, r.iter_lines()):
                lines.append(line)
                if len(lines) == 3:
                    os.write(term.master, b"q")
        # cut by the stop (abort), long before its 1500 tokens (CI under load once saw 209 lines; idle: ~10)
        assert lines[-1] == "data: [DONE]" and '"finish_reason":"abort"' in lines[-2] and len(lines) < 1000
        assert term.proc.wait(30) == 0
        text = log.read_text()
        assert "serving tiny" in text and "stopping (q in the live view)" in text and "Traceback" not in text
        assert b"the log of this session" in term.output
        time.sleep(1)
        assert len(children) >= 3 and not [p for p in children if _alive(p)]
    finally:
        term.close()


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_serve_in_a_terminal_stopped_by_sigterm_gives_the_terminal_back(tmp_path, when):
    """SIGTERM's default action ended the process before the view was stopped (exit -15), leaving the terminal in the
    alternate screen with the mouse on: while the engine started, and while serving, where uvicorn raises the signal
    again once it has stopped."""
    port = free_port()
    term = Terminal([*SERVE, "tiny", "--device", "cpu", "--port", str(port), "--log-file", str(tmp_path / "s.log")])
    try:
        term.wait_for("stop server", 120)
        if when == "serving":
            deadline = time.time() + 120
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        break
                assert time.time() < deadline
                time.sleep(0.2)
        children = descendants(term.proc.pid)
        term.proc.send_signal(signal.SIGTERM)
        assert term.proc.wait(30) == 143
        time.sleep(0.5)  # the reader thread catches up
        assert b"the log of this session" in term.output and b"stopped by SIGTERM" in term.output
        assert _left_the_alternate_screen(term.output)
        time.sleep(1)
        assert children and not [p for p in children if _alive(p)]
    finally:
        term.close()


def test_serve_lists_no_tui_and_top_needs_a_terminal():
    from typer.testing import CliRunner

    from shifttune.cli import app

    assert "--no-tui" in CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    result = CliRunner().invoke(app, ["top", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "draws in a terminal" in result.output
    assert make_app(StaticSource(fixed_snapshot()), role="serve").BINDINGS[0].description == "stop server"
    assert Window().latest is None and parse("", 0.0).value("x") is None


def test_nvlink_rates_keep_their_column_from_idle_to_full_links():
    """A GPU block's NVLink line: one decimal below 10 GB/s, whole GB/s above, so hundreds of GB/s fit the 17-wide
    value column as 0.2 does (the sparkline never shifts)."""
    from shifttune.telemetry.nvml import GpuSample
    from shifttune.tui.widgets import GpuPanel

    panel = GpuPanel(None)
    for tx, rx, shown in ((2e8, 1.5e8, "↑0.2 ↓0.1 GB/s"), (450.4e9, 12.6e9, "↑450 ↓13 GB/s")):
        line = panel._block(GpuSample(0, "NVIDIA H200", nvlink_tx=tx, nvlink_rx=rx)).plain.splitlines()[-1]
        assert shown in line and len(line.split("GB/s")[0]) <= len("NVLink ") + 17
