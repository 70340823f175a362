"""Continuous batching: which sequences run in the next step and how many tokens each.

Every step has a token budget (`max_num_batched_tokens`); running sequences go first (decode tokens
and the rest of chunked prefills), then waiting ones (their prompt, chunked to fit, after any prefix
cache hit). When blocks run out the newest running sequence is preempted: its blocks are freed and
it is recomputed later from its tokens, which keeps outputs unchanged.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from shifttune.engine.block_manager import BlockManager
from shifttune.engine.stats import StepShape
from shifttune.engine.sequence import Sequence, SequenceStatus


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new_tokens: int
    is_new: bool = False  # admitted from the waiting queue by this step (the runner does not know it yet)

    @property
    def samples(self) -> bool:
        """True when this step computes the sequence's last known token, so it yields a new one."""
        return self.seq.num_computed_tokens + self.num_new_tokens == len(self.seq)


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledSeq]
    num_preempted: int

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    def shape(self) -> StepShape:
        """What the mode policy sees (call before `Scheduler.update_computed`)."""
        decode = sum(1 for s in self.scheduled if s.seq.num_computed_tokens >= s.seq.num_prompt_tokens)
        return StepShape(
            num_tokens=self.num_tokens,
            num_seqs=len(self.scheduled),
            num_prefill_tokens=self.num_tokens - decode,
            num_decode_tokens=decode,
            context_lens=tuple(s.seq.num_computed_tokens + s.num_new_tokens for s in self.scheduled),
        )


class Scheduler:
    def __init__(
        self,
        block_manager: BlockManager,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int | None = None,
    ):
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.released: list[Sequence] = []  # finished or preempted since the runner last heard
        self.on_schedule: Callable[[SchedulerOutput], None] | None = None  # sees every non-empty step (tracing)

    def is_done_pending(self, seq: Sequence) -> bool:
        """The tokens it has pending end it by length: it runs no more steps."""
        p = seq.params
        return bool(seq.num_pending) and (
            (p.max_tokens is not None and len(seq) - seq.num_prompt_tokens >= p.max_tokens)
            or (self.max_model_len is not None and len(seq) >= self.max_model_len)
        )

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def next_step_tokens(self) -> int:
        """At most how many tokens the next `schedule` takes, by its own rules short of the KV cache's and the
        prefix cache's: the running sequences' remaining prompt chunks or decode tokens, then the waiting prompts
        that fit `max_num_seqs`, up to the budget."""
        budget, n = self.max_num_batched_tokens, 0
        for seq in self.running:
            n += 0 if self.is_done_pending(seq) else len(seq) - seq.num_computed_tokens
            if n >= budget:
                return budget
        for seq in itertools.islice(self.waiting, max(0, self.max_num_seqs - len(self.running))):
            if seq.num_pending:
                break
            n += len(seq)
            if n >= budget:
                return budget
        return n

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget, scheduled, preempted = self.max_num_batched_tokens, [], 0
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(len(seq) - seq.num_computed_tokens, budget)
            if n == 0 or self.is_done_pending(seq):
                i += 1
                continue
            while not self.block_manager.can_append(seq, seq.num_computed_tokens + n):
                self._preempt(self.running.pop())
                preempted += 1
                if i == len(self.running):  # preempted seq itself
                    break
            else:
                self.block_manager.append(seq, seq.num_computed_tokens + n)
                scheduled.append(ScheduledSeq(seq, n))
                budget -= n
                i += 1
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.num_pending:  # preempted before its last token was read back: wait for it
                break
            cached = self.block_manager.match_prefix(seq)
            num_cached = len(cached) * self.block_manager.block_size
            n = min(len(seq) - num_cached, budget)
            if not self.block_manager.can_allocate(cached, num_cached + n, others_running=bool(self.running)):
                break
            self.block_manager.allocate(seq, cached, num_cached + n)
            seq.num_computed_tokens = seq.num_cached_tokens = num_cached
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n, is_new=True))
            budget -= n
        out = SchedulerOutput(scheduled, preempted)
        if scheduled and self.on_schedule is not None:
            self.on_schedule(out)
        return out

    def _preempt(self, seq: Sequence) -> None:
        self.released.append(seq)
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)

    def update_computed(self, out: SchedulerOutput) -> None:
        """Once a step is sent: its tokens will be in the cache before any later step reads them."""
        for s in out.scheduled:
            s.seq.num_computed_tokens += s.num_new_tokens

    def finish(self, seq: Sequence, reason: str) -> None:
        if seq.status == SequenceStatus.RUNNING:
            self.released.append(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason
        self.block_manager.free(seq)
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
