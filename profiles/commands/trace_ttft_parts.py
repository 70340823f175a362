"""Where the slowest first tokens of a served run went, from a saved `GET /v1/shifttune/trace` (plain or .gz):

    python profiles/commands/trace_ttft_parts.py TRACE [--last N]

For the last N requests (one rate of `recommend --validate`: 150 each, the last rate last): p50/p99/max of
each part of TTFT (ingress: HTTP arrival -> the core has it; queue: -> scheduled; engine: -> first token
read back; egress: -> the first SSE chunk), the six slowest requests split the same way with the steps
between their scheduling and their first token, and for every step kind (graphed or eager, with prefill
or not) how often the next step was launched before this one's tokens were read back (async overlap).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import Counter

PARTS = {"ingress": ("http", "core_in"), "queue": ("core_in", "scheduled"), "engine": ("scheduled", "first_token"),
         "egress": ("first_token", "sse_first")}  # fmt: skip
GRAPH_MAX_TOKENS = 2048  # the served engine's cuda_graph_max_tokens (in the trace's /live settings)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace")
    ap.add_argument("--last", type=int, default=150)
    args = ap.parse_args()
    opener = gzip.open if args.trace.endswith(".gz") else open
    with opener(args.trace, "rt") as f:
        trace = json.load(f)
    steps = [dict(zip(trace["step_fields"], s)) for s in trace["steps"]]
    done = [r for r in trace["requests"] if all(r[k] is not None for k in ("http", "core_in", "scheduled",
                                                                            "first_token", "sse_first"))]  # fmt: skip
    run = done[-args.last :]

    def ms(r: dict, part: str) -> float:
        a, b = PARTS[part]
        return 1e3 * (r[b] - r[a])

    print(f"{len(run)} requests")
    for part in PARTS:
        v = sorted(ms(r, part) for r in run)
        print(f"{part:8s} p50 {v[len(v) // 2]:7.1f}  p99 {v[int(0.99 * (len(v) - 1))]:7.1f}  max {v[-1]:7.1f} ms")
    for r in sorted(run, key=lambda r: r["http"] - r["sse_first"])[:6]:
        total = 1e3 * (r["sse_first"] - r["http"])
        print(f"TTFT {total:6.1f} ms: " + "  ".join(f"{p} {ms(r, p):.1f}" for p in PARTS))
        for s in steps:
            if r["scheduled"] - 1e-3 <= s["scheduled"] <= r["first_token"]:
                dev = f"{s['device_ms']:.1f}" if s["device_ms"] is not None else "-"
                print(f"    step launched +{1e3 * (s['scheduled'] - r['scheduled']):6.1f} ms: {s['tokens']} tokens "
                      f"({s['prefill_tokens']} prefill, {s['seqs']} seqs), device {dev} ms")  # fmt: skip
    overlap: Counter = Counter()
    for a, b in zip(steps, steps[1:]):
        if a["completed"] is None or b["scheduled"] is None:
            continue
        kind = ("eager" if a["tokens"] > GRAPH_MAX_TOKENS else "graph") + (
            " prefill" if a["prefill_tokens"] else " decode"
        )
        overlap[kind, b["scheduled"] < a["completed"]] += 1
    for kind in sorted({k for k, _ in overlap}):
        print(
            f"{kind:14s} steps: next launched before its read-back {overlap[kind, True]}, after {overlap[kind, False]}"
        )


if __name__ == "__main__":
    main()
