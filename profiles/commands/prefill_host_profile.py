"""Where the host's time goes when the engine launches a big eager prefill step (GPU).

    python profiles/commands/prefill_host_profile.py --model llama-3.1-8b --prompt-len 4096 --out host.txt

`prefill_probe.py` found the runner's `execute` taking 20-60 ms of host time for one 4096-token prefill (TP 1-2),
about the GPU's own time at TP 2: where the GPU does less per rank (TP 4, 8), a lone prefill waits for its host.
This runs lone prompts through `LLM.generate` (max_tokens 1) after a warm-up and writes, for one of them, the
host-side profile of the driver: torch.profiler's ops by self CPU time, and cProfile's functions by their own time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

from shifttune import LLM, SamplingParams


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-3.1-8b")
    ap.add_argument("--prompt-len", type=int, default=4096)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    llm = LLM(args.model, device="cuda", load_format="dummy", max_model_len=args.prompt_len + 64)
    engine = llm.llm_engine
    runner = engine.executor.runner
    vocab = engine.config.model_config.vocab_size
    params = SamplingParams(temperature=0, max_tokens=1)

    def prompt(k: int) -> list[int]:
        return [(k * 977 + j * 13 + 3) % (vocab - 10) + 5 for j in range(args.prompt_len)]

    for k in range(3):
        llm.generate([prompt(k)], params)
    lines = [f"# {' '.join(sys.argv)}", f"# card: {torch.cuda.get_device_name(0)}"]
    execute, host = runner.execute, []

    def timed(delta):
        t = time.perf_counter()
        out = execute(delta)
        host.append(1e3 * (time.perf_counter() - t))
        return out

    runner.execute = timed
    for k in range(3, 8):
        torch.cuda.synchronize()
        llm.generate([prompt(k)], params)
    lines.append(f"execute host ms, 5 lone prompts: {[round(h, 1) for h in host]}")
    lines.append(f"device ms of their steps: {[round(1e3 * s.duration_s, 1) for s in list(engine.stats.steps)[-5:]]}")
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        llm.generate([prompt(8)], params)
        torch.cuda.synchronize()
    lines.append("\n## torch.profiler, ops by self CPU time (one lone prompt)\n")
    lines.append(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    llm.generate([prompt(9)], params)
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(40)
    lines.append("\n## cProfile, functions by own time (one lone prompt)\n")
    lines.append(s.getvalue())
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(40)
    lines.append("\n## cProfile, by cumulative time\n")
    lines.append(s.getvalue())
    args.out.write_text("\n".join(lines))
    print("\n".join(lines[:4]), flush=True)
    llm.shutdown()


if __name__ == "__main__":
    main()
