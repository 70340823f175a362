"""LLMEngine: requests in, one scheduled + mode-switched + sampled step at a time, outputs back.

This is the step-level API the server drives (`add_request`, `step`, `abort_request`,
`has_unfinished_requests`, `stats`); `LLM` in `engine/llm.py` wraps it for offline batches.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass

import torch

from shifttune.config import SHIFT_POLICIES, ConfigError, EngineConfig
from shifttune.engine.block_manager import BlockManager
from shifttune.engine.detokenizer import Detokenizer
from shifttune.engine.input_processor import InputProcessor, load_tokenizer
from shifttune.engine.policy import make_policy
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.scheduler import Scheduler, SchedulerOutput
from shifttune.engine.sequence import RequestOutput, Sequence, SequenceStatus, samples_a_first_token
from shifttune.engine.stats import EngineStats, StepShape, StepStats
from shifttune.model.loader import check_checkpoint
from shifttune.parallel import state as parallel_state
from shifttune.runner.executor import Executor
from shifttune.runner.input_batch import PENDING, NewRequest, StepDelta
from shifttune.runner.model_runner import ModelRunnerOutput
from shifttune.runner.sampler import RequestSampling

logger = logging.getLogger("shifttune")
# `step`'s rule: read a step in which a prompt ends back before launching an eager step (off: for A/B probes)
READ_BACK_BEFORE_EAGER = True


@dataclass
class InFlightStep:
    """A launched step whose sampled tokens are not read back yet."""

    mode: str
    shape: StepShape
    sampling: list[Sequence]  # requests that sample a token in it, in the runner's order
    computed: list[tuple[Sequence, int, int]]  # (request, computed tokens before, after)
    output: ModelRunnerOutput
    first_tokens: bool = False  # some request's first token is sampled in it (a prompt ends there)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        cfg = config.model_config
        parallel_state.check_can_join(config.parallel.world_size)
        if config.load_format != "dummy":
            check_checkpoint(config.model_path, cfg)  # before any process or memory is set up
        # a bad profile is refused before any process starts
        self.policy = make_policy(config.shift_policy, config.shift_threshold, config.parallel.tp, config.parallel.sp,
                                  config.shift_profile, cfg)  # fmt: skip
        if config.device == "cpu":
            check_host_memory(config)
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
        self.scheduler = Scheduler(
            self.block_manager, config.max_num_seqs, config.max_num_batched_tokens, config.max_model_len
        )
        self.eos_token_ids = set(cfg.eos_token_ids)
        self.detokenizer = Detokenizer(self.tokenizer)
        self.requests: dict[str, Sequence] = {}
        self._sampling: dict[str, RequestSampling] = {}  # what the runners get of each request's params
        self._seeds = random.Random(config.seed)  # seeds for requests that gave none
        self._ids = itertools.count()
        self._runner_ids = itertools.count()
        self._in_flight: InFlightStep | None = None
        # on CUDA with graphs, steps of more tokens than this run eagerly (a launch per kernel; see `step`)
        graphs = config.device == "cuda" and not config.enforce_eager and config.cuda_graph_max_tokens > 0
        self._graph_tokens: int | None = config.cuda_graph_max_tokens if graphs else None
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
        seq.runner_id = next(self._runner_ids)
        banned = tuple(params.stop_token_ids) + (() if params.ignore_eos else tuple(self.eos_token_ids))
        self._sampling[request_id] = RequestSampling(
            params.temperature, params.top_p, params.top_k, params.min_p,
            params.seed if params.seed is not None else self._seeds.getrandbits(63),
            params.min_tokens, banned if params.min_tokens else (), params.logprobs,
        )  # fmt: skip
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
        return self.scheduler.has_unfinished() or self._in_flight is not None

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
            c.model_config,
        )
        self.policy, c.shift_policy = policy, name
        c.shift_threshold = threshold if threshold is not None else c.shift_threshold
        c.shift_profile = profile or c.shift_profile

    # ---- the step -------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Schedules and launches one step, then reads back the step before it (async scheduling: the
        host's work overlaps the device's); returns outputs of requests that advanced or finished. A step in
        which a prompt ends is read back alone, with no launch, when the next step would run eagerly."""
        done = self._in_flight
        if done is not None and done.first_tokens and READ_BACK_BEFORE_EAGER and self._eager_next():
            # NOTE: read the step in flight back before launching an eager one. Launching an eager step takes
            # the host one call per kernel, and with a big step still queued the launch queue fills, so the
            # host returns only when most of the new step has run: a prompt's first token would wait for
            # the next step (on 4 x H200, 70B, a burst of 4k prompts: +0.3-0.6 s of TTFT a prompt).
            self._in_flight = None
            return self._complete(done)
        launched = self._launch()
        if not self.config.async_scheduling:
            return self._complete(launched) if launched else []
        self._in_flight = launched
        return self._complete(done) if done else []

    def _launch(self) -> InFlightStep | None:
        sched = self.scheduler.schedule()
        self._stats.num_preemptions += sched.num_preempted
        if not sched.scheduled:
            return None
        shape = sched.shape()
        mode = self.policy.choose(shape)
        sampling = [s.seq for s in sched.scheduled if s.samples]
        computed = [(s.seq, s.seq.num_computed_tokens, s.seq.num_computed_tokens + s.num_new_tokens)
                    for s in sched.scheduled]  # fmt: skip
        output = self.executor.collective_rpc("execute", self._delta(sched, mode))
        self.scheduler.update_computed(sched)
        first = samples_a_first_token(shape.num_prefill_tokens, sampling)
        for seq in sampling:
            seq.num_pending += 1
        return InFlightStep(mode, shape, sampling, computed, output, first)

    def _eager_next(self) -> bool:
        """Would the next step run eagerly (more tokens than the CUDA graphs cover)? False without graphs."""
        return self._graph_tokens is not None and self.scheduler.next_step_tokens() > self._graph_tokens

    def _delta(self, sched: SchedulerOutput, mode: str) -> StepDelta:
        """What the runners need to know of this step that they do not know yet."""
        delta = StepDelta(mode, [], [], [], [], finished_req_ids=[s.runner_id for s in self.scheduler.released])
        self.scheduler.released = []
        for i, s in enumerate(sched.scheduled):
            seq, start = s.seq, s.seq.num_computed_tokens
            if s.is_new:
                sampling = self._sampling[seq.request_id]
                delta.new_requests.append(
                    NewRequest(seq.runner_id, list(seq.block_table), start, seq.num_output_tokens, sampling)
                )
            elif len(seq.block_table) > seq.num_runner_blocks:
                delta.new_block_ids.append((seq.runner_id, seq.block_table[seq.num_runner_blocks :]))
            seq.num_runner_blocks = len(seq.block_table)
            tokens = seq.token_ids[start : start + s.num_new_tokens]
            delta.token_ids += tokens
            if len(tokens) < s.num_new_tokens:  # the token the step in flight samples
                delta.token_ids += [PENDING] * (s.num_new_tokens - len(tokens))
            delta.req_ids.append(seq.runner_id)
            delta.num_tokens.append(s.num_new_tokens)
            if s.samples:
                delta.sampling.append(i)
        return delta

    def _complete(self, step: InFlightStep) -> list[RequestOutput]:
        """Reads a launched step's tokens back and applies them: text, stop checks, outputs."""
        tokens, logprobs, errors, seconds = step.output.result()
        for seq, old, new in step.computed:  # their tokens are all known now: register full blocks
            if seq.status == SequenceStatus.RUNNING:
                self.block_manager.mark_computed(seq, old, new)
        now = time.monotonic()
        outputs = []
        for i, (seq, token, lp) in enumerate(zip(step.sampling, tokens, logprobs)):
            seq.num_pending -= 1
            if seq.is_finished:  # ended (stop, abort) while this step ran: a token past its end is dropped
                continue
            if i in errors:  # finished with the error, reported to its caller; the batch goes on
                seq.error = f"request {seq.request_id!r} failed in sampling: {errors[i]}"
                logger.error(seq.error)
                self.scheduler.finish(seq, "error")
            else:
                seq.token_ids.append(token)
                if lp is not None:
                    seq.logprobs.append(lp)
                if seq.first_token_time is None:
                    seq.first_token_time = now
                new_text = self.detokenizer.update(seq)
                self._check_stop(seq, token, len(seq.output_text) - len(new_text))
                if seq.is_finished and not isinstance(seq.stop_reason, str):  # a stop string already cut it
                    self.detokenizer.finalize(seq, without_last=seq.finish_reason == "stop")  # a stop token's text
            outputs.append(RequestOutput.from_seq(seq))
            if seq.is_finished:
                self.requests.pop(seq.request_id, None)
                self._release(seq)
        self._stats.record(StepStats(step.mode, step.shape, seconds))
        return outputs

    def _check_stop(self, seq: Sequence, token: int, new_text_at: int) -> None:
        """Finishes `seq` if `token` or the text added from `new_text_at` on ends it."""
        p = seq.params
        if seq.num_output_tokens > p.min_tokens:  # the sampler masked stop tokens before that
            if token in p.stop_token_ids:
                seq.stop_reason = token
                return self.scheduler.finish(seq, "stop")
            if not p.ignore_eos and token in self.eos_token_ids:
                return self.scheduler.finish(seq, "stop")
            for stop in p.stop:  # only where the new text could complete a stop string
                at = seq.output_text.find(stop, max(0, new_text_at - len(stop) + 1))
                if at >= 0:
                    seq.output_text, seq.stop_reason = seq.output_text[:at], stop
                    return self.scheduler.finish(seq, "stop")
        # NOTE: the tokens read back, not len(seq): that counts a token still in flight (async scheduling), which
        # ended a request at the context limit one token short and threw the in-flight one away
        if (p.max_tokens is not None and seq.num_output_tokens >= p.max_tokens) or len(
            seq.token_ids
        ) >= self.config.max_model_len:
            self.scheduler.finish(seq, "length")

    def _release(self, seq: Sequence) -> None:
        self._sampling.pop(seq.request_id, None)
        self.detokenizer.release(seq.request_id)

    @property
    def stats(self) -> EngineStats:
        self._stats.kv_blocks_free = self.block_manager.num_free_blocks
        self._stats.num_prefix_cache_hit_blocks = self.block_manager.num_prefix_hits
        return self._stats

    def shutdown(self) -> None:
        """Stops the workers and gives back this process's GPU memory (weights, KV cache, graphs, batch),
        so that another engine fits in the same process."""
        executor = getattr(self, "executor", None)
        if executor is None:
            return
        self._in_flight = None
        executor.shutdown()  # releases the runner (even if a caller still holds it) and empties torch's cache
        if self.config.device == "cuda":
            clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
            if clear is not None:  # cuBLAS keeps a workspace per handle and stream from the caching allocator
                clear()
            torch.cuda.empty_cache()


def host_memory_available() -> int | None:
    """Bytes the kernel says new allocations can have (Linux's MemAvailable), None where it does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_host_memory(config: EngineConfig) -> None:
    """On CPU ranks: refuses a model whose weights alone (one copy, the least the ranks hold together) exceed the
    host's available memory, before any process starts (it used to end in the OOM killer or a rank's traceback)."""
    available = host_memory_available()
    need = config.model_config.num_params * config.torch_dtype.itemsize
    if available is not None and need > available:
        raise ConfigError(
            f"{config.model} in {config.dtype} needs at least {need / 2**30:.1f} GiB of host memory for its weights; "
            f"{available / 2**30:.1f} GiB is available",
            field="model",
        )
