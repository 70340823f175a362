"""Session 18's numbers that are read off committed run files rather than printed by the run itself: the NVML sampler's
largest NVLink rate per run, one TP rank's decode-layer kernels by kind, what the split-K GEMV would save a layer,
and the re-measured llama-3.3-70b H200 op table against the one it replaced (from git). CPU only, from the
repository root:

    python profiles/commands/s18_derived.py > profiles/runs/s18_derived.txt
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

RUNS = Path("profiles/runs")
OP_TABLE = "shifttune/data/op_tables/llama-3.3-70b_h200.json"
OLD_OP_TABLE_COMMIT = "a553715"  # the last commit with session 9's table


def nvlink() -> None:
    for f in sorted((RUNS / "s18_h200x4").glob("*/nvml_*.jsonl")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        rows = [r for r in rows if "gpus" in r]
        tx = [max((g["nvlink_tx_gbs"] or 0.0) for r in rows for g in r["gpus"] if g["i"] == i) for i in range(4)]
        busy = [g["nvlink_tx_gbs"] for r in rows for g in r["gpus"] if (g["util"] or 0) >= 90 and g["nvlink_tx_gbs"]]
        mid = f"median {statistics.median(busy):.1f}" if busy else "none"
        print(f"{f}: {len(rows)} readings; largest NVLink tx GB/s per GPU {tx}; at >= 90% util: {mid}")


def layer_kernels() -> None:
    d = json.loads((RUNS / "s18_h200/tp_decode_layer/tp_decode_layer.json").read_text())
    kinds = {"gemm": ("nvjet", "splitK", "gemm", "cublas"), "attention": ("_paged_attention", "_merge_splits"),
             "norm": ("_add_rms_norm",), "rope": ("_rope",), "silu": ("_silu_mul",), "copy": ("Memcpy",)}  # fmt: skip
    for tp, entry in d["tp"].items():
        for batch, row in entry["batches"].items():
            per = {k: 0.0 for k in (*kinds, "other")}
            for name, k in row["kernels"].items():
                if "us_per_layer" in k:
                    kind = next((kd for kd, keys in kinds.items() if any(x in name for x in keys)), "other")
                    per[kind] += k["us_per_layer"]
            sums = ", ".join(f"{k} {v:.1f}" for k, v in per.items())
            print(f"TP{tp} batch {batch}: eager kernels a layer (us): {sums}; graphed layer {row['layer_us']:.1f}")


def gemv_savings() -> None:
    """What taking the split-K GEMV wherever it beat cuBLAS would save a layer at batch 1 (the second probe run)."""
    d = json.loads((RUNS / "s18_h200/splitk_gemv_b/splitk_gemv_probe.json").read_text())
    layer = json.loads((RUNS / "s18_h200/tp_decode_layer/tp_decode_layer.json").read_text())["tp"]
    saved: dict[str, float] = {}
    for c in d["cases"]:
        if c["rows"] == 1:
            group = (
                c["shape"].rsplit("_", 1)[0] if not c["shape"].endswith("gate_up") else c["shape"][: -len("_gate_up")]
            )
            saved[group] = saved.get(group, 0.0) + max(0.0, c["cublas_us"] - c["best"]["us"])
    for group, us in saved.items():
        tp = group.split("_tp")[1]
        share = (
            f" = {us / layer[tp]['batches']['1']['layer_us']:.1%} of the graphed layer"
            if group.startswith("70b")
            else ""
        )
        print(f"split-K GEMV where it wins, batch 1, {group}: {us:.1f} us a layer{share}")


def op_table() -> None:
    old = json.loads(subprocess.run(["git", "show", f"{OLD_OP_TABLE_COMMIT}:{OP_TABLE}"], capture_output=True,
                                    text=True, check=True).stdout)  # fmt: skip
    new = json.loads(Path(OP_TABLE).read_text())
    key = lambda e: (e["mode"], e["tp"], e["sp"], e["tokens"], e["context"])  # noqa: E731
    before = {key(e): e for e in old["entries"]}
    after = {key(e): e for e in new["entries"]}
    print(f"op table {old['created']} -> {new['created']}")
    for lay in sorted({k[:3] for k in after}):
        ks = [k for k in after if k[:3] == lay and k in before]
        ratio = lambda sel: statistics.median(after[k]["layer_ms"] / before[k]["layer_ms"] for k in sel)  # noqa: E731
        dec, big = [k for k in ks if k[3] <= 32], [k for k in ks if k[3] >= 4096]
        print(f"  {lay}: new/old layer time, median: all {ratio(ks):.3f}, tokens <= 32 {ratio(dec):.3f}, "
              f"tokens >= 4096 {ratio(big):.3f}")  # fmt: skip
    for k in [("tp", 4, 1, 1, 2048), ("tp", 8, 1, 1, 2048), ("tp", 4, 1, 32, 2048), ("tp", 8, 1, 32, 2048)]:
        print(f"  {k}: layer {1e3 * before[k]['layer_ms']:.1f} -> {1e3 * after[k]['layer_ms']:.1f} us")


if __name__ == "__main__":
    nvlink()
    layer_kernels()
    gemv_savings()
    op_table()
