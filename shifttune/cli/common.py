"""What every command shares: the stderr console, one-line errors with the user's flag names, option parsing."""

from __future__ import annotations

import tempfile
from pathlib import Path
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


def check_writable(
    path: Path | None, flag: str, suffixes: tuple[str, ...] | None = None, make_folder: bool = False
) -> None:
    """Fails now, before any slow work, where `path` cannot be written: a folder, a missing (unless `make_folder`:
    then made) or read-only folder around it, or (with `suffixes`) the wrong kind of file."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{flag}: {str(path)!r} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        fail(f"{flag} must end in {', '.join(suffixes)}, not {path.name!r}")
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        fail(f"{flag}: cannot write {path}: {str(folder)!r} is a file, not a folder")
    if make_folder and not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            fail(f"{flag}: cannot make the folder {str(folder)!r}: {e.strerror}")
    if not folder.is_dir():
        fail(f"{flag}: cannot write {path}: the folder {str(folder)!r} does not exist")
    try:  # NOTE: a real file, not os.access: root passes access checks on folders that refuse new files (/proc)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=f".{path.name}."):
            pass
    except OSError as e:
        fail(f"{flag}: cannot write in {str(folder)!r}: {e.strerror}")


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
