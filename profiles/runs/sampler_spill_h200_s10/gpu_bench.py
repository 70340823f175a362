"""Scratch: new vs original sampler kernels on GPU (tokens, per-kernel and total device time)."""
import importlib.util, statistics, sys, json, os
import torch
sys.path.insert(0, os.getcwd())
from shifttune.kernels import sampling as new
from shifttune.kernels.sampling_ref import sample_ref
spec = importlib.util.spec_from_file_location("sampling_orig", ".scratch/sampling_orig.py")
orig = importlib.util.module_from_spec(spec); spec.loader.exec_module(orig)
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

res = {"card": torch.cuda.get_device_name()}
print(res, flush=True)
# correctness: mixed settings vs the reference, with and without top-k
for kind in ("flat", "peaked", "dummy"):
    n = 48
    x = logits_of(kind, n, 1)
    t = tables(n, True)
    rows = torch.arange(n, device=dev)
    ref = sample_ref(x, t[0], torch.full((n,), -torch.inf, device=dev), *t[1:])
    got = new.sample(x, rows, t[0], None, *t[1:])
    old = orig.sample(x, rows, t[0], None, *t[1:])
    k = (torch.arange(n, device=dev) % 50) + 1
    kth = x.sort(dim=-1, descending=True).values.gather(1, (k - 1).unsqueeze(1)).squeeze(1)
    ck = torch.where(torch.arange(n, device=dev) % 3 == 0, kth, -torch.inf)
    refk = sample_ref(x, t[0], ck, *t[1:])
    gotk = new.sample(x, rows, t[0], ck, *t[1:])
    batch = new.sample(x, rows, t[0], None, *t[1:])
    alone = all(int(new.sample(x[j:j+1], rows[j:j+1], t[0], None, *t[1:])) == int(batch[j]) for j in (0, 5, 17, 47))
    res[f"check_{kind}"] = dict(new_vs_ref=f"{int((got == ref).sum())}/{n}", orig_vs_ref=f"{int((old == ref).sum())}/{n}",
                                topk_new_vs_ref=f"{int((gotk == refk).sum())}/{n}", alone_eq_batch=alone)
    print(kind, res[f"check_{kind}"], flush=True)
# timing
for n in (1, 8, 32, 128, 256):
    for kind in ("flat", "peaked", "dummy"):
        x = logits_of(kind, n)
        t = tables(n, False)
        rows = torch.arange(n, device=dev)
        row = {}
        for name, mod in (("orig", orig), ("new", new)):
            fn = lambda: mod.sample(x, rows, t[0], None, *t[1:])
            row[name + "_us"] = round(time_dev(fn), 1)
            if n in (1, 32, 256):
                row[name + "_kernels"] = kernels(fn)
        res[f"b{n}_{kind}"] = row
        print(n, kind, row, flush=True)
json.dump(res, open(os.environ.get("OUT", ".") + "/gpu_bench.json", "w"), indent=1)
# sweep of the spill kernels' block and warps
saved = (new.SPILL_SUB, dict(new.WARPS))
for sub, w in ((512, 4), (1024, 4), (512, 8)):
    new.SPILL_SUB, new.WARPS = sub, saved[1] | {"spill_mass": w, "spill_draw": w}
    row = {}
    for n, kind in ((1, "flat"), (32, "dummy"), (32, "flat"), (256, "dummy"), (256, "flat"), (8, "dummy")):
        x = logits_of(kind, n)
        t = tables(n, False)
        rows = torch.arange(n, device=dev)
        row[f"b{n}_{kind}"] = round(time_dev(lambda: new.sample(x, rows, t[0], None, *t[1:])), 1)
    res[f"sweep_sub{sub}_w{w}"] = row
    print("sweep", sub, w, row, flush=True)
new.SPILL_SUB, new.WARPS = saved
# registers / spills of the compiled kernels
regs = {}
for mod, name in [(new, k) for k in ("_stats_kernel", "_mass_kernel", "_split_kernel", "_spill_mass_kernel", "_spill_draw_kernel", "_finish_kernel")] + [(orig, "_finish_kernel"), (orig, "_split_kernel")]:
    fn = getattr(mod, name)
    name = mod.__name__.split(".")[-1] + name
    try:
        for devkey, cache in fn.device_caches.items():
            for key, ck in cache[0].items():
                ck._init_handles()
                regs.setdefault(name, []).append((ck.n_regs, ck.n_spills, ck.metadata.num_warps))
    except Exception as e:
        regs[name] = f"{type(e).__name__}: {e}"
print("regs (n_regs, n_spills, warps)", regs, flush=True)
res["regs"] = regs
json.dump(res, open(os.environ.get("OUT", ".") + "/gpu_bench.json", "w"), indent=1, default=str)
