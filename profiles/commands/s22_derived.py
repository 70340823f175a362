"""Numbers quoted in RESULTS.md and the session-22 note, derived from the committed device outputs (CPU):

    python profiles/commands/s22_derived.py > profiles/runs/s22_derived.txt

1. chunk_split_probe (s22_h100/a): one rank's layer with CHUNK_SPLIT_GRAPHS off / on, by step;
2. the H100 llama-3.1-8b op table measured three ways: session 21 (split graphs off; the "before" of s22_h100/c),
   s22_h100/c (on, every chunk step with few sequences), s22_h100/d (on, only with cached context >= new tokens,
   shipped); entries grouped by what the rule does to them, and the split entries by context / chunk and KV heads;
3. kv_prefetch_probe (s22_h100/c): decode attention with K/V prefetched into L2;
4. `with_split_graphs` on the session-21 table against s22_h100/d, and how many entries it adjusts in each shipped
   table;
5. the engine's measured P = 1 profile of llama-3.1-8b on two H100 machines (s21_h100/a, s22_h100/d);
6. the eager entries that moved most between session 21's table and d's, with their head_ms.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from derived import print_adjusted_per_table, spread

from shifttune.config import load_model_config, resolve_model_path
from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.compare import compare_profiles
from shifttune.recommend.gpus import known_gpus
from shifttune.recommend.op_table import load_op_table
from shifttune.recommend.roofline import graph_attention_programs, with_split_graphs
from shifttune.recommend.shapes import rank_shapes

RUNS = Path(__file__).resolve().parents[1] / "runs" / "s22_h100"
S21 = RUNS / "c_kv_prefetch_and_table/llama-3.1-8b/table_before.json"
S22C = RUNS / "d_op_table_llama/llama-3.1-8b/table_before.json"
S22D = Path(__file__).resolve().parents[2] / "shifttune/data/op_tables/llama-3.1-8b_h100.json"


def main() -> None:
    print("## 1. chunk_split_probe, H100 (s22_h100/a): us a layer, off / on (mean of two runs each)")
    probe = json.loads((RUNS / "a_chunk_split/chunk_split.json").read_text())
    for r in probe["rows"]:
        runs = (
            ", ".join(f"{1e3 * x:.1f}" for x in r["runs_off"])
            + " / "
            + ", ".join(f"{1e3 * x:.1f}" for x in r["runs_on"])
        )
        change = 100 * (r["on_ms"] / r["off_ms"] - 1)
        print(
            f"TP {r['tp']} {r['seqs']} x {r['per']} at {r['context']}: {1e3 * r['off_ms']:.1f} / "
            f"{1e3 * r['on_ms']:.1f} ({change:+.1f}%), runs {runs}, split: {r['replays_split_graph_on']}"
        )

    print("\n## 2. H100 llama-3.1-8b op table: layer_ms change by entry group")
    cfg, _ = load_model_config(resolve_model_path("llama-3.1-8b"))
    s21, c, d = (load_op_table(p) for p in (S21, S22C, S22D))
    groups: dict[str, list[tuple]] = {}
    by_ratio: dict[tuple, list[float]] = {}
    for e in d.entries:
        a, b = s21.get(e.mode, e.tp, e.sp, e.tokens, e.context), c.get(e.mode, e.tp, e.sp, e.tokens, e.context)
        if a is None or b is None:
            continue
        s = rank_shapes(cfg, e.mode, e.tp, e.sp)
        args = (e.tokens, e.num_seqs, e.tokens_per_seq)
        heads = (s.attn_q_heads, s.cache_kv_heads, 132)
        if e.tokens > 2048:
            group = "eager (> 2048 tokens: no graph)"
        elif graph_attention_programs(*args, e.context, *heads, chunk_split=True) != graph_attention_programs(
            *args, e.context, *heads, chunk_split=False
        ):
            group = "split graph (d's rule)"
            by_ratio.setdefault((e.context // e.tokens_per_seq, e.tokens_per_seq, s.cache_kv_heads), []).append(
                e.layer_ms / a.layer_ms - 1
            )
        elif graph_attention_programs(*args, 10**9, *heads, chunk_split=True) != graph_attention_programs(
            *args, 10**9, *heads, chunk_split=False
        ):
            group = "split in c, not in d (cached context < new tokens)"
        else:
            group = "bucket's own graph"
        groups.setdefault(group, []).append((a.layer_ms, b.layer_ms, e.layer_ms))
    for group, rows in groups.items():
        print(f"{group}:")
        print(f"  c vs session 21: {spread([b / a - 1 for a, b, _ in rows])}")
        print(f"  d vs session 21: {spread([x / a - 1 for a, _, x in rows])}")
        print(f"  d vs c:          {spread([x / b - 1 for _, b, x in rows])}")
    print("split-graph entries, d vs session 21, by context / chunk, chunk, KV heads a rank:")
    for key in sorted(by_ratio):
        print(f"  context/chunk {key[0]:2d}, chunk {key[1]:4d}, {key[2]} KV heads: "
              + " ".join(f"{100 * x:+.1f}%" for x in sorted(by_ratio[key])))  # fmt: skip

    print("\n## 3. kv_prefetch_probe, H100 (s22_h100/c): us a layer")
    pf = json.loads((RUNS / "c_kv_prefetch_and_table/kv_prefetch.json").read_text())
    for r in pf["rows"]:
        us, share = r["us"], r["attn_share_us"]
        floor = r["floor_us"]
        print(f"batch {r['batch']} x {r['context']}: floor {floor:.1f}; attention cold {us['attn_cold']:.1f} "
              f"({us['attn_cold'] / floor:.2f}x), from L2 {us['attn_hot']:.1f} ({us['attn_hot'] / floor:.2f}x); "
              f"after the projection {share['none']:.1f}, with a line prefetch before it {share['line']:.1f}, "
              f"bulk {share['bulk']:.1f}; prefetch alone {us['pf_line']:.1f} / {us['pf_bulk']:.1f}")  # fmt: skip

    print("\n## 4. with_split_graphs: the session-21 table adjusted, against s22_h100/d")
    adjusted = with_split_graphs(s21, cfg, known_gpus()["h100"])
    changed = adjusted.engine["split_graph_entries_adjusted"]
    before, after = [], []
    for e in s21.entries:
        x, y = adjusted.get(e.mode, e.tp, e.sp, e.tokens, e.context), d.get(e.mode, e.tp, e.sp, e.tokens, e.context)
        if x.layer_ms != e.layer_ms:
            before.append(abs(e.layer_ms / y.layer_ms - 1))
            after.append(abs(x.layer_ms / y.layer_ms - 1))
    for label, xs in (("as measured", before), ("adjusted", after)):
        xs = sorted(xs)
        print(f"{changed} adjusted entries, |error| {label}: median {100 * statistics.median(xs):.1f}%, "
              f"p90 {100 * xs[int(0.9 * len(xs))]:.1f}%, max {100 * xs[-1]:.1f}%")  # fmt: skip
    print_adjusted_per_table()

    print("\n## 5. llama-3.1-8b P = 1 profile, two H100 machines: s22_h100/d against s21_h100/a")
    runs = RUNS.parent
    s21_profile = load_profile(runs / "s21_h100/a_op_table_llama_3_1_8b/measured_llama-3.1-8b_h100x1.json")
    s22_profile = load_profile(RUNS / "d_op_table_llama/llama-3.1-8b/measured_llama-3.1-8b_h100x1.json")
    result = compare_profiles(s21_profile, s22_profile)
    o = result["overall"]
    within = sum(abs(r["error"]) <= 0.025 for r in result["points"])
    print(f"{o['points']} points: |difference| median {100 * o['median_abs_error']:.1f}%, p90 "
          f"{100 * o['p90_abs_error']:.1f}%, max {100 * o['max_abs_error']:.1f}%; {within} within 2.5%")  # fmt: skip

    print("\n## 6. eager entries (> 2048 tokens) that moved most, session 21 -> d: layer_ms, head_ms")
    moved = sorted(
        ((e, s21.get(e.mode, e.tp, e.sp, e.tokens, e.context)) for e in d.entries if e.tokens > 2048),
        key=lambda pair: -abs(pair[0].layer_ms / pair[1].layer_ms - 1),
    )
    for e, a in moved[:8]:
        change = 100 * (e.layer_ms / a.layer_ms - 1)
        print(f"  {e.key}: layer {a.layer_ms:.3f} -> {e.layer_ms:.3f} ms ({change:+.0f}%), "
              f"head {a.head_ms:.2f} -> {e.head_ms:.2f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
