"""`shifttune recommend`: a profile in; SP/TP degrees, the switching threshold, memory, predicted
latencies, launch commands and a plot out (`--json`: the same as data)."""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shifttune.cli.common import check_writable, fail, fail_config, parse_list, size, write_output
from shifttune.config import SP, TP, ConfigError

if TYPE_CHECKING:
    from shifttune.recommend.report import RecommendRequest

FLAGS = {"input_len": "--input-len", "output_len": "--output-len", "slo_ttft": "--slo-ttft", "slo_tpot": "--slo-tpot",
         "gpus": "--gpus"}  # fmt: skip
# what a trace sets itself: given with --trace, these flags are refused rather than dropped
TRACE_SETS = {"rate": "--rate", "input_len": "--input-len", "output_len": "--output-len", "spread": "--spread",
              "burstiness": "--burstiness"}  # fmt: skip


def _headline(data: dict) -> str:
    sp, tp, p, th, at = (
        data["best_sp"],
        data["best_tp"],
        data["world_size"],
        data["threshold"],
        data["context_for_threshold"],
    )
    layout = f"SP={sp} x TP={tp}"
    if sp == 1:
        return f"best layout: [bold]TP={p}[/] (no shift)"
    if th == 0:
        return f"best layout: [bold]{layout}[/] at every step (no shifting), at context {at}"
    if th is None:
        return (
            f"best layout: [bold]{layout}[/] with the profile policy only; at context {at} "
            f"TP={p} is faster at every step size"
        )
    return (
        f"best layout: [bold]{layout}[/], switching to TP={p} for steps of <= [bold]{th}[/] tokens "
        f"(read at context {at})"
    )


def _factorization_table(data: dict) -> Table:
    table = Table(title="factorizations (per rank)")
    for col in ("SP x TP", "feasible", "weights (SP x TP + TP mode)", "KV tokens", "SP x TP speedup, largest steps",
                "crossover by context"):  # fmt: skip
        table.add_column(col)
    for f in data["factorizations"]:
        weights = f["weights_gib_per_rank"]
        table.add_row(
            f"{f['sp']} x {f['tp']}",
            "yes" if f["feasible"] else f"no: {f['reason']}",
            " + ".join(size(weights[m] * 2**30) for m in (SP, TP) if weights.get(m)),
            "" if f["kv_capacity_tokens"] is None else str(f["kv_capacity_tokens"]),
            "" if f["sp_speedup_at_max_tokens"] is None else f"{f['sp_speedup_at_max_tokens']:.2f}x",
            ", ".join(f"{c}: {'never' if v is None else int(v)}" for c, v in f["crossovers"].items()),
        )
    return table


def _prediction_table(data: dict) -> Table:
    steps = "predicted" if data.get("profile_kind") == "predicted" else "measured"
    table = Table(title=f"predicted (simulation of the engine's scheduler on the {steps} step times)")
    for col in ("rate/s", "policy", "TTFT p50/p99 ms", "TPOT p50/p99 ms", "output tok/s", "steps TP/SP", "SLO"):
        table.add_column(col)
    for r in data["predictions"]:
        table.add_row(
            "trace" if r["rate"] is None else f"{r['rate']:g}",
            r["label"],
            "overloaded (see note)" if r.get("overloaded") else f"{r['ttft_p50_ms']:.1f} / {r['ttft_p99_ms']:.1f}",
            f"{r['tpot_p50_ms']:.2f} / {r['tpot_p99_ms']:.2f}",
            f"{r['output_tok_per_s']:.0f}",
            f"{r['steps_per_mode'][TP]}/{r['steps_per_mode'][SP]}",
            "" if "meets_slo" not in r else ("meets" if r["meets_slo"] else "misses"),
        )
    return table


def render_recommendation(data: dict) -> None:
    out = Console()
    out.print(f"[bold]{data['model']}[/] on {data['hardware']} (profile {data['profile']})", soft_wrap=True)
    if data.get("caveat"):
        out.print(f"[bold yellow]caveat:[/] {data['caveat']}", soft_wrap=True, highlight=False)
    out.print(_headline(data))
    for note in data["notes"]:
        out.print(f"note: {note}", soft_wrap=True)
    out.print(_factorization_table(data))
    if data["predictions"]:
        out.print(_prediction_table(data))
        for label, rate in (data.get("max_rate_meeting_slo") or {}).items():
            out.print(
                f"  {label}: " + (f"meets the SLO up to {rate:g} req/s" if rate else "misses the SLO at every rate")
            )
    out.print("[bold]launch[/]")
    for name, cmd in data["launch"].items():
        out.print(f"  {name}: {cmd}", soft_wrap=True, highlight=False)


def _validation_table(data: dict) -> Table:
    table = Table(title=f"simulation vs {data['url']} (SP={data['server']['sp']} x TP={data['server']['tp']}, "
                        f"policy {data['server']['policy']}, threshold {data['server']['threshold']})")  # fmt: skip
    for col in ("rate/s", "metric", "predicted ms", "measured ms", "error", "within"):
        table.add_column(col)
    for row in data["rows"]:
        for name in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"):
            m = row[name]
            verdict = f"{'yes' if m['within'] else 'no'} (±{100 * m['tolerance']:g}%)"
            table.add_row(f"{row['rate']:g}", name.removesuffix("_ms"), f"{m['predicted']:.2f}",
                          f"{m['measured']:.2f}", f"{100 * m['rel_error']:+.1f}%", verdict)  # fmt: skip
    return table


def _validate_command(request: RecommendRequest, url: str, spread: float) -> str:
    """The command line that repeats this validation (saved with its table)."""
    where = ["--profile", str(request.profile)] if request.profile else []
    where += ["--model", request.model] if request.model and not request.profile else []
    where += ["--gpus", str(request.gpus)] if request.gpus and not request.profile else []
    return shlex.join(["shifttune", "recommend", "--validate", url, *where,
                       "--rate", ",".join(f"{r:g}" for r in request.rates or []),
                       "--num-requests", str(request.num_requests), "--input-len", str(request.input_len),
                       "--output-len", str(request.output_len), "--spread", f"{spread:g}"]
                      + (["--burstiness", f"{request.burstiness:g}"] if request.burstiness != 1 else []))  # fmt: skip


def _validate(
    request: RecommendRequest, url: str, spread: float, api_key: Optional[str], out: Optional[Path], as_json: bool
) -> None:
    """`--validate URL`: the simulation against what the server measures, per rate (`bench/validate.py`)."""
    from shifttune.bench.client import ServerError
    from shifttune.bench.validate import ValidateConfig, validate, with_spread
    from shifttune.recommend.report import resolve_profile

    lengths = with_spread(request.input_len, spread), with_spread(request.output_len, spread)
    # NOTE: the server checks the longest request the spread draws, not the means
    sent = (f"--input-len {request.input_len} + --output-len {request.output_len}, spread by --spread {spread:g} to "
            f"at most {lengths[0].hi} + {lengths[1].hi} tokens")  # fmt: skip
    try:
        request.validate()
        prof, path, _ = resolve_profile(request)
        cfg = ValidateConfig(url, prof, path, request.rates or [], request.num_requests, *lengths, api_key=api_key,
                             burstiness=request.burstiness)  # fmt: skip
        data = {"command": _validate_command(request, url, spread)} | validate(cfg)
    except ConfigError as e:
        fail_config(e, FLAGS | {"input_output_len": sent})
    except ServerError as e:
        fail(str(e))
    if out is not None:
        write_output(out, "--out", json.dumps(data, indent=1))
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    Console().print(_validation_table(data))
    if out is not None:
        Console().print(f"saved to {out}")


def _given(ctx: typer.Context) -> set[str]:
    """The parameters the user set (not left at their defaults)."""
    # NOTE: by the source's name: newer typer vendors click, whose ParameterSource is then not `click.core`'s
    sources = {name: getattr(ctx.get_parameter_source(name), "name", "DEFAULT") for name in ctx.params}
    return {name for name, source in sources.items() if source not in ("DEFAULT", "DEFAULT_MAP")}


def _refuse_ignored(given: set[str], validating: bool) -> None:
    """Fails on flags this run would silently drop: what --trace brings itself (arrivals and lengths), and what
    --validate does not use (it sends --rate's Poisson workload to the server, whose own policy picks the modes, and
    has no plot and no objectives)."""
    if validating:
        unused = (("trace", "--trace"), ("plot", "--plot"), ("context", "--context"), ("slo_ttft", "--slo-ttft"),
                  ("slo_tpot", "--slo-tpot"))  # fmt: skip
        dropped = [flag for name, flag in unused if name in given]
        if dropped:
            fail(f"{', '.join(dropped)}: not with --validate, which sends --rate's workload and prints a table "
                 "(--json: as JSON, --out: saved)")  # fmt: skip
    elif "trace" in given:
        dropped = [flag for name, flag in TRACE_SETS.items() if name in given]
        if dropped:
            fail(f"{', '.join(dropped)}: not with --trace, whose timestamps and token counts are the workload "
                 "(--num-requests still limits how many of its requests run)")  # fmt: skip


def recommend(
    ctx: typer.Context,
    profile_file: Annotated[
        Optional[Path], typer.Option("--profile", "-p", help="Profile JSON from `shifttune profile`.")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="Pick a shipped profile for this model (default: tiny).")
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            help="...and these GPUs: a count, or a count and type (4xH200, 8xH100). With the type, a predicted "
            "profile is used when no measured one ships (`shifttune profile --predict`)."
        ),
    ] = None,
    context: Annotated[
        Optional[int],
        typer.Option(
            help="Context length the threshold is read at (default: --input-len where latencies are predicted, i.e. "
            "with --rate or on a GPU profile; else the median profiled); outside the profiled range the nearest "
            "profiled context is used, with a note."
        ),
    ] = None,
    rate: Annotated[
        Optional[str],
        typer.Option(
            help="Predict latencies at these arrival rates (requests/s, Poisson unless --burstiness; comma-separated "
            "for a sweep, "
            "e.g. 1,2,4,8). Default on GPU profiles: one rate, about half of what TP mode alone sustains."
        ),
    ] = None,
    input_len: Annotated[int, typer.Option(help="Mean input tokens per request.")] = 2048,
    output_len: Annotated[int, typer.Option(help="Mean output tokens per request.")] = 256,
    spread: Annotated[float, typer.Option(help="Lengths uniform within +-spread x mean.")] = 0.25,
    num_requests: Annotated[int, typer.Option(help="Requests to simulate.")] = 300,
    burstiness: Annotated[
        float,
        typer.Option(
            help="Arrivals: Gamma-distributed gaps of this shape and mean 1/rate (as `shifttune bench "
            "--burstiness`): 1 = Poisson, below 1 burstier."
        ),
    ] = 1.0,
    trace: Annotated[
        Optional[Path], typer.Option(help="Azure LLM inference trace CSV instead of --rate and the lengths.")
    ] = None,
    slo_ttft: Annotated[Optional[float], typer.Option("--slo-ttft", help="TTFT objective (ms, p99).")] = None,
    slo_tpot: Annotated[Optional[float], typer.Option("--slo-tpot", help="TPOT objective (ms, p99).")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Save the plot here (.png, .svg or .pdf).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", help="Print the plan (with --validate, the comparison) as JSON only.")
    ] = False,
    validate_url: Annotated[
        Optional[str],
        typer.Option(
            "--validate",
            metavar="URL",
            help="Compare the simulation with a running `shifttune serve` at URL: the same workload (--rate, "
            "--num-requests, --input-len, --output-len, --spread) simulated with the server's layout and policy and "
            "sent to it; predicted vs measured TTFT/TPOT p50/p99.",
        ),
    ] = None,
    api_key: Annotated[
        Optional[str],
        typer.Option(
            help="--validate: sent as `Authorization: Bearer KEY` (also from $SHIFTTUNE_API_KEY).", show_default=False
        ),
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            help="Save the recommendation here as JSON (as --json prints it); with --validate, the comparison."
        ),
    ] = None,
) -> None:
    """Turn a profile into SP/TP degrees, a switching threshold, memory, predictions and launch commands.

    With no options it reads the shipped CPU profile of the tiny model.
    """
    from shifttune.recommend.gpus import parse_gpus
    from shifttune.recommend.plot import save_plot, terminal_plot
    from shifttune.recommend.report import RecommendRequest
    from shifttune.recommend.report import recommend as make_recommendation

    given = _given(ctx)
    _refuse_ignored(given, validate_url is not None)
    check_writable(plot, "--plot", (".png", ".svg", ".pdf"), make_folder=True)
    check_writable(out, "--out", make_folder=True)
    rates = parse_list(rate, "--rate", float) if rate is not None else None
    try:
        request = RecommendRequest(profile_file, model, None if gpus is None else parse_gpus(gpus), context, rates,
                                   trace, input_len, output_len, spread, num_requests, slo_ttft, slo_tpot,
                                   burstiness=burstiness,
                                   defaulted=tuple({"input_len", "output_len"} - given))  # fmt: skip
        if validate_url is not None:
            key = api_key or os.environ.get("SHIFTTUNE_API_KEY")  # as `shifttune top` reads it
            return _validate(request, validate_url, spread, key, out, as_json)
        prof, result, data = make_recommendation(request)
        if plot is not None:
            save_plot(prof, result, plot)
    except ConfigError as e:
        fail_config(e, FLAGS)
    except OSError as e:
        fail(f"cannot write the plot: {e}")
    if out is not None:
        write_output(out, "--out", json.dumps(data, indent=1))
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    render_recommendation(data)
    print(terminal_plot(prof, result))  # plotext's own ANSI colors: not through Rich
    if plot is not None:
        Console().print(f"plot saved to {plot}")
    if out is not None:
        Console().print(f"saved to {out}")
