"""What every command shares: the stderr console, one-line errors with the user's flag names, option parsing."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from shifttune.config import ConfigError, ModelConfig, bundled_models

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


def check_profile(path: str | None, model: ModelConfig, tp: int, sp: int, device: str) -> None:
    """The --profile file checked now, before any engine starts, as the profile policy will read it (a profile of
    this model on SP x TP ranks), whatever the policy: a server can be switched to it later. Raises ConfigError
    (field shift_profile); prints a note where it was measured or predicted on other hardware."""
    if path is None:
        return
    from shifttune.engine.policy import load_policy_profile  # NOTE: lazy: the engine package

    try:
        hardware = load_policy_profile(path, tp, sp, model).hardware
    except ConfigError as e:
        raise ConfigError(e.message, e.field or "shift_profile") from None
    note = hardware_note(hardware, device, local_gpu_name() if device == "cuda" else None)
    if note:
        console.print(f"note: --profile {path}: {note}", soft_wrap=True, highlight=False)


def local_gpu_name() -> str | None:
    """GPU 0's name from NVML (None without a driver); NOTE: not torch, which would set up CUDA in this process."""
    from shifttune.telemetry.nvml import NvmlSampler

    sampler = NvmlSampler()
    reading = sampler.sample()
    sampler.stop()
    return reading.gpus[0].name if reading.available and reading.gpus else None


def hardware_note(hardware: dict, device: str, gpu_name: str | None = None) -> str | None:
    """Why a profile's step times may not hold here: it was taken (or predicted) for another device kind, or another
    GPU type (compared by slug: "NVIDIA H100 80GB HBM3" and "NVIDIA H100 PCIe" are both h100); None where it matches
    or this GPU is unknown."""
    from shifttune.recommend.gpus import gpu_slug

    theirs = hardware.get("gpu_name") if hardware.get("device") == "cuda" else None
    kind = "predicted" if hardware.get("predicted") else "measured"
    where = f"{theirs} GPUs" if theirs else f"{hardware.get('device', 'an unknown device')}"
    if hardware.get("device") != device:
        return f"{kind} on {where}, but this engine runs on {device}; its step times may not hold here"
    if theirs and gpu_name and gpu_slug(theirs) != gpu_slug(gpu_name):
        return f"{kind} on {where}, but this GPU is a {gpu_name}; its step times may not hold here"
    return None


def check_writable(
    path: Path | None, flag: str, suffixes: tuple[str, ...] | None = None, make_folder: bool = False
) -> None:
    """Fails now, before any slow work, where `path` cannot be written: a folder, a file where a folder should be, a
    read-only folder, (with `suffixes`) the wrong kind of file, or a missing folder unless `make_folder`: then the
    nearest folder above it must take new entries, and `make_parent` makes the missing ones when the command writes.
    Leaves nothing behind."""
    if path is None:
        return
    if path.is_dir():
        fail(f"{flag}: {str(path)!r} is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        fail(f"{flag} must end in {', '.join(suffixes)}, not {path.name!r}")
    folder = path.parent
    existing = next(f for f in (folder, *folder.parents) if f.exists())  # "." or "/" at worst
    if not existing.is_dir():
        fail(f"{flag}: cannot write {path}: {str(existing)!r} is a file, not a folder")
    if existing != folder and not make_folder:
        fail(f"{flag}: cannot write {path}: the folder {str(folder)!r} does not exist")
    try:  # NOTE: a real file, not os.access: root passes access checks on folders that refuse new files (/proc)
        with tempfile.NamedTemporaryFile(dir=existing, prefix=f".{path.name}."):
            pass
    except OSError as e:
        fail(f"{flag}: cannot write in {str(existing)!r}: {e.strerror}")


def make_parent(path: Path, flag: str) -> None:
    """Makes the missing folders above `path` (checked by `check_writable(make_folder=True)`) as the command is about
    to write it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        fail(f"{flag}: cannot make the folder {str(path.parent)!r}: {e.strerror}")


def write_output(path: Path, flag: str, text: str) -> None:
    """Writes a command's output file (checked by `check_writable(make_folder=True)`), making its folder first."""
    make_parent(path, flag)
    try:
        path.write_text(text)
    except OSError as e:
        fail(f"{flag}: cannot write {path}: {e.strerror}")


def parse_list(text: str | None, flag: str, kind: type = int) -> list:
    """A comma-separated option's values (None: none given); an empty element (1,,4) is refused, not skipped."""
    if text is None:
        return []
    try:
        return [kind(x) for x in text.split(",")]
    except ValueError:
        noun, example = ("integers", "1 or 1,4,16") if kind is int else ("numbers", "2 or 1,2,4")
        fail(f"{flag} takes comma-separated {noun}, e.g. {example}; got {text!r}")


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
