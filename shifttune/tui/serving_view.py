"""The live serving view (Textual): what `shifttune serve` shows in a terminal and what `shifttune top` shows
of any running server. It draws `ServingSnapshot`s that a source (`sources.py`) gives it every
`interval_s`, plus the local GPUs from the NVML sampler.

Keys: `+`/`-` double / halve the shift threshold, `t` / `s` / `a` / `p` force TP / force SP×TP / the
threshold policy / the profile policy (each applied by the engine between two steps, through the
server's policy endpoint), `?` help, `w` an SVG screenshot, `q` (or Ctrl-C) quits — and, in the view
`shifttune serve` starts (role "serve"), stops the server gracefully: the view exits with code 0 and the
server, its parent, stops (see `attach.py`).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import time
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from shifttune.signals import exit_status
from shifttune.telemetry.nvml import NvmlSampler
from shifttune.tui.snapshot import MODE_NAMES, REFRESH_S, SP, TP, ServingSnapshot
from shifttune.tui.sources import PolicyError, Source
from shifttune.tui.widgets import (
    MODE_COLORS,
    GpuPanel,
    LogPane,
    bar,
    big_mode,
    mode_strip,
    on_sigterm,
    token_chart,
)

SLOW_PARTS_S = 0.5  # what changes slowly or is read at most this often anyway (/metrics) is drawn at most this often
HELP = """\
[b]shifttune live view[/b]

  [b]+[/b] / [b]-[/b]   double / halve the shift threshold (tokens per step up to which TP mode runs)
  [b]t[/b]       force TP mode on every step
  [b]s[/b]       force SP×TP mode on every step
  [b]a[/b]       threshold policy (TP at or below the threshold, SP×TP above)
  [b]p[/b]       profile policy (per step, the faster mode in the server's --profile)
  [b]w[/b]       save an SVG screenshot
  [b]q[/b]       {quit}

Changes apply between two engine steps and show in /metrics (shifttune:shift_threshold, shifttune:shift_policy).
The timeline and token chart show the last steps, TP in blue and SP×TP in orange; the dashed line is the threshold.

(any key closes this)"""


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _rate(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x / 1000:.1f}k tok/s" if x >= 1000 else f"{x:.0f} tok/s"


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _count(x: float | None) -> str:
    return "–" if x is None else f"{x:.0f}"


class HelpScreen(ModalScreen):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 100; height: auto; border: round $accent; padding: 1 2; background: $panel; }
    """

    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        yield Static(self.text)

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


class ServingApp(App):
    """`role` is "serve" (q stops the server that started this view) or "top" (q quits the viewer);
    `make_app` picks the class with the matching key labels."""

    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; background: $boost; text-style: bold; }
    #status { height: 1; color: $warning; }
    #top { height: 10; }
    #mode { width: 30; height: 100%; border: round $primary; content-align: center middle; text-align: center; }
    #timeline { border: round $primary; height: 100%; }
    #strip { height: 3; }
    #share { height: 1; }
    #tokens { height: 4; }
    #middle { height: auto; min-height: 10; }
    #load { width: 50; height: 10; border: round $primary; }
    #gpus { width: 1fr; border: round $primary; min-height: 10; }
    #requests { height: 1fr; min-height: 5; border: round $primary; }
    #log { height: 9; border: round $primary; }
    """
    BINDINGS = [
        Binding("plus,equals_sign", "threshold(2)", "threshold ×2", key_display="+"),
        Binding("minus", "threshold(0.5)", "÷2", key_display="-"),
        Binding("t", "policy('tp')", "TP"),
        Binding("s", "policy('sp')", "SP×TP"),
        Binding("a", "policy('threshold')", "threshold"),
        Binding("p", "policy('profile')", "profile"),
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("w", "screenshot", "screenshot", show=False),
        Binding("q", "quit_view", "quit"),
        Binding("ctrl+c", "quit_view", "quit", show=False, priority=True),
    ]

    def __init__(self, source: Source, nvml: NvmlSampler | None = None, role: str = "top",
                 log_file: Path | None = None, interval_s: float = REFRESH_S, parent_fd: int | None = None,
                 timing_path: Path | None = None):  # fmt: skip
        super().__init__()
        self.source, self.nvml, self.role = source, nvml, role
        self.log_file, self.interval_s, self.parent_fd = log_file, interval_s, parent_fd
        self.title = f"shifttune {role}"
        self.snapshot: ServingSnapshot | None = None
        self.threshold: int | None = None  # the latest known, also right after a key changed it
        self.policy: str | None = None
        self.messages: list[str] = []  # what keys did (also shown as notifications)
        self.timing_path = Path(timing_path) if timing_path else None
        if self.timing_path is None and os.environ.get("SHIFTTUNE_TUI_TIMING"):
            self.timing_path = Path(os.environ["SHIFTTUNE_TUI_TIMING"])
        # per refresh: poll, widgets drawn, frame written (s after its start), and when it started (unix time)
        self.timings: list[tuple[float, float, float, float]] = []
        self._tick_marks: tuple[float, float, float, float] | None = None
        self._nvml_seen = None
        self._polling = False
        self._drawn: dict[str, object] = {}  # widget id -> what its current drawing was made from
        self._slow_drawn = -math.inf

    # ---- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="status")
        with Horizontal(id="top"):
            yield Static(id="mode")
            with Vertical(id="timeline"):
                yield Static(id="strip")
                yield Static(id="share")
                yield Static(id="tokens")
        with Horizontal(id="middle"):
            yield Static(id="load")
            yield GpuPanel(self.nvml, id="gpus")
        yield Static(id="requests")
        if self.log_file is not None:
            yield LogPane(id="log")
        yield Footer()

    def on_mount(self) -> None:
        for wid, title in (("mode", "mode"), ("timeline", "steps"), ("load", "load"),
                           ("gpus", "GPUs (NVML, this machine)"), ("requests", "recent requests")):  # fmt: skip
            self.query_one(f"#{wid}").border_title = title
        if self.log_file is not None:
            log = self.query_one("#log", LogPane)
            log.border_title = f"log: {self.log_file}"
            log.follow(self.log_file)
        if self.parent_fd is not None:
            asyncio.get_running_loop().add_reader(self.parent_fd, self._parent_readable)
        self._started = (time.monotonic(), time.process_time())
        on_sigterm(lambda: self.exit(return_code=exit_status(signal.SIGTERM)))
        self.set_interval(self.interval_s, self.tick)
        self.call_after_refresh(self.tick)  # after the first layout: the charts need their widths

    def on_resize(self) -> None:
        """A new terminal size: redraw what was drawn for the old one once the layout is done."""
        if self.snapshot is not None:
            self._slow_drawn = -math.inf
            self.call_after_refresh(self.show, self.snapshot)

    def _parent_readable(self) -> None:
        """The server that started this view closed its end: it is stopping, so the view ends."""
        if not os.read(self.parent_fd, 1024):
            asyncio.get_running_loop().remove_reader(self.parent_fd)
            self.exit(return_code=0)

    # ---- refresh ----------------------------------------------------------------------------------
    async def tick(self) -> None:
        if self._polling:  # a slow server: skip rather than pile up polls
            return
        self._polling = True
        try:
            t0 = time.perf_counter()
            snap = await self.source.poll()
            t1 = time.perf_counter()
            try:
                self.show(snap)
            except NoMatches:  # the view closed while the poll was out
                return
            if self.timing_path is not None:
                self._tick_marks = (t0, t1, time.perf_counter(), time.time() - (time.perf_counter() - t0))
        finally:
            self._polling = False

    def _display(self, screen, renderable) -> None:
        # NOTE: Textual's private paint hook, wrapped only to time refreshes (SHIFTTUNE_TUI_TIMING); a
        # refresh counts as done when the frame after its widget updates has been written out.
        super()._display(screen, renderable)
        if self._tick_marks is not None and renderable is not None:
            t0, t1, t2, started = self._tick_marks
            self.timings.append((t1 - t0, t2 - t0, time.perf_counter() - t0, started))
            self._tick_marks = None

    def _update(self, wid: str, key: object, draw) -> Static | None:
        """Redraws widget `wid` with draw(widget) unless `key` (what its drawing depends on) is unchanged."""
        widget = self.query_one(f"#{wid}", Static)
        key = (key, widget.content_size)
        if self._drawn.get(wid) == key:
            return None
        self._drawn[wid] = key
        widget.update(draw(widget), layout=False)
        return widget

    def show(self, snap: ServingSnapshot) -> None:
        """Draws one snapshot: the mode, timeline and header at every refresh, the rest (rates, latencies,
        requests, GPUs, log) at most every SLOW_PARTS_S; parts whose data did not change are left alone."""
        self.snapshot = s = snap
        if s.threshold is not None:
            self.threshold = s.threshold
        if s.policy is not None:
            self.policy = s.policy
        uptime = None if s.uptime_s is None else int(s.uptime_s)
        self._update("header", (s.kind, s.model, s.ranks, s.device, s.policy, s.threshold, s.url, uptime),
                     lambda w: self._header(s))  # fmt: skip
        self._update("status", s.status, lambda w: Text(s.status))
        badge = self._update("mode", (s.mode, s.ranks, s.estimated), lambda w: self._mode(s))
        if badge is not None:
            badge.styles.background = MODE_COLORS.get(s.mode, "#333333")
        recent = s.cells[-3 * 240 :]  # more than the widest strip shows
        self._update("strip", recent, lambda w: mode_strip(s.cells, w.content_size.width, 3))
        self._update("tokens", (recent, s.threshold),
                     lambda w: token_chart(s.cells, w.content_size.width, 4, s.threshold))  # fmt: skip
        self.query_one("#timeline").border_title = self._timeline_title(s)
        now = time.monotonic()
        if now - self._slow_drawn < SLOW_PARTS_S:
            return
        self._slow_drawn = now
        self._update("share", s.share, lambda w: self._share(s))
        self._update("load", (s.running, s.waiting, s.kv_usage, s.kv_blocks, s.prompt_tps, s.generation_tps, s.ttft,
                              s.tpot, s.tpot_name, s.latency_span), lambda w: self._load(s))  # fmt: skip
        self._update("requests", (s.kind, s.requests), lambda w: self._requests(s, w.content_size.height))
        reading = self.nvml.latest() if self.nvml is not None else None
        if reading is not self._nvml_seen:
            self._nvml_seen = reading
            self.query_one("#gpus", GpuPanel).refresh(layout=True)
        if self.log_file is not None:
            self.query_one("#log", LogPane).poll()

    def _header(self, s: ServingSnapshot) -> Text:
        head = Text(f" {self.title}", style="bold")
        if not s.kind:
            return head + Text(f" · {s.url}")
        if s.kind == "vllm":
            parts = ["vLLM", s.model or "?", "policy: not reported", f"modes estimated at {s.threshold} tokens"]
        else:
            layout = f"P={s.ranks} (SP {s.sp} × TP {s.tp}, {s.device})" if s.ranks else "P=?"
            parts = [s.model or "?", layout, f"policy {s.policy}", f"threshold {s.threshold}"]
        return head + Text(" · " + " · ".join([*parts, s.url, f"up {_uptime(s.uptime_s)}"]))

    def _mode(self, s: ServingSnapshot) -> Text:
        text = Text()
        for row in big_mode(s.mode):
            text.append(row + "\n", style="bold #ffffff" if s.mode else "bold grey70")
        if s.mode == TP:
            detail = f"tensor parallel over {s.ranks} ranks" if s.ranks else "tensor parallel"
        elif s.mode == SP:
            detail = f"Ulysses SP {s.sp} × TP {s.tp}" if s.ranks else "sequence parallel"
        else:
            detail = "no step yet"
        if s.estimated and s.mode is not None:
            detail += " (estimated)"
        return text + Text(detail, style="#ffffff" if s.mode else "grey70")

    def _timeline_title(self, s: ServingSnapshot) -> str:
        unit = "steps" if s.cell_unit == "step" else f"one cell = {s.cell_unit}"
        return f"last {len(s.cells)} {unit}" if s.cell_unit == "step" else unit

    def _share(self, s: ServingSnapshot) -> Text:
        text = Text()
        for mode in (TP, SP):
            text.append("■ ", style=MODE_COLORS[mode])
            steps = s.share.steps.get(mode)
            text.append(f"{MODE_NAMES[mode]} {steps:.0%} of steps" if steps is not None else f"{MODE_NAMES[mode]} –")
            if s.share.time is not None and mode in s.share.time:
                text.append(f", {s.share.time[mode]:.0%} of time")
            text.append("   ")
        return text + Text(f"({s.share.span})" if s.share.span else "", style="dim")

    def _load(self, s: ServingSnapshot) -> Text:
        kv = bar(s.kv_usage, 16) + Text(f" {s.kv_usage:.0%}" if s.kv_usage is not None else " –")
        if s.kv_blocks:
            kv += Text(f"  {s.kv_blocks[0]}/{s.kv_blocks[1]} blocks", style="dim")
        rows = [
            ("requests", Text(f"running {_count(s.running)}   waiting {_count(s.waiting)}")),
            ("KV cache", kv),
            ("prompt", Text(_rate(s.prompt_tps))),
            ("generate", Text(_rate(s.generation_tps))),
            ("TTFT", Text(f"p50 {_ms(s.ttft.p50):>8}   p99 {_ms(s.ttft.p99):>8}")),
            (s.tpot_name, Text(f"p50 {_ms(s.tpot.p50):>8}   p99 {_ms(s.tpot.p99):>8}")),
            ("", Text(f"latencies: {s.latency_span}" if s.latency_span else "", style="dim")),
        ]
        return Text("\n").join(Text(f"{label:<10}", style="bold") + value for label, value in rows)

    def _requests(self, s: ServingSnapshot, height: int) -> Text:
        if s.requests is None:
            why = "vLLM's /metrics has no per-request data" if s.kind == "vllm" else "no request data yet"
            return Text(why, style="dim")
        lines = [Text(f"{'id':<21}{'prompt':>8}{'output':>8}{'TTFT':>11}  state", style="bold")]
        for r in reversed(s.requests[-max(1, height - 1) :]):
            rid = r.id if len(r.id) <= 20 else r.id[:19] + "…"
            style = "green" if r.state == "running" else "yellow" if r.state == "waiting" else "dim"
            row = f"{rid:<21}{r.prompt_tokens:>8}{r.output_tokens:>8}{_ms(r.ttft_s):>11}  "
            lines.append(Text(row) + Text(r.state, style=style))
        return Text("\n").join(lines)

    # ---- keys -------------------------------------------------------------------------------------
    def action_threshold(self, factor: float) -> None:
        if self.threshold is None:
            self._say("the threshold is not known yet", error=True)
            return
        new = max(1, self.threshold * 2) if factor > 1 else self.threshold // 2
        self.threshold = new  # a second press before the server answers builds on this one
        self.run_worker(self._apply(None, new), group="policy")

    def action_policy(self, policy: str) -> None:
        self.run_worker(self._apply(policy, None), group="policy")

    async def _apply(self, policy: str | None, threshold: int | None) -> None:
        try:
            self.policy, self.threshold = await self.source.set_policy(policy, threshold)
        except PolicyError as e:
            self._say(str(e), error=True)
            return
        self._say(f"policy {self.policy}, threshold {self.threshold} (from the next step)")
        self._slow_drawn = -math.inf

    def _say(self, message: str, error: bool = False) -> None:
        self.messages.append(message)
        self.notify(message, severity="error" if error else "information", timeout=4)

    def action_help(self) -> None:
        quit_text = "stop the server gracefully (streams in flight end)" if self.role == "serve" else "quit"
        self.push_screen(HelpScreen(HELP.format(quit=quit_text)))

    def action_screenshot(self) -> None:
        scripted = os.environ.get("SHIFTTUNE_SCREENSHOT_DIR")  # a script takes them: no notice in the next one
        path = self.save_screenshot(path=scripted or None)
        self.messages.append(f"screenshot: {path}")
        if not scripted:
            self.notify(f"screenshot: {path}", timeout=3)

    def action_quit_view(self) -> None:
        if self.role == "serve":
            self.query_one("#status", Static).update(Text("stopping the server…"))
        self.exit(return_code=0)

    async def on_unmount(self) -> None:
        await self.source.aclose()
        if self.timing_path is not None and self.timings:
            wall, cpu = time.monotonic() - self._started[0], time.process_time() - self._started[1]
            self.timing_path.write_text(json.dumps({"interval_s": self.interval_s, "wall_s": wall, "cpu_s": cpu,
                                                    "refreshes": self.timings}))  # fmt: skip


class AttachedServingApp(ServingApp):
    """The view `shifttune serve` starts: q stops the server."""

    BINDINGS = [Binding("q", "quit_view", "stop server")]


def make_app(source: Source, nvml: NvmlSampler | None = None, role: str = "top", **kw) -> ServingApp:
    return (AttachedServingApp if role == "serve" else ServingApp)(source, nvml, role=role, **kw)
