"""Numbers quoted in RESULTS.md and the session-24 note, derived from the committed device outputs (CPU):

    python profiles/commands/s24_derived.py > profiles/runs/s24_derived.txt

1. the H200 llama-3.3-70b, llama-3.1-8b, qwen3-8b and mistral-7b-v0.3 op tables measured with split graphs
   (s24_h200/a-d) against the tables they replaced (`table_before.json`): the split-graph entries as measured then,
   and as `with_split_graphs` adjusts them; every adjusted 70B entry;
2. the other entries (no split graph) of each new table against its predecessor, graphed (<= 2048 tokens) and
   eager; and the P = 1 profile checks of the three 8B tables before and after (the device run's compare files);
3. llama-3.3-70b on 4 x H200: session 17's measured profile against the profile predicted from the table before and
   from the new one (with session 17's collectives). Session 17's engine ran without split graphs, so the new
   table's split-graph entries are expected to predict faster steps than that run measured;
4. how many entries `with_split_graphs` still adjusts in each shipped table.
"""

from __future__ import annotations

import json
from pathlib import Path

from derived import print_adjusted_per_table, print_split_adjustment, split_adjusted, spread

from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.compare import compare_profiles
from shifttune.recommend.op_table import OP_TABLE_DIR, load_op_table
from shifttune.recommend.predict import PredictSettings, predict_profile

RUNS = Path(__file__).resolve().parents[1] / "runs"
# this session's H200 tables (`profiles/runs/table_checks.json`): the table each replaced, and the folder of its P = 1
# check (the device run's measured profile and compare files)
_TABLES = json.loads((RUNS / "table_checks.json").read_text())
BEFORE = {c["model"]: RUNS / c["before"] for c in _TABLES["before_split_graphs"] if c["before"].startswith("s24_")}
CHECKS = {c["model"]: (RUNS / c["measured"]).parent for c in _TABLES["checks"] if c["measured"].startswith("s24_")}
S17 = RUNS / "s17_h200x4/profile_70b"


def split_entries(model: str) -> None:
    rows = print_split_adjustment(model, "h200", BEFORE[model], "the table before")
    if model == "llama-3.3-70b":
        for e, a, n in rows:
            print(f"    {e.mode} TP {e.tp} SP {e.sp}, {e.tokens} tokens at {e.context}: before {e.layer_ms:.3f}, "
                  f"adjusted {a.layer_ms:.3f}, measured {n.layer_ms:.3f} ms a layer")  # fmt: skip


def other_entries(model: str) -> None:
    rows, _ = split_adjusted(model, "h200", BEFORE[model])
    graph = [n.layer_ms / e.layer_ms - 1 for e, a, n in rows if a.layer_ms == e.layer_ms and e.tokens <= 2048]
    eager = [n.layer_ms / e.layer_ms - 1 for e, a, n in rows if a.layer_ms == e.layer_ms and e.tokens > 2048]
    print(f"{model} (before: {load_op_table(BEFORE[model]).created[:10]}): graphed entries {spread(graph)}")
    print(f"{' ' * len(model)}   eager entries (> 2048 tokens) {spread(eager)}")
    if model in CHECKS:
        for when in ("before", "after"):
            o = json.loads((CHECKS[model] / f"compare_{when}.json").read_text())["overall"]
            print(f"{' ' * len(model)}   P = 1 profile predicted from the table {when}: {o['points']} points, |error| "
                  f"median {100 * o['median_abs_error']:.1f}%, p90 {100 * o['p90_abs_error']:.1f}%, "
                  f"max {100 * o['max_abs_error']:.1f}%")  # fmt: skip


def seventy_b_on_four() -> None:
    print("\n## 3. llama-3.3-70b, 4 x H200: session 17's measured profile against predictions from each table")
    measured = load_profile(S17 / "measured_llama-3.3-70b_h200x4.json")
    tokens = sorted({p.tokens for p in measured.points})
    contexts = sorted({p.context for p in measured.points})
    for label, table in (("before", BEFORE["llama-3.3-70b"]), ("new", OP_TABLE_DIR / "llama-3.3-70b_h200.json")):
        settings = PredictSettings("llama-3.3-70b", 4, "h200", tokens=tokens, contexts=contexts, op_table=table,
                                   collectives=S17 / "collectives_h200x4.json")  # fmt: skip
        result = compare_profiles(measured, predict_profile(settings, command="s24_derived"))
        o = result["overall"]
        print(f"table {label}: {o['points']} points, |error| median {100 * o['median_abs_error']:.1f}%, "
              f"p90 {100 * o['p90_abs_error']:.1f}%, max {100 * o['max_abs_error']:.1f}%")  # fmt: skip


def main() -> None:
    print("## 1. H200 op tables measured with split graphs against the tables before (s24_h200/a-d)")
    for model in BEFORE:
        split_entries(model)
    print("\n## 2. entries without a split graph, new table against the one before (layer time change)")
    for model in BEFORE:
        other_entries(model)
    seventy_b_on_four()
    print("\n## 4. entries with_split_graphs adjusts in each shipped table")
    print_adjusted_per_table()


if __name__ == "__main__":
    main()
