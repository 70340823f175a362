"""The `shifttune` command line (Typer). Commands appear here only once they are built."""

from __future__ import annotations

import json
import logging
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
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log engine details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def generate(
    prompts: Annotated[Optional[list[str]], typer.Argument(help="Prompts (text). Default: two short demo prompts.")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help=f"HF model directory or bundled name ({BUNDLED}).")] = "tiny",
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
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                                max_tokens=max_tokens, ignore_eos=ignore_eos)
        start = time.perf_counter()
        with console.status(f"starting {model} on {sp * tp} {device} rank(s) (SP={sp} x TP={tp})"):
            llm = LLM(model, tensor_parallel_size=tp, sequence_parallel_size=sp, shift_policy=policy,
                      shift_threshold=threshold, device=device, dtype=dtype, load_format=load_format)
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
        out_console.print(f"[bold]{o.prompt!r}[/] -> {c.text!r}  [dim]({len(c.token_ids)} tokens, {c.finish_reason})[/]")
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
            "model": model, "tp": tp, "sp": sp, "policy": policy, "threshold": threshold,
            "outputs": [{"prompt": o.prompt, "text": o.outputs[0].text, "token_ids": o.outputs[0].token_ids,
                         "finish_reason": o.outputs[0].finish_reason} for o in outs],
            "steps": [{"mode": s.mode, "num_tokens": s.shape.num_tokens, "num_seqs": s.shape.num_seqs,
                       "duration_s": s.duration_s} for s in stats.steps],
        }
        output.write_text(json.dumps(result, indent=2))
        out_console.print(f"wrote {output}")


if __name__ == "__main__":
    app()
