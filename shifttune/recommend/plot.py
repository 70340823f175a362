"""Step time vs tokens per step for TP mode and each SP x TP layout, threshold marked: terminal and file."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import plotext as plt

from shifttune.config import SP, TP
from shifttune.engine.profile_schema import Profile
from shifttune.recommend.planner import Plan


TERMINAL_MARKERS = ("•", "+", "x", "*", "o", "#", "@", "%")


def _curves(profile: Profile, plan: Plan, context: int) -> list[tuple[str, list[int], list[float]]]:
    at = min({p.context for p in profile.points}, key=lambda c: abs(c - context))
    out = []
    tp = profile.curve(TP, plan.world_size, 1, at)
    out.append((f"TP={plan.world_size} (TP mode)", [p.tokens for p in tp], [p.median_ms for p in tp]))
    for f in plan.factorizations:
        pts = profile.curve(SP, f.tp, f.sp, at)
        if pts:
            out.append((f"SP={f.sp} x TP={f.tp}", [p.tokens for p in pts], [p.median_ms for p in pts]))
    return out


def terminal_plot(profile: Profile, plan: Plan, width: int = 90, height: int = 22) -> str:
    plt.clear_figure()
    plt.plotsize(width, height)
    for (label, xs, ys), marker in zip(_curves(profile, plan, plan.context_for_threshold), TERMINAL_MARKERS):
        plt.plot(xs, ys, label=label, marker=marker)  # a marker each: told apart without colour too
    plt.xscale("log")
    plt.yscale("log")
    if plan.threshold:
        plt.vline(plan.threshold, "red")
    plt.title(
        f"step time vs tokens per step, context {plan.context_for_threshold}"
        + (f"; threshold {plan.threshold}" if plan.threshold else "")
    )
    plt.xlabel("tokens per step")
    plt.ylabel("ms")
    text = plt.build()
    return text if sys.stdout.isatty() else re.sub(r"\x1b\[[0-9;]*m", "", text)  # no ANSI in files and pipes


def save_plot(profile: Profile, plan: Plan, path: Path) -> None:
    """PNG, SVG or PDF by the file's suffix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, xs, ys in _curves(profile, plan, plan.context_for_threshold):
        ax.plot(xs, ys, marker="o", label=label)
    if plan.threshold:
        ax.axvline(plan.threshold, color="red", linestyle="--", label=f"threshold {plan.threshold}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens per step")
    ax.set_ylabel("step time (ms)")
    ax.set_title(f"{plan.model} on {plan.hardware}, context {plan.context_for_threshold}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
