"""The `shifttune` command line (Typer). Commands appear here only once they are built."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shifttune.config import BUNDLED_CONFIG_DIR, ConfigError

app = typer.Typer(
    help="shifttune: shift-parallel LLM inference (TP <-> SP x TP per step over one KV cache).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
BUNDLED = ", ".join(["tiny"] + sorted(p.name for p in BUNDLED_CONFIG_DIR.iterdir() if p.is_dir()))


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log engine details.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def generate(
    prompts: Annotated[
        Optional[list[str]], typer.Argument(help="Prompts (text). Default: two short demo prompts.")
    ] = None,
    model: Annotated[
        str, typer.Option("--model", "-m", help=f"HF model directory or bundled name ({BUNDLED}).")
    ] = "tiny",
    tp: Annotated[int, typer.Option("--tp", help="Tensor-parallel degree of the SP x TP layout.")] = 1,
    sp: Annotated[int, typer.Option("--sp", help="Ulysses sequence-parallel degree; P = SP x TP ranks.")] = 1,
    policy: Annotated[str, typer.Option(help="Mode per step: threshold | tp | sp.")] = "threshold",
    threshold: Annotated[int, typer.Option(help="Steps with <= this many tokens run in TP mode.")] = 256,
    device: Annotated[str, typer.Option(help="cpu (gloo ranks) or cuda (one GPU per rank).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16.")] = "auto",
    load_format: Annotated[str, typer.Option(help="auto (safetensors) or dummy (random weights).")] = "auto",
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 32,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="-1 = off.")] = -1,
    seed: Annotated[Optional[int], typer.Option(help="Per-request sampling seed.")] = None,
    ignore_eos: Annotated[bool, typer.Option(help="Keep generating past EOS.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write results as JSON here.")] = None,
) -> None:
    """Generate text for a few prompts and show which mode each engine step ran in."""
    from shifttune import LLM, SamplingParams

    prompts = prompts or ["The capital of France is", "Shift parallelism switches between"]
    try:
        params = SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens, ignore_eos=ignore_eos
        )
        start = time.perf_counter()
        with console.status(f"starting {model} on {sp * tp} {device} rank(s) (SP={sp} x TP={tp})"):
            llm = LLM(
                model,
                tensor_parallel_size=tp,
                sequence_parallel_size=sp,
                shift_policy=policy,
                shift_threshold=threshold,
                device=device,
                dtype=dtype,
                load_format=load_format,
            )
        startup = time.perf_counter() - start
        if llm.llm_engine.tokenizer is None:
            _fail(f"model {model!r} has no tokenizer, so text prompts cannot be encoded")
        start = time.perf_counter()
        try:
            outs = llm.generate(prompts, params, use_tqdm=True)
        finally:
            llm.shutdown()
        elapsed = time.perf_counter() - start
        stats = llm.llm_engine.stats
    except ConfigError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print("interrupted; workers stopped")
        raise typer.Exit(130) from None
    out_console = Console()
    for o in outs:
        c = o.outputs[0]
        out_console.print(
            f"[bold]{o.prompt!r}[/] -> {c.text!r}  [dim]({len(c.token_ids)} tokens, {c.finish_reason})[/]"
        )
    table = Table(title="engine steps", show_header=True)
    for col in ("mode", "steps", "tokens"):
        table.add_column(col)
    for mode in ("tp", "sp"):
        table.add_row(mode, str(stats.steps_per_mode[mode]), str(stats.tokens_per_mode[mode]))
    out_console.print(table)
    mib = 1 << 20
    w = stats.weight_bytes_per_rank
    out_console.print(
        f"per rank: weights {w['base'] / mib:.1f} MiB (SPxTP layout) + {w['shift'] / mib:.1f} MiB (TP layout), "
        f"KV cache {stats.kv_cache_bytes_per_rank / mib:.1f} MiB; startup {startup:.1f} s, generation {elapsed:.2f} s"
    )
    if output is not None:
        result = {
            "model": model,
            "tp": tp,
            "sp": sp,
            "policy": policy,
            "threshold": threshold,
            "outputs": [
                {
                    "prompt": o.prompt,
                    "text": o.outputs[0].text,
                    "token_ids": o.outputs[0].token_ids,
                    "finish_reason": o.outputs[0].finish_reason,
                }
                for o in outs
            ],
            "steps": [
                {
                    "mode": s.mode,
                    "num_tokens": s.shape.num_tokens,
                    "num_seqs": s.shape.num_seqs,
                    "duration_s": s.duration_s,
                }
                for s in stats.steps
            ],
        }
        output.write_text(json.dumps(result, indent=2))
        out_console.print(f"wrote {output}")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _ints(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        _fail(f"expected comma-separated integers, got {text!r}")


@app.command()
def profile(
    model: Annotated[
        str, typer.Option("--model", "-m", help=f"HF model directory or bundled name ({BUNDLED}).")
    ] = "tiny",
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
    iters: Annotated[int, typer.Option(help="Timed runs per point (median, p10, p90).")] = 10,
    warmup: Annotated[int, typer.Option(help="Untimed runs first.")] = 3,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Profile JSON. Default: profiles/<model>_<gpu>x<N>.json")
    ] = None,
    tui: Annotated[bool, typer.Option(help="Live Textual view when in a terminal (else a progress bar).")] = True,
) -> None:
    """Measure TP-mode and SP x TP-mode step times for every SP x TP factorization; write a profile.

    Ctrl-C keeps every measured point; running the same command again resumes.
    """
    import shlex
    import sys

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from shifttune.profile.sweep import ProfileSettings, default_profile_path, run_profile

    if device == "cpu":
        iters = min(iters, 3) if iters == 10 else iters
        warmup = min(warmup, 1) if warmup == 3 else warmup
    try:
        if gpus is None:
            import torch

            gpus = torch.cuda.device_count() if device == "cuda" else 2
            if gpus == 0:
                _fail("no GPU is visible; use --device cpu to profile CPU ranks")
        settings = ProfileSettings(
            model=model,
            ranks=gpus,
            device=device,
            load_format=load_format,
            tokens=_ints(tokens),
            contexts=_ints(contexts),
            iters=iters,
            warmup=warmup,
        )
        out = out or default_profile_path(settings)
        command = "shifttune profile " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 1 else ""
        if tui and sys.stdout.isatty() and sys.stdin.isatty():
            from shifttune.tui.profile_view import ProfileApp

            view = ProfileApp(settings, out, command)
            view.run()
            if view.error is not None:
                raise view.error
            if view.interrupted or view.result is None:
                raise KeyboardInterrupt
            result = view.result
            console.print(
                f"wrote {out}: {len(result.points)} points, "
                f"{sum(f.feasible for f in result.factorizations)} feasible factorization(s)",
                soft_wrap=True,
            )
            return
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
                    bar.console.print(event.message)
                if event.point is not None:
                    p = event.point
                    bar.console.print(
                        f"  {p.mode} TP={p.tp} SP={p.sp} T={p.tokens:>6} C={p.context:>6}: {p.median_ms:9.3f} ms"
                    )

            result = run_profile(settings, out, command, show)
    except ConfigError as e:
        _fail(str(e))
    except KeyboardInterrupt:
        console.print(f"interrupted: every measured point is in {out}; run the same command to resume", soft_wrap=True)
        raise typer.Exit(130) from None
    console.print(
        f"wrote {out}: {len(result.points)} points, "
        f"{sum(f.feasible for f in result.factorizations)} feasible factorization(s)",
        soft_wrap=True,
    )


SHIPPED_PROFILES = Path(__file__).resolve().parent.parent / "profiles"


def _pick_shipped_profile(model: str | None, gpus: int | None) -> Path:
    """The shipped profile for a model and GPU count (default: the embedded CPU profile of `tiny`)."""
    from shifttune.profile.schema import load_profile

    candidates = sorted(SHIPPED_PROFILES.glob("*.json")) if SHIPPED_PROFILES.is_dir() else []
    matches = []
    for path in candidates:
        try:
            prof = load_profile(path)
        except ConfigError:
            continue
        if (model or "tiny") == prof.model.get("name") and (gpus is None or gpus == prof.world_size):
            matches.append(path)
    if not matches:
        have = ", ".join(p.name for p in candidates) or "none"
        _fail(
            f"no shipped profile for model {model or 'tiny'!r}"
            + (f" on {gpus} GPUs" if gpus else "")
            + f" (shipped: {have}); measure one with `shifttune profile` and pass --profile"
        )
    return matches[0]


@app.command()
def recommend(
    profile_file: Annotated[
        Optional[Path], typer.Option("--profile", "-p", help="Profile JSON from `shifttune profile`.")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Pick a shipped profile for this model.")
    ] = None,
    gpus: Annotated[Optional[int], typer.Option(help="...and this many GPUs.")] = None,
    context: Annotated[
        Optional[int],
        typer.Option(
            help="Context length the threshold is read at (default: the "
            "workload's input length, else the median profiled)."
        ),
    ] = None,
    rate: Annotated[
        Optional[str],
        typer.Option(
            help="Predict latencies at these arrival rates (requests/s, Poisson; "
            "comma-separated for a sweep, e.g. 1,2,4,8)."
        ),
    ] = None,
    input_len: Annotated[int, typer.Option(help="Mean input tokens per request.")] = 2048,
    output_len: Annotated[int, typer.Option(help="Mean output tokens per request.")] = 256,
    spread: Annotated[float, typer.Option(help="Lengths uniform within +-spread x mean.")] = 0.25,
    num_requests: Annotated[int, typer.Option(help="Requests to simulate.")] = 300,
    trace: Annotated[Optional[Path], typer.Option(help="Azure LLM inference trace CSV instead of --rate.")] = None,
    slo_ttft: Annotated[Optional[float], typer.Option("--slo-ttft", help="TTFT objective (ms, p99).")] = None,
    slo_tpot: Annotated[Optional[float], typer.Option("--slo-tpot", help="TPOT objective (ms, p99).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save the plot here (.png, .svg or .pdf).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON only.")] = False,
) -> None:
    """Turn a profile into SP/TP degrees, a switching threshold, memory, predictions and launch commands."""
    from shifttune.profile.schema import load_profile
    from shifttune.recommend.planner import plan as make_plan
    from shifttune.recommend.plot import save_plot, terminal_plot
    from shifttune.recommend.simulator import Workload, load_azure_trace

    problems = [
        name
        for name, bad in (
            ("--context", context is not None and context < 1),
            ("--input-len", input_len < 1),
            ("--output-len", output_len < 1),
            ("--num-requests", num_requests < 1),
            ("--spread", not 0 <= spread < 1),
        )
        if bad
    ]
    if problems:
        _fail(f"{', '.join(problems)} out of range (context, lengths and requests >= 1; spread in [0, 1))")
    if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
        _fail(f"--plot must end in .png, .svg or .pdf, not {plot.name!r}")
    try:
        path = profile_file or _pick_shipped_profile(model, gpus)
        prof = load_profile(path)
        workloads = []
        if trace is not None:
            workloads = [Workload(trace=load_azure_trace(trace, limit=num_requests))]
        elif rate is not None:
            try:
                rates = [float(x) for x in rate.split(",") if x.strip()]
            except ValueError:
                _fail(f"--rate takes numbers, e.g. 2 or 1,2,4; got {rate!r}")
            if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
                _fail("--rate must be positive numbers")
            workloads = [
                Workload(rate=r, num_requests=num_requests, input_len=input_len, output_len=output_len, spread=spread)
                for r in rates
            ]
        ctx = context or (input_len if rate is not None else None)
        result = make_plan(prof, ctx, workloads, str(path))
        if plot is not None:
            save_plot(prof, result, plot)
    except ConfigError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"cannot write the plot: {e}")
    if as_json:
        typer.echo(json.dumps(result.to_dict() | {"profile": str(path)}, indent=1))
        return
    out = Console()
    out.print(f"[bold]{result.model}[/] on {result.hardware} (profile {path})")
    layout = f"SP={result.best_sp} x TP={result.best_tp}"
    if result.best_sp == 1:
        out.print(f"best layout: [bold]TP={result.world_size}[/] (no shift)")
    elif result.threshold == 0:
        out.print(
            f"best layout: [bold]{layout}[/] at every step (no shifting), at context {result.context_for_threshold}"
        )
    elif result.threshold is None:
        out.print(
            f"best layout: [bold]{layout}[/] with shift_policy='profile' only; at context "
            f"{result.context_for_threshold} TP={result.world_size} is faster at every step size"
        )
    else:
        out.print(
            f"best layout: [bold]{layout}[/], switching to TP={result.world_size} for steps of <= "
            f"[bold]{result.threshold}[/] tokens (read at context {result.context_for_threshold})"
        )
    for note in result.notes:
        out.print(f"note: {note}")
    table = Table(title="factorizations (per rank)")
    for col in (
        "SP x TP",
        "feasible",
        "weights (SPxTP + TP layout)",
        "KV tokens",
        "SPxTP speedup, largest steps",
        "crossover by context",
    ):
        table.add_column(col)
    for f in result.factorizations:
        cross = ", ".join(f"{c}: {'never' if v is None else int(v)}" for c, v in f.crossovers.items())
        table.add_row(
            f"{f.sp} x {f.tp}",
            "yes" if f.feasible else f"no: {f.reason}",
            " + ".join(
                _size(f.weights_gib_per_rank[k] * 2**30) for k in ("base", "shift") if f.weights_gib_per_rank.get(k)
            ),
            "" if f.kv_capacity_tokens is None else str(f.kv_capacity_tokens),
            "" if f.sp_speedup_at_max_tokens is None else f"{f.sp_speedup_at_max_tokens:.2f}x",
            cross,
        )
    out.print(table)
    if result.predictions:
        pred = Table(title="predicted (simulation of the engine's scheduler on the measured step times)")
        for col in ("rate/s", "policy", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "output tok/s", "steps TP/SP", "SLO"):
            pred.add_column(col)
        for r in result.predictions:
            ok = (slo_ttft is None or r["ttft_p99_ms"] <= slo_ttft) and (
                slo_tpot is None or r["tpot_p99_ms"] <= slo_tpot
            )
            pred.add_row(
                "trace" if r["rate"] is None else f"{r['rate']:g}",
                r["label"],
                f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f}",
                f"{r['tpot_p50_ms']:.2f} / {r['tpot_p99_ms']:.2f}",
                f"{r['output_tok_per_s']:.0f}",
                f"{r['steps_per_mode']['tp']}/{r['steps_per_mode']['sp']}",
                "" if slo_ttft is None and slo_tpot is None else ("meets" if ok else "misses"),
            )
        out.print(pred)
        rates = sorted({r["rate"] for r in result.predictions if r["rate"] is not None})
        if (slo_ttft is not None or slo_tpot is not None) and len(rates) > 1:
            for label in dict.fromkeys(r["label"] for r in result.predictions):
                ok = [
                    r["rate"]
                    for r in result.predictions
                    if r["label"] == label
                    and r["rate"] is not None
                    and (slo_ttft is None or r["ttft_p99_ms"] <= slo_ttft)
                    and (slo_tpot is None or r["tpot_p99_ms"] <= slo_tpot)
                ]
                out.print(
                    f"  {label}: meets the SLO up to {max(ok):g} req/s"
                    if ok
                    else f"  {label}: misses the SLO at every rate"
                )
    out.print("[bold]launch[/]")
    for name, cmd in result.launch.items():
        out.print(f"  {name}: {cmd}", soft_wrap=True)
    try:
        print(terminal_plot(prof, result))  # plotext's own ANSI colors: not through Rich
    except ImportError:
        out.print("(install plotext for the terminal plot)")
    if plot is not None:
        out.print(f"plot saved to {plot}")


if __name__ == "__main__":
    app()
