"""`shifttune profile --collectives`: a quick measurement of the collectives the engine runs, on the P local
GPUs (NCCL) or P CPU ranks (gloo), into the table format the collective model reads
(`recommend/collectives.py`; the shipped `shifttune/data/collectives/h200x4.json` is one).

One process per rank. For each op (all-reduce, all-gather into one tensor, all-to-all) and input size
(bytes of each rank's input, bf16 on GPU, fp32 on CPU): on GPUs `reps` ops are captured in one CUDA
graph and replayed (time per op, as inside the engine's graphs) and also run eagerly (as steps of more
than 2048 tokens run them); on CPU eagerly only. On GPUs it also tries torch's symmetric-memory
one-shot all-reduce (recorded, or the reason it could not run). The median per rank, the slowest rank
counted: a collective ends when its last member does.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from shifttune.profile.step_timing import summarize, time_fn
from shifttune.runner.executor import free_port

GPU_SIZES = [1 << k for k in range(12, 29, 2)]  # 4 KiB .. 256 MiB
CPU_SIZES = [1 << k for k in (10, 14, 18)]


def _ops(group_size: int, nbytes: int, dtype: torch.dtype, device: torch.device) -> dict:
    """op -> a callable running it once on tensors of `nbytes` per rank (made once, reused)."""
    n = max(group_size, nbytes // torch.empty(0, dtype=dtype).element_size() // group_size * group_size)
    x = torch.randn(n, dtype=dtype, device=device)
    gathered = torch.empty(group_size * n, dtype=dtype, device=device)
    out = torch.empty_like(x)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return {
        "all_reduce_ms": lambda: dist.all_reduce(x),
        "all_gather_ms": lambda: gather(gathered, x),
        "all_to_all_single_ms": lambda: dist.all_to_all_single(out, x),
    }


def _graph_ms(fn, reps: int, device: torch.device, iters: int) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    dist.barrier()
    return summarize(time_fn(graph.replay, device, 3, iters))[0] / reps


def _one_shot_ms(nbytes: int, reps: int, device: torch.device, iters: int) -> float:
    import torch.distributed._symmetric_memory as symm_mem

    n = nbytes // 2
    t = symm_mem.empty(n, dtype=torch.bfloat16, device=device)
    name = dist.group.WORLD.group_name
    symm_mem.rendezvous(t, name)
    return _graph_ms(lambda: torch.ops.symm_mem.one_shot_all_reduce(t, "sum", name), reps, device, iters)


def _slowest(value: float, device: torch.device) -> float:
    v = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(v, op=dist.ReduceOp.MAX)
    return float(v.item())


def _rank(rank: int, world: int, port: int, device_type: str, sizes: list[int], reps: int, iters: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cuda = device_type == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    result: dict = {"nccl" if cuda else "gloo": {}, "eager": {"nccl" if cuda else "gloo": {}}}
    backend = "nccl" if cuda else "gloo"
    try:
        for nbytes in sizes:
            for key, fn in _ops(world, nbytes, dtype, device).items():
                eager = _slowest(summarize(time_fn(fn, device, 2, iters))[0], device)
                result["eager"][backend].setdefault(key, {})[str(nbytes)] = eager
                if cuda:
                    graph = _slowest(_graph_ms(fn, reps, device, iters), device)
                    result[backend].setdefault(key, {})[str(nbytes)] = graph
        if cuda:
            try:
                one_shot = {
                    str(b): _slowest(_one_shot_ms(b, reps, device, iters), device) for b in sizes if b <= 1 << 23
                }
                result["symmetric_memory_one_shot_all_reduce_ms"] = one_shot
            except Exception as e:  # not every build or topology has it
                result["symmetric_memory_one_shot_error"] = f"{type(e).__name__}: {e}"[:300]
        if rank == 0:
            queue.put(result)
    finally:
        dist.destroy_process_group()


def measure_collectives(world_size: int, device: str = "cuda", sizes: list[int] | None = None, reps: int = 8,
                        iters: int = 20) -> dict:  # fmt: skip
    """The table for `world_size` ranks: {"world_size", "gpu", "nccl"|"gloo": {op: {bytes: ms}}, "eager": ...}."""
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise RuntimeError(f"needs {world_size} GPUs, {torch.cuda.device_count()} visible")
    sizes = sizes or (GPU_SIZES if device == "cuda" else CPU_SIZES)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_rank, args=(r, world_size, port, device, sizes, reps, iters, queue))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join(timeout=60)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    what = (
        f"Collective times measured by `shifttune profile --collectives` on {world_size} x {gpu}, one process "
        "per rank; median ms per op of the slowest rank; sizes are the bytes of each rank's input tensor; "
        + ("in-graph rows: ops captured in a CUDA graph and replayed; eager rows under 'eager'." if device == "cuda"
           else "gloo on CPU, eager only.")
    )  # fmt: skip
    software = {"torch": torch.__version__}
    if device == "cuda":
        software |= {"cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version()))}
    return {"what": what, "gpu": gpu, "measured": datetime.now(timezone.utc).date().isoformat(),
            "software": software, "world_size": world_size, "backend": "nccl" if device == "cuda" else "gloo",
            **result}  # fmt: skip


def default_collectives_path(world_size: int, device: str) -> Path:
    from shifttune.recommend.gpus import gpu_slug

    slug = gpu_slug(torch.cuda.get_device_name(0)) if device == "cuda" else "cpu"
    return Path("profiles") / "collectives" / f"{slug}x{world_size}.json"
