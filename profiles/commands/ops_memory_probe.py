"""Where GPU memory goes while `profile --ops` builds its first rank (build_rank, P = 1, TP mode): free memory, torch's
reserved and allocated bytes around each stage of allocate_kv_cache / capture_graphs, for the models given. Session 21
(an H100 ran out of memory loading a Triton module in mistral-7b-v0.3's build_rank, not in llama-3.1-8b's).
  python profiles/commands/ops_memory_probe.py --models mistral-7b-v0.3,llama-3.1-8b --out mem.json"""

import argparse
import functools
import gc
import json
import tempfile
from pathlib import Path

import torch

from shifttune.profile import ops
from shifttune.runner import cuda_graphs, model_runner

GIB = 2**30
log: list[dict] = []


def snap(where: str) -> None:
    free, total = torch.cuda.mem_get_info()
    reserved = torch.cuda.memory_reserved()
    allocated = torch.cuda.memory_allocated()
    row = {"where": where, "free_gib": free / GIB, "reserved_gib": reserved / GIB, "allocated_gib": allocated / GIB,
           "outside_torch_gib": (total - free - reserved) / GIB}  # fmt: skip
    log.append(row)
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else str(v) for k, v in row.items()), flush=True)


def traced(owner, name: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*a, **k):
        snap(f"before {owner.__name__}.{name}")
        try:
            return fn(*a, **k)
        finally:
            snap(f"after {owner.__name__}.{name}")

    setattr(owner, name, wrapper)


Runner, Graphs = model_runner.ModelRunner, cuda_graphs.StepGraphs
for owner, name in [(Runner, "allocate_kv_cache"), (Runner, "warm_up"), (Runner, "execute"), (Graphs, "__init__"),
                    (Graphs, "warm_up_load"), (Runner, "_num_kv_blocks")]:  # fmt: skip
    traced(owner, name)

p = argparse.ArgumentParser()
p.add_argument("--models", default="mistral-7b-v0.3,llama-3.1-8b")
p.add_argument("--out", default="ops_memory.json")
p.add_argument(
    "--run-ops", action="store_true", help="run_ops at P = 1 as `profile --ops` does (the table to a temp file)"
)
args = p.parse_args()
result = {"gpu": torch.cuda.get_device_name(0), "models": {}}
for m in args.models.split(","):
    log.clear()
    s = ops.OpsSettings(m, [1])
    error = None
    try:
        if args.run_ops:
            s = ops.OpsSettings(m, [1], breakdown=[1, 32, 512, 8192])
            ops.run_ops(s, Path(tempfile.mkdtemp()) / "table.json", "probe", print)
        else:
            runner = ops.build_rank(s, 1, 1, s.layers)
            print(m, "num_kv_blocks", runner.num_kv_blocks, flush=True)
            ops._release(runner)
            del runner
    except Exception as e:  # noqa: BLE001 (the probe reports it)
        error = f"{type(e).__name__}: {e}"
        print(m, "FAILED", error, flush=True)
    result["models"][m] = {"log": list(log), "error": error}
    gc.collect()
    torch.cuda.empty_cache()
    json.dump(result, open(args.out, "w"), indent=1)
