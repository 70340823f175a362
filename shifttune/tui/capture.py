"""Screenshots of `shifttune serve`'s live view under load, and what the view costs the engine, in one command.

`shifttune serve` runs under the same `shifttune bench` load with the live view in a terminal (tmux when
it is installed, else a pseudo-terminal) and with --no-tui, `--repeats` times each in ABBA order. Reported
as JSON: mean engine step time from the server's /metrics (`shifttune:step_seconds`, over the bench only)
both ways and per mode, the bench's throughput and latencies, and the view's own refresh times (poll
start to frame written, recorded by the view under SHIFTTUNE_TUI_TIMING). Screenshots: SVG from the
view's `w` key (Textual's own, with the real NVML sampler) and, under tmux, the terminal's text.

    python -m shifttune.tui.capture --out DIR                      # tiny on 2 CPU ranks (threshold 16)
    python -m shifttune.tui.capture --model llama-3.1-8b --device cuda --out DIR    # one GPU, dummy weights
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shifttune.bench.compare import free_port, wait_healthy
from shifttune.tui.scrape import parse

CLI = [sys.executable, "-m", "shifttune.cli"]
SESSION = "shifttune-capture"


@dataclass
class Settings:
    out: Path
    model: str = "tiny"
    device: str = "cpu"
    tp: int = 1
    sp: int = 2
    threshold: int = 16
    load_format: str = "auto"
    serve_args: list[str] = field(default_factory=list)
    bench_args: list[str] = field(default_factory=list)
    repeats: int = 1
    size: tuple[int, int] = (160, 48)
    shots: int = 3
    shots_limit_s: float = 60.0  # at most this long taking screenshots (first view run only)
    startup_timeout_s: float = 900.0
    deadline_s: float = 540.0  # do not start another run after this many seconds


def step_counters(url: str) -> dict[str, tuple[float, float]]:
    """mode -> (steps, seconds of step time) from the server's /metrics."""
    scrape = parse(httpx.get(f"{url}/metrics", timeout=10).text, 0.0)
    steps = scrape.by_label("shifttune:step_seconds_count", "mode")
    seconds = scrape.by_label("shifttune:step_seconds_sum", "mode")
    return {m: (steps[m], seconds.get(m, 0.0)) for m in steps}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def server_processes(port: int) -> dict[str, list[int]]:
    """The server's processes by role: http (uvicorn, the serve command), engine (core and ranks), view."""
    found = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()
    serve = [int(p) for p in found if _cmdline(int(p)).startswith(sys.executable) and " serve " in _cmdline(int(p))]
    roles: dict[str, list[int]] = {"http": serve, "engine": [], "view": []}
    todo = list(serve)
    while todo:
        kids = subprocess.run(["pgrep", "-P", str(todo.pop())], capture_output=True, text=True).stdout.split()
        for kid in map(int, kids):
            cmd = _cmdline(kid)
            if "shifttune.cli top" in cmd:
                roles["view"].append(kid)
            elif "spawn_main" in cmd:
                roles["engine"].append(kid)
            todo.append(kid)
    return roles


class _Terminal:
    """The served command with the view on a terminal: a tmux session, or a pseudo-terminal we drain."""

    def __init__(self, argv: list[str], env: dict[str, str], size: tuple[int, int], out: Path, tag: str):
        self.tmux = shutil.which("tmux") is not None
        self.exit_file = out / f"exit_{tag}.txt"
        self.exit_file.unlink(missing_ok=True)  # NOTE: a stale one from an earlier run would read as "exited"
        cols, rows = size
        if self.tmux:
            subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
            env = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "CUDA_VISIBLE_DEVICES") if k in os.environ} | env
            exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
            script = f"env {exports} {shlex.join(argv)}; echo $? > {shlex.quote(str(self.exit_file))}"
            subprocess.run(["tmux", "new-session", "-d", "-s", SESSION, "-x", str(cols), "-y", str(rows), "-c",
                            os.getcwd(), "sh", "-c", script], check=True)  # fmt: skip
            self.proc = None
        else:
            import fcntl
            import struct
            import termios

            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=os.environ | env,
                                         start_new_session=True)  # fmt: skip
            os.close(slave)
            self.master = master
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                if not os.read(self.master, 65536):
                    return
            except OSError:
                return

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return not self.exit_file.exists()

    def press(self, key: str) -> None:
        if self.proc is None:
            subprocess.run(["tmux", "send-keys", "-t", SESSION, key], check=True)
        else:
            os.write(self.master, key.encode())

    def text(self, ansi: bool) -> str | None:
        if self.proc is not None:
            return None
        flags = ["-p", "-e"] if ansi else ["-p"]
        return subprocess.run(["tmux", "capture-pane", *flags, "-t", SESSION], capture_output=True, text=True).stdout

    def wait(self, timeout_s: float) -> int | None:
        deadline = time.time() + timeout_s
        while self.alive() and time.time() < deadline:
            time.sleep(0.2)
        if self.proc is not None:
            return self.proc.poll()
        code = self.exit_file.read_text().strip() if self.exit_file.exists() else None
        subprocess.run(["tmux", "kill-session", "-t", SESSION], capture_output=True)
        return int(code) if code else None


def _serve_argv(s: Settings, port: int, tui: bool, log: Path) -> list[str]:
    argv = [*CLI, "serve", s.model, "--device", s.device, "--tensor-parallel-size", str(s.tp),
            "--sequence-parallel-size", str(s.sp), "--shift-threshold", str(s.threshold), "--port", str(port),
            "--load-format", s.load_format, *s.serve_args]  # fmt: skip
    return [*argv, "--log-file", str(log)] if tui else [*argv, "--no-tui"]


def _screenshots(term: _Terminal, url: str, s: Settings, shots: Path, limit_s: float = 60.0) -> list[dict]:
    """Under the bench's load again (restarted when it ends, for up to `limit_s`): an SVG from the view's `w` key
    and, under tmux, the screen's text, about twice a second. Kept: the first `s.shots`, and the first showing
    a mode none of those showed (the badge says which; a prefill burst in SP x TP is short)."""
    taken: list[dict] = []
    modes: set[str] = set()
    deadline, bench = time.time() + limit_s, None
    while time.time() < deadline:
        if bench is not None and bench.poll() not in (None, 0):
            break  # the bench fails: no load to show
        if bench is None or bench.poll() is not None:
            bench = subprocess.Popen([*CLI, "bench", "--base-url", url, *s.bench_args], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
            time.sleep(1.0)
        time.sleep(0.2)
        text, ansi = term.text(False), term.text(True)
        before = set(shots.glob("*.svg"))
        term.press("w")
        written_by = time.time() + 10
        while not (new := sorted(set(shots.glob("*.svg")) - before)) and time.time() < written_by:
            time.sleep(0.1)
        time.sleep(0.2)  # written in one go, but let it finish
        mode = None
        if text is not None:
            mode = "sp" if "Ulysses" in text else "tp" if "tensor parallel" in text else None
        if len(taken) >= s.shots and (mode is None or mode in modes):
            for path in new:
                path.unlink()
            if text is None or len(modes) >= 2:
                break
            continue
        name = f"screen_{len(taken) + 1}"
        for path in new[:1]:
            path.rename(shots / f"{name}.svg")
        if text is not None:
            (shots / f"{name}.txt").write_text(text)
            (shots / f"{name}.ansi").write_text(ansi or "")
        taken.append({"name": name, "mode": mode, "svg": bool(new)})
        if mode:
            modes.add(mode)
    bench.terminate()
    bench.wait()
    return taken


def run_once(s: Settings, tui: bool, tag: str, screenshots: bool = True) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = s.out / f"serve_{tag}.log"
    argv = _serve_argv(s, port, tui, log)
    shots = s.out / f"shots_{tag}"
    term = proc = None
    started = time.time()
    if tui:
        shots.mkdir(parents=True, exist_ok=True)
        env = {"SHIFTTUNE_TUI_TIMING": str(s.out / f"refresh_{tag}.json"), "SHIFTTUNE_SCREENSHOT_DIR": str(shots),
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}  # fmt: skip
        term = _Terminal(argv, env, s.size, s.out, tag)
        alive = term.alive
    else:
        env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.Popen(argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
        alive = lambda: proc.poll() is None  # noqa: E731
    try:
        why = wait_healthy(url, alive, s.startup_timeout_s)
        if why == "exited":
            raise RuntimeError("the server exited while starting (see its log)")
        if why == "timeout":
            raise RuntimeError(f"the server did not become healthy in {s.startup_timeout_s:.0f} s")
        startup_s = time.time() - started
        warm = {"prompt": [1, 2, 3, 4], "max_tokens": 4}  # token ids: a dummy-weight model may have no tokenizer
        httpx.post(f"{url}/v1/completions", json=warm, timeout=600).raise_for_status()
        before = step_counters(url)
        roles = server_processes(port)
        cpu0, wall0 = {r: sum(map(_cpu_seconds, pids)) for r, pids in roles.items()}, time.time()
        bench_out = s.out / f"bench_{tag}.json"
        bench = subprocess.Popen([*CLI, "bench", "--base-url", url, "--out", str(bench_out), *s.bench_args],
                                 stdout=open(s.out / f"bench_{tag}.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
        if bench.wait() != 0:
            lines = (s.out / f"bench_{tag}.log").read_text().strip().splitlines()
            raise RuntimeError(f"shifttune bench failed: {lines[-1] if lines else bench.returncode}")
        after = step_counters(url)
        wall = time.time() - wall0
        cpu = {r: (sum(map(_cpu_seconds, pids)) - cpu0[r]) / wall for r, pids in roles.items() if pids}
        taken = []
        if term is not None and screenshots:  # after the measured bench: they cost the view CPU
            taken = _screenshots(term, url, s, shots, s.shots_limit_s)
    finally:
        if term is not None:
            term.press("q")
            code = term.wait(120)
        else:
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
    per_mode = {}
    for mode, (n, sec) in after.items():
        n0, sec0 = before.get(mode, (0.0, 0.0))
        if n > n0:
            per_mode[mode] = {"steps": int(n - n0), "seconds": sec - sec0, "mean_ms": (sec - sec0) / (n - n0) * 1e3}
    steps = sum(m["steps"] for m in per_mode.values())
    seconds = sum(m["seconds"] for m in per_mode.values())
    result = {"run": tag, "tui": tui, "terminal": ("tmux" if term.tmux else "pty") if term else None,
              "exit_code": code, "startup_s": round(startup_s, 1), "steps": steps,
              "mean_step_ms": seconds / steps * 1e3 if steps else None, "per_mode": per_mode,
              "cpu_cores_during_bench": {r: round(c, 3) for r, c in cpu.items()}, "bench_window": [wall0, wall0 + wall],
              "screenshots": taken}  # fmt: skip
    if bench_out.exists():
        data = json.loads(bench_out.read_text())
        r = data.get("results", [data])[0]  # one rate: the record itself; a sweep: under "results"
        keys = (
            "completed",
            "failed",
            "duration",
            "output_throughput",
            "median_ttft_ms",
            "p99_ttft_ms",
            "median_tpot_ms",
            "p99_tpot_ms",
        )
        result["bench"] = {k: r.get(k) for k in keys}
    return result


def _refresh_summary(s: Settings, runs: list[dict]) -> dict | None:
    """The view's refreshes during the measured benches (not the screenshots after them)."""
    totals, polls, cpu = [], [], []
    for run in runs:
        path = s.out / f"refresh_{run['run']}.json"
        if not run["tui"] or "bench_window" not in run or not path.exists():
            continue
        data = json.loads(path.read_text())
        lo, hi = run["bench_window"]
        inside = [r for r in data["refreshes"] if lo <= r[3] <= hi]
        totals += [r[2] for r in inside]
        polls += [r[0] for r in inside]
        cpu.append(run["cpu_cores_during_bench"].get("view", 0.0))
    if not totals:
        return None
    q = statistics.quantiles(totals, n=100, method="inclusive") if len(totals) > 1 else [totals[0]] * 99
    return {"refreshes": len(totals), "p50_ms": q[49] * 1e3, "p90_ms": q[89] * 1e3, "p99_ms": q[98] * 1e3,
            "max_ms": max(totals) * 1e3, "poll_p50_ms": statistics.median(polls) * 1e3,
            "interval_s": data["interval_s"], "view_cpu_cores": statistics.mean(cpu),
            "what": "poll of /metrics + /v1/shifttune/live, widgets, until the frame was written"}  # fmt: skip


def capture(s: Settings) -> dict:
    s.out.mkdir(parents=True, exist_ok=True)
    started, runs = time.time(), []
    # ABBA (plain, view, view, plain, ...): a machine that drifts slower or faster does not favour either side
    order = [tui for i in range(s.repeats) for tui in ((False, True) if i % 2 == 0 else (True, False))]
    summary: dict = {}
    for i, tui in enumerate(order):
        if runs and time.time() - started > s.deadline_s:
            print(f"capture: deadline reached, {len(order) - i} run(s) skipped", file=sys.stderr)
            break
        tag = f"{'tui' if tui else 'plain'}_{i // 2 + 1}"
        print(f"capture: run {tag} …", file=sys.stderr, flush=True)
        first_view = not any(r["tui"] for r in runs)
        try:
            runs.append(run_once(s, tui, tag, screenshots=first_view))
        except (RuntimeError, OSError, httpx.HTTPError) as e:  # recorded; the other runs still say something
            runs.append({"run": tag, "tui": tui, "error": str(e), "steps": 0})
        print(f"capture: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        summary = _summarize(s, runs)  # after every run: a run cut short by a time limit leaves the others
    return summary


def _summarize(s: Settings, runs: list[dict]) -> dict:
    def pooled(tui: bool) -> float | None:
        chosen = [r for r in runs if r["tui"] == tui and r["steps"]]
        steps = sum(r["steps"] for r in chosen)
        return sum(r["mean_step_ms"] * r["steps"] for r in chosen) / steps if steps else None

    with_tui, without = pooled(True), pooled(False)
    pairs = []  # ABBA: runs 2k and 2k+1 are one pair
    for a, b in zip(runs[::2], runs[1::2]):
        view, plain = (a, b) if a["tui"] else (b, a)
        if view["steps"] and plain["steps"]:
            pairs.append(round((view["mean_step_ms"] / plain["mean_step_ms"] - 1) * 100, 2))
    summary = {
        "command": " ".join(sys.argv),
        "model": s.model, "device": s.device, "tp": s.tp, "sp": s.sp, "threshold": s.threshold,
        "bench_args": s.bench_args,
        "mean_step_ms_with_tui": with_tui,
        "mean_step_ms_without_tui": without,
        "step_time_change_pct": (with_tui / without - 1) * 100 if with_tui and without else None,
        "step_time_change_pct_per_pair": pairs,
        "refresh": _refresh_summary(s, runs),
        "runs": runs,
    }  # fmt: skip
    shots = [(r["run"], t) for r in runs for t in r.get("screenshots", []) if t["svg"]]
    if shots:  # one for the docs: the SP x TP badge if a shot caught it
        run, shot = sorted(shots, key=lambda x: x[1]["mode"] != "sp")[0]
        shutil.copy(s.out / f"shots_{run}" / f"{shot['name']}.svg", s.out / f"tui_{s.device}.svg")
    (s.out / f"tui_capture_{s.device}.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m shifttune.tui.capture", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--sp", type=int, default=None, help="default: 2 on cpu, 1 on cuda")
    p.add_argument("--threshold", type=int, default=None, help="default: 16 on cpu, 256 on cuda")
    p.add_argument("--load-format", default=None, help="default: auto for tiny, else dummy")
    p.add_argument("--serve-arg", action="append", default=[], help="one more `shifttune serve` flag (repeatable)")
    p.add_argument("--bench", default=None, help="`shifttune bench` flags as one string (default per device)")
    p.add_argument("--repeats", type=int, default=1, help="plain/view pairs, in ABBA order")
    p.add_argument("--size", default="160x48", help="terminal COLSxROWS")
    p.add_argument("--shots", type=int, default=3)
    p.add_argument("--shots-limit", type=float, default=60.0, help="seconds at most for screenshots")
    p.add_argument("--deadline", type=float, default=540.0, help="start no run after this many seconds")
    p.add_argument("--startup-timeout", type=float, default=900.0, help="seconds a server may take to start")
    a = p.parse_args(argv)
    cpu = a.device == "cpu"
    bench = a.bench or ("--num-prompts 64 --input-len 32:192 --output-len 24 --rate 6 --seed 0" if cpu else
                        "--num-prompts 200 --input-len 1024 --output-len 128 --rate 12 --seed 0")  # fmt: skip
    cols, rows = (int(x) for x in a.size.lower().split("x"))
    bench_args = shlex.split(bench)
    if "--tokenizer" not in bench_args:  # random ids of exact lengths below any model's vocabulary, as
        bench_args += ["--tokenizer", "tiny"]  # bench.serve_vs_offline: bundled dummy models ship no tokenizer
    s = Settings(a.out, a.model, a.device, a.tp, a.sp if a.sp is not None else (2 if cpu else 1),
                 a.threshold if a.threshold is not None else (16 if cpu else 256),
                 a.load_format or ("auto" if a.model == "tiny" else "dummy"), a.serve_arg, bench_args,
                 a.repeats, (cols, rows), a.shots, a.shots_limit, a.startup_timeout, a.deadline)  # fmt: skip
    summary = capture(s)
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
