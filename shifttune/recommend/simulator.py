"""Discrete-event simulation of the engine's own scheduler and loop, with step times from a profile.

Requests arrive (Poisson at a rate, or from a trace), the real `Scheduler` and `BlockManager` batch
them exactly as the engine would, the mode policy picks TP or SP x TP per step, and the step takes
the time the profile predicts for its token count and context. Out come TTFT, TPOT, end-to-end
latency and throughput, for TP-only, SP-only and shift under the same arrivals.

Besides step times, the simulation follows what the engine's loop does with them (`EngineLoop`):
- async scheduling (on CUDA): the loop launches step n + 1 and then reads step n back, so when a request
  arrives, the step after the running one is already queued and the request joins the one after that,
  and a step's tokens count from the end of the step on the device; except that, with CUDA graphs, a step
  in which a prompt ends is read back before an eager step (more tokens than the graphs cover) is launched;
- CUDA graphs: a step of up to `cuda_graph_max_tokens` tokens runs the graph of the smallest token
  bucket that holds it, so it takes the time of that many tokens (a 1024-token prompt with one decode
  token runs the 1280-token graph);
- the server's fixed cost per request outside the engine (HTTP, pipes, streaming), `ingress_ms` before
  the engine sees a request and `egress_ms` after a token is read back until the client has it: not
  physics of the engine, so measured (`recommend --validate` probes the server for it), 0 otherwise.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from shifttune.config import MODES, ConfigError
from shifttune.engine.block_manager import BlockManager, blocks_for
from shifttune.engine.policy import ShiftPolicy
from shifttune.engine.profile_schema import Profile
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.scheduler import Scheduler, SchedulerOutput
from shifttune.engine.sequence import Sequence, samples_a_first_token
from shifttune.engine.stats import percentile
from shifttune.engine.step_model import StepTimeModel
from shifttune.recommend.grid import CUDA_GRAPH_MAX_TOKENS
from shifttune.recommend.workload import Request

# the token buckets of the engine's CUDA graphs (`runner/cuda_graphs.py`, which imports torch;
# tests/test_validate.py checks that both say the same)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 1024,
                 1280, 1536, 2048)  # fmt: skip

StepFn = Callable[[str, int, float], float]


@dataclass(frozen=True)
class EngineLoop:
    """How the engine turns scheduled steps into time, besides the steps' own durations (the keywords of
    `simulate`). The defaults are the synchronous loop without graphs (the CPU engine's)."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    async_scheduling: bool = False
    cuda_graph_max_tokens: int = 0  # 0: no CUDA graphs
    ingress_ms: float = 0.0
    egress_ms: float = 0.0

    @classmethod
    def of_profile(cls, profile: Profile) -> EngineLoop:
        """The engine the profile was measured on, with `serve`'s defaults: async scheduling and graphs on CUDA."""
        cuda = profile.engine.get("device", profile.hardware.get("device")) == "cuda"
        graphs = cuda and bool(profile.engine.get("cuda_graphs", False))
        return cls(async_scheduling=cuda, cuda_graph_max_tokens=CUDA_GRAPH_MAX_TOKENS if graphs else 0)

    def kwargs(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def graphs(self) -> GraphBuckets | None:
        if not self.cuda_graph_max_tokens:
            return None
        return GraphBuckets(self.cuda_graph_max_tokens, self.max_num_seqs, self.max_num_batched_tokens)


class GraphBuckets:
    """The token count a step runs at: its graph's bucket when the engine's graphs cover it, else its own
    (the rule of `StepGraphs.can_run` and `run`)."""

    def __init__(self, max_tokens: int, max_num_seqs: int, max_num_batched_tokens: int):
        limit = min(max_tokens, max_num_batched_tokens)
        self.buckets = [b for b in TOKEN_BUCKETS if b <= limit] or [1]
        if self.buckets[-1] < limit:
            self.buckets.append(limit)
        self.max_seqs = min(max_num_seqs + 1, self.buckets[-1])

    def tokens(self, num_tokens: int, num_seqs: int, num_samples: int) -> int:
        if num_tokens > self.buckets[-1]:
            return num_tokens
        b = self.buckets[bisect.bisect_left(self.buckets, num_tokens)]
        seqs = min(b, self.max_seqs)
        fits = num_seqs <= seqs - (1 if num_tokens < b else 0) and num_samples <= seqs
        return b if fits else num_tokens


def profile_step_ms(models: dict[str, StepTimeModel]) -> StepFn:
    """Step times from a profile: each mode's `StepTimeModel`."""

    def step_ms(mode: str, tokens: int, context: float) -> float:
        return models[mode].predict(tokens, context)

    return step_ms


@dataclass
class SimResult:
    policy: str
    ttft_ms: list[float] = field(default_factory=list)
    tpot_ms: list[float] = field(default_factory=list)
    e2e_ms: list[float] = field(default_factory=list)
    queue_ms: list[float] = field(default_factory=list)  # the engine has the request -> it is first scheduled
    engine_ms: list[float] = field(default_factory=list)  # first scheduled -> its first token is read back
    output_tokens: int = 0
    input_tokens: int = 0
    duration_s: float = 0.0
    steps_per_mode: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MODES, 0))
    ttft_by_request: dict[int, float] = field(default_factory=dict)  # by the request's index in `simulate`'s list

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
            "queue_p50_ms": percentile(self.queue_ms, 0.5),
            "engine_p50_ms": percentile(self.engine_ms, 0.5),
            "requests": len(self.e2e_ms),
            "steps_per_mode": dict(self.steps_per_mode),
        }


@dataclass
class _Step:
    end: float  # when the device finishes it (s)
    sampling: list[Sequence]
    first_tokens: bool  # a prompt ends in it: the engine reads it back before launching an eager step


def simulate(
    requests: list[Request],
    policy: ShiftPolicy,
    step_ms: StepFn,
    *,
    kv_capacity_tokens: int,
    block_size: int = 16,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 8192,
    async_scheduling: bool = False,
    cuda_graph_max_tokens: int = 0,
    ingress_ms: float = 0.0,
    egress_ms: float = 0.0,
) -> SimResult:
    """Runs every request to completion; `step_ms(mode, tokens, mean_context)` is the step's duration (the
    other keywords: `EngineLoop`). Host time between steps is not modelled: the loop keeps the device busy."""
    num_blocks = kv_capacity_tokens // block_size
    too_long = [r for r in requests if blocks_for(r.input_len + r.output_len, block_size) > num_blocks]
    if too_long:
        raise ConfigError(
            f"a request of {too_long[0].input_len}+{too_long[0].output_len} tokens exceeds the KV "
            f"cache ({kv_capacity_tokens} tokens)"
        )
    # NOTE: never more blocks than the running sequences can hold at once, with room to spare: a small model on a big
    # card has millions of free blocks, and a free list that long took minutes and gigabytes to build. Past this
    # size the cache never binds, as with every block.
    longest = max((blocks_for(r.input_len + r.output_len, block_size) for r in requests), default=1)
    num_blocks = min(num_blocks, 2 * max_num_seqs * longest + 100)
    scheduler = Scheduler(
        BlockManager(num_blocks, block_size, enable_prefix_caching=False), max_num_seqs, max_num_batched_tokens
    )
    graphs = EngineLoop(max_num_seqs, max_num_batched_tokens, cuda_graph_max_tokens=cuda_graph_max_tokens).graphs()
    result = SimResult(getattr(policy, "name", "policy"))
    ingress, egress = ingress_ms / 1e3, egress_ms / 1e3
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)  # a request's id: its index
    pending = [requests[i] for i in order]
    arrival: dict[str, float] = {}
    scheduled_at: dict[str, float] = {}
    first_token: dict[str, float] = {}
    next_req, clock, device_free = 0, 0.0, 0.0
    in_flight: _Step | None = None

    def admit() -> None:
        nonlocal next_req
        while next_req < len(pending) and pending[next_req].arrival_s + ingress <= clock:
            r = pending[next_req]
            seq = Sequence(str(order[next_req]), None, [0] * r.input_len, SamplingParams(max_tokens=r.output_len))
            arrival[seq.request_id] = r.arrival_s
            scheduler.add(seq)
            next_req += 1

    def launch(out: SchedulerOutput) -> _Step:
        """The step starts when the device is free and takes the profile's time for its (padded) tokens."""
        nonlocal device_free
        shape = out.shape()
        mode = policy.choose(shape)
        result.steps_per_mode[mode] += 1
        sampling = [s.seq for s in out.scheduled if s.samples]
        for s in out.scheduled:
            rid = s.seq.request_id
            if s.is_new and rid not in scheduled_at:
                scheduled_at[rid] = clock
                result.queue_ms.append(1e3 * (clock - arrival[rid] - ingress))
        tokens = shape.num_tokens if graphs is None else graphs.tokens(shape.num_tokens, shape.num_seqs, len(sampling))
        end = max(clock, device_free) + step_ms(mode, tokens, shape.mean_context) / 1e3
        device_free = end
        scheduler.update_computed(out)
        first = samples_a_first_token(shape.num_prefill_tokens, sampling)
        for seq in sampling:
            seq.num_pending += 1
        return _Step(end, sampling, first)

    def complete(step: _Step) -> None:
        """The step's tokens are read back at its end (the engine's `_complete`)."""
        for seq in step.sampling:
            seq.num_pending -= 1
            if seq.is_finished:
                continue
            seq.token_ids.append(0)
            rid = seq.request_id
            if rid not in first_token:
                first_token[rid] = step.end
                result.engine_ms.append(1e3 * (step.end - scheduled_at[rid]))
            if seq.num_output_tokens >= seq.params.max_tokens:
                scheduler.finish(seq, "length")
                n = seq.num_output_tokens
                result.ttft_ms.append(1e3 * (first_token[rid] + egress - arrival[rid]))
                result.ttft_by_request[int(rid)] = result.ttft_ms[-1]
                if n > 1:
                    result.tpot_ms.append(1e3 * (step.end - first_token[rid]) / (n - 1))
                result.e2e_ms.append(1e3 * (step.end + egress - arrival[rid]))
                result.output_tokens += n
                result.input_tokens += seq.num_prompt_tokens

    while next_req < len(pending) or scheduler.has_unfinished() or in_flight is not None:
        admit()
        if (
            in_flight is not None
            and in_flight.first_tokens
            and graphs is not None
            and scheduler.next_step_tokens() > cuda_graph_max_tokens
        ):
            done, in_flight = in_flight, None  # the engine's rule in `LLMEngine.step` (CUDA graphs on)
            clock = max(clock, done.end)
            complete(done)
            continue
        out = scheduler.schedule()
        scheduler.released.clear()  # what the engine tells its runners; nothing to tell here
        launched = launch(out) if out.scheduled else None
        if not async_scheduling:
            in_flight = launched
        if in_flight is not None:  # read back the step before (async) or this one (sync)
            done, in_flight = in_flight, (launched if async_scheduling else None)
            clock = max(clock, done.end)
            complete(done)
            continue
        in_flight = launched
        if launched is None:
            if next_req == len(pending):  # cannot happen with the checks above; never spin
                raise ConfigError("the simulated engine cannot schedule the remaining requests")
            clock = pending[next_req].arrival_s + ingress  # idle until the next arrival
    result.duration_s = device_free - (pending[0].arrival_s if pending else 0.0)
    return result
