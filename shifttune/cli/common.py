"""What every command shares: the stderr console, one-line errors with the user's flag names, option parsing."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

from shifttune.config import ConfigError, bundled_models

console = Console(stderr=True)
BUNDLED = ", ".join(bundled_models())
MODEL_HELP = f"A local HF model directory or a bundled model ({BUNDLED}); all but tiny need --load-format dummy."

# Engine / sampling field -> the flag that sets it, where the flag's name is not the field's.
FLAGS = {
    "tensor_parallel_size": "--tp / --sp",
    "sequence_parallel_size": "--sp",
    "shift_policy": "--policy",
    "shift_threshold": "--threshold",
    "shift_profile": "--profile",
    "ranks": "--gpus",
}


def fail(message: str) -> NoReturn:
    console.print(f"[bold red]error:[/] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(2)


def fail_config(e: ConfigError, flags: dict[str, str] | None = None) -> NoReturn:
    """A ConfigError in the user's words: the flag that set the field at fault, not the Python name."""
    if e.field is None:
        fail(e.message)
    names = FLAGS | (flags or {})
    fail(f"{names.get(e.field, '--' + e.field.replace('_', '-'))}: {e.message}")


def parse_ints(text: str | None, flag: str) -> list[int]:
    if not text:
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fail(f"{flag}: expected comma-separated integers, got {text!r}")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
