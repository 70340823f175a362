"""Device time of the runner's sampler alone, whole and by kernel, over a 128k vocabulary (GPU):

    python -m shifttune.profile.sampler_bench --out sampler.json

Per batch (1, 8, 32, 128, 256) and kind of logits, with top-p 0.95, temperature 0.8 and a seed per row:
- "flat" (randn * 0.02): nearly uniform, the nucleus most of the vocabulary, few entries near the cut;
- "peaked" (randn * 4): as a trained model's, a small nucleus;
- "dummy" ((randn * 1.3) in bf16): what the engine's dummy weights give (a unit-RMS hidden state times
  N(0, 0.02^2) weights over 4096 dims, bf16 logits); the top-p cut falls in the dense middle of the
  logits, so every row's first bracket is dense (~22% of the vocabulary: `_finish_kernel` loops over
  many blocks of copies; before session 15 every such row "spilled" to two more kinds of kernels);
- "dummy_f32": the same values in float32 (what the engine's CUDA graphs handed the sampler before session 14).
The numbers:
- `sampler_ms`: the whole `Sampler` call between CUDA events, host included (launches, Python);
- `sampler_device_ms`: the same call queued behind a GPU sleep, so only the GPU's own time counts (what
  the engine loop pays: its host runs ahead of the GPU);
- `kernels_us`: each kernel's mean device time per call (torch.profiler), by kernel name.
Then, where this tree's `kernels/sampling.py` has them: tokens against the torch reference (each kind) and a
row alone against the same row in a batch (flat and dummy), and a sweep of its CHUNK, loop steps and
per-kernel num_warps.

The file also runs in an older checkout (only torch and each tree's own sampler are used): a tree without
`runner/sampler.py` (before commit 897797a) is driven through `engine/sampler.py` (whose call waits for
the device, so its two times are about the same), and the per-kernel parts need no kernel API.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

BATCHES = (1, 8, 32, 128, 256)
DEVICE = "cuda"
KINDS = ("flat", "peaked", "dummy", "dummy_f32")  # of logits (see `_logits`)
SWEEP_CASES = ((1, "flat"), (1, "dummy"), (32, "flat"), (32, "dummy"), (256, "flat"), (256, "peaked"), (256, "dummy"),
               (256, "dummy_f32"))  # fmt: skip
SWEEP = [  # (name, attributes of `kernels.sampling` to set); the first one is the default
    ("default", {}),
    ("chunk4096", {"CHUNK": 4096, "COPY_CAP": 1024}),
    ("split_sub4096", {"SPLIT_SUB": 4096}),
    ("split_w8", {"WARPS": {"split": 8}}),
    ("mass_w8", {"WARPS": {"mass": 8}}),
    ("finish_w16", {"WARPS": {"finish": 16}}),
    # `_finish_kernel` keeps FINISH_BLOCK x 16 float32 mass accumulators: 2048 fill half an SM's registers
    ("finish_block1024", {"FINISH_BLOCK": 1024}),
    ("finish_block1024_w4", {"FINISH_BLOCK": 1024, "WARPS": {"finish": 4}}),
    ("finish_block512_w4", {"FINISH_BLOCK": 512, "WARPS": {"finish": 4}}),
    ("finish_block4096_w16", {"FINISH_BLOCK": 4096, "WARPS": {"finish": 16}}),
]


def _logits(batch: int, vocab: int, kind: str, dev: torch.device) -> torch.Tensor:
    """[batch, vocab] logits of a kind in KINDS (seeded by the batch size): float32, or bf16 for "dummy"
    ("dummy_f32": the same values as "dummy", in float32, as the engine's CUDA graphs handed them over before
    session 14)."""
    gen = torch.Generator(device=dev).manual_seed(batch)
    x = torch.randn(batch, vocab, device=dev, generator=gen)
    if kind.startswith("dummy"):  # the engine's dummy weights: N(0, 1.3^2) logits in bf16, as lm_head hands them over
        x = (x * 1.3).to(torch.bfloat16)
        return x.float() if kind == "dummy_f32" else x  # dummy_f32: the same values in float32
    return x * {"flat": 0.02, "peaked": 4.0}[kind]


def make_sampler(batch: int, dev: torch.device) -> tuple[Callable[[torch.Tensor], object], str]:
    """A call of this tree's sampler on [batch, V] logits (top-p 0.95, T 0.8, seed per row) and its API's name."""
    try:
        from shifttune.runner.sampler import RequestSampling, Sampler
    except ImportError:  # the tree before the runner sampled (commit 648755f and older)
        from shifttune.engine.sampler import Sampler as EngineSampler
        from shifttune.engine.sampling_params import SamplingParams
        from shifttune.engine.sequence import Sequence

        engine_sampler = EngineSampler((0,))
        params = [SamplingParams(temperature=0.8, top_p=0.95, seed=i) for i in range(batch)]
        seqs = [Sequence(str(i), None, [1, 2, 3], p) for i, p in enumerate(params)]
        return (lambda logits: engine_sampler(logits, seqs)), "engine.sampler.Sampler (waits for the device)"
    sampler = Sampler(batch, dev)
    sampler.set_rows(list(range(batch)), [RequestSampling(temperature=0.8, top_p=0.95, seed=i) for i in range(batch)],
                     [0] * batch)  # fmt: skip
    rows, rows_dev = list(range(batch)), torch.arange(batch, device=dev)
    return (lambda logits: sampler(logits, rows, rows_dev)), "runner.sampler.Sampler"


def _sleep_cycles_per_ms() -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    torch.cuda.synchronize()
    return 10_000_000 / start.elapsed_time(end)


def time_call(fn: Callable[[], object], iters: int, sleep_cycles: int = 0) -> float:
    """Median ms between CUDA events around fn(); with sleep_cycles, each call is queued behind a GPU sleep
    that outlasts its host work, so the events time the GPU alone."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if sleep_cycles:
            torch.cuda._sleep(sleep_cycles)
        start.record()
        fn()
        end.record()
        end.synchronize()
        out.append(start.elapsed_time(end))
    return statistics.median(out)


def kernel_times(fn: Callable[[], object], iters: int) -> dict[str, float]:
    """Mean device µs per call of each kernel fn launches (torch.profiler), longest first."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    for evt in prof.events():
        if evt.device_type == torch.autograd.DeviceType.CUDA:
            us = evt.time_range.elapsed_us()  # a device event's own span
            name = evt.name if len(evt.name) < 60 else evt.name[:57] + "..."
            totals[name] = totals.get(name, 0.0) + us / iters
    return dict(sorted(((k, round(v, 2)) for k, v in totals.items()), key=lambda kv: -kv[1]))


def bench(batch: int, vocab: int, kind: str, sleep_cycles: int) -> dict:
    dev = torch.device(DEVICE)
    logits = _logits(batch, vocab, kind, dev)
    call, api = make_sampler(batch, dev)
    row = {"batch": batch, "vocab": vocab, "logits": kind, "api": api}
    # NOTE: runner.sampler.Sampler catches a failing batch call and retries row by row, returning token 0 and
    # `errors` for rows that fail: without this check a broken kernel would be timed as if it worked.
    errors = getattr(call(logits), "errors", None)
    if errors:
        row["errors"] = {"rows": len(errors), "first": next(iter(errors.values()))[:300]}
        print(f"sampler_bench: batch {batch}: {len(errors)} rows failed: {row['errors']['first']}", flush=True)
    row["sampler_ms"] = time_call(lambda: call(logits), 40)
    row["sampler_device_ms"] = time_call(lambda: call(logits), 20, sleep_cycles)
    try:
        row["kernels_us"] = kernel_times(lambda: call(logits), 10)
    except Exception as e:  # the profiler is a convenience here, not the measurement
        row["kernels_us"] = f"profiler failed: {type(e).__name__}: {e}"
    row["hbm_floor_one_read_ms"] = 1e3 * batch * vocab * logits.element_size() / 3.35e12
    return row


def _new_kernels():
    """This tree's `kernels.sampling` if it has the API the checks and the sweep use, else None."""
    try:
        from shifttune.kernels import sampling as k
    except ImportError:
        return None
    ok = hasattr(k, "WARPS") and "rows" in inspect.signature(k.sample).parameters
    return k if ok else None


def _settings(batch: int, dev: torch.device) -> tuple[torch.Tensor, ...]:
    """Per-row tables of a mixed batch: temperatures, top-p, min-p, greedy rows, large seeds."""
    i = torch.arange(batch, device=dev)
    inv_temp = 1 / (0.5 + (i % 5).float() * 0.25)
    top_p = torch.tensor([0.95, 0.9, 0.5, 1.0, 0.99, 0.8, 0.3], device=dev)[i % 7]
    min_p = torch.where(i % 4 == 1, 0.05, 0.0)
    seeds, steps = i * 7919 + 2**40, i * 3
    return inv_temp, top_p, min_p, seeds, steps, i % 9 == 4


def checks(k, vocab: int) -> dict:
    """Tokens of the kernels against the torch reference (mixed settings, each kind of logits), and a seeded
    row alone against the same row in a batch of 256 (flat and dummy logits)."""
    from shifttune.kernels.sampling_ref import sample_ref

    dev = torch.device(DEVICE)
    out: dict[str, object] = {}
    for kind in KINDS:
        n = 48
        logits = _logits(n, vocab, kind, dev)
        inv_temp, top_p, min_p, seeds, steps, greedy = _settings(n, dev)
        rows = torch.arange(n, device=dev)
        got = k.sample(logits, rows, inv_temp, None, top_p, min_p, seeds, steps, greedy)
        ref = sample_ref(logits.float(), inv_temp, torch.full((n,), -torch.inf, device=dev), top_p, min_p, seeds,
                         steps, greedy)  # fmt: skip
        out[f"tokens_match_ref_{kind}"] = f"{int((got == ref).sum())}/{n}"
    tables = _settings(256, dev)
    for kind in ("flat", "dummy"):
        logits = _logits(256, vocab, kind, dev)
        batch = k.sample(logits, torch.arange(256, device=dev), tables[0], None, *tables[1:])
        alone = [int(k.sample(logits[j : j + 1], torch.tensor([j], device=dev), tables[0], None, *tables[1:]))
                 for j in (0, 37, 255)]  # fmt: skip
        out[f"row_alone_equals_row_in_batch_{kind}"] = alone == [int(batch[j]) for j in (0, 37, 255)]
    return out


def sweep(k, vocab: int, sleep_cycles: int) -> list[dict]:
    """Device ms of `kernels.sampling.sample` (no Sampler around it) per CHUNK / num_warps choice."""
    dev = torch.device(DEVICE)
    names = ("CHUNK", "COPY_CAP", "FINISH_BLOCK", "SPLIT_SUB", "SPLIT_ROW_BYTES", "WARPS")
    saved = {a: getattr(k, a) for a in names if hasattr(k, a)}
    rows = []
    try:
        for name, attrs in SWEEP:
            if any(a not in saved for a in attrs):  # an older tree without this knob: its row would be the default's
                continue
            for a, v in saved.items():
                setattr(k, a, v)
            for a, v in attrs.items():
                setattr(k, a, saved[a] | v if a == "WARPS" else v)
            t = time.perf_counter()
            row = {"config": name} | {a: getattr(k, a) for a in saved}
            for batch, kind in SWEEP_CASES:
                logits = _logits(batch, vocab, kind, dev)
                tables = _settings(batch, dev)
                tables = (tables[0], torch.full((batch,), 0.95, device=dev), torch.zeros(batch, device=dev),
                          *tables[3:5], torch.zeros(batch, dtype=torch.bool, device=dev))  # fmt: skip
                rows_dev = torch.arange(batch, device=dev)
                fn = lambda: k.sample(logits, rows_dev, tables[0], None, *tables[1:])  # noqa: E731
                row[f"b{batch}_{kind}_device_ms"] = time_call(fn, 20, sleep_cycles)
            row["seconds_incl_compile"] = round(time.perf_counter() - t, 1)
            rows.append(row)
            print(row, flush=True)
    finally:
        for a, v in saved.items():
            setattr(k, a, v)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--no-sweep", action="store_true", help="skip the CHUNK / num_warps sweep")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("sampler_bench times Triton kernels and needs a CUDA GPU")
    t0 = time.perf_counter()
    sleep_cycles = int(5 * _sleep_cycles_per_ms())  # 5 ms: longer than any call's host work
    out: dict[str, object] = {"command": "python -m shifttune.profile.sampler_bench " + " ".join(argv or sys.argv[1:]),
                              "card": torch.cuda.get_device_name(), "torch": torch.__version__}  # fmt: skip
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    rows = []
    for batch in BATCHES:
        for kind in KINDS:
            rows.append(bench(batch, args.vocab, kind, sleep_cycles))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    out["rows"] = rows

    def save() -> None:  # after every part: a run cut short by its timeout keeps what it measured
        out["seconds"] = round(time.perf_counter() - t0, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1))

    save()
    k = _new_kernels()
    if k is not None:
        out["checks"] = checks(k, args.vocab)
        print(out["checks"], flush=True)
        save()
        if not args.no_sweep:
            out["sweep"] = sweep(k, args.vocab, sleep_cycles)
    save()
    print(f"wrote {args.out} ({out['seconds']} s)")


if __name__ == "__main__":
    main()
