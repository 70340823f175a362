"""Discrete-event simulation of the engine's own scheduler, with step times from a profile.

Requests arrive (Poisson at a rate, or from a trace), the real `Scheduler` and `BlockManager` batch
them exactly as the engine would, the mode policy picks TP or SP x TP per step, and the step takes
the time the profile predicts for its token count and context. Out come TTFT, TPOT, end-to-end
latency and throughput, for TP-only, SP-only and shift under the same arrivals.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shifttune.config import ConfigError
from shifttune.engine.block_manager import BlockManager, blocks_for
from shifttune.engine.policy import ShiftPolicy
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.scheduler import Scheduler
from shifttune.engine.sequence import Sequence


@dataclass(frozen=True)
class Request:
    arrival_s: float
    input_len: int
    output_len: int


@dataclass
class Workload:
    """Poisson arrivals at `rate` requests/s with lengths drawn uniformly within +-`spread` of the means,
    or the requests of a trace."""

    rate: float = 1.0
    num_requests: int = 200
    input_len: int = 2048
    output_len: int = 256
    spread: float = 0.0  # 0.25: lengths uniform in [0.75, 1.25] x mean
    seed: int = 0
    trace: list[Request] | None = None

    def requests(self) -> list[Request]:
        if self.trace is not None:
            return self.trace
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"arrival rate must be a positive number, got {self.rate}")
        if self.num_requests < 1 or self.input_len < 1 or self.output_len < 1 or not 0 <= self.spread < 1:
            raise ConfigError("num_requests, input_len and output_len must be >= 1 and spread in [0, 1)")
        rng = random.Random(self.seed)
        t, out = 0.0, []

        def draw(mean: int) -> int:
            return max(1, round(mean * rng.uniform(1 - self.spread, 1 + self.spread)))

        for _ in range(self.num_requests):
            t += rng.expovariate(self.rate)
            out.append(Request(t, draw(self.input_len), draw(self.output_len)))
        return out


def load_azure_trace(path: Path, limit: int | None = None) -> list[Request]:
    """Azure LLM inference trace CSV: TIMESTAMP, ContextTokens, GeneratedTokens (times from the first)."""
    from datetime import datetime

    rows = []
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                stamp = row["TIMESTAMP"].strip()
                when = datetime.fromisoformat(stamp[:26] if "." in stamp else stamp).timestamp()
                rows.append((when, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
                if limit and len(rows) >= limit:
                    break
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(
            f"{path} is not an Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens): {e}"
        ) from None
    if not rows:
        raise ConfigError(f"trace {path} has no requests")
    t0 = min(r[0] for r in rows)
    return sorted((Request(w - t0, max(1, c), max(1, g)) for w, c, g in rows), key=lambda r: r.arrival_s)


@dataclass
class SimResult:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    output_tokens: int = 0
    input_tokens: int = 0
    duration_s: float = 0.0
    steps_per_mode: dict[str, int] = field(default_factory=lambda: {"tp": 0, "sp": 0})

    @staticmethod
    def _pct(xs: list[float], q: float) -> float:
        if not xs:
            return float("nan")
        s = sorted(xs)
        return s[min(len(s) - 1, int(q * len(s)))]

    def summary(self) -> dict:
        return {
            "policy": self.policy,
            "ttft_p50_ms": self._pct(self.ttft_ms, 0.5),
            "ttft_p99_ms": self._pct(self.ttft_ms, 0.99),
            "tpot_p50_ms": self._pct(self.tpot_ms, 0.5),
            "tpot_p99_ms": self._pct(self.tpot_ms, 0.99),
            "e2e_p50_ms": self._pct(self.e2e_ms, 0.5),
            "e2e_p99_ms": self._pct(self.e2e_ms, 0.99),
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
