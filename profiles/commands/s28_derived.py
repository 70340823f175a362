"""Session 28's decode-attention probes, row by row:

    python profiles/commands/s28_derived.py > profiles/runs/s28_derived.txt

Reads `profiles/runs/s28_gpu/{a,b,c,e}_*/probe_{before,after}_{hq}_{hk}.json` (`wide_split_probe.py --options`, run by
`profiles/commands/s28_gpu.sh PART=probe` on two trees in one call) and prints, per card, head layout, batch and
context: the HBM floor, the engine's time on each tree (us per layer) with the change and the split counts, each
option on each tree, and the engine's ratio to the floor on the tree after. Then, per file pair, the range of the
change over the rows whose split count the tree after left alone, and the largest error against the fp32 reference.
"""

from __future__ import annotations

import json
from pathlib import Path

RUNS = Path(__file__).resolve().parents[1] / "runs" / "s28_gpu"


def main() -> None:
    for before in sorted(RUNS.glob("[abce]_*/probe_before_*.json")):
        after = before.with_name(before.name.replace("before", "after"))
        b, a = json.loads(before.read_text()), json.loads(after.read_text())
        labels, heads = list(a["rows"][0]["options"]), f"{a['rows'][0]['hq']}/{a['rows'][0]['hk']}"
        print(f"# {after.parent.name} {a['card']} {heads} heads; engine before -> after; options before/after: "
              f"{', '.join(labels)}")  # fmt: skip
        alone = []
        for rb, ra in zip(b["rows"], a["rows"]):
            eb, ea = rb["engine"]["us"], ra["engine"]["us"]
            opts = " ".join(f"{rb['options'][k]['us']:.1f}/{ra['options'][k]['us']:.1f}" for k in labels)
            print(f"b={ra['batch']:2d} C={ra['context']:5d} floor {ra['floor_us']:6.1f} engine {eb:6.1f} -> {ea:6.1f} "
                  f"({ea / eb - 1:+5.1%}; splits {rb['engine_splits']} -> {ra['engine_splits']}; "
                  f"{ea / ra['floor_us']:.2f}x) | {opts}")  # fmt: skip
            if rb["engine_splits"] == ra["engine_splits"]:
                alone.append(ea / eb - 1)
        err = max(r["engine"]["rel_err"] for r in a["rows"])
        spread = f"{min(alone):+.1%} to {max(alone):+.1%}" if alone else "none"
        print(f"  rows with the same splits on both trees: {spread}; largest engine error (after) {err:.4f}")


if __name__ == "__main__":
    main()
