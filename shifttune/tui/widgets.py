"""Widgets and drawing helpers the live views share (`shifttune serve` / `top`, and `shifttune profile`):
sparklines (one row, or several with a threshold line), the mode timeline strip, the big mode badge,
one panel per GPU from the NVML sampler, a log pane that follows a file, and `on_sigterm`.

Drawing is plain Rich `Text` sized to the widget, so a refresh repaints only what changed and tests can
read what a widget shows (`str(widget.render())`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from pathlib import Path
from typing import Callable, Sequence

from rich.table import Table
from rich.text import Text
from textual.widget import Widget
from textual.widgets import RichLog

from shifttune.telemetry.nvml import GpuSample, NvmlReading, NvmlSampler
from shifttune.tui.snapshot import MODE_NAMES, SP, TP, StepCell

MODE_COLORS = {TP: "#4c8dff", SP: "#f5a623"}


def on_sigterm(stop: Callable[[], None]) -> None:
    """Runs `stop` on the app's event loop when SIGTERM comes (call from `on_mount`). NOTE: the default action ends
    the process at once, leaving the terminal in the app's alternate screen with the mouse on."""
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not Unix, not the main thread
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop)


BLOCKS = "▁▂▃▄▅▆▇█"
GLYPHS = {  # a 3-row block font for the mode badge
    "T": ("▀█▀", " █ ", " ▀ "),
    "P": ("█▀▄", "█▀ ", "▀  "),
    "S": ("▄▀▀", " ▀▄", "▀▀ "),
    "×": ("▄ ▄", " █ ", "▀ ▀"),
}


def spark(values: Sequence[float], width: int, lo: float | None = None, hi: float | None = None) -> str:
    """The last `width` values as one row of block characters, scaled between lo and hi (default: their range)."""
    values = list(values)[-width:] if width > 0 else []
    if not values:
        return ""
    lo = min(values) if lo is None else lo
    hi = max(values) if hi is None else hi
    span = hi - lo
    return "".join(BLOCKS[0 if span <= 0 else min(7, max(0, int((v - lo) / span * 7.999)))] for v in values)


def bar(fraction: float | None, width: int) -> Text:
    """A horizontal gauge; grey when the value is unknown."""
    if fraction is None:
        return Text("·" * width, style="dim")
    filled = round(max(0.0, min(1.0, fraction)) * width)
    color = "green" if fraction < 0.7 else "yellow" if fraction < 0.9 else "red"
    return Text("█" * filled, style=color) + Text("░" * (width - filled), style="dim")


def big_mode(mode: str | None) -> list[str]:
    """The three rows of the mode's name in the block font ('idle' in plain letters when None)."""
    if mode is None:
        return ["", "idle", ""]
    return [" ".join(GLYPHS[ch][i] for ch in MODE_NAMES[mode]) for i in range(3)]


def _runs(text: Text, chars: Sequence[tuple[str, str]]) -> None:
    """Appends (character, style) pairs as one span per run of equal style (a span per cell is slow to draw)."""
    i = 0
    while i < len(chars):
        j = i
        while j < len(chars) and chars[j][1] == chars[i][1]:
            j += 1
        text.append("".join(c for c, _ in chars[i:j]), style=chars[i][1] or None)
        i = j


def mode_strip(cells: Sequence[StepCell], width: int, rows: int) -> Text:
    """The last rows x width cells, one character each, coloured by mode; oldest at the top left."""
    width = max(1, width)
    shown = list(cells)[-(width * rows) :]
    text = Text()
    for r in range(rows):
        line = shown[r * width : (r + 1) * width]
        _runs(text, [("█", MODE_COLORS.get(cell.mode, "white")) for cell in line] + [(" ", "")] * (width - len(line)))
        if r < rows - 1:
            text.append("\n")
    return text


def token_chart(cells: Sequence[StepCell], width: int, rows: int, threshold: float | None) -> Text:
    """Scheduled tokens of the last `width` cells, log scale, `rows` high, coloured by mode, with the threshold
    drawn across as a dashed line (where no bar covers it) and labelled on the right."""
    label = f" ≤{threshold:g}" if threshold is not None else ""
    plot_w = max(1, width - len(label))
    shown = list(cells)[-plot_w:]
    top = max([c.tokens for c in shown] + [threshold * 2 if threshold else 2.0, 2.0])
    scale = math.log2(top + 1)

    def height(tokens: float) -> float:  # in eighths of a row
        return math.log2(max(0.0, tokens) + 1) / scale * rows * 8

    line_row = None
    if threshold is not None:
        line_row = min(rows - 1, int(height(threshold) // 8))
    heights = [height(c.tokens) for c in shown]
    text = Text()
    for r in range(rows - 1, -1, -1):  # top row first
        chars = []
        for cell, full in zip(shown, heights):
            h = full - r * 8
            if h >= 8:
                chars.append(("█", MODE_COLORS.get(cell.mode, "white")))
            elif h > 0:
                chars.append((BLOCKS[max(0, int(h) - 1)], MODE_COLORS.get(cell.mode, "white")))
            else:
                chars.append(("╌", "red") if r == line_row else (" ", ""))
        pad = plot_w - len(shown)
        chars += [("╌", "red") if r == line_row else (" ", "")] * pad
        _runs(text, chars)
        text.append(label if r == line_row else " " * len(label), style="red")
        if r:
            text.append("\n")
    return text


def _size(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _rate(bytes_per_s: float) -> str:
    """GB/s, whole from 10 up: "↑450 ↓450 GB/s" fits the column as "↑0.2 ↓0.2 GB/s" does."""
    return f"{bytes_per_s / 1e9:.1f}" if bytes_per_s < 1e10 else f"{bytes_per_s / 1e9:.0f}"


class GpuPanel(Widget):
    """One block per GPU from the NVML sampler, each value with a short history; or why there are none."""

    DEFAULT_CSS = "GpuPanel { height: auto; }"
    BLOCK_WIDTH = 44

    def __init__(self, sampler: NvmlSampler | None, **kw):
        super().__init__(**kw)
        self.sampler = sampler

    def render(self) -> Text | Table:
        reading = self.sampler.latest() if self.sampler is not None else NvmlReading(False, "NVML not read")
        if not reading.available:
            return Text(reading.reason or "no GPU telemetry", style="dim")
        columns = max(1, self.size.width // self.BLOCK_WIDTH)
        grid = Table.grid(padding=(0, 2))
        for _ in range(columns):
            grid.add_column()
        blocks = [self._block(g) for g in reading.gpus]
        for i in range(0, len(blocks), columns):
            grid.add_row(*blocks[i : i + columns])
        return grid

    def _line(self, s: GpuSample, name: str, label: str, value: str | None, series: str) -> Text:
        text = Text(f"{label:<7}", style="bold")
        if name in s.unsupported:
            return text + Text("not supported", style="dim")
        if name in s.failed:
            return text + Text("error", style="red")
        if value is None:
            return text + Text("…", style="dim")
        history = self.sampler.history(s.index, series) if self.sampler is not None else []
        return text + Text(f"{value:<17}") + Text(spark(history, 16), style="cyan")

    def _block(self, s: GpuSample) -> Text:
        def pair(a: float | None, b: float | None, fmt: str, unit: str) -> str | None:
            if a is None:
                return None
            return f"{fmt.format(a)}/{fmt.format(b)} {unit}" if b is not None else f"{fmt.format(a)} {unit}"

        mem = f"{_size(s.mem_used)}/{_size(s.mem_total)} GiB" if s.mem_used is not None else None
        nvlink = None
        if s.nvlink_tx is not None:
            nvlink = f"↑{_rate(s.nvlink_tx)} ↓{_rate(s.nvlink_rx or 0)} GB/s"
        lines = [
            Text(f"GPU {s.index} · {s.name}", style="bold"),
            self._line(s, "util", "util", f"{s.util_pct:.0f} %" if s.util_pct is not None else None, "util"),
            self._line(s, "memory", "memory", mem, "mem"),
            self._line(s, "power", "power", pair(s.power_w, s.power_limit_w, "{:.0f}", "W"), "power"),
            self._line(
                s, "temperature", "temp", f"{s.temp_c:.0f} °C" if s.temp_c is not None else None, "temperature"
            ),  # fmt: skip
            self._line(
                s, "sm_clock", "SM", f"{s.sm_clock_mhz:.0f} MHz" if s.sm_clock_mhz is not None else None, "sm_clock"
            ),  # fmt: skip
            self._line(s, "nvlink", "NVLink", nvlink, "nvlink"),
        ]
        return Text("\n").join(lines)


class LogPane(RichLog):
    """A log view; `follow(path)` then `poll()` appends what was written to the file since the last poll."""

    def __init__(self, **kw):
        super().__init__(max_lines=500, wrap=True, markup=False, highlight=False, **kw)
        self._path: Path | None = None
        self._offset = 0
        self._partial = ""

    def follow(self, path: Path) -> None:
        self._path, self._offset, self._partial = path, 0, ""

    def poll(self) -> int:
        """Appends the file's new complete lines; returns how many."""
        if self._path is None:
            return 0
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(1 << 20)
        except OSError:
            return 0
        self._offset += len(chunk)
        text = self._partial + chunk.decode(errors="replace")
        lines = text.split("\n")
        self._partial = lines.pop()
        for line in lines:
            self.write(Text.from_ansi(line.rstrip("\r")))
        return len(lines)
