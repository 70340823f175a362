"""Helpers of the scripts that derive the numbers RESULTS.md quotes from committed device outputs (`s2*_derived.py`,
`roofline_fit.py`): a spread of changes or errors, a table measured without split graphs set beside the same card's
table measured with them (and its report), and how many entries each shipped table has adjusted."""

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


def print_split_adjustment(model: str, gpu: str, before: Path, then: str) -> list[tuple[OpEntry, OpEntry, OpEntry]]:
    """Prints how the entries a split graph changes moved (`then`: what the table before was) and how far they are
    from it as measured without split graphs and as `with_split_graphs` adjusts them; returns those entries' rows."""
    rows, changed = split_adjusted(model, gpu, before)
    rows = [(e, a, n) for e, a, n in rows if a.layer_ms != e.layer_ms]
    print(f"{model}: {changed} entries adjusted; measured with split graphs against {then}: "
          f"{spread([n.layer_ms / e.layer_ms - 1 for e, _, n in rows])}")  # fmt: skip
    measured = spread([abs(e.layer_ms / n.layer_ms - 1) for e, _, n in rows], False)
    print(f"  |error| as measured without split graphs: {measured}")
    adjusted = spread([abs(a.layer_ms / n.layer_ms - 1) for _, a, n in rows], False)
    print(f"  |error| as with_split_graphs adjusts them: {adjusted}")
    return rows


def print_adjusted_per_table() -> None:
    """How many entries `with_split_graphs` adjusts in each shipped op table."""
    for path in sorted(OP_TABLE_DIR.glob("*.json")):
        table = load_op_table(path)
        cfg, _ = load_model_config(resolve_model_path(table.model["name"]))
        adjusted = with_split_graphs(table, cfg, known_gpus()[table.gpu["slug"]])
        print(f"  {path.name}: {adjusted.engine.get('split_graph_entries_adjusted', 0)} of {len(table.entries)} "
              f"(measured with split graphs: {bool(table.engine.get('chunk_split_graphs'))})")  # fmt: skip
