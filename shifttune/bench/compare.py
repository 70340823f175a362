"""`shifttune bench --compare tp,sp,shift`: the same workload against `shifttune serve` in each mode.

For each mode, in turn, on the same devices: start `python -m shifttune.cli serve MODEL ...` with the
mode's shift policy (tp: forced TP, sp: forced SP x TP, shift: the threshold policy) on a free local
port, its output going to a log file; wait for GET /health to answer 200 (a server that exits or does
not answer in time is an error that shows its last log lines); run the benchmark; stop the server:
SIGINT to its process group, then SIGTERM, then SIGKILL, each after a timeout. Ctrl-C or SIGTERM at any
point stops the server too (at once when it comes while the server is being stopped) and keeps the
modes measured so far. `--server-arg` may not set what this sets (SERVE_FLAGS).

With a profile (`--profile`, measured or predicted for this model on these devices), each mode's records also
get the simulator's prediction for the requests it sent, at their arrival times, with the server's own layout,
policy and engine settings and its host time per request (`recommend --validate`'s simulation and probe):
TTFT and TPOT p50/p99 and output throughput, predicted beside measured, with the error of each.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from shifttune.bench.client import ServerError
from shifttune.bench.config import BenchConfig
from shifttune.bench.datasets import BenchRequest
from shifttune.bench.runner import Reporter, run_bench
from shifttune.signals import sigterm_like_ctrl_c, stop_signal
from shifttune.bench.tokenizer import default_tokenizer_name
from shifttune.config import ConfigError
from shifttune.engine.profile_schema import Profile, load_profile
from shifttune.engine.stats import percentile
from shifttune.recommend.workload import Request

MODE_POLICY = {"tp": "tp", "sp": "sp", "shift": "threshold"}  # mode -> `serve --shift-policy`
# predicted vs measured beside `validate.METRICS`: (name, simulator key, record key, tolerance)
THROUGHPUT = ("output_throughput", "output_tok_per_s", "output_throughput", 0.10)
HOST = "127.0.0.1"
LOG_LINES = 20
# `serve`'s flags (every spelling) that `serve_command` sets -> where the value comes from
SERVE_FLAGS = {
    "--model": "from --model",
    "--device": "from --device",
    "--tensor-parallel-size": "from --tp",
    "-tp": "from --tp",
    "--tp": "from --tp",
    "--sequence-parallel-size": "from --sp",
    "--ulysses-sequence-parallel-size": "from --sp",
    "-sp": "from --sp",
    "--sp": "from --sp",
    "--shift-policy": "from the mode: tp, sp or shift",
    "--shift-threshold": "from --threshold",
    "--shift-parallel-threshold": "from --threshold",
    "--host": HOST,
    "--port": "a free port",
}


@dataclass
class CompareConfig:
    modes: list[str]
    model: str  # what `shifttune serve` loads: a local HF directory or a bundled model
    sp: int = 2
    tp: int = 1
    device: str = "cpu"
    threshold: int = 256  # `serve --shift-threshold`: steps of <= this many tokens run in TP mode
    server_args: list[str] = field(default_factory=list)  # appended to every serve command line
    startup_timeout_s: float = 600.0
    stop_timeout_s: float = 30.0
    profile: Path | None = None  # predict each run on it (see the module docstring)

    def validate(self) -> None:
        if not self.modes or len(set(self.modes)) != len(self.modes) or set(self.modes) - set(MODE_POLICY):
            raise ConfigError(f"expected distinct modes among {', '.join(MODE_POLICY)}, got {self.modes}", "compare")
        if self.sp < 1 or self.tp < 1:
            raise ConfigError("must be >= 1", "sp" if self.sp < 1 else "tp")
        if self.sp < 2 and {"sp", "shift"} & set(self.modes):
            raise ConfigError("modes sp and shift need an SP x TP layout: --sp 2 or more", "sp")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"must be one of cpu, cuda, got {self.device!r}", "device")
        if self.threshold < 0:
            raise ConfigError("must be >= 0", "threshold")
        if not self.startup_timeout_s > 0:
            raise ConfigError("must be > 0 (seconds)", "startup_timeout_s")
        for arg in self.server_args:
            flag = arg.split("=", 1)[0]
            if flag in SERVE_FLAGS:
                raise ConfigError(f"--compare sets {flag} for each server itself ({SERVE_FLAGS[flag]}); drop it here",
                                  "server_args")  # fmt: skip

    def load_profile(self, bench: BenchConfig) -> Profile | None:
        """The profile to predict on, checked against the layout (ConfigError), or None."""
        if self.profile is None:
            return None
        if bench.concurrency is not None:
            raise ConfigError("the simulation sends every request at its arrival time: not with --concurrency",
                              "profile")  # fmt: skip
        prof = load_profile(self.profile)
        if prof.world_size != self.sp * self.tp:
            raise ConfigError(f"{self.profile} was measured on {prof.world_size} ranks; --compare runs SP={self.sp} "
                              f"x TP={self.tp}", "profile")  # fmt: skip
        return prof


def parse_modes(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def serve_command(cfg: CompareConfig, mode: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "shifttune.cli", "serve", cfg.model,
        "--device", cfg.device,
        "--tensor-parallel-size", str(cfg.tp),
        "--sequence-parallel-size", str(cfg.sp),
        "--shift-policy", MODE_POLICY[mode],
        "--shift-threshold", str(cfg.threshold),
        "--host", HOST, "--port", str(port),
        "--no-tui",
        *cfg.server_args,
    ]  # fmt: skip


def wait_healthy(base_url: str, alive: Callable[[], bool], timeout_s: float, poll_s: float = 0.5) -> str | None:
    """Polls GET /health of a server being started until it answers 200: None; otherwise why not: "exited"
    (`alive()` turned false first) or "timeout" (after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if not alive():
                return "exited"
            with contextlib.suppress(httpx.HTTPError):
                if client.get(base_url + "/health").status_code == 200:
                    return None
            if time.monotonic() > deadline:
                return "timeout"
            time.sleep(poll_s)


class ServeProcess:
    """One server in its own process group (its workers go down with it); `with` stops it."""

    def __init__(self, cmd: list[str], port: int, log_path: Path, name: str = "shifttune serve"):
        self.cmd, self.port, self.log_path, self.name = cmd, port, log_path, name
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            env = os.environ | {"PYTHONUNBUFFERED": "1"}
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, start_new_session=True)  # fmt: skip

    def tail(self, n: int = LOG_LINES) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "(no log)"
        return "\n".join("  | " + line for line in lines) or "  | (empty log)"

    def wait_healthy(self, timeout_s: float, poll_s: float = 0.5) -> None:
        """Until GET /health answers 200; ServerError (with the log's last lines) if the server exits first
        or does not answer within timeout_s."""
        assert self.proc is not None
        why = wait_healthy(self.base_url, lambda: self.proc.poll() is None, timeout_s, poll_s)
        if why == "exited":
            raise ServerError(f"{self.name} exited with code {self.proc.returncode} before it was healthy; "
                              f"last lines of {self.log_path}:\n{self.tail()}")  # fmt: skip
        if why == "timeout":
            raise ServerError(f"{self.name} did not answer GET /health with 200 within {timeout_s:g} s; "
                              f"last lines of {self.log_path}:\n{self.tail()}")  # fmt: skip

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT, then SIGTERM, then SIGKILL to the process group; returns the exit code. A KeyboardInterrupt
        (Ctrl-C, SIGTERM) while it waits kills the group at once, then goes on up."""
        if self.proc is None:
            return None
        try:
            for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
                if self.proc.poll() is not None:
                    break
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, sig)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(wait_s)
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):  # workers left behind by a dead server
                os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.poll()


@dataclass
class CompareRun:
    runs: dict[str, list[dict]] = field(default_factory=dict)  # mode -> records (one per rate)
    logs: dict[str, Path] = field(default_factory=dict)
    interrupted: bool = False
    stop_signal: int | None = None  # what interrupted it
    error: str | None = None  # why a mode could not run (the modes before it are kept)
    notes: list[str] = field(default_factory=list)


def run_compare(
    cfg: CompareConfig, bench: BenchConfig, reporter: Reporter | None = None, log_dir: Path | None = None
) -> CompareRun:
    """Each mode in turn: start its server, wait until healthy, run `bench` against it, stop it.
    Records carry their "mode". Ctrl-C or SIGTERM, or a server that fails to start or to answer, stops the
    comparison and keeps the modes that completed (`interrupted`, `error`); the server is stopped on every way
    out. Raises ConfigError for bad settings."""
    cfg.validate()
    tokenizer = bench.tokenizer or default_tokenizer_name(cfg.model)
    replace(bench, base_url=f"http://{HOST}:1", tokenizer=tokenizer).validate()  # before any server starts
    prof = cfg.load_profile(bench)
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="shifttune-bench-"))
    out = CompareRun()
    with sigterm_like_ctrl_c():
        for mode in cfg.modes:
            port = free_port()
            server = ServeProcess(serve_command(cfg, mode, port), port, log_dir / f"serve-{mode}.log")
            out.logs[mode] = server.log_path
            try:
                try:
                    server.start()
                    server.wait_healthy(cfg.startup_timeout_s)
                    run = run_bench(replace(bench, base_url=server.base_url, model=None, tokenizer=tokenizer),
                                    reporter, label=f"{mode}: ")  # fmt: skip
                    out.runs[mode] = [r | {"mode": mode} for r in run.records]
                    if run.interrupted:
                        out.interrupted, out.stop_signal = True, run.stop_signal
                    elif prof is not None:
                        try:
                            predict(prof, str(cfg.profile), replace(bench, base_url=server.base_url),
                                    out.runs[mode], run.sent)  # fmt: skip
                        except ServerError as e:  # the measured records stand without it
                            out.notes.append(f"mode {mode}: no prediction: {e}")
                finally:
                    server.stop(cfg.stop_timeout_s)
            except KeyboardInterrupt as e:  # NOTE: also one that comes while the server is being stopped
                out.interrupted, out.stop_signal = True, stop_signal(e)
            except ServerError as e:
                out.error = f"mode {mode}: {e}"
            if out.interrupted or out.error:
                break
    return out


def predict(prof: Profile, profile_path: str, bench: BenchConfig, records: list[dict], sent: list[list[BenchRequest]]):
    """Adds "predicted" to each record that completed requests: per metric (TTFT and TPOT p50/p99, output
    throughput), the simulator's value for the requests sent (their arrival times and lengths), the measured
    one and the relative error, on the layout, policy and engine settings the server at `bench.base_url`
    reports, with its host time per request measured by lone probe requests after the run (`validate.probe`)."""
    # NOTE: lazy: validate imports serve_vs_offline, which imports this module
    from shifttune.bench.validate import (METRICS, ValidateConfig, compare_row, engine_loop, probe, server_settings,
                                          simulated, step_models)  # fmt: skip

    metrics = [*METRICS, THROUGHPUT]
    settings = server_settings(bench.base_url, bench.api_key)
    probe_cfg = ValidateConfig(bench.base_url, prof, profile_path, [], seed=bench.seed, api_key=bench.api_key)
    if bench.input_len is not None:
        probe_cfg.input_len = bench.input_len
    host = probe(probe_cfg, step_models(prof, settings), engine_loop(settings, prof))
    loop = engine_loop(settings, prof, host)
    for record, batch in zip(records, sent):
        if not record["completed"]:
            continue
        requests = [Request(r.arrival_s, r.input_len, r.output_len) for r in batch]
        summary = simulated(prof, profile_path, settings, requests, loop, per_request=True)
        row = compare_row(record["request_rate"], summary, record, metrics)
        per_req = summary["ttft_ms_per_request"]
        gaps = [1e3 * m - p for m, p, e in zip(record["ttfts"], per_req, record["errors"]) if p is not None and not e]
        record["predicted"] = {
            "metrics": {name: row[name] for name, *_ in metrics},
            # each request's TTFT as simulated, in the order sent; measured minus predicted, where it completed
            "ttft_ms_per_request": per_req,
            "ttft_gap_ms": {"median": percentile(gaps, 0.5), "max": max(gaps)} if gaps else None,
            "profile": profile_path,
            "profile_kind": "predicted" if prof.predicted else "measured",
            "engine_loop": loop.kwargs(),
            "host_time": host or "not measured: the server keeps no trace (0 ms per request)",
        }
