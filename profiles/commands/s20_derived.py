"""Session 20's numbers derived from its committed run files (no GPU):

    python profiles/commands/s20_derived.py > profiles/runs/s20_derived.txt

PDL in the fused kernels (fused_pdl_probe.py, off and on alternately twice): the decode step's change per batch
with on against off (each rule's runs averaged), and the TP rank layer probe's (tp_decode_layer_probe.py); the
loop with it on (loop_overhead.py).
"""

import json
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
