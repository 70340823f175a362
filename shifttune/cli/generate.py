"""`shifttune generate`: run the engine on a few prompts and show which mode each step ran in."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from shifttune.cli.common import (
    MODEL_HELP,
    check_profile,
    check_writable,
    console,
    fail,
    fail_config,
    size,
    write_output,
)
from shifttune.config import (
    MODES,
    SHIFT_POLICIES,
    ConfigError,
    bundled_models,
    load_model_config,
    resolve_model_path,
)
from shifttune.signals import exit_status, sigterm_like_ctrl_c, stop_signal

DEMO_PROMPTS = ["The capital of France is", "Shift parallelism switches between"]


def generation_report(outs, stats, settings: dict) -> dict:
    """What `--output` writes: the settings, every output, and one record per engine step."""
    return settings | {
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
            {"mode": s.mode, "num_tokens": s.shape.num_tokens, "num_seqs": s.shape.num_seqs, "duration_s": s.duration_s}
            for s in stats.steps
        ],
        "steps_per_mode": dict(stats.steps_per_mode),
        "tokens_per_mode": dict(stats.tokens_per_mode),
        "weight_bytes_per_rank": dict(stats.weight_bytes_per_rank),
        "kv_cache_bytes_per_rank": stats.kv_cache_bytes_per_rank,
    }


def render_generation(report: dict, startup_s: float, elapsed_s: float) -> None:
    out = Console()
    for o in report["outputs"]:
        out.print(
            f"[bold]{o['prompt']!r}[/] -> {o['text']!r}  [dim]({len(o['token_ids'])} tokens, {o['finish_reason']})[/]"
        )
    table = Table(title="engine steps")
    for col in ("mode", "steps", "tokens"):
        table.add_column(col)
    for mode in MODES:
        table.add_row(mode, str(report["steps_per_mode"][mode]), str(report["tokens_per_mode"][mode]))
    out.print(table)
    w = report["weight_bytes_per_rank"]
    weights = f"{size(w['sp'])} (SP x TP mode) + {size(w['tp'])} (TP mode)" if w["sp"] else f"{size(w['tp'])} (TP mode)"
    out.print(
        f"per rank: weights {weights}, "
        f"KV cache {size(report['kv_cache_bytes_per_rank'])}; startup {startup_s:.1f} s, generation {elapsed_s:.2f} s"
    )


def _names_a_model(arg: str) -> bool:
    """A local directory with a config.json, or a bundled model's name: what `serve MODEL` takes as its argument."""
    try:
        return (Path(arg).expanduser() / "config.json").is_file() or arg.lower() in bundled_models()
    except OSError:  # a prompt too long to be a path
        return False


def generate(
    prompts: Annotated[
        Optional[list[str]], typer.Argument(help="Prompts (text). Default: two short demo prompts.")
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "tiny",
    # NOTE: each also answers to `shifttune serve`'s name for it (--tensor-parallel-size, ...)
    tp: Annotated[
        int, typer.Option("--tp", "--tensor-parallel-size", "-tp", help="Tensor-parallel degree of the SP x TP layout.")
    ] = 1,
    sp: Annotated[
        int,
        typer.Option(
            "--sp", "--sequence-parallel-size", "-sp", help="Ulysses sequence-parallel degree; P = SP x TP ranks."
        ),
    ] = 1,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            "--shift-policy",
            help=f"Mode per step: {' | '.join(SHIFT_POLICIES)} (profile: the faster mode per step, from --profile).",
        ),
    ] = "threshold",
    threshold: Annotated[
        int, typer.Option("--threshold", "--shift-threshold", help="Steps with <= this many tokens run in TP mode.")
    ] = 256,
    profile: Annotated[
        Optional[Path], typer.Option("--profile", help="Profile JSON from `shifttune profile`, for --policy profile.")
    ] = None,
    device: Annotated[str, typer.Option(help="cpu (gloo ranks) or cuda (one GPU per rank).")] = "cpu",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16 (also half, float).")] = "auto",
    load_format: Annotated[str, typer.Option(help="auto (safetensors) or dummy (random weights).")] = "auto",
    max_model_len: Annotated[Optional[int], typer.Option(help="Context length (default: the model's).")] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate per prompt.")] = 32,
    min_tokens: Annotated[int, typer.Option(help="Tokens to generate before EOS or a stop may end a prompt.")] = 0,
    stop: Annotated[
        Optional[list[str]], typer.Option(help="Stop string (repeatable); the output ends before it.")
    ] = None,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass.")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k likeliest tokens; -1 or 0 = off.")] = -1,
    seed: Annotated[Optional[int], typer.Option(help="Per-request sampling seed.")] = None,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", metavar="", help="Keep generating past EOS.")] = False,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Also write results as JSON here.")] = None,
) -> None:
    """Generate text for a few prompts and show which mode each engine step ran in."""
    from shifttune import LLM, SamplingParams  # NOTE: lazy: torch loads only for commands that run the engine

    check_writable(output, "--output", make_folder=True)
    if prompts and model == "tiny" and _names_a_model(prompts[0]):
        fail(f"{prompts[0]!r} is a model, but arguments are prompts: `shifttune generate --model {prompts[0]} "
             "[PROMPT ...]`")  # fmt: skip
    prompts = prompts or DEMO_PROMPTS
    with sigterm_like_ctrl_c():  # SIGTERM stops the workers as Ctrl-C does
        try:
            params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, max_tokens=max_tokens,
                                    min_tokens=min_tokens, stop=stop, ignore_eos=ignore_eos)  # fmt: skip
            if profile is not None:  # as `serve` does: checked before the engine starts, whatever the policy
                check_profile(str(profile), load_model_config(resolve_model_path(model))[0], tp, sp, device)
                if policy != "profile":
                    console.print(f"note: --profile is unused: --policy is {policy} (--policy profile runs on it)",
                                  highlight=False)  # fmt: skip
            start = time.perf_counter()
            with console.status(f"starting {model} on {sp * tp} {device} rank(s) (SP={sp} x TP={tp})"):
                llm = LLM(
                    model,
                    tensor_parallel_size=tp,
                    sequence_parallel_size=sp,
                    shift_policy=policy,
                    shift_threshold=threshold,
                    shift_profile=str(profile) if profile else None,
                    device=device,
                    dtype=dtype,
                    load_format=load_format,
                    max_model_len=max_model_len,
                )
            startup = time.perf_counter() - start
            try:
                if llm.llm_engine.tokenizer is None:
                    fail(f"model {model!r} has no tokenizer, so text prompts cannot be encoded")
                start = time.perf_counter()
                outs = llm.generate(prompts, params, use_tqdm=True)
            finally:
                llm.shutdown()
            elapsed = time.perf_counter() - start
        except ConfigError as e:
            if e.field and e.field.startswith("prompts["):  # one of several: say which, counting as a user does
                fail(f"prompt {int(e.field[8:-1]) + 1}: {e.message}")
            fail_config(e, {"prompt": "the prompt"})  # a positional argument, not a flag
        except KeyboardInterrupt as e:
            console.print("interrupted; workers stopped")
            raise typer.Exit(exit_status(stop_signal(e))) from None
    settings = {"model": model, "tp": tp, "sp": sp, "policy": policy, "threshold": threshold}
    report = generation_report(outs, llm.llm_engine.stats, settings)
    render_generation(report, startup, elapsed)
    if output is not None:
        write_output(output, "--output", json.dumps(report, indent=2))
        Console().print(f"wrote {output}")
