"""Numbers quoted in RESULTS.md and the session-23 note, derived from the committed device outputs (CPU):

    python profiles/commands/s23_derived.py > profiles/runs/s23_derived.txt

1. attention_bench --decode (s23_h100/a): the kernel with the guessed sequence against the file before it, per row,
   two runs;
2. the H100 qwen3-8b and mistral-7b-v0.3 op tables measured with split graphs (s23_h100/b, c) against session 21's
   (their `table_before.json`): the split-graph entries as measured then, and as `with_split_graphs` adjusts them;
3. the H100 llama-3.1-8b table measured on a third machine (s23_h100/d) against the shipped one (s22_h100/d): graph
   entries and eager entries; the two machines' P = 1 profiles;
4. how many entries `with_split_graphs` still adjusts in each shipped table;
5. eager steps against their device time, and eager against graphed, from eager_host_probe.py (s23_h100/f, g, h, k,
   l): the ranges the session-23 note quotes.
"""

from __future__ import annotations

import json
from pathlib import Path

from derived import print_adjusted_per_table, print_split_adjustment, spread

from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.compare import compare_profiles
from shifttune.recommend.op_table import OP_TABLE_DIR, load_op_table

RUNS = Path(__file__).resolve().parents[1] / "runs"
S23 = RUNS / "s23_h100"


def decode_rows() -> None:
    print("## 1. attention_bench --decode, H100 (s23_h100/a): us a layer, kernel before / with the guess")
    runs = [json.loads((S23 / f"a_decode_guess_and_tests/decode_attention_{i}.json").read_text()) for i in (1, 2)]
    changes = []
    for rows in zip(*(r["rows"] for r in runs)):
        r0 = rows[0]
        old = [r["old"]["us"] for r in rows]
        new = [r["new"]["us"] for r in rows]
        change = [n / o - 1 for n, o in zip(new, old)]
        changes += change
        print(f"batch {r0['batch']} x {r0['context']:6d}: floor {r0['floor_us']:.1f}; before "
              + " / ".join(f"{x:.1f}" for x in old) + "; with the guess " + " / ".join(f"{x:.1f}" for x in new)
              + f" ({' / '.join(f'{100 * c:+.1f}%' for c in change)}); ratio to floor "
              + " / ".join(f"{r['ratio']:.2f}" for r in rows))  # fmt: skip
    print(f"all rows, both runs: {spread(changes)}")


def llama_repeat() -> None:
    print("\n## 3. llama-3.1-8b H100 table, s23_h100/d (a third machine) against the shipped s22_h100/d")
    shipped = load_op_table(OP_TABLE_DIR / "llama-3.1-8b_h100.json")
    again = load_op_table(S23 / "d_op_table_llama_repeat/table/llama-3.1-8b_h100.json")
    graph, eager = [], []
    for e in again.entries:
        a = shipped.get(e.mode, e.tp, e.sp, e.tokens, e.context)
        if a is not None:
            (eager if e.tokens > 2048 else graph).append(e.layer_ms / a.layer_ms - 1)
    print(f"graph entries (<= 2048 tokens): {spread(graph)}")
    print(f"eager entries (> 2048 tokens):  {spread(eager)}")
    result = compare_profiles(
        load_profile(RUNS / "s22_h100/d_op_table_llama/llama-3.1-8b/measured_llama-3.1-8b_h100x1.json"),
        load_profile(S23 / "d_op_table_llama_repeat/llama-3.1-8b/measured_llama-3.1-8b_h100x1.json"),
    )
    o = result["overall"]
    print(f"P = 1 profiles, s23 against s22: {o['points']} points, |difference| median "
          f"{100 * o['median_abs_error']:.1f}%, p90 {100 * o['p90_abs_error']:.1f}%, "
          f"max {100 * o['max_abs_error']:.1f}%")  # fmt: skip


def eager_and_graphed() -> None:
    print("\n## 5. eager_host_probe: wall / device time of eager steps, and graphed against eager (same call)")
    runs = {"f": "f_eager_host/eager_host.json", "g": "g_eager_host_profiles/eager_host_profiles.json",
            "h": "h_eager_vs_graphed/eager_vs_graphed.json", "k": "k_sp_graph_rule/sp_graphs.json",
            "l": "l_sp_graph_option/sp_graphs.json"}  # fmt: skip
    ratios: dict[str, list[float]] = {}
    changes: dict[str, list[float]] = {}
    slower: list[float] = []
    for run, path in runs.items():
        rows = json.loads((S23 / path).read_text())["rows"]
        eager = {(r["mode"], r["tp"], r["sp"], r["tokens"], r["context"]): r for r in rows if not r.get("graphed")}
        for r in rows:
            key = (r["mode"], r["tp"], r["sp"], r["tokens"], r["context"])
            layout = f"{r['mode']} TP {r['tp']} SP {r['sp']} (P = {r['tp'] * r['sp']})"
            if not r.get("graphed"):
                if r["tokens"] == 4096:
                    ratios.setdefault(layout, []).append(r["wall_ms"] / r["device_ms"])
                continue
            e = eager[key]
            per_gpu = r["tokens"] // (r["tp"] * r["sp"])
            changes.setdefault(f"{layout}, {per_gpu} tokens a GPU", []).append(r["wall_ms"] / e["wall_ms"] - 1)
            slower.append(r["device_ms"] / e["device_ms"] - 1)
            change = 100 * (r["wall_ms"] / e["wall_ms"] - 1)
            print(f"  {run}: {layout} {r['tokens']}x{r['context']}: eager {e['wall_ms']:.2f} / {e['device_ms']:.2f} "
                  f"-> graphed {r['wall_ms']:.2f} / {r['device_ms']:.2f} ms ({change:+.0f}%)")  # fmt: skip
    print("eager 4096-token steps, wall / device, over f, g, h, k, l:")
    for layout, xs in sorted(ratios.items()):
        print(f"  {layout}: {min(xs):.2f}-{max(xs):.2f}x")
    print("graphed against eager, wall:")
    for label, xs in sorted(changes.items()):
        print(f"  {label}: {100 * min(xs):+.0f}% .. {100 * max(xs):+.0f}%")
    print(f"graphed device time against eager: {100 * min(slower):+.0f}% .. {100 * max(slower):+.0f}%")


def main() -> None:
    decode_rows()
    print("\n## 2. op tables measured with split graphs against session 21's, H100")
    for model, folder in (("qwen3-8b", "b_op_table_qwen3"), ("mistral-7b-v0.3", "c_op_table_mistral")):
        print_split_adjustment(model, "h100", S23 / folder / model / "table_before.json", "session 21")
    llama_repeat()
    print("\n## 4. entries with_split_graphs adjusts in each shipped table")
    print_adjusted_per_table()
    eager_and_graphed()


if __name__ == "__main__":
    main()
