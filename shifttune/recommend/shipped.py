"""The profiles shipped inside the package (`shifttune/data/profiles/`), found the same way from a
checkout and from an installed wheel."""

from __future__ import annotations

from pathlib import Path

from shifttune.config import ConfigError
from shifttune.engine.profile_schema import load_profile

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"


def shipped_profiles() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.json"))


def pick_shipped_profile(model: str | None, gpus: int | None) -> Path:
    """The shipped profile for a model and GPU count (default: the embedded CPU profile of `tiny`)."""
    candidates = shipped_profiles()
    for path in candidates:
        try:
            prof = load_profile(path)
        except ConfigError:
            continue
        if (model or "tiny") == prof.model.get("name") and (gpus is None or gpus == prof.world_size):
            return path
    have = ", ".join(p.name for p in candidates) or "none"
    raise ConfigError(
        f"no shipped profile for model {model or 'tiny'!r}"
        + (f" on {gpus} GPUs" if gpus else "")
        + f" (shipped: {have}); measure one with `shifttune profile` and pass --profile"
    )
