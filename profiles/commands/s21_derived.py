"""Session 21's numbers derived from its committed run files (no GPU):

    python profiles/commands/s21_derived.py > profiles/runs/s21_derived.txt

The H100 op tables: the predicted P = 1 profile's error against the engine's measured one, before (no H100 table
shipped: the roofline) and after (the new table), from `profile --compare` JSON, with how long each table took
(check.log). The warm-up memory probe (ops_memory_probe.py): free GPU memory and torch's reserved bytes around
the warm-up of profile --ops' first rank, in the run that failed and in the runs that did not.
"""

import json
import re
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs" / "s21_h100"
TABLES = {"llama-3.1-8b": "a_op_table_llama_3_1_8b", "qwen3-8b": "b_op_table_qwen3_8b",
          "mistral-7b-v0.3": "e_op_table_mistral"}  # fmt: skip


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


for model, folder in TABLES.items():
    d = RUNS / folder
    parts = []
    for when in ("before", "after"):
        c = json.loads((d / f"compare_{when}.json").read_text())
        o, src = c["overall"], c["predicted_sources"]["op_table"]
        slow = sum(p["error"] > 0 for p in c["points"])
        errors = f"|error| median {pct(o['median_abs_error'])}, p90 {pct(o['p90_abs_error'])}"
        parts.append(f"{when} ({src['method']}): {errors}, max {pct(o['max_abs_error'])}, {slow} of {o['points']} "
                     "predicted slow")  # fmt: skip
    took = re.search(r"ops rc=0 after (\d+) s", (d / "check.log").read_text()).group(1)
    table = json.loads(
        (Path(__file__).resolve().parents[2] / "shifttune/data/op_tables" / f"{model}_h100.json").read_text()
    )
    print(f"H100 {model}: " + "; ".join(parts) + f"; table {len(table['entries'])} entries, "
          f"{len(table['breakdown'])} breakdowns, measured profile, table and checks in {took} s")  # fmt: skip

for name, model in (("ops_memory.json", "mistral-7b-v0.3"), ("ops_memory.json", "llama-3.1-8b"),
                    ("ops_memory_run_ops.json", "mistral-7b-v0.3")):  # fmt: skip
    d = json.loads((RUNS / "d_ops_memory" / name).read_text())
    log, error = d["models"][model]["log"], d["models"][model]["error"]
    at = {r["where"]: r for r in log}  # the last snapshot of each place
    warm = next(i for i, r in enumerate(log) if r["where"] == "before ModelRunner.warm_up")
    first_exec = next(r for r in log[warm:] if r["where"] == "before ModelRunner.execute")
    grew = first_exec["reserved_gib"] - log[warm]["reserved_gib"]
    print(f"{name} {model}: free before warm_up {log[warm]['free_gib']:.2f} GiB, after the attention warm-up (cuDNN "
          f"plans) {first_exec['free_gib']:.2f} GiB (reserved +{grew:.2f}),"
          f" before the graph-inputs kernel's load {at['before StepGraphs.warm_up_load']['free_gib']:.2f} GiB; "
          f"allocated {at['before StepGraphs.warm_up_load']['allocated_gib']:.2f} of reserved "
          f"{at['before StepGraphs.warm_up_load']['reserved_gib']:.2f} GiB; error: {error}")  # fmt: skip

# the graphed prefill chunk at TP 8 (one KV head a rank) against P = 1 (RESULTS.md, CHUNK_SPLIT_GRAPHS)
table = json.loads(
    (Path(__file__).resolve().parents[2] / "shifttune/data/op_tables/llama-3.1-8b_h100.json").read_text()
)
for tp in (1, 8):
    picked = [e for e in table["entries"] if e["mode"] == "tp" and e["tp"] == tp and e["context"] == 32768]
    rows = {e["tokens"]: e["layer_ms"] for e in picked if e["tokens"] in (512, 1024, 2048)}
    print(f"llama-3.1-8b H100 table, TP={tp} layer at 32k context: "
          + ", ".join(f"{t} tokens {ms:.3f} ms" for t, ms in sorted(rows.items())))  # fmt: skip
