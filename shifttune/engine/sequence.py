"""A request as the engine tracks it (`Sequence`) and what the engine hands back (`RequestOutput`)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from shifttune.engine.sampling_params import DELTA, SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    def __init__(self, request_id: str, prompt: str | None, prompt_token_ids: list[int], params: SamplingParams):
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.prompt_token_ids = list(prompt_token_ids)  # kept once: outputs share it instead of slicing each step
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed_tokens = 0  # tokens whose KV is in the cache
        self.num_cached_tokens = 0  # of those, how many came from the prefix cache
        self.block_table: list[int] = []
        self.status = SequenceStatus.WAITING
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
        self.stop_reason: int | str | None = None
        self.error: str | None = None  # why the request failed (finish_reason "error")
        self.output_text = ""
        self.logprobs: list[dict[int, float]] = []  # per token {token id: Logprob} (floats; vLLM's attributes too)
        self.arrival_time = time.monotonic()
        self.first_token_time: float | None = None
        self.num_returned_tokens = 0  # what earlier DELTA outputs already handed back
        self.num_returned_chars = 0
        self.num_pending = 0  # tokens sampled on the device and not read back yet (they end token_ids)
        self.runner_id = -1  # the runner's handle on this request (set by the engine)
        self.num_runner_blocks = 0  # blocks of block_table the runner has been sent

    def __len__(self) -> int:
        """Tokens known or pending: what the scheduler schedules against."""
        return len(self.token_ids) + self.num_pending

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def awaits_first_token(self) -> bool:
        """Nothing sampled yet, read back or in flight: the next token it samples is its first."""
        return len(self) == self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED


def samples_a_first_token(num_prefill_tokens: int, sampling: list[Sequence]) -> bool:
    """Whether a step samples some request's first token (a prompt ends in it): `LLMEngine.step`'s read-back rule
    and the simulator's. A step without prompt tokens cannot, so pure decode steps skip the scan."""
    return num_prefill_tokens > 0 and any(seq.awaits_first_token for seq in sampling)


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | "abort" | "error" | None while running
    stop_reason: int | str | None = None
    logprobs: list[dict[int, float]] | None = None

    @property
    def cumulative_logprob(self) -> float | None:
        """The sum of the sampled tokens' logprobs (vLLM's field); None unless logprobs were asked for."""
        if self.logprobs is None:
            return None
        return sum(lp[t] for t, lp in zip(self.token_ids, self.logprobs))


@dataclass
class RequestOutput:
    """Cumulative (everything so far) or, with `output_kind=DELTA`, only what this step added; `num_output_tokens`
    counts all generated tokens either way."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0
    metrics: dict = field(default_factory=dict)
    num_output_tokens: int = 0
    error: str | None = None

    @classmethod
    def from_seq(cls, seq: Sequence) -> "RequestOutput":
        p = seq.params
        if p.output_kind == DELTA:
            # NOTE: while running, text that could still turn out to start a stop string is held back.
            hold = 0 if seq.is_finished or not p.stop else max(map(len, p.stop)) - 1
            end = max(seq.num_returned_chars, len(seq.output_text) - hold)
            text = seq.output_text[seq.num_returned_chars : end]
            token_ids = seq.token_ids[seq.num_prompt_tokens + seq.num_returned_tokens :]
            logprobs = seq.logprobs[seq.num_returned_tokens :]
            seq.num_returned_tokens, seq.num_returned_chars = seq.num_output_tokens, end
        else:
            text, token_ids, logprobs = seq.output_text, seq.output_token_ids, list(seq.logprobs)
        out = CompletionOutput(
            0, text, token_ids, seq.finish_reason, seq.stop_reason, logprobs if p.logprobs is not None else None
        )
        metrics = {"arrival_time": seq.arrival_time, "first_token_time": seq.first_token_time}
        return cls(
            seq.request_id,
            seq.prompt,
            seq.prompt_token_ids,
            [out],
            seq.is_finished,
            seq.num_cached_tokens,
            metrics,
            seq.num_output_tokens,
            seq.error,
        )
