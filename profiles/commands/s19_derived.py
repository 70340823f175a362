"""Session 19's numbers read off committed run files rather than printed by the runs: how the small-step launch rule
chosen from `s19_h100/d_options` compares with each row's best option and with other rules, and what the merge
launch costs in `s19_h100/h_coop` and `s19_h200/b_merge_cost`. CPU only, from the repository root:

    python profiles/commands/s19_derived.py > profiles/runs/s19_derived.txt
"""

from __future__ import annotations

import json
import math
from pathlib import Path

RUNS = Path("profiles/runs")
LAYOUTS = ("wide_split_hq32_hk8", "wide_split_hq16_hk2", "wide_split_hq8_hk1")
SMS = 132


def small_rows() -> list[dict]:
    """The d_options rows that are small steps (query blocks x KV heads x 8 <= SMs; decode: batch x KV heads)."""
    rows = []
    for name in LAYOUTS:
        rows += json.loads((RUNS / "s19_h100/d_options" / f"{name}.json").read_text())["search"]
    return [r for r in rows if r["batch"] * r["hk"] * 8 <= SMS]


def score(rows: list[dict], us) -> str:
    """Geometric mean and largest ratio of `us(row)` to the row's best option."""
    ratios = [(us(r) / r["best_us"], (r["hq"], r["hk"], r["batch"], r["context"])) for r in rows]
    mean = math.exp(sum(math.log(x) for x, _ in ratios) / len(ratios))
    worst = max(ratios)
    return f"geometric mean {mean:.3f}, worst {worst[0]:.3f} at (hq, hk, batch, context) = {worst[1]}"


def rules() -> None:
    rows = small_rows()
    print(f"s19_h100/d_options: {len(rows)} small-step rows (H100; 48 options each), time / the row's best option")
    rule = {True: "p4_t64_w2_s1_mdc32", False: "p4_t32_w4_s1_mdc32"}  # GQA group <= 4, > 4: the shipped rule
    print("  shipped rule (4 per SM, group <= 4: tile 64 / 2 warps, > 4: tile 32 / 4 warps, 1 stage):",
          score(rows, lambda r: r["options"][rule[r["hq"] // r["hk"] <= 4]]["us"]))  # fmt: skip
    for label in ("p4_t64_w2_s1_mdc32", "p4_t32_w4_s1_mdc32", "p1_t64_w4_s3_mdc32"):
        print(f"  {label} at every group:", score(rows, lambda r: r["options"][label]["us"]))
    print("  (p1_t64_w4_s3: one program per SM and DECODE_CONFIG, the launch before session 19, with the new merge"
          " and up to 256 splits)")  # fmt: skip
    print("  the engine column (f9c8830: 4 per SM, tile 64 / 2 warps at every group, at most 64 splits):",
          score(rows, lambda r: r["engine"]["us"]))  # fmt: skip


def merge_cost() -> None:
    for path, label in (("s19_h100/h_coop/coop.json", "H100"), ("s19_h200/b_merge_cost/merge_cost.json", "H200")):
        for r in json.loads((RUNS / path).read_text())["search"]:
            opts = r["options"]
            timed = [(v["us"], k.rsplit("_", 1)[-1]) for k, v in opts.items() if "us" in v]
            best = {m: min((us for us, mode in timed if mode == m), default=None) for m in ("none", "fused", "coop")}
            kernel = min(us for us, mode in timed if mode not in best)  # labels end in the merge columns: mdc32
            line = ", ".join(f"{m} {us:.2f}" for m, us in best.items() if us is not None)
            print(f"{label} batch {r['batch']} context {r['context']}: floor {r['floor_us']:.2f} us; best two launches "
                  f"{kernel:.2f}; best {line}; two launches - attention alone {kernel - best['none']:.2f}")  # fmt: skip


def tp_layouts() -> None:
    """One TP rank of 70B (16/2 and 8/1 heads) in e_final_rule: the old kernel file against the new, same call."""
    for name in ("decode_attention_hq16_hk2", "decode_attention_hq8_hk1"):
        rows = json.loads((RUNS / "s19_h100/e_final_rule" / f"{name}.json").read_text())["rows"]
        for lo, hi in (((1, 8), (2048, 8192)), ((1, 32), (32768, 32768)), ((16, 32), (2048, 8192))):
            sel = [r for r in rows if lo[0] <= r["batch"] <= lo[1] and hi[0] <= r["context"] <= hi[1]]
            less = [1 - r["new"]["us"] / r["old"]["us"] for r in sel]
            print(
                f"H100 {name} batch {lo[0]}-{lo[1]}, context {hi[0]}-{hi[1]}: time less than before "
                f"{100 * min(less):.1f}% to {100 * max(less):.1f}% ({len(sel)} rows)"
            )


def main() -> None:
    rules()
    merge_cost()
    tp_layouts()


if __name__ == "__main__":
    main()
