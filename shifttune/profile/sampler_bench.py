"""Device time of the runner's sampler alone, by part, over a 128k vocabulary (GPU):

    python -m shifttune.profile.sampler_bench --out sampler.json

For each batch: the whole `Sampler` call (top-p 0.95, temperature 0.8, a seed per row, logits as flat as
dummy weights give them, and as peaked as a trained model's), and the kernels of `kernels/sampling.py`
one by one (statistics, one top-p pass, the draw), each replayed 50 times between CUDA events.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from shifttune.profile.step_timing import time_fn
from shifttune.engine.stats import percentile
from shifttune.runner.sampler import RequestSampling, Sampler


def bench(batch: int, vocab: int, peaked: bool) -> dict:
    from shifttune.kernels import sampling as k

    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    logits = torch.randn(batch, vocab, device=dev, generator=gen) * (4.0 if peaked else 0.02)
    sampler = Sampler(batch, dev)
    sampler.set_rows(list(range(batch)), [RequestSampling(temperature=0.8, top_p=0.95, seed=i) for i in range(batch)],
                     [0] * batch)  # fmt: skip
    rows, rows_dev = list(range(batch)), torch.arange(batch, device=dev)
    whole = percentile(time_fn(lambda: sampler(logits, rows, rows_dev), dev, 5, 50), 0.5)
    n, c = batch, -(-vocab // k.CHUNK)
    c = 1 << (c - 1).bit_length()
    args = (sampler.inv_temp, torch.full((n,), -torch.inf, device=dev), sampler.top_p)
    stats = torch.empty(3, n, c, device=dev)
    partial = torch.zeros(k.NUM_PASSES, n, c, k.NUM_THRESHOLDS, device=dev)
    shape = dict(C=c, CHUNK=k.CHUNK, BLOCK=k.BLOCK)
    run_stats = lambda: k._stats_kernel[(n, c)](logits, vocab, *args[:2], stats, vocab, **shape)  # noqa: E731
    run_stats()
    mass = lambda: k._mass_kernel[(n, c)](logits, vocab, *args, stats, partial, vocab, PASS=0,  # noqa: E731
                                          NT=k.NUM_THRESHOLDS, **shape)  # fmt: skip
    return {"batch": batch, "vocab": vocab, "logits": "peaked" if peaked else "flat", "sampler_ms": whole,
            "stats_kernel_ms": percentile(time_fn(run_stats, dev, 3, 50), 0.5),
            "one_top_p_pass_ms": percentile(time_fn(mass, dev, 3, 50), 0.5),
            "hbm_floor_one_read_ms": 1e3 * batch * vocab * 4 / 3.0e12}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("sampler_bench times Triton kernels and needs a CUDA GPU")
    rows = []
    for batch in (1, 32, 256):
        for peaked in (False, True):
            rows.append(bench(batch, args.vocab, peaked))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    out = {"command": "python -m shifttune.profile.sampler_bench " + " ".join(argv or sys.argv[1:]),
           "card": torch.cuda.get_device_name(), "rows": rows}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
