"""LLMEngine: requests in, one scheduled + mode-switched + sampled step at a time, outputs back.

This is the step-level API the server drives (`add_request`, `step`, `abort_request`,
`has_unfinished_requests`, `stats`); `LLM` in `engine/llm.py` wraps it for offline batches.
"""

from __future__ import annotations

import itertools
import logging
import time

from shifttune.config import SHIFT_POLICIES, ConfigError, EngineConfig
from shifttune.engine.block_manager import BlockManager
from shifttune.engine.detokenizer import Detokenizer
from shifttune.engine.input_processor import InputProcessor, load_tokenizer
from shifttune.engine.policy import make_policy
from shifttune.engine.sampler import Sampler
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.scheduler import Scheduler, SchedulerOutput
from shifttune.engine.sequence import RequestOutput, Sequence
from shifttune.engine.stats import EngineStats, StepStats
from shifttune.model.loader import check_checkpoint
from shifttune.runner.executor import Executor
from shifttune.runner.step_input import ScheduledTokens, StepInput, build_step_input

logger = logging.getLogger("shifttune")


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        cfg = config.model_config
        if config.load_format != "dummy":
            check_checkpoint(config.model_path, cfg)  # before any process or memory is set up
        self.policy = make_policy(
            config.shift_policy, config.shift_threshold, config.parallel.tp, config.parallel.sp, config.shift_profile
        )  # a bad profile is refused before any process starts
        self.tokenizer = load_tokenizer(config)
        self.input_processor = InputProcessor(config, self.tokenizer)
        self.executor = Executor(config)
        runner = self.executor.runner
        capacity = runner.num_kv_blocks * config.block_size
        if capacity < 1:
            self.shutdown()
            raise ConfigError("no memory left for the KV cache; lower the model size or raise the cache budget")
        if capacity < config.max_model_len:
            logger.warning("KV cache holds %d tokens: max_model_len lowered from %d", capacity, config.max_model_len)
            config.max_model_len = capacity
        self.block_manager = BlockManager(runner.num_kv_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.sampler = Sampler(cfg.eos_token_ids, config.seed)
        self.detokenizer = Detokenizer(self.tokenizer)
        self.requests: dict[str, Sequence] = {}
        self._ids = itertools.count()
        self._stats = EngineStats(
            kv_blocks_total=runner.num_kv_blocks,
            weight_bytes_per_rank=runner.weight_bytes,
            kv_cache_bytes_per_rank=runner.num_kv_blocks * runner.kv_bytes_per_block,
        )

    # ---- requests -------------------------------------------------------------------------------
    def add_request(
        self,
        request_id: str | None,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        prompt_text: str | None = None,
    ) -> str:
        """Queues a request (text, or token ids with the text they came from) and returns its id; refuses
        anything that could fail later."""
        params = SamplingParams() if params is None else params
        if request_id is None:
            request_id = next(rid for rid in map(str, self._ids) if rid not in self.requests)
        elif not isinstance(request_id, str):
            raise ConfigError(f"must be a string, got {type(request_id).__name__}", field="request_id")
        if request_id in self.requests:
            raise ConfigError(f"{request_id!r} is already in use", field="request_id")
        text, ids = self.prepare_request(prompt, params)
        seq = Sequence(request_id, text if prompt_text is None else prompt_text, ids, params)
        self.requests[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def prepare_request(self, prompt: str | list[int], params: SamplingParams) -> tuple[str | None, list[int]]:
        """(text, token ids) of a request that the engine can run to the end; ConfigError otherwise."""
        return self.input_processor(prompt, params)

    def abort_request(self, request_id: str) -> None:
        seq = self.requests.pop(request_id, None)
        if seq is not None and not seq.is_finished:
            self.scheduler.finish(seq, "abort")
            self._release(seq)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def set_policy(self, name: str, threshold: int | None = None, profile: str | None = None) -> None:
        """Switches the mode policy between steps (the TUI changes the threshold live)."""
        if name not in SHIFT_POLICIES:
            raise ConfigError(f"must be one of {', '.join(SHIFT_POLICIES)}, not {name!r}", field="shift_policy")
        c = self.config
        policy = make_policy(
            name,
            threshold if threshold is not None else c.shift_threshold,
            c.parallel.tp,
            c.parallel.sp,
            profile or c.shift_profile,
        )
        self.policy, c.shift_policy = policy, name
        c.shift_threshold = threshold if threshold is not None else c.shift_threshold
        c.shift_profile = profile or c.shift_profile

    # ---- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedules, runs and samples one step; returns outputs of requests that advanced or finished."""
        sched = self.scheduler.schedule()
        self._stats.num_preemptions += sched.num_preempted
        if not sched.scheduled:
            return []
        shape = sched.shape()
        mode = self.policy.choose(shape)
        sampling = [s.seq for s in sched.scheduled if s.samples]
        start = time.perf_counter()
        logits = self.executor.collective_rpc("execute_model", self._step_input(sched, mode))
        sampled = self._sample(logits, sampling) if sampling else []
        duration = time.perf_counter() - start
        self.scheduler.update_computed(sched)
        now = time.monotonic()
        for seq, token, lp in sampled:
            seq.token_ids.append(token)
            if lp is not None:
                seq.logprobs.append(lp)
            if seq.first_token_time is None:
                seq.first_token_time = now
            new_text = self.detokenizer.update(seq)
            self._check_stop(seq, token, len(seq.output_text) - len(new_text))
            if seq.is_finished and not isinstance(seq.stop_reason, str):  # a stop string already cut the text
                self.detokenizer.finalize(seq)
        self._stats.record(StepStats(mode, shape, duration))
        outputs = []
        for seq in sampling:
            outputs.append(RequestOutput.from_seq(seq))
            if seq.is_finished:
                self.requests.pop(seq.request_id, None)
                self._release(seq)
        return outputs

    def _sample(self, logits, seqs: list[Sequence]) -> list[tuple[Sequence, int, dict | None]]:
        try:
            return list(zip(seqs, *self.sampler(logits, seqs)))
        except Exception:
            pass
        # NOTE: one request must not stop every other: sample row by row, and fail only the rows that fail.
        out = []
        for i, seq in enumerate(seqs):
            try:
                (token,), (lp,) = self.sampler(logits[i : i + 1], [seq])
            except Exception as e:  # finished with the error, reported to its caller; the batch goes on
                seq.error = f"request {seq.request_id!r} failed in sampling: {type(e).__name__}: {e}"
                logger.error(seq.error)
                self.scheduler.finish(seq, "error")
                continue
            out.append((seq, token, lp))
        return out

    def _step_input(self, sched: SchedulerOutput, mode: str) -> StepInput:
        seqs = (
            ScheduledTokens(
                s.seq.token_ids[s.seq.num_computed_tokens : s.seq.num_computed_tokens + s.num_new_tokens],
                s.seq.num_computed_tokens,
                s.seq.block_table,
                s.samples,
            )
            for s in sched.scheduled
        )
        return build_step_input(mode, seqs, self.config.block_size)

    def _check_stop(self, seq: Sequence, token: int, new_text_at: int) -> None:
        """Finishes `seq` if `token` or the text added from `new_text_at` on ends it."""
        p = seq.params
        if seq.num_output_tokens > p.min_tokens:  # the sampler masked stop tokens before that
            if token in p.stop_token_ids:
                seq.stop_reason = token
                return self.scheduler.finish(seq, "stop")
            if not p.ignore_eos and token in self.sampler.eos_token_ids:
                return self.scheduler.finish(seq, "stop")
            for stop in p.stop:  # only where the new text could complete a stop string
                at = seq.output_text.find(stop, max(0, new_text_at - len(stop) + 1))
                if at >= 0:
                    seq.output_text, seq.stop_reason = seq.output_text[:at], stop
                    return self.scheduler.finish(seq, "stop")
        if (p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens) or len(
            seq
        ) >= self.config.max_model_len:
            self.scheduler.finish(seq, "length")

    def _release(self, seq: Sequence) -> None:
        self.sampler.release(seq.request_id)
        self.detokenizer.release(seq.request_id)

    @property
    def stats(self) -> EngineStats:
        self._stats.kv_blocks_free = self.block_manager.num_free_blocks
        self._stats.num_prefix_cache_hit_blocks = self.block_manager.num_prefix_hits
        return self._stats

    def shutdown(self) -> None:
        executor = getattr(self, "executor", None)
        if executor is not None:
            executor.shutdown()
