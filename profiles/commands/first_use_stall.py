"""First-use stalls of engine steps on one GPU (issue 14: no compile stall while serving).

    PYTHONPATH=$PWD python profiles/commands/first_use_stall.py

Runs llama-3.1-8b (dummy weights) through mixed steps one shape after another (k decoding requests, then
p 1024-token prompts joining them: 2049-, 2050-, 3073-, 1027-token eager steps) and prints each step's device
time and wall time, plus a line per Triton kernel compiled after start-up (`COMPILE ...`, with its pointer
alignment attributes). A compile shows as one step of over a second. Found: a served H200 step of 2 x 1024
prefill + 1 decode took 1.7 s once (profiles/runs/first_use_stall_h200/).
"""

from __future__ import annotations

import time

import torch
import triton

from shifttune import SamplingParams
from shifttune.config import EngineConfig
from shifttune.engine.llm_engine import LLMEngine

SHAPES = ((1, 2), (2, 2), (1, 3), (3, 1), (1, 2))  # (decoding requests, prompts joining them)


def main() -> None:
    engine = LLMEngine(EngineConfig(model="llama-3.1-8b", load_format="dummy", device="cuda"))
    triton.knobs.runtime.jit_post_compile_hook = lambda **kw: print(
        "COMPILE", kw["repr"][:400], dict(kw["compile"]["configs"][0]), flush=True
    )
    gen, count = torch.Generator().manual_seed(0), [0]

    def add(k: int, out: int = 30) -> None:
        for _ in range(k):
            ids = torch.randint(10, 30000, (1024,), generator=gen).tolist()
            engine.add_request(f"r{count[0]}", ids, SamplingParams(max_tokens=out, ignore_eos=True))
            count[0] += 1

    def run(label: str, steps: int) -> None:
        for _ in range(steps):
            start = time.perf_counter()
            engine.step()
            wall = time.perf_counter() - start
            if not engine.stats.steps:
                print(label, "no completed step yet", f"wall {1e3 * wall:.1f} ms")
                continue
            s = engine.stats.steps[-1]  # async scheduling: the step completed now, launched one call earlier
            print(f"{label:24s} tokens {s.shape.num_tokens:5d} prefill {s.shape.num_prefill_tokens:5d} "
                  f"seqs {len(s.shape.context_lens):3d} dev {1e3 * s.duration_s:8.1f} ms wall {1e3 * wall:8.1f} ms",
                  flush=True)  # fmt: skip

    for decodes, prompts in SHAPES:
        add(decodes, out=40)
        run(f"{decodes}d warm", 4)
        add(prompts)
        run(f"{decodes}d+{prompts}p", 4)
        while engine.has_unfinished_requests():
            engine.step()
    engine.shutdown()


if __name__ == "__main__":
    main()
