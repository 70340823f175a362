"""`shifttune top --url URL`: the live serving view of a running server, with the local GPUs from NVML.

A shifttune server is shown in full and its keys change its policy; a vLLM server is read from its
`/metrics` by vLLM's metric names, each step's mode estimated from tokens per step against --threshold.
`shifttune serve` runs this same command (hidden --attach-fd / --log-file) as its terminal view.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shifttune.cli.common import fail
from shifttune.tui.snapshot import REFRESH_S


def _idle_priority() -> None:
    """The view runs only on a core nothing else wants (SCHED_IDLE, Linux; else nice 10): a monitor must not
    slow what it watches. On 2 CPU cores under a 2-rank engine it cost the steps 25% at nice 10 and
    nothing measurable at idle priority (docs/tui.md)."""
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):
        os.nice(10)


def top(
    url: Annotated[str, typer.Option(help="The server, e.g. http://127.0.0.1:8000 (shifttune serve or vLLM).")] = (
        "http://127.0.0.1:8000"
    ),
    threshold: Annotated[
        Optional[int],
        typer.Option(help="vLLM servers: count a step as TP when it has at most this many tokens (default 256)."),
    ] = None,
    api_key: Annotated[
        Optional[str], typer.Option(help="The server's --api-key (also from $SHIFTTUNE_API_KEY).", show_default=False)
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = REFRESH_S,
    attach_fd: Annotated[Optional[int], typer.Option(hidden=True)] = None,  # serve's view: its pipe to the server
    log_file: Annotated[Optional[Path], typer.Option(hidden=True)] = None,  # serve's view: the log it follows
) -> None:
    """Watch a running server live: mode per step, threshold, load, latencies, GPUs; keys change the policy.

    Keys: + / - threshold x2 / /2, t / s / a / p force TP / force SP x TP / threshold / profile policy,
    ? help, w screenshot, q quit.
    """
    if interval <= 0:
        fail("--interval: must be > 0")
    if threshold is not None and threshold < 0:
        fail("--threshold: must be >= 0")
    if not (sys.stdout.isatty() and sys.stdin.isatty()):
        fail("shifttune top draws in a terminal; stdout or stdin is not one")
    from shifttune.telemetry.nvml import NvmlSampler  # NOTE: lazy: Textual and httpx load only to run it
    from shifttune.tui.serving_view import make_app
    from shifttune.tui.sources import ServerSource

    _idle_priority()
    source = ServerSource(url, api_key or os.environ.get("SHIFTTUNE_API_KEY"), threshold)
    nvml = NvmlSampler().start()
    role = "serve" if attach_fd is not None else "top"
    app = make_app(source, nvml, role=role, log_file=log_file, interval_s=interval, parent_fd=attach_fd)
    try:
        app.run()
    finally:
        nvml.stop()
    raise typer.Exit(app.return_code or 0)
