"""`shifttune profile`: measure both modes' step times for every SP x TP factorization, into a profile file."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shifttune.cli.common import MODEL_HELP, console, fail, fail_config, parse_ints
from shifttune.config import ConfigError


def _progress_bar_run(settings, out: Path, command: str):
    """`run_profile` under a Rich progress bar, printing each point and message as it comes."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shifttune.profile.profiler import run_profile

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("profiling", total=None)

        def show(event) -> None:
            bar.update(task, total=event.total, completed=event.done, description=event.label or "profiling")
            if event.message:
                bar.console.print(event.message, soft_wrap=True)
            if event.point is not None:
                p = event.point
                bar.console.print(
                    f"  {p.mode} TP={p.tp} SP={p.sp} T={p.tokens:>6} C={p.context:>6}: {p.median_ms:9.3f} ms"
                )

        return run_profile(settings, out, command, show)


def _live_view_run(settings, out: Path, command: str):
    from shifttune.tui.profile_view import ProfileApp  # NOTE: lazy: Textual loads only in a terminal

    view = ProfileApp(settings, out, command)
    view.run()
    if view.error is not None:
        raise view.error
    if view.interrupted or view.result is None:
        raise KeyboardInterrupt
    return view.result


def profile(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "tiny",
    gpus: Annotated[
        Optional[int],
        typer.Option(
            help="Ranks to profile (GPUs; CPU ranks with --device cpu). Default: every visible GPU, or 2 CPU ranks."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cuda or cpu.")] = "cuda",
    load_format: Annotated[
        str, typer.Option(help="dummy (random weights, no download) or auto (safetensors).")
    ] = "dummy",
    tokens: Annotated[
        Optional[str],
        typer.Option(
            help="Tokens per step, comma-separated. Default: 1..256 decode "
            "batches + 512..16384 prefill (CPU: 1,4,16,64,256)."
        ),
    ] = None,
    contexts: Annotated[
        Optional[str],
        typer.Option(help="Context lengths, comma-separated. Default: 512,2048,8192,32768 (CPU: 64,256)."),
    ] = None,
    iters: Annotated[int, typer.Option(help="Timed runs per point (median, p10, p90). Default: 10 (CPU: 3).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed runs first. Default: 3 (CPU: 1).")] = 3,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Profile JSON. Default: profiles/<model>_<gpu>x<N>.json")
    ] = None,
    tui: Annotated[
        bool,
        typer.Option("--tui/--no-tui", metavar="", help="Live Textual view when in a terminal (else a progress bar)."),
    ] = True,
) -> None:
    """Measure TP-mode and SP x TP-mode step times for every SP x TP factorization; write a profile.

    Ctrl-C keeps every measured point; running the same command again resumes.
    """
    from shifttune.profile.profiler import ProfileSettings, default_profile_path  # NOTE: lazy: loads torch

    if device == "cpu":  # CPU timings are a demonstration: fewer runs unless asked
        iters = min(iters, 3) if iters == 10 else iters
        warmup = min(warmup, 1) if warmup == 3 else warmup
    try:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() if device == "cuda" else 2
            if gpus == 0:
                fail("no GPU is visible; use --device cpu to profile CPU ranks")
        settings = ProfileSettings(
            model=model,
            ranks=gpus,
            device=device,
            load_format=load_format,
            tokens=parse_ints(tokens, "--tokens"),
            contexts=parse_ints(contexts, "--contexts"),
            iters=iters,
            warmup=warmup,
        )
        out = out or default_profile_path(settings)
        command = "shifttune profile " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else ""
        live = tui and sys.stdout.isatty() and sys.stdin.isatty()
        result = (_live_view_run if live else _progress_bar_run)(settings, out, command)
    except ConfigError as e:
        fail_config(e)
    except KeyboardInterrupt:
        console.print(f"interrupted: every measured point is in {out}; run the same command to resume", soft_wrap=True)
        raise typer.Exit(130) from None
    console.print(
        f"wrote {out}: {len(result.points)} points, "
        f"{sum(f.feasible for f in result.factorizations)} feasible factorization(s)",
        soft_wrap=True,
    )
