"""`shifttune profile`: measure both modes' step times for every SP x TP factorization, into a profile file;
with --ops, --collectives, --predict or --compare, the predictor's tools (`_predictor_tools` below)."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from shifttune.cli.common import MODEL_HELP, check_writable, console, fail, fail_config, parse_list
from shifttune.config import DEVICES, LOAD_FORMATS, ConfigError
from shifttune.signals import Stopped, exit_status, sigterm_like_ctrl_c, stop_signal

# The flags each run of `profile` reads (None: a measured profile); any other one given is refused, not ignored.
TOOL_FLAGS = {
    None: {"--tokens", "--contexts"},
    "ops": {"--tokens", "--contexts", "--layers", "--breakdown"},
    "predict": {"--tokens", "--contexts", "--op-table", "--collective-table"},
    "collectives": set(),
    "compare": set(),
}
# EngineConfig's choices for these flags, checked before a resumed file is read or an engine starts
ENGINE_CHOICES = {"--device": DEVICES, "--load-format": LOAD_FORMATS}
# engine fields the profiler sets from the grid: their errors name the grid's flags
FLAGS = {"max_model_len": "--contexts", "max_num_batched_tokens": "--tokens"}


def parse_int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        fail(f"{flag}: expected a number of ranks, got {text!r} (a GPU type goes with --predict)")


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
                floor = f" ({p.floor_ms / p.median_ms:4.0%} of its floor)" if p.floor_ms else ""
                bar.console.print(
                    f"  {p.mode} TP={p.tp} SP={p.sp} T={p.tokens:>6} C={p.context:>6}: {p.median_ms:9.3f} ms{floor}"
                )

        return run_profile(settings, out, command, show)


def _live_view_run(settings, out: Path, command: str):
    from shifttune.tui.profile_view import ProfileApp  # NOTE: lazy: Textual loads only in a terminal

    view = ProfileApp(settings, out, command)
    view.run()
    if view.error is not None:
        raise view.error
    if view.interrupted or view.result is None:
        raise Stopped(view.stop_signal) if view.stop_signal else KeyboardInterrupt
    return view.result


def profile(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "tiny",
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help="Ranks to profile (GPUs; CPU ranks with --device cpu). Default: every visible GPU, or 2 CPU ranks. "
            "With --predict: the GPUs to predict for, count and type (4xH200); with --ops: the GPU counts to "
            "cover (default 1,2,4,8)."
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
    iters: Annotated[
        Optional[int],
        typer.Option(
            help="Timed runs per point (median, p10, p90). Default: 10 (CPU: 3). On GPUs a point whose runs spread "
            "more than 15% is run this many times again, up to 4 rounds.",
            show_default=False,
        ),
    ] = None,
    warmup: Annotated[
        Optional[int], typer.Option(help="Untimed runs first. Default: 3 (CPU: 1).", show_default=False)
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Profile JSON. Default: profiles/<model>_<gpu>x<N>.json")
    ] = None,
    tui: Annotated[
        bool,
        typer.Option("--tui/--no-tui", metavar="", help="Live Textual view when in a terminal (else a progress bar)."),
    ] = True,
    ops: Annotated[
        bool,
        typer.Option(
            "--ops",
            metavar="",
            help="Measure this GPU's operator table for --model: each rank's work at "
            "every P of --gpus, both modes, the whole grid, on one local GPU.",
        ),
    ] = False,  # fmt: skip
    predict: Annotated[
        bool,
        typer.Option(
            "--predict",
            metavar="",
            help="Write a predicted profile for --gpus NxGPU from an operator "
            "table and the collective model (no GPU needed).",
        ),
    ] = False,  # fmt: skip
    compare: Annotated[
        Optional[tuple[Path, Path]],
        typer.Option(
            "--compare",
            metavar="MEASURED PREDICTED",
            help="Error of a predicted profile against a "
            "measured one, per point and overall, and the crossover each gives (--out: as JSON).",
        ),
    ] = None,  # fmt: skip
    collectives: Annotated[
        bool,
        typer.Option(
            "--collectives",
            metavar="",
            help="Measure all-reduce, all-gather and all-to-all on the "
            "--gpus local GPUs (CPU ranks with --device cpu) for the collective model.",
        ),
    ] = False,  # fmt: skip
    op_table: Annotated[
        Optional[Path], typer.Option(help="--predict: this operator table (default: the shipped one, else a roofline).")
    ] = None,
    collective_table: Annotated[
        Optional[Path], typer.Option(help="--predict: this collective table (default: the shipped one of the GPU).")
    ] = None,
    layers: Annotated[
        Optional[int], typer.Option(help="--ops: decoder layers of the longer timed step (default: a quarter).")
    ] = None,
    breakdown: Annotated[
        Optional[str],
        typer.Option(help="--ops on GPU: also split these steps (tokens, comma-separated) by kernel category."),
    ] = None,
) -> None:
    """Measure TP-mode and SP x TP-mode step times for every SP x TP factorization; write a profile.

    Ctrl-C keeps every measured point; running the same command again resumes. --ops, --collectives,
    --predict and --compare are the predictor's tools: a profile for GPUs you do not have.
    """
    for flag, value in (("--device", device), ("--load-format", load_format)):
        if value not in ENGINE_CHOICES[flag]:
            fail(f"{flag}: must be one of {', '.join(ENGINE_CHOICES[flag])}, not {value!r}")
    # CPU timings are a demonstration: fewer runs unless asked
    iters = iters if iters is not None else 3 if device == "cpu" else 10
    warmup = warmup if warmup is not None else 1 if device == "cpu" else 3
    if sum([ops, predict, collectives, compare is not None]) > 1:
        fail("--ops, --predict, --collectives and --compare are separate runs; pass one")
    tool = "ops" if ops else "predict" if predict else "collectives" if collectives else "compare" if compare else None
    given = {"--tokens": tokens, "--contexts": contexts, "--op-table": op_table, "--collective-table": collective_table,
             "--layers": layers, "--breakdown": breakdown}  # fmt: skip
    unused = [flag for flag, value in given.items() if value is not None and flag not in TOOL_FLAGS[tool]]
    if unused:
        run = f"--{tool}" if tool else "a measured profile"
        fail(f"{', '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing for {run}; drop "
             f"{'it' if len(unused) == 1 else 'them'} (see shifttune profile --help)")  # fmt: skip
    if tool is not None:
        from shifttune.cli.profile_tools import run_tool

        run_tool(tool, model=model, gpus=gpus, device=device, tokens=tokens, contexts=contexts, iters=iters,
                 warmup=warmup, out=out, compare=compare, op_table=op_table, collective_table=collective_table,
                 layers=layers, breakdown=breakdown)  # fmt: skip
        return
    from shifttune.profile.profiler import ProfileSettings, default_profile_path  # NOTE: lazy: loads torch

    try:
        if gpus is None:
            import torch

            ranks = torch.cuda.device_count() if device == "cuda" else 2
            if ranks == 0:
                fail("no GPU is visible; use --device cpu to profile CPU ranks")
        else:
            ranks = parse_int(gpus, "--gpus")
        settings = ProfileSettings(
            model=model,
            ranks=ranks,
            device=device,
            load_format=load_format,
            tokens=parse_list(tokens, "--tokens"),
            contexts=parse_list(contexts, "--contexts"),
            iters=iters,
            warmup=warmup,
        )
        out = out or default_profile_path(settings)
        check_writable(out, "--out", make_folder=True)
        command = "shifttune profile " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else ""
        live = tui and sys.stdout.isatty() and sys.stdin.isatty()
        # NOTE: the live view takes the terminal's signals itself; the progress bar stops on SIGTERM as on Ctrl-C
        with contextlib.nullcontext() if live else sigterm_like_ctrl_c():
            result = (_live_view_run if live else _progress_bar_run)(settings, out, command)
    except ConfigError as e:
        fail_config(e, FLAGS)
    except KeyboardInterrupt as e:
        if out is not None and out.exists():
            console.print(f"interrupted: every measured point is in {out}; run the same command to resume",
                          soft_wrap=True)  # fmt: skip
        else:
            console.print("interrupted before the first point was measured; nothing was written", soft_wrap=True)
        raise typer.Exit(exit_status(stop_signal(e))) from None
    console.print(
        f"wrote {out}: {len(result.points)} points, "
        f"{sum(f.feasible for f in result.factorizations)} feasible factorization(s)",
        soft_wrap=True,
    )
