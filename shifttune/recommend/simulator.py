"""Discrete-event simulation of the engine's own scheduler, with step times from a profile.

Requests arrive (Poisson at a rate, or from a trace), the real `Scheduler` and `BlockManager` batch
them exactly as the engine would, the mode policy picks TP or SP x TP per step, and the step takes
the time the profile predicts for its token count and context. Out come TTFT, TPOT, end-to-end
latency and throughput, for TP-only, SP-only and shift under the same arrivals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from shifttune.config import MODES, ConfigError
from shifttune.engine.block_manager import BlockManager, blocks_for
from shifttune.engine.policy import ShiftPolicy
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.scheduler import Scheduler
from shifttune.engine.sequence import Sequence
from shifttune.engine.stats import percentile
from shifttune.recommend.workload import Request


@dataclass
class SimResult:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int = 0
    duration_s: float = 0.0
    steps_per_mode: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))

    def summary(self) -> dict:
        return {
            "policy": self.policy,
            "ttft_p50_ms": percentile(self.ttft_ms, 0.5),
            "ttft_p99_ms": percentile(self.ttft_ms, 0.99),
            "tpot_p50_ms": percentile(self.tpot_ms, 0.5),
            "tpot_p99_ms": percentile(self.tpot_ms, 0.99),
            "e2e_p50_ms": percentile(self.e2e_ms, 0.5),
            "e2e_p99_ms": percentile(self.e2e_ms, 0.99),
            "output_tok_per_s": self.output_tokens / self.duration_s if self.duration_s else 0.0,
            "total_tok_per_s": (self.output_tokens + self.input_tokens) / self.duration_s if self.duration_s else 0.0,
            "requests": len(self.e2e_ms),
            "steps_per_mode": dict(self.steps_per_mode),
        }


def simulate(
    requests: list[Request],
    policy: ShiftPolicy,
    step_ms: Callable[[str, int, float], float],
    *,
    kv_capacity_tokens: int,
    block_size: int = 16,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
) -> SimResult:
    """Runs every request to completion; `step_ms(mode, tokens, mean_context)` is the step's duration."""
    num_blocks = kv_capacity_tokens // block_size
    too_long = [r for r in requests if blocks_for(r.input_len + r.output_len, block_size) > num_blocks]
    if too_long:
        raise ConfigError(
            f"a request of {too_long[0].input_len}+{too_long[0].output_len} tokens exceeds the KV "
            f"cache ({kv_capacity_tokens} tokens)"
        )
    scheduler = Scheduler(
        BlockManager(num_blocks, block_size, enable_prefix_caching=False), max_num_seqs, max_num_batched_tokens
    )
    result = SimResult(getattr(policy, "name", "policy"))
    pending = sorted(requests, key=lambda r: r.arrival_s)
    arrival, first_token, next_req, clock = {}, {}, 0, 0.0
    while next_req < len(pending) or scheduler.has_unfinished():
        while next_req < len(pending) and pending[next_req].arrival_s <= clock:
            r = pending[next_req]
            seq = Sequence(str(next_req), None, [0] * r.input_len, SamplingParams(max_tokens=r.output_len))
            arrival[seq.request_id] = r.arrival_s
            scheduler.add(seq)
            next_req += 1
        out = scheduler.schedule()
        if not out.scheduled:
            if next_req == len(pending):  # cannot happen with the checks above; never spin
                raise ConfigError("the simulated engine cannot schedule the remaining requests")
            clock = pending[next_req].arrival_s  # idle until the next arrival
            continue
        shape = out.shape()
        mode = policy.choose(shape)
        result.steps_per_mode[mode] += 1
        sampling = [s.seq for s in out.scheduled if s.samples]
        clock += step_ms(mode, shape.num_tokens, shape.mean_context) / 1e3
        scheduler.update_computed(out)
        for seq in sampling:
            seq.token_ids.append(0)
            rid = seq.request_id
            first_token.setdefault(rid, clock)
            if seq.num_output_tokens >= seq.params.max_tokens:
                scheduler.finish(seq, "length")
                n = seq.num_output_tokens
                result.ttft_ms.append(1e3 * (first_token[rid] - arrival[rid]))
                if n > 1:
                    result.tpot_ms.append(1e3 * (clock - first_token[rid]) / (n - 1))
                result.e2e_ms.append(1e3 * (clock - arrival[rid]))
                result.output_tokens += n
                result.input_tokens += seq.num_prompt_tokens
    result.duration_s = clock - (pending[0].arrival_s if pending else 0.0)
    return result
