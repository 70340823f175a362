"""`shifttune serve MODEL`: the OpenAI-compatible server on the shift-parallel engine (flags as `vllm serve`)."""

from __future__ import annotations

import logging
import signal
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer

from shifttune.cli.common import MODEL_HELP, check_profile, check_writable, console, fail, fail_config
from shifttune.config import SHIFT_POLICIES, ConfigError
from shifttune.signals import exit_status, stop_signal

FLAGS = {
    "tensor_parallel_size": "--tensor-parallel-size / --sequence-parallel-size",
    "sequence_parallel_size": "--sequence-parallel-size",
    "shift_policy": "--shift-policy",
    "shift_threshold": "--shift-threshold",
    "shift_profile": "--profile",
    "all_reduce": "--all-reduce",
}


def serve(
    model_arg: Annotated[Optional[str], typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="The model, if not given as the argument.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    tensor_parallel_size: Annotated[
        int, typer.Option("--tensor-parallel-size", "-tp", "--tp", help="TP degree of the SP x TP layout.")
    ] = 1,
    sequence_parallel_size: Annotated[
        int,
        typer.Option(
            "--sequence-parallel-size",
            "--ulysses-sequence-parallel-size",
            "-sp",
            "--sp",
            help="Ulysses SP degree; P = SP x TP ranks (GPUs, or CPU ranks with --device cpu).",
        ),
    ] = 1,  # fmt: skip
    shift_policy: Annotated[
        str, typer.Option(help=f"Mode per step: {' | '.join(SHIFT_POLICIES)} (tp / sp force one mode).")
    ] = "threshold",
    shift_threshold: Annotated[
        int,
        typer.Option(
            "--shift-threshold",
            "--shift-parallel-threshold",
            help="Steps with <= this many scheduled tokens run in TP mode, larger ones in SP x TP mode.",
        ),
    ] = 256,  # fmt: skip
    profile: Annotated[
        Optional[str],
        typer.Option(
            "--profile",
            help="Profile JSON from `shifttune profile`, for --shift-policy profile (now or switched to later); "
            "checked at start.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cuda (one GPU per rank, NCCL) or cpu (gloo ranks).")] = "cuda",
    dtype: Annotated[str, typer.Option(help="auto | bfloat16 | float16 | float32 (also half, float).")] = "auto",
    load_format: Annotated[str, typer.Option(help="auto (safetensors) or dummy (random weights).")] = "auto",
    max_model_len: Annotated[Optional[int], typer.Option(help="Context length (default: the model's).")] = None,
    max_num_seqs: Annotated[int, typer.Option(help="Sequences per step at most.")] = 256,
    max_num_batched_tokens: Annotated[int, typer.Option(help="Tokens per step at most (chunked prefill).")] = 8192,
    gpu_memory_utilization: Annotated[float, typer.Option(help="Share of GPU memory for weights + KV cache.")] = 0.9,
    served_model_name: Annotated[Optional[str], typer.Option(help="Model name in the API (default: MODEL).")] = None,
    api_key: Annotated[Optional[str], typer.Option(help="Require `Authorization: Bearer KEY` on /v1/*.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of dummy weights and of unseeded sampling.")] = 0,
    max_queue_len: Annotated[
        Optional[int], typer.Option(help="Requests that may wait; more get 503 (default: no limit).")
    ] = None,
    enforce_eager: Annotated[bool, typer.Option("--enforce-eager", metavar="", help="No CUDA graphs.")] = False,
    all_reduce: Annotated[
        str,
        typer.Option(
            help="TP all-reduces up to 1 MiB: nccl, or symm_mem (torch's symmetric-memory one-shot all-reduce, for "
            "GPUs that reach each other over NVLink; on H200s: TPOT p50 -18% through the server for an 8B model at "
            "TP2, a 70B TP4 decode step 2.7-4.3% shorter)."
        ),
    ] = "nccl",
    no_tui: Annotated[
        bool, typer.Option("--no-tui", metavar="", help="Plain logs in a terminal instead of the live view.")
    ] = False,
    log_file: Annotated[
        Optional[Path],
        typer.Option(
            help="Where the log goes while the live view runs (default: shifttune-serve-PORT.log in the "
            "temp directory).",
            show_default=False,
        ),
    ] = None,  # fmt: skip
) -> None:
    """Serve a model over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models, /metrics, /health).

    In a terminal it shows a live view (mode per step, threshold, load, latencies, GPUs; keys change the
    policy, q stops the server); --no-tui, or output to a pipe or file, keeps plain logs.
    Ctrl-C or SIGTERM stops it gracefully: in-flight streams end, workers and the port are released.
    """
    from shifttune.config import EngineConfig  # NOTE: lazy: the server stack loads torch and FastAPI
    from shifttune.server.launcher import ENGINE_DIED, ServerSettings
    from shifttune.server.launcher import serve as run_server

    name = model_arg or model
    if name is None:
        fail("give the model: `shifttune serve MODEL` (or --model MODEL)")
    if model_arg and model and model_arg != model:
        fail(f"two models given: {model_arg!r} and --model {model!r}")
    if max_queue_len is not None and max_queue_len < 1:
        fail("--max-queue-len: must be >= 1")
    check_writable(log_file, "--log-file", make_folder=True)
    logging.getLogger("shifttune").setLevel(logging.INFO)
    try:
        config = EngineConfig(
            model=name,
            tensor_parallel_size=tensor_parallel_size,
            sequence_parallel_size=sequence_parallel_size,
            shift_policy=shift_policy,
            shift_threshold=shift_threshold,
            shift_profile=profile,
            device=device,
            dtype=dtype,
            load_format=load_format,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            seed=seed,
            enforce_eager=enforce_eager,
            all_reduce=all_reduce,
        )
        p = config.parallel
        check_profile(config.shift_profile, config.model_config, p.tp, p.sp, config.device)
        settings = ServerSettings(host, port, served_model_name, api_key, max_queue_len)
        view = None
        if not no_tui and sys.stdout.isatty() and sys.stdin.isatty():
            from shifttune.tui.attach import TerminalView, local_url

            log = log_file or Path(tempfile.gettempdir()) / f"shifttune-serve-{port}.log"
            view = TerminalView(local_url(host, port), log, api_key)
        code = run_server(config, settings, view)
    except ConfigError as e:
        fail_config(e, FLAGS)
    except RuntimeError as e:  # the engine process could not start (its own log says more)
        fail(f"the engine did not start: {e}")
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM while the engine was still starting
        signum = stop_signal(e)
        console.print(f"stopped by {signal.Signals(signum).name} while starting; workers stopped")
        raise typer.Exit(exit_status(signum)) from None
    if code == ENGINE_DIED:
        console.print("[bold red]error:[/] the engine stopped; see the log above", highlight=False)
    elif code:
        console.print(f"stopped by {signal.Signals(code - 128).name}; workers stopped")
    raise typer.Exit(code)
