"""Helpers of the scripts that derive the numbers RESULTS.md quotes from committed device outputs (`s2*_derived.py`,
`roofline_fit.py`): a spread of changes or errors, and a table measured without split graphs set beside the same
card's table measured with them."""

from __future__ import annotations

import statistics
from pathlib import Path

from shifttune.config import load_model_config, resolve_model_path
from shifttune.recommend.gpus import known_gpus
from shifttune.recommend.op_table import OP_TABLE_DIR, OpEntry, load_op_table
from shifttune.recommend.roofline import RooflineConstants, with_split_graphs


def spread(xs: list[float], signed: bool = True) -> str:
    """n, median, p10, p90, min and max of fractions, in percent (signed: with their sign)."""
    xs = sorted(xs)
    f = (lambda x: f"{100 * x:+.1f}%") if signed else (lambda x: f"{100 * x:.1f}%")
    return (f"n {len(xs)}, median {f(statistics.median(xs))}, p10 {f(xs[len(xs) // 10])}, "
            f"p90 {f(xs[9 * len(xs) // 10])}, min {f(xs[0])}, max {f(xs[-1])}")  # fmt: skip


def split_adjusted(model: str, gpu: str, before: Path, constants: RooflineConstants | None = None):
    """(entry of the table measured without split graphs, as `with_split_graphs` adjusts it, the shipped table's entry
    measured with them) for every entry both tables hold, and how many entries the adjustment changed."""
    cfg, _ = load_model_config(resolve_model_path(model))
    old, new = load_op_table(before), load_op_table(OP_TABLE_DIR / f"{model}_{gpu}.json")
    adjusted = with_split_graphs(old, cfg, known_gpus()[gpu], constants)
    rows: list[tuple[OpEntry, OpEntry, OpEntry]] = []
    for e, a in zip(old.entries, adjusted.entries):
        n = new.get(e.mode, e.tp, e.sp, e.tokens, e.context)
        if n is not None:
            rows.append((e, a, n))
    return rows, adjusted.engine.get("split_graph_entries_adjusted", 0)
