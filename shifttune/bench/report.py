"""What the user sees and keeps: the progress bar, the results tables, the latency-vs-throughput plot,
the JSON file."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

LATENCY_COLUMNS = (("TTFT", "ttft"), ("TPOT", "tpot"), ("ITL", "itl"), ("E2E", "e2el"))
# NOTE: a mark, not "(interrupted)" in the cell: an 80-column terminal cut that to "(inter…"
INTERRUPTED_MARK = "*"
INTERRUPTED_CAPTION = "* interrupted: only the requests that completed before it stopped"


class RichProgress:
    """A progress bar per run (completed / total, failures, elapsed); use as `with`."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[red]{task.fields[failed]} failed[/]"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task = None
        self.failed = 0

    def __enter__(self) -> RichProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.task is not None:
            self.progress.stop()

    def start(self, label: str, total: int) -> None:
        if self.task is None:
            self.progress.start()  # shown from the first run on, not while a server starts
        self.task, self.failed = self.progress.add_task(label, total=total, failed=0), 0

    def advance(self, ok: bool) -> None:
        if self.task is not None:
            self.failed += not ok
            self.progress.update(self.task, advance=1, failed=self.failed)


def _rate(r: dict) -> str:
    rate = r["request_rate"]
    return f"{rate:g}" if isinstance(rate, (int, float)) else str(rate)


def _num(value: float | None, digits: int) -> str:
    """A latency statistic; None (no request succeeded) reads n/a."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _mark_interrupted(table: Table, records: list[dict]) -> Table:
    if any(r["interrupted"] for r in records):
        table.caption = INTERRUPTED_CAPTION
    return table


def results_table(records: list[dict], title: str = "results") -> Table:
    """One row per run (rate): counts and throughputs."""
    table = Table(title=title)
    for col in ("rate/s", "done / failed", "time s", "req/s", "goodput req/s", "in tok/s", "out tok/s",
                "total tok/s"):  # fmt: skip
        table.add_column(col, justify="right")
    for r in records:
        goodput = "" if r["request_goodput"] is None else f"{r['request_goodput']:.2f}"
        table.add_row(
            _rate(r) + (INTERRUPTED_MARK if r["interrupted"] else ""),
            f"{r['completed']} / {r['failed']}",
            f"{r['duration']:.1f}",
            f"{r['request_throughput']:.2f}",
            goodput,
            f"{r['input_throughput']:.1f}",
            f"{r['output_throughput']:.1f}",
            f"{r['total_token_throughput']:.1f}",
        )
    return _mark_interrupted(table, records)


def latency_table(records: list[dict], title: str = "latencies (ms)") -> Table:
    """Per run (rate), a row per latency: mean, p50, p90, p99, std."""
    table = Table(title=title)
    table.add_column("rate/s")
    table.add_column("latency")
    for col in ("mean", "p50", "p90", "p99", "std"):
        table.add_column(col, justify="right")
    for r in records:
        for i, (label, name) in enumerate(LATENCY_COLUMNS):
            stats = (r[f"{k}_{name}_ms"] for k in ("mean", "median", "p90", "p99", "std"))
            table.add_row(_rate(r) if i == 0 else "", label, *(_num(v, 2) for v in stats),
                          end_section=i == len(LATENCY_COLUMNS) - 1)  # fmt: skip
    return table


COMPARE_ROWS = (
    ("TTFT p50 ms", lambda r: _num(r["median_ttft_ms"], 1)),
    ("TTFT p99 ms", lambda r: _num(r["p99_ttft_ms"], 1)),
    ("TPOT p50 ms", lambda r: _num(r["median_tpot_ms"], 2)),
    ("TPOT p99 ms", lambda r: _num(r["p99_tpot_ms"], 2)),
    ("output tok/s", lambda r: f"{r['output_throughput']:.1f}"),
    ("requests/s", lambda r: f"{r['request_throughput']:.2f}"),
    ("goodput req/s", lambda r: "" if r["request_goodput"] is None else f"{r['request_goodput']:.2f}"),
    ("done / failed", lambda r: f"{r['completed']} / {r['failed']}" + (INTERRUPTED_MARK if r["interrupted"] else "")),
)


def compare_table(runs: dict[str, list[dict]]) -> Table:
    """Modes side by side: a column per mode, a block of rows per rate."""
    table = Table(title="modes side by side (same workload, same devices)")
    table.add_column("rate/s")
    table.add_column("metric")
    for mode in runs:
        table.add_column(mode, justify="right")
    rates: list[str] = []
    for records in runs.values():
        rates += [_rate(r) for r in records if _rate(r) not in rates]
    has_goodput = any(r["request_goodput"] is not None for recs in runs.values() for r in recs)
    rows = [row for row in COMPARE_ROWS if has_goodput or row[0] != "goodput req/s"]
    for rate in rates:
        by_mode = {m: next((r for r in recs if _rate(r) == rate), None) for m, recs in runs.items()}
        for i, (name, cell) in enumerate(rows):
            table.add_row(rate if i == 0 else "", name, *("" if r is None else cell(r) for r in by_mode.values()),
                          end_section=i == len(rows) - 1)  # fmt: skip
    return _mark_interrupted(table, [r for recs in runs.values() for r in recs])


# shift mode against the mode it should match on each metric (the paper: SP's TTFT, TP's TPOT, SP's throughput)
SHIFT_RATIOS = (
    ("shift_over_sp_ttft_p50", "sp", "median_ttft_ms"),
    ("shift_over_sp_ttft_p99", "sp", "p99_ttft_ms"),
    ("shift_over_tp_tpot_p50", "tp", "median_tpot_ms"),
    ("shift_over_tp_tpot_p99", "tp", "p99_tpot_ms"),
    ("shift_over_sp_output_throughput", "sp", "output_throughput"),
)


def shift_ratios(runs: dict[str, list[dict]]) -> list[dict]:
    """Per rate that shift and another mode both ran: shift's TTFT over SP's, its TPOT over TP's and its output
    throughput over SP's (SHIFT_RATIOS; those whose mode did not run are left out)."""
    out = []
    for r in runs.get("shift", []):
        row: dict = {"rate": r["request_rate"]}
        for name, mode, key in SHIFT_RATIOS:
            other = next((o for o in runs.get(mode, []) if o["request_rate"] == r["request_rate"]), None)
            if other is not None and other[key] and r[key] is not None:
                row[name] = r[key] / other[key]
        if len(row) > 1:
            out.append(row)
    return out


def shift_ratio_table(ratios: list[dict]) -> Table:
    table = Table(title="shift against SP (TTFT, throughput) and TP (TPOT): 1.00 = the same")
    table.add_column("rate/s")
    for name, *_ in SHIFT_RATIOS:
        table.add_column(name.removeprefix("shift_over_").replace("_", " "), justify="right")
    for row in ratios:
        rate = row["rate"]
        table.add_row(f"{rate:g}" if isinstance(rate, (int, float)) else str(rate),
                      *(f"{row[n]:.2f}" if n in row else "" for n, *_ in SHIFT_RATIOS))  # fmt: skip
    return table


def prediction_table(runs: dict[str, list[dict]]) -> Table | None:
    """Predicted beside measured for the records that carry a prediction (`bench --compare --profile`)."""
    rows = [(mode, r) for mode, recs in runs.items() for r in recs if r.get("predicted")]
    if not rows:
        return None
    kind = rows[0][1]["predicted"]["profile_kind"]
    table = Table(title=f"predicted ({kind} profile, simulator) vs measured")
    for col in ("mode", "rate/s", "metric", "predicted", "measured", "error"):
        table.add_column(col, justify="left" if col in ("mode", "metric") else "right")
    for mode, r in rows:
        metrics = list(r["predicted"]["metrics"].items())
        for i, (name, m) in enumerate(metrics):
            table.add_row(mode if i == 0 else "", _rate(r) if i == 0 else "", name, f"{m['predicted']:.2f}",
                          f"{m['measured']:.2f}", f"{100 * m['rel_error']:+.1f}%",
                          end_section=i == len(metrics) - 1)  # fmt: skip
    return table


def save_plot(runs: dict[str, list[dict]], path: Path) -> None:
    """Latency vs output throughput, one line per label (a mode, or the server): TTFT and TPOT, p50
    solid and p99 dashed. PNG, SVG or PDF by the file's suffix."""
    import matplotlib  # NOTE: lazy: slow to import, only for --plot

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, (title, name) in zip(axes, (("TTFT", "ttft"), ("TPOT", "tpot"))):
        for i, (label, records) in enumerate(runs.items()):
            pts = sorted((r["output_throughput"], r[f"median_{name}_ms"], r[f"p99_{name}_ms"]) for r in records
                         if r["completed"])  # fmt: skip
            xs = [p[0] for p in pts]
            color = f"C{i}"
            ax.plot(xs, [p[1] for p in pts], "o-", color=color, label=f"{label} p50")
            ax.plot(xs, [p[2] for p in pts], "s--", color=color, label=f"{label} p99")
        ax.set_xlabel("output throughput (tokens/s)")
        ax.set_ylabel(f"{title} (ms)")
        ax.set_title(f"{title} vs throughput")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _finite(obj: object) -> object:
    """JSON has no inf / NaN: they are written as strings."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def bench_payload(
    records: list[dict], command: str, compare: bool = False, ratios: list[dict] | None = None, sweep: bool = False
) -> dict:
    """One rate: its record (+ the command line). A sweep (several rates): {"command", "results": [records]}, however
    many rates ran before an interruption. A comparison: the same, each record with its "mode", and `shift_ratios`
    when shift ran beside TP or SP."""
    if not (sweep or compare):
        (record,) = records
        return record | {"command": command}
    return {"command": command, "results": records} | ({"shift_ratios": ratios} if ratios else {})


def to_json(payload: dict) -> str:
    """The JSON report's text (non-finite numbers as strings: strict JSON)."""
    return json.dumps(_finite(payload), indent=1, allow_nan=False)
