"""`shifttune bench`: load an OpenAI-compatible server (ours, vLLM, ...) and report vLLM's serving metrics;
`--compare` starts `shifttune serve` in each mode and puts the modes side by side."""

from __future__ import annotations

import os
import shlex
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from shifttune.cli.common import check_writable, console, fail, fail_config, make_parent, parse_list, write_output
from shifttune.config import ConfigError

if TYPE_CHECKING:
    from shifttune.bench.config import BenchConfig

FLAGS = {
    "rates": "--rate / --rates",
    "slo_ttft_ms": "--slo-ttft",
    "slo_tpot_ms": "--slo-tpot",
    "request_timeout_s": "--request-timeout",
    "startup_timeout_s": "--startup-timeout",
    "server_args": "--server-arg",
    "input_output_len": "--input-len + --output-len",
}
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _rates(rate: str | None, rates: str | None) -> list[float] | None:
    if rate is not None and rates is not None:
        fail("--rate / --rates: give one of them (--rates 1,2,4 is a sweep)")
    text, flag = (rate, "--rate") if rate is not None else (rates, "--rates")
    if text is None:
        return None
    values = parse_list(text, flag, float)  # requests/s; "inf" reads as infinity
    if flag == "--rate" and len(values) != 1:
        fail(f"--rate: expected one number (use --rates for a sweep), got {text!r}")
    return values


def _length(text: str | None, field: str):
    from shifttune.bench.config import LengthRange

    return None if text is None else LengthRange.parse(text, field)


def bench(
    base_url: Annotated[Optional[str], typer.Option(help="The server, e.g. http://127.0.0.1:8000.")] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="Model name to request (default: the server's first, GET /v1/models). "
            "With --compare: what `shifttune serve` loads.",
        ),
    ] = None,
    endpoint: Annotated[str, typer.Option(help="Completions path.")] = "/v1/completions",
    api_key: Annotated[
        Optional[str], typer.Option(help="Sent as `Authorization: Bearer KEY` (also from $SHIFTTUNE_API_KEY).")
    ] = None,
    rate: Annotated[
        Optional[str],
        typer.Option(help="Requests/s, Poisson arrivals (see --burstiness); inf = all at once (default)."),
    ] = None,
    rates: Annotated[
        Optional[str],
        typer.Option(help="A sweep: comma-separated rates, e.g. 1,2,4,inf (each rate with prompts of its own)."),
    ] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Most requests in flight (default: no limit).")] = None,
    num_prompts: Annotated[int, typer.Option(help="Requests per run (trace: its first N).")] = 200,
    input_len: Annotated[
        Optional[str], typer.Option(help="Prompt tokens: 1024 or a uniform range 100:200 (random default 1024).")
    ] = None,
    output_len: Annotated[
        Optional[str],
        typer.Option(help="max_tokens: fixed or lo:hi (random default 128; sharegpt/trace: the dataset's)."),
    ] = None,
    dataset: Annotated[str, typer.Option(help="random | sharegpt | trace.")] = "random",
    dataset_path: Annotated[
        Optional[Path],
        typer.Option(
            help="ShareGPT JSON, or Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens)."
        ),
    ] = None,
    time_scale: Annotated[float, typer.Option(help="Trace: multiply its arrival times (0.5 = twice as fast).")] = 1.0,
    burstiness: Annotated[
        float,
        typer.Option(
            help="Gaps between arrivals are Gamma-distributed with this shape and mean 1/rate (as vLLM's "
            "benchmark): 1 = Poisson, below 1 burstier (0.25: bursts, gaps' coefficient of variation 2)."
        ),
    ] = 1.0,
    slo_ttft: Annotated[Optional[float], typer.Option("--slo-ttft", help="TTFT objective (ms), for goodput.")] = None,
    slo_tpot: Annotated[Optional[float], typer.Option("--slo-tpot", help="TPOT objective (ms), for goodput.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of prompts, lengths and arrivals.")] = 0,
    tokenizer: Annotated[
        Optional[str],
        typer.Option(
            help="HF model directory or bundled model name, for exact prompt lengths "
            "(default: the model's name when it resolves locally)."
        ),
    ] = None,
    request_timeout: Annotated[float, typer.Option(help="Seconds before a request counts as failed.")] = 600.0,
    out: Annotated[Optional[Path], typer.Option(help="Write the results as JSON here.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Latency-vs-throughput plot (.png, .svg or .pdf).")] = None,
    compare: Annotated[
        Optional[str],
        typer.Option(help="Start `shifttune serve` in each of these modes in turn (tp, sp, shift) and compare."),
    ] = None,
    sp: Annotated[int, typer.Option("--sp", help="--compare: Ulysses SP degree; P = SP x TP ranks.")] = 2,
    tp: Annotated[int, typer.Option("--tp", help="--compare: TP degree of the SP x TP layout.")] = 1,
    device: Annotated[str, typer.Option(help="--compare: cpu or cuda.")] = "cpu",
    threshold: Annotated[int, typer.Option(help="--compare: shift mode runs steps of <= N tokens in TP.")] = 256,
    server_arg: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="ARGS",
            help="--compare: extra `shifttune serve` arguments, repeatable, split like a shell line "
            "(e.g. --server-arg='--dtype bfloat16').",
        ),
    ] = None,
    startup_timeout: Annotated[float, typer.Option(help="--compare: seconds to wait for GET /health.")] = 600.0,
    profile: Annotated[
        Optional[Path],
        typer.Option(
            help="--compare: a profile of this model on these devices (`shifttune profile`, measured or --predict): "
            "each run's TTFT, TPOT and throughput are also simulated on it and shown beside the measured ones."
        ),
    ] = None,
) -> None:
    """Benchmark an OpenAI-compatible completions server with streamed requests; metrics as `vllm bench serve`.

    TTFT: send -> first token. E2E: send -> last token.

    TPOT: (E2E - TTFT) / (output tokens - 1), per request with more than one output token.

    ITL: every gap between consecutive streamed chunks, pooled over requests.

    Goodput: requests/s meeting every given SLO (TTFT <= --slo-ttft, TPOT <= --slo-tpot).

    Throughput: completed requests, output tokens, input + output tokens, per second of the run.

    Latencies as mean, median (p50), p90, p99 and std, in ms.

    Requests ask for ignore_eos (exact output lengths), dropped for servers that reject it. Before the first rate one
    test request (as long as the first prompt, other tokens, up to 16 out) checks the server and warms its shapes; it
    is not in the results, so a server's own counters show one request more (per server with --compare).
    """
    from shifttune.bench.client import ServerError  # NOTE: lazy: aiohttp loads only when this command runs
    from shifttune.bench.config import BenchConfig
    from shifttune.signals import exit_status, sigterm_like_ctrl_c, stop_signal

    check_writable(out, "--out", make_folder=True)
    check_writable(plot, "--plot", PLOT_SUFFIXES, make_folder=True)
    try:
        cfg = BenchConfig(
            base_url=base_url or "http://127.0.0.1",
            model=model,
            endpoint=endpoint,
            api_key=api_key or os.environ.get("SHIFTTUNE_API_KEY"),  # as `shifttune top` reads it
            rates=_rates(rate, rates),
            concurrency=concurrency,
            num_prompts=num_prompts,
            input_len=_length(input_len, "input_len"),
            output_len=_length(output_len, "output_len"),
            dataset=dataset,
            dataset_path=dataset_path,
            time_scale=time_scale,
            burstiness=burstiness,
            slo_ttft_ms=slo_ttft,
            slo_tpot_ms=slo_tpot,
            seed=seed,
            tokenizer=tokenizer,
            request_timeout_s=request_timeout,
        )
        if compare is None:
            if not base_url:
                fail("--base-url: which server? e.g. --base-url http://127.0.0.1:8000 (or --compare to start ours)")
            if profile is not None:
                fail("--profile: only with --compare (for one server: `shifttune recommend --validate URL`)")
        else:
            if base_url is not None:
                fail("--base-url: not with --compare, which starts its own servers")
            if model is None:
                fail("--model: --compare needs the model for `shifttune serve` to load")
        with sigterm_like_ctrl_c():  # SIGTERM (timeout, kill, a CI's cancel) as Ctrl-C: the results so far are kept
            if compare is None:
                runs, signum, notes, error = _run_one(cfg)
            else:
                runs, signum, notes, error = _run_compare(cfg, compare, model, sp, tp, device, threshold, profile,
                                                          server_arg, startup_timeout)  # fmt: skip
    except ConfigError as e:
        fail_config(e, FLAGS)
    except ServerError as e:
        fail(str(e))
    except KeyboardInterrupt as e:
        console.print("interrupted before the first run started; nothing to report")
        raise typer.Exit(exit_status(stop_signal(e))) from None
    _finish(runs, compare is not None, len(cfg.rate_list()) > 1, notes, out, plot)
    records = [r for recs in runs.values() for r in recs]
    if signum is not None:
        console.print("interrupted: kept the requests that completed" if records else "interrupted; nothing to report")
        raise typer.Exit(exit_status(signum))
    if error is not None:
        fail(error)
    if all(r["completed"] == 0 for r in records):
        first = next((e for r in records for e in r["errors"] if e), "no error text")
        fail(f"no request completed; first error: {first}")
    errors = Counter(e for r in records for e in r["errors"] if e)
    if errors:
        (common, times), total = errors.most_common(1)[0], sum(errors.values())
        which = f"; most often ({times}x)" if times > 1 else ", e.g."
        console.print(f"{total} request(s) failed{which}: {common} (each one: \"errors\" in the JSON report)",
                      soft_wrap=True, highlight=False)  # fmt: skip


Outcome = tuple[dict[str, list[dict]], Optional[int], list[str], Optional[str]]  # runs, stop signal, notes, error


def _run_one(cfg: BenchConfig) -> Outcome:
    from shifttune.bench.report import RichProgress
    from shifttune.bench.runner import run_bench

    with RichProgress(console) as progress:
        run = run_bench(cfg, progress)
    return {run.model: run.records}, run.stop_signal if run.interrupted else None, [], None


def _run_compare(
    cfg: BenchConfig,
    modes: str,
    model: str,
    sp: int,
    tp: int,
    device: str,
    threshold: int,
    profile: Path | None,
    server_arg: list[str] | None,
    startup_timeout: float,
) -> Outcome:
    from shifttune.bench.compare import CompareConfig, parse_modes, run_compare
    from shifttune.bench.report import RichProgress

    try:
        server_args = [a for arg in server_arg or [] for a in shlex.split(arg)]
    except ValueError as e:
        fail(f"--server-arg: {e}")
    compare = CompareConfig(parse_modes(modes), model, sp, tp, device, threshold, server_args, startup_timeout,
                            profile=profile)  # fmt: skip
    with RichProgress(console) as progress:
        result = run_compare(compare, cfg, progress)
    notes = [f"server logs: {', '.join(f'{m} {p}' for m, p in result.logs.items())}", *result.notes]
    return result.runs, result.stop_signal if result.interrupted else None, notes, result.error


def _finish(
    runs: dict[str, list[dict]], compared: bool, sweep: bool, notes: list[str], out: Path | None, plot: Path | None
) -> None:
    """Tables, notes, and the --out / --plot files of whatever completed (`sweep`: several rates were asked for)."""
    from shifttune.bench.report import (
        bench_payload,
        compare_table,
        latency_table,
        prediction_table,
        results_table,
        save_plot,
        shift_ratio_table,
        shift_ratios,
        to_json,
    )

    stdout = Console()
    records = [r for recs in runs.values() for r in recs]
    if not records:
        return
    for label, recs in runs.items():
        if recs and not recs[0]["ignore_eos"]:
            notes.append(f"{label}: the server rejected ignore_eos; outputs may end early at EOS")
    ratios = shift_ratios(runs) if compared else []
    if compared:
        stdout.print(compare_table(runs))
        if ratios:
            stdout.print(shift_ratio_table(ratios))
        predicted = prediction_table(runs)
        if predicted is not None:
            stdout.print(predicted)
    else:
        for label, recs in runs.items():
            stdout.print(results_table(recs, title=f"{label} @ {recs[0]['base_url']}"))
            stdout.print(latency_table(recs))
    for note in notes:
        stdout.print(f"note: {note}", soft_wrap=True, highlight=False)
    try:
        if out is not None:
            payload = bench_payload(records, shlex.join(sys.argv), compare=compared, ratios=ratios, sweep=sweep)
            write_output(out, "--out", to_json(payload))
            stdout.print(f"results saved to {out}")
        if plot is not None:
            make_parent(plot, "--plot")
            save_plot(runs, plot)
            stdout.print(f"plot saved to {plot}")
    except OSError as e:
        fail(f"cannot write {e.filename}: {e.strerror}")
