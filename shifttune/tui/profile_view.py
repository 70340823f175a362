"""Live view of `shifttune profile` in a terminal (Textual): the grid filling in, the current point,
progress with ETA, the TP-vs-SP curves growing as points arrive, and the GPUs from NVML (the log pane and
GPU panel are the serving view's, `widgets.py`).

The sweep runs in a worker thread; Ctrl-C (or q) asks it to stop after the point in flight, so every
measured point stays in the profile file and the same command resumes.
"""

from __future__ import annotations

import signal
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static

from shifttune.engine.profile_schema import Point, Profile
from shifttune.profile.profiler import ProfileSettings, ProgressEvent, run_profile
from shifttune.telemetry.nvml import NvmlSampler
from shifttune.tui.widgets import GpuPanel, LogPane, on_sigterm


def _column(point_mode: str, tp: int, sp: int, context: int) -> str:
    return f"{'TP' if point_mode == 'tp' else f'SP{sp}xTP{tp}'} C={context}"


class ProfileApp(App):
    """Runs `run_profile` and shows it; `result` holds the profile, `interrupted` whether it was cut short."""

    TITLE = "shifttune profile"
    CSS = """
    #status { height: 1; }
    #bar { height: 1; }
    #body { height: 1fr; }
    #grid { width: 1fr; }
    #plot { width: 1fr; }
    #bottom { height: 9; }
    #log { width: 1fr; border: round $primary; }
    #gpus { width: 50; border: round $primary; }
    """
    BINDINGS = [
        Binding("ctrl+c", "stop", "stop (keeps measured points)", priority=True),
        Binding("ctrl+q", "stop", "stop", priority=True, show=False),
        Binding("q", "stop", "stop"),
    ]

    def __init__(self, settings: ProfileSettings, out: Path, command: str):
        # NOTE: spawned ranks need multiprocessing's resource tracker, which inherits stderr's file
        # descriptor; Textual swaps stderr for an object without one, so start the tracker first.
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()
        super().__init__()
        self.settings, self.out, self.command = settings, out, command
        self.result: Profile | None = None
        self.error: BaseException | None = None
        self.interrupted = False
        self.stop_signal: int | None = None  # SIGTERM, when that stopped it (the CLI exits 143)
        self._stop = False
        self._points: list[Point] = []
        self._columns: list[str] = []
        self.nvml = NvmlSampler()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("starting…", id="status")
        yield ProgressBar(total=None, show_eta=True, id="bar")
        with Horizontal(id="body"):
            yield DataTable(id="grid", zebra_stripes=True)
            yield Static(id="plot")
        with Horizontal(id="bottom"):
            yield LogPane(id="log")
            yield GpuPanel(self.nvml, id="gpus")
        yield Footer()

    def on_mount(self) -> None:
        grid = self.query_one("#grid", DataTable)
        grid.add_column("tokens", key="tokens")
        for t in self.settings.tokens:
            grid.add_row(str(t), key=str(t))
        self.query_one("#log").border_title = "log"
        self.query_one("#gpus").border_title = "GPUs (NVML)"
        self.nvml.start()
        gpus = self.query_one("#gpus", GpuPanel)
        self.set_interval(1.0, lambda: gpus.refresh(layout=True))
        self.run_worker(self._sweep, thread=True, exit_on_error=False)
        on_sigterm(self._on_sigterm)

    def _on_sigterm(self) -> None:
        self.stop_signal = signal.SIGTERM
        self.action_stop()

    def on_unmount(self) -> None:
        self.nvml.stop()

    def _sweep(self) -> None:
        try:
            self.result = run_profile(
                self.settings,
                self.out,
                self.command,
                progress=self._from_thread,
                stop=lambda: self._stop or not self.is_running,
            )
        except KeyboardInterrupt:
            self.interrupted = True
        except BaseException as e:  # shown by the CLI after the app closes
            self.error = e
        if self.is_running:
            self.call_from_thread(self.exit)

    def _from_thread(self, event: ProgressEvent) -> None:
        if self.is_running:  # the app may have closed under us; the sweep then stops at the next point
            self.call_from_thread(self._show, event)

    def action_stop(self) -> None:
        self._stop = True
        self.query_one("#status", Static).update("stopping after the point in flight…")

    def _show(self, event: ProgressEvent) -> None:
        bar = self.query_one("#bar", ProgressBar)
        bar.update(total=event.total or None, progress=event.done)
        if event.label and not self._stop:
            self.query_one("#status", Static).update(f"measuring {event.label}")
        if event.message:
            self.query_one("#log", LogPane).write(event.message)
        if event.point is not None:
            self._add_point(event.point)

    def _add_point(self, p: Point) -> None:
        grid = self.query_one("#grid", DataTable)
        col = _column(p.mode, p.tp, p.sp, p.context)
        if col not in self._columns:
            self._columns.append(col)
            grid.add_column(col, key=col, default="")
        grid.update_cell(str(p.tokens), col, f"{p.median_ms:.2f}")
        self._points.append(p)
        self._plot()

    def _plot(self) -> None:
        import plotext as plt

        plot = self.query_one("#plot", Static)
        context = self._points[0].context
        plt.clear_figure()
        plt.plotsize(max(30, plot.size.width), max(10, plot.size.height))
        series: dict[str, list[Point]] = {}
        for p in self._points:
            if p.context == context:
                series.setdefault(_column(p.mode, p.tp, p.sp, context), []).append(p)
        for label, pts in series.items():
            pts = sorted(pts, key=lambda x: x.tokens)
            plt.plot([x.tokens for x in pts], [x.median_ms for x in pts], label=label, marker="dot")
        plt.xscale("log")
        plt.title(f"step ms vs tokens, context {context}")
        plot.update(Text.from_ansi(plt.build()))
