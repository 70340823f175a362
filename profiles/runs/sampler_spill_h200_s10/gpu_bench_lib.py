"""Scratch: new vs original sampler kernels on GPU (tokens, per-kernel and total device time)."""
import importlib.util, statistics, sys, json, os
import torch
sys.path.insert(0, os.getcwd())
from shifttune.kernels import sampling as new
from shifttune.kernels.sampling_ref import sample_ref
dev = torch.device("cuda")
V = 128256

def logits_of(kind, n, seed=0):
    g = torch.Generator(device=dev).manual_seed(seed + n)
    x = torch.randn(n, V, device=dev, generator=g)
    if kind == "dummy":
        return (x * 1.3).to(torch.bfloat16).float()
    return x * {"flat": 0.02, "peaked": 4.0}[kind]

def tables(n, mixed):
    i = torch.arange(n, device=dev)
    if not mixed:
        return (torch.full((n,), 1 / 0.8, device=dev), torch.full((n,), 0.95, device=dev), torch.zeros(n, device=dev),
                i + 2**40, i * 3, torch.zeros(n, dtype=torch.bool, device=dev))
    return (1 / (0.5 + (i % 5).float() * 0.25), torch.tensor([0.95, 0.9, 0.5, 1.0, 0.99, 0.8, 0.3], device=dev)[i % 7],
            torch.where(i % 4 == 1, 0.05, 0.0), i * 7919 + 2**40, i * 3, i % 9 == 4)

def sleep_cycles():
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record(); torch.cuda._sleep(10_000_000); e.record(); torch.cuda.synchronize()
    return int(5 * 10_000_000 / s.elapsed_time(e))

SC = sleep_cycles()

def time_dev(fn, iters=30):
    for _ in range(3): fn()
    out = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(SC); s.record(); fn(); e.record(); e.synchronize(); out.append(s.elapsed_time(e))
    return statistics.median(out) * 1e3

def kernels(fn, iters=10):
    from torch.profiler import ProfilerActivity, profile
    fn(); torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters): fn()
        torch.cuda.synchronize()
    tot = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            tot[evt.name[:28]] = tot.get(evt.name[:28], 0.0) + evt.time_range.elapsed_us() / iters
    return {k: round(v, 1) for k, v in sorted(tot.items(), key=lambda kv: -kv[1])}

