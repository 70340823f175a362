"""The profiles shipped inside the package (`shifttune/data/profiles/`), found the same way from a
checkout and from an installed wheel: by model, GPU count and (when asked) GPU type."""

from __future__ import annotations

from pathlib import Path

from shifttune.config import ConfigError
from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.gpus import gpu_slug

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "data" / "profiles"


def shipped_profiles() -> list[Path]:
    return sorted(SHIPPED_DIR.glob("*.json"))


def pick_shipped_profile(model: str | None, gpus: int | None, gpu: str | None = None) -> Path:
    """The shipped measured profile for a model, GPU count and GPU type (a slug such as "h200"; None: any)
    (default: the embedded CPU profile of `tiny`)."""
    candidates = shipped_profiles()
    for path in candidates:
        try:
            prof = load_profile(path)
        except ConfigError:
            continue
        if prof.predicted:
            continue
        on = gpu_slug(prof.hardware.get("gpu_name") or "") if prof.hardware.get("device") == "cuda" else None
        if (
            (model or "tiny") == prof.model.get("name")
            and (gpus is None or gpus == prof.world_size)
            and (gpu is None or gpu == on)
        ):
            return path
    have = ", ".join(p.name for p in candidates) or "none"
    raise ConfigError(
        f"no shipped profile for model {model or 'tiny'!r}"
        + (f" on {gpus} {gpu.upper() if gpu else 'GPU'}s" if gpus else "")
        + f" (shipped: {have}); measure one with `shifttune profile` and pass --profile"
        + ("" if gpu else ", or name the GPU type (e.g. --gpus 4xH200) for a predicted profile")
    )
