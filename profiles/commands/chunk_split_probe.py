"""CHUNK_SPLIT_GRAPHS off and on (`kernels/split_kv.py`): graphed steps of one rank, built alone on one GPU as
`profile --ops` builds it (`ops.build_rank`, a few layers), at the layouts whose KV heads per rank leave a one-sequence
chunk short of programs. Steps: one sequence's chunk of 512 / 1024 / 2048 tokens at each context (the op tables'
points, where the split graph replays), and steps of several sequences in the same buckets that stay on the bucket's
graph or take the split one (2 tokens x 256 sequences; 32 x 16; 128 x 4; each sequence alike, not decode + chunk),
so a loss shows too. Rules alternate off, on, off, on; each row says whether its step replays the split graph.

    python profiles/commands/chunk_split_probe.py --model llama-3.1-8b --tp 1,4,8 --out chunk_split.json

Prints one line per layout and step: ms a layer off / on (the mean of each rule's runs) and the change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from shifttune.profile import ops
from shifttune.profile.step_timing import fill_kv_cache_random, summarize, synthetic_step, time_step
from shifttune.kernels import split_kv

STEPS = [(1, 512), (1, 1024), (1, 2048), (256, 2), (16, 32), (4, 128)]  # (sequences, tokens each)


def layer_ms(settings: ops.OpsSettings, tp: int, contexts: list[int], split: bool) -> tuple[dict, int, dict]:
    """{(seqs, per, context): ms a layer} of one build, (k layers - 1 layer) / (k - 1) as `profile --ops` splits
    them, how many split graphs the build captured, and {(seqs, per, context): whether the step replays one}."""
    split_kv.CHUNK_SPLIT_GRAPHS = split
    runner = ops.build_rank(settings, tp, 1, settings.layers)
    graphs = runner.graphs  # None on CPU (a smoke run)
    split_graphs = len(graphs.split_graphs) if graphs else 0
    fill_kv_cache_random(runner)
    bs = runner.config.block_size
    times: dict[tuple, list[float]] = {}
    for cut in (False, True):
        if cut:  # as ops.run_ops: the same build cut to one layer, graphs captured again
            for model in runner.models.values():
                model.layers = model.layers[:1]
            runner.capture_graphs()
        for c in contexts:
            for seqs, per in STEPS:
                if per <= c and seqs * -(-c // bs) <= runner.num_kv_blocks:
                    step = synthetic_step("tp", seqs, per, c, bs)
                    ms = summarize(time_step(runner, step, settings.warmup, settings.iters)[0])[0]
                    times.setdefault((seqs, per, c), []).append(ms)
    replays = {(seqs, per, c): bool(graphs and graphs.use_split_graph("tp", graphs.bucket_for(seqs * per), seqs,
                                                                       seqs * per, seqs * c))
               for seqs, per in STEPS for c in contexts}  # fmt: skip
    ops._release(runner)
    del runner
    per_layer = {k: (v[0] - v[1]) / (settings.layers - 1) for k, v in times.items() if len(v) == 2}
    return per_layer, split_graphs, replays


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--tp", default="1,4,8", help="TP degrees of the rank (TP mode), comma-separated")
    p.add_argument("--contexts", default="512,2048,8192,32768")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rules", default="off,on,off,on")
    p.add_argument("--out", default="chunk_split.json")
    p.add_argument("--device", default="cuda", help="cpu: a smoke run of the script (no graphs, nothing to compare)")
    args = p.parse_args()
    contexts = [int(c) for c in args.contexts.split(",")]
    settings = ops.OpsSettings(args.model, [1], device=args.device, tokens=[1, 2048], contexts=contexts,
                               layers=args.layers, iters=20 if args.device == "cuda" else 1, warmup=1)  # fmt: skip
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    out = {"card": card, "model": args.model, "command": " ".join(sys.argv), "rows": []}
    for tp in (int(t) for t in args.tp.split(",")):
        runs: dict[str, list[dict]] = {"off": [], "on": []}
        graphs, replays = {}, {}
        for rule in args.rules.split(","):
            times, graphs[rule], replays[rule] = layer_ms(settings, tp, contexts, rule == "on")
            runs[rule].append(times)
        for key in runs["off"][0]:
            off = statistics.mean(r[key] for r in runs["off"])
            on = statistics.mean(r[key] for r in runs["on"])
            seqs, per, c = key
            change = f"{100 * (on / off - 1):+.1f}%"
            print(f"TP={tp} {seqs} x {per} at {c}: {1e3 * off:.1f} / {1e3 * on:.1f} us a layer ({change})", flush=True)
            out["rows"].append({"tp": tp, "seqs": seqs, "per": per, "context": c, "off_ms": off, "on_ms": on,
                                "runs_off": [r[key] for r in runs["off"]], "runs_on": [r[key] for r in runs["on"]],
                                "split_graphs_on": graphs.get("on"),
                                "replays_split_graph_on": replays.get("on", {}).get((seqs, per, c))})  # fmt: skip
        json.dump(out, open(args.out, "w"), indent=1)


if __name__ == "__main__":
    main()
