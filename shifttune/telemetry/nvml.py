"""Live GPU telemetry for the live views: a background thread samples every GPU through NVML (nvidia-ml-py)
once a second: utilization, memory used/total, power/limit, temperature, SM clock and NVLink throughput,
with a short history of each.

NVML handles, names and power limits are read once; a field NVML answers "not supported" for is never
asked again on that GPU and shows as such. With no NVIDIA driver (or no nvidia-ml-py) the sampler says
why in `latest().reason` and does nothing else, so a view that uses it works on any machine.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

FIELDS = ("util", "memory", "power", "temperature", "sm_clock", "nvlink")
ALL_LINKS = 0xFFFFFFFF  # an NVLink field's scope (UINT_MAX): every link of the GPU


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant; None where NVML gave nothing (see `unsupported` and `failed`)."""

    index: int
    name: str
    util_pct: float | None = None
    mem_used: int | None = None  # bytes
    mem_total: int | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    temp_c: float | None = None
    sm_clock_mhz: float | None = None
    nvlink_tx: float | None = None  # bytes/s, all links (None until two readings exist)
    nvlink_rx: float | None = None
    unsupported: frozenset[str] = frozenset()  # FIELDS this GPU / driver does not report
    failed: frozenset[str] = frozenset()  # FIELDS whose query failed this time (other errors)


@dataclass(frozen=True)
class NvmlReading:
    available: bool
    reason: str = ""  # why there is nothing to show, when not available
    driver: str = ""
    gpus: tuple[GpuSample, ...] = ()


@dataclass
class _Gpu:
    handle: Any
    name: str
    power_limit_w: float | None
    unsupported: set[str] = field(default_factory=set)
    nvlink_scopes: list[int] = field(default_factory=lambda: [ALL_LINKS])  # NVLink counters to add up
    nvlink_last: tuple[float, float, float] | None = None  # (time, tx KiB, rx KiB): NVML's counters are totals


class NvmlSampler:
    """`start()` the thread, read `latest()` and `history(gpu, field)` from any thread, `stop()` at the end.

    `nvml` is the pynvml module (a stand-in in tests); `sample()` takes one reading synchronously.
    """

    def __init__(self, interval_s: float = 1.0, history: int = 60, nvml: Any = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.interval_s, self.clock = interval_s, clock
        self._nvml = nvml
        self._gpus: list[_Gpu] | None = None
        self._latest = NvmlReading(False, "reading NVML…")
        self._history: dict[tuple[int, str], deque] = {}
        self._history_len = history
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- public -----------------------------------------------------------------------------------
    def start(self) -> NvmlSampler:
        self._thread = threading.Thread(target=self._run, name="nvml-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self._gpus is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception:  # a driver that went away: nothing to release
                pass
            self._gpus = None

    def latest(self) -> NvmlReading:
        return self._latest

    def history(self, gpu: int, name: str) -> list[float]:
        """Past values of one series: util, mem (bytes used), power, temperature, sm_clock, nvlink (tx+rx B/s)."""
        series = self._history.get((gpu, name))
        return list(series) if series is not None else []

    def sample(self) -> NvmlReading:
        """Reads every GPU once (initializing NVML the first time) and records it."""
        if self._gpus is None and not self._init():
            return self._latest
        now = self.clock()
        gpus = tuple(self._read(i, g, now) for i, g in enumerate(self._gpus))
        for s in gpus:
            self._record(s)
        self._latest = NvmlReading(True, driver=self._latest.driver, gpus=gpus)
        return self._latest

    # ---- NVML -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            if not self._latest.available and self._gpus is None:
                return  # no driver: nothing will change
            self._stop.wait(self.interval_s)

    def _init(self) -> bool:
        if self._nvml is None:
            try:
                import pynvml
            except ImportError:
                self._latest = NvmlReading(False, "no GPU telemetry: nvidia-ml-py is not installed")
                return False
            self._nvml = pynvml
        nv = self._nvml
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            self._latest = NvmlReading(False, f"no NVIDIA driver (NVML: {e})")
            return False
        try:
            driver = _text(nv.nvmlSystemGetDriverVersion())
            gpus = []
            for i in range(nv.nvmlDeviceGetCount()):
                handle = nv.nvmlDeviceGetHandleByIndex(i)
                gpus.append(_Gpu(handle, _text(nv.nvmlDeviceGetName(handle)), self._power_limit(handle)))
        except nv.NVMLError as e:
            self._latest = NvmlReading(False, f"NVML failed: {e}")
            return False
        if not gpus:
            self._latest = NvmlReading(False, "NVML sees no GPU", driver)
            return False
        self._gpus = gpus
        self._latest = NvmlReading(True, driver=driver)
        return True

    def _power_limit(self, handle) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
        except self._nvml.NVMLError:
            return None

    def _query(self, gpu: _Gpu, name: str, failed: set[str], fn: Callable[[], Any]) -> Any:
        """fn() unless the field is known unsupported; remembers 'not supported' answers."""
        if name in gpu.unsupported:
            return None
        try:
            return fn()
        except self._nvml.NVMLError as e:
            if getattr(e, "value", None) == self._nvml.NVML_ERROR_NOT_SUPPORTED:
                gpu.unsupported.add(name)
            else:
                failed.add(name)
            return None

    def _read(self, index: int, gpu: _Gpu, now: float) -> GpuSample:
        nv, h, failed = self._nvml, gpu.handle, set()
        util = self._query(gpu, "util", failed, lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu)
        mem = self._query(gpu, "memory", failed, lambda: nv.nvmlDeviceGetMemoryInfo(h))
        power = self._query(gpu, "power", failed, lambda: nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
        temp = self._query(gpu, "temperature", failed, lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))
        clock = self._query(gpu, "sm_clock", failed, lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))
        tx, rx = self._nvlink(gpu, failed, now)
        return GpuSample(index, gpu.name, _num(util), mem.used if mem else None, mem.total if mem else None,
                         power, gpu.power_limit_w, _num(temp), _num(clock), tx, rx, frozenset(gpu.unsupported),
                         frozenset(failed))  # fmt: skip

    def _nvlink(self, gpu: _Gpu, failed: set[str], now: float) -> tuple[float | None, float | None]:
        """Bytes/s sent and received over NVLink since the last reading (the counters are KiB totals)."""
        nv = self._nvml
        # NOTE: a field's scope is the link it counts, link 0 when none is given; ALL_LINKS asks for the sum, and
        # a driver that refuses it is asked link by link (the active ones)
        fields = (nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX, nv.NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX)
        ids = [(f, scope) for scope in gpu.nvlink_scopes for f in fields]
        values = self._query(gpu, "nvlink", failed, lambda: nv.nvmlDeviceGetFieldValues(gpu.handle, ids))
        if values is None:
            return None, None
        if any(v.nvmlReturn != nv.NVML_SUCCESS for v in values):
            links = self._active_links(gpu) if gpu.nvlink_scopes == [ALL_LINKS] else []
            if links:
                gpu.nvlink_scopes = links
                return self._nvlink(gpu, failed, now)
            gpu.unsupported.add("nvlink")  # per-field status: this GPU has no NVLink counters
            return None, None
        tx = sum(float(v.value.ullVal) for v in values[0::2])
        rx = sum(float(v.value.ullVal) for v in values[1::2])
        last, gpu.nvlink_last = gpu.nvlink_last, (now, tx, rx)
        if last is None or now <= last[0]:
            return None, None
        dt = now - last[0]
        return max(0.0, tx - last[1]) * 1024 / dt, max(0.0, rx - last[2]) * 1024 / dt

    def _active_links(self, gpu: _Gpu) -> list[int]:
        links = []
        for link in range(getattr(self._nvml, "NVML_NVLINK_MAX_LINKS", 18)):
            try:
                if self._nvml.nvmlDeviceGetNvLinkState(gpu.handle, link) == 1:
                    links.append(link)
            except self._nvml.NVMLError:
                break  # past the GPU's last link
        return links

    def _record(self, s: GpuSample) -> None:
        nvlink = None if s.nvlink_tx is None else s.nvlink_tx + (s.nvlink_rx or 0.0)
        for name, value in (("util", s.util_pct), ("mem", s.mem_used), ("power", s.power_w),
                            ("temperature", s.temp_c), ("sm_clock", s.sm_clock_mhz), ("nvlink", nvlink)):  # fmt: skip
            if value is not None:
                key = (s.index, name)
                if key not in self._history:
                    self._history[key] = deque(maxlen=self._history_len)
                self._history[key].append(float(value))


@contextmanager
def recording(interval_s: float = 0.01, nvml: Any = None) -> Iterator[NvmlSampler]:
    """A sampler running for the `with` block, its history long enough for minutes (benchmarks: what the
    GPU's clock and power were while something ran)."""
    sampler = NvmlSampler(interval_s, history=1 << 20, nvml=nvml).start()
    try:
        yield sampler
    finally:
        sampler.stop()


def clock_and_power(sampler: NvmlSampler, gpu: int = 0) -> dict:
    """What `sampler` recorded of one GPU: SM clock (median, min; MHz) and power (median, max; W), the number of
    readings; {} when it has none (no NVML)."""
    clocks, power = sampler.history(gpu, "sm_clock"), sampler.history(gpu, "power")
    if not clocks:
        return {}
    out = {"sm_clock_mhz_median": statistics.median(clocks), "sm_clock_mhz_min": min(clocks), "samples": len(clocks)}
    if power:
        out |= {"power_w_median": statistics.median(power), "power_w_max": max(power)}
    return out


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _num(value: Any) -> float | None:
    return None if value is None else float(value)
