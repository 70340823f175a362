"""Session 20's numbers derived from its committed run files (no GPU):

    python profiles/commands/s20_derived.py > profiles/runs/s20_derived.txt

PDL in the fused kernels (fused_pdl_probe.py, off and on alternately twice): the decode step's change per batch
with on against off (each rule's runs averaged), and the TP rank layer probe's (tp_decode_layer_probe.py); the
loop with it on (loop_overhead.py). EARLY_KV (816c834): attention_bench's isolated change and the decode step's
(decode_attention_marginal.py, e1 = `default`, e0 = `default/e0`, pairs averaged). The op tables: the predicted
P = 1 profile's error against the measured one, shipped table and new (`profile --compare` JSON), and how long
the new 8B table took (check.log's timestamps).
"""

import json
import statistics
from datetime import datetime
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs"


def mean(xs):
    return sum(xs) / len(xs)


for folder in ("s20_h100/c_fused_pdl", "s20_h200/b_fused_pdl", "s20_h100/e_loop_fused_pdl_on"):
    d = json.loads((RUNS / folder / "fused_pdl.json").read_text())
    print(f"{folder} ({d['card']}, {d['model']}): `{d['command']}`")
    for row in d["rows"]:
        off = mean([ms for r, ms in row["step_ms"].items() if r.startswith("off")])
        on = mean([ms for r, ms in row["step_ms"].items() if r.startswith("on")])
        print(f"  batch {row['batch']:4d} context {row['context']}: off {off:.4f} ms, on {on:.4f} ms: "
              f"{100 * (off - on) / off:+.2f}% less time; of the floor {row['floor_ms'] / off:.1%} -> "
              f"{row['floor_ms'] / on:.1%}")  # fmt: skip
    layers = {}
    for f in sorted((RUNS / folder).glob("tp_layer_*.json")):
        t = json.loads(f.read_text())
        for tp, entry in t["tp"].items():
            for b, row in entry["batches"].items():
                layers.setdefault((int(tp), int(b)), {}).setdefault(t["fused_pdl"], []).append(row["layer_us"])
    for (tp, b), by in sorted(layers.items()):
        off, on = by.get(False, []), by.get(True, [])
        print(f"  TP{tp} rank layer batch {b:3d}: off {', '.join(f'{x:.1f}' for x in off)} us; "
              f"on {', '.join(f'{x:.1f}' for x in on)} us")  # fmt: skip

loop = json.loads((RUNS / "s20_h100/e_loop_fused_pdl_on/loop_overhead.json").read_text())
b1 = loop["batch1_decode"]
print(f"s20_h100/e_loop_fused_pdl_on ({loop['card']}): `{loop['command']}`")
for row in loop["rows"]:
    print(f"  batch {row['batch']} context {row['context']} {row.get('sampling', '')}: loop {row['loop_ms']:.3f} ms, "
          f"graph {row['gpu_ms']:.3f} ms, ratio {row['ratio']:.3f}")  # fmt: skip
print(
    f"  batch-1 decode at {b1['context']}: loop {b1['loop_ms']:.3f} ms, floor {b1['floor_ms']:.3f} ms = "
    f"{b1['floor_share']:.1%} of the loop"
)

early = RUNS / "s20_h200/a_early_kv"
bench = json.loads((early / "decode_attention.json").read_text())
marg = json.loads((early / "marginal.json").read_text())
print(f"s20_h200/a_early_kv ({marg['card']}): EARLY_KV on against the kernel before")
iso = {(r["batch"], r["context"]): (r["old"]["us"], r["us_per_layer"]) for r in bench["rows"] if r["kind"] == "decode"}
for row in marg["rows"]:
    key = (row["batch"], row["context"])
    on = mean([v["attention_us_per_layer"] for r, v in row["rules"].items() if "/e0" not in r])
    off = mean([v["attention_us_per_layer"] for r, v in row["rules"].items() if "/e0" in r])
    old, new = iso.get(key, (float("nan"), float("nan")))
    print(f"  batch {key[0]} context {key[1]}: isolated {old:.1f} -> {new:.1f} us ({new - old:+.1f}); in the step "
          f"{off:.1f} -> {on:.1f} us a layer ({on - off:+.1f})")  # fmt: skip

for folder, name in (("e_op_table_8b", "llama-3.1-8b"),):
    d = RUNS / "s20_h200" / folder
    for table in ("shipped", "new"):
        cmp = json.loads((d / f"compare_{table}.json").read_text())
        err = [p["error"] for p in cmp["points"]]
        print(f"s20_h200/{folder} {name}, {table} table against the measured P = 1 profile: |error| median "
              f"{100 * statistics.median(abs(e) for e in err):.1f}%, max {100 * max(abs(e) for e in err):.1f}%; "
              f"{sum(e > 0 for e in err)} of {len(err)} points predicted slow")  # fmt: skip
    stamps = {ln[11:].split(" rc=")[0]: ln[1:9] for ln in (d / "check.log").read_text().splitlines() if " rc=" in ln}
    took = datetime.strptime(stamps["ops"], "%H:%M:%S") - datetime.strptime(stamps["measured P = 1"], "%H:%M:%S")
    print(f"  the new table (profile --ops --gpus 1,2,4,8) took {took.seconds} s")
