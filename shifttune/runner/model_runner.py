"""Per-rank model runner: both weight layouts, the one paged KV cache they share, and step execution.

Every rank runs `execute` with the same `StepDelta` (broadcast by the driver) on its persistent batch,
and samples the step itself (the tokens come out the same on every rank). In SP x TP mode
the step's tokens are padded to a multiple of SP and each rank takes its contiguous slice; in TP mode
every rank takes all tokens. Either way attention sees all tokens for this rank's heads, so the cache
writes and reads are identical in both modes.

Steps the CUDA graphs cover replay them (paged attention); other steps run eagerly with a plan that
sends long prefill chunks to torch SDPA (`config.prefill_attention`, `kernels/prefill_attention.py`).
At start (`capture_graphs`) the runner also compiles or plans every kernel shape eager steps can meet,
so no request pays for it; `startup` records what that cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch

from shifttune.config import SP, TP, EngineConfig
from shifttune.kernels.attention import AttentionBackend, AttentionMetadata, BlockSpan
from shifttune.kernels.attention_ref import paged_attention_ref
from shifttune.kernels.prefill_attention import (
    SDPA_MIN_PAIRS,
    SDPA_MIN_TOKENS,
    SDPA_PAD,
    SdpaPrefill,
    StepAttention,
    probe_sdpa,
)
from shifttune.kernels.upload import to_device_parts
from shifttune.model.layers import RotaryEmbedding
from shifttune.model.layout import make_layout
from shifttune.model.llama import CausalLM
from shifttune.model.loader import init_dummy_weights, load_weights
from shifttune.parallel.state import ParallelState
from shifttune.runner.input_batch import InputBatch, NewRequest, StepDelta
from shifttune.runner.sampler import Logprob, RequestSampling, SamplerOutput, logprobs_dicts
from shifttune.runner.step_input import StepInput, StepTensors

GIB = 1 << 30
WARM_UP_REQ_ID = -1  # the start-up step's request (the engine's ids count from 0)


def attention_backend(name: str) -> AttentionBackend:
    if name == "triton":  # NOTE: lazy: Triton is a GPU-only dependency, the CPU path never loads it
        from shifttune.kernels.paged_attention import paged_attention

        return paged_attention
    return paged_attention_ref


class ModelRunner:
    def __init__(self, config: EngineConfig, state: ParallelState):
        self.config, self.state = config, state
        cfg, par = config.model_config, config.parallel
        self.modes = (TP, SP) if par.sp > 1 else (TP,)
        if config.device == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // par.world_size))
        dtype = config.torch_dtype
        torch.manual_seed(config.seed)
        attn = attention_backend(config.attention_backend)
        with torch.device(self.device):
            rotary = RotaryEmbedding(cfg.head_dim, config.max_model_len, cfg.rope_theta, cfg.rope_scaling)
            # With SP == 1 both modes are plain TP over the same shards: one copy of the weights.
            self.models = {
                mode: CausalLM(cfg, make_layout(mode, cfg, state), rotary, dtype, attn) for mode in self.modes
            }
        if config.load_format == "dummy":
            init_dummy_weights(list(self.models.values()), config.seed)
        else:
            load_weights(list(self.models.values()), config.model_path)
        self.num_kv_heads = len(self.models[TP].layout.cache_kv_heads)
        self.num_kv_blocks = self._num_kv_blocks()
        self.k_cache = self.v_cache = None
        self.graphs = None
        self.startup: dict[str, float] = {}  # seconds spent at start, by part (probe, graphs, warm-up)
        self.attention = self._step_attention()

    def _step_attention(self) -> StepAttention:
        """Which prefill chunks of eager steps go to SDPA (`config.prefill_attention`), after probing what
        SDPA can do here (cuDNN on GPU)."""
        c, cfg = self.config, self.config.model_config
        hq = cfg.num_heads // c.parallel.world_size
        cuda = self.device.type == "cuda"
        sdpa = None
        if c.prefill_attention == "sdpa" or (c.prefill_attention == "auto" and cuda):
            start = time.perf_counter()
            support = probe_sdpa(self.device, c.torch_dtype, hq, self.num_kv_heads, cfg.head_dim)
            self.startup["sdpa_probe_s"] = time.perf_counter() - start
            if c.prefill_attention == "sdpa" or support.backend == "cudnn":
                # NOTE: on CPU (math backend: no plans to bound) the pad is the block size, so that the tests'
                # short prompts go through the same padding and prefix split as long prompts on a GPU.
                sdpa = SdpaPrefill(support, SDPA_PAD if cuda else c.block_size)
        auto = c.prefill_attention == "auto"
        return StepAttention(sdpa, SDPA_MIN_TOKENS if auto else 2, c.attention_backend == "triton", hq,
                             self.num_kv_heads, SDPA_MIN_PAIRS if auto else 0)  # fmt: skip

    @property
    def _graph_inputs_in_one_launch(self) -> bool:
        """Graph steps get their inputs from one Triton launch (`StepGraphs.load`); Triton attention says Triton
        runs here (GPU, or the interpreter in CPU tests). Otherwise the torch path fills them."""
        return self.graphs is not None and self.config.attention_backend == "triton"

    @property
    def weight_bytes(self) -> dict[str, int]:
        """Bytes of each mode's weights on this rank (SP: 0 when SP == 1, where TP's weights serve both)."""

        def size(m: CausalLM) -> int:
            return sum(p.numel() * p.element_size() for p in {id(p): p for p in m.parameters()}.values())

        return {mode: size(self.models[mode]) if mode in self.models else 0 for mode in (TP, SP)}

    @property
    def kv_bytes_per_block(self) -> int:
        cfg = self.config.model_config
        elem = torch.empty(0, dtype=self.config.torch_dtype).element_size()
        return 2 * cfg.num_layers * self.config.block_size * self.num_kv_heads * cfg.head_dim * elem

    def _kv_blocks_memory_allows(self) -> int:
        """Blocks the KV-cache budget (GPU memory left after weights, or the CPU budget) can hold."""
        c = self.config
        if c.device == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            budget = free - (1 - c.gpu_memory_utilization) * total
        else:
            budget = c.cpu_kv_cache_gib * GIB
        return int(budget // self.kv_bytes_per_block)

    def _num_kv_blocks(self) -> int:
        c = self.config
        self.kv_blocks_memory_limit = self._kv_blocks_memory_allows()
        if c.num_kv_blocks is not None:
            return c.num_kv_blocks
        # never more than every sequence at full length could use
        most = c.max_num_seqs * -(-c.max_model_len // c.block_size)
        return min(self.kv_blocks_memory_limit, most)

    def allocate_kv_cache(self, num_blocks: int) -> None:
        """One cache, bound to the attention of both layouts: [layers, blocks + 1, block_size, kv heads, d].
        The extra last block is scratch: padded rows of captured graphs write there, never a real block."""
        cfg = self.config.model_config
        shape = (cfg.num_layers, num_blocks + 1, self.config.block_size, self.num_kv_heads, cfg.head_dim)
        self.scratch_block = num_blocks
        self.k_cache = torch.zeros(shape, dtype=self.config.torch_dtype, device=self.device)
        self.v_cache = torch.zeros(shape, dtype=self.config.torch_dtype, device=self.device)
        for model in self.models.values():
            for i, layer in enumerate(model.layers):
                layer.self_attn.k_cache, layer.self_attn.v_cache = self.k_cache[i], self.v_cache[i]
        c = self.config
        self.input_batch = InputBatch(c.max_num_seqs, -(-c.max_model_len // c.block_size), c.block_size,
                                      self.scratch_block, c.max_num_batched_tokens, self.device)  # fmt: skip

    def capture_graphs(self) -> None:
        """CUDA graphs for both modes (GPU, Triton attention, unless enforce_eager), then the warm-up of what
        eager steps would otherwise compile or plan at first use (GPU); after allocate_kv_cache."""
        self.graphs = None
        if self.config.device != "cuda":
            return
        if not self.config.enforce_eager:
            from shifttune.runner.cuda_graphs import StepGraphs  # NOTE: lazy: it loads Triton, GPU-only

            start = time.perf_counter()
            self.graphs = StepGraphs(self)
            self.startup["cuda_graphs_s"] = time.perf_counter() - start
        self.warm_up()

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compiles the pinned eager launches of the paged kernel, builds the cuDNN plans of the common SDPA
        shapes, runs one full-budget eager step per mode (and the fused kernels when graphs are off) and
        sampled (non-greedy) rows, so that the first request of each shape runs as fast as the next. GPU
        engines call it at start; it runs on CPU too (tests)."""
        c = self.config
        if self._graph_inputs_in_one_launch:
            self.graphs.warm_up_load(self.input_batch)
        attn = self.models[TP].layers[0].self_attn
        self.startup.update(
            self.attention.warm_up(attn.attn_fn, self.k_cache[0], self.v_cache[0], attn.scale,
                                   c.max_num_batched_tokens, c.max_model_len, self.num_kv_blocks, self.scratch_block)
        )  # fmt: skip
        if self.device.type == "cuda":
            # NOTE: the cuDNN plans' workspaces are freed but stay in torch's cache, which can then hold every byte
            # the KV cache left: CUDA could load no kernel module after (an H100 failed so, mistral-7b-v0.3 --ops).
            torch.cuda.empty_cache()
        start = time.perf_counter()
        # sampled rows first: every kernel module loads before the eager step's pools fill torch's cache
        batch, row = self.input_batch, self.input_batch.free_rows[-1]  # a row no request holds
        logits, rows = (
            torch.zeros(1, c.model_config.vocab_size, dtype=c.torch_dtype, device=self.device),  # as lm_head's
            torch.tensor([row], device=self.device),
        )
        sampler = batch.sampler
        for top_k in (5, -1):  # with and without a top-k cut (the kernels may specialize on it)
            sampler.set_rows([row], [RequestSampling(temperature=1.0, top_p=0.9, top_k=top_k, min_p=0.05)], [0])
            batch.sample(logits, [row], rows)
        sampler.release(row)
        # A full-budget prefill on the first blocks (no request holds them yet, and a request writes a block
        # before it reads it), through `execute` as a request's would run: the GEMM shapes, the allocator's
        # pools and the first launch of every kernel a long prompt's step makes (input building included:
        # CUDA loads a kernel's module at its first launch, which held an H200's first 8k prompt up 40 ms).
        n = max(1, min(c.max_num_batched_tokens, c.max_model_len - 1, self.num_kv_blocks * c.block_size))
        blocks = list(range(-(-n // c.block_size)))
        for mode in self.modes:
            new = NewRequest(WARM_UP_REQ_ID, blocks, 0, 0, RequestSampling())
            self.execute(StepDelta(mode, [WARM_UP_REQ_ID], [n], [0] * n, [0], new_requests=[new]))
            self.input_batch.update(StepDelta(mode, [], [], [], [], finished_req_ids=[WARM_UP_REQ_ID]))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # NOTE: torch keeps the memory cached: the first request reuses it
        self.startup["eager_step_and_sampler_s"] = time.perf_counter() - start

    def release(self) -> None:
        """Drops weights, KV cache, graphs and the persistent batch now (shutdown), even where something
        still holds the runner."""
        if self.graphs is not None:
            self.graphs.release()
        self.graphs = None
        for model in self.models.values():  # NOTE: each layer's cache is a view that keeps the whole cache alive
            for layer in model.layers:
                layer.self_attn.k_cache = layer.self_attn.v_cache = None
        self.models = {}
        self.k_cache = self.v_cache = None
        self.input_batch = None

    def model_for(self, mode: str) -> CausalLM:
        return self.models.get(mode, self.models[TP])

    def forward(
        self,
        model: CausalLM,
        ids: torch.Tensor,
        pos: torch.Tensor,
        meta: AttentionMetadata,
        num_tokens: int,
        sample_indices: torch.Tensor | None,
    ) -> torch.Tensor | None:
        """ids/pos hold the step's tokens padded to a multiple of the layout's SP; returns the logits of
        the rows at `sample_indices` (None when no row samples: partial prefill chunks only)."""
        sp = model.layout.sp
        if sp > 1:
            t_local = ids.shape[0] // sp
            start = model.layout.sp_group.rank_in_group * t_local
            ids, pos = ids[start : start + t_local], pos[start : start + t_local]
        hidden = model(ids, pos, meta, num_tokens)
        return None if sample_indices is None else model.compute_logits(hidden, sample_indices)

    def upload(self, step: StepInput, pad_tokens: int = 0) -> StepTensors:
        """A host-built step's inputs in one pinned host buffer and one non-blocking copy (ids and
        positions padded by `pad_tokens` zeros; block-table rows padded with the scratch block)."""
        width = max(len(row) for row in step.block_tables)
        tables = [x for row in step.block_tables for x in row + [self.scratch_block] * (width - len(row))]
        pad = [0] * pad_tokens
        lists = (
            step.input_ids + pad,
            step.positions + pad,
            step.slot_mapping,
            step.query_start_loc,
            step.seq_lens,
            tables,
            step.sample_indices,
        )
        out = to_device_parts(lists, torch.int64, self.device)
        out[5] = out[5].view(len(step.block_tables), width)
        qsl = step.query_start_loc
        # only chunks of several tokens can go to prefill attention (`StepAttention.takes`), which reads these
        spans = [BlockSpan().extend(row) if qsl[i + 1] - qsl[i] > 1 else BlockSpan()
                 for i, row in enumerate(step.block_tables)]  # fmt: skip
        return StepTensors(step.mode, *out, step.query_start_loc, step.seq_lens, spans)

    @torch.inference_mode()
    def execute_model(self, step: StepInput) -> torch.Tensor | None:
        """Runs a host-built step (step timing); returns the logits of its sampled tokens on rank 0."""
        return self.prepare_model_step(step)()

    @torch.inference_mode()
    def prepare_model_step(self, step: StepInput) -> Callable[[], torch.Tensor | None]:
        """A host-built step's inputs uploaded once; each call of the result runs its forward on them (its CUDA
        graph when one fits) and returns the logits of its sampled tokens on rank 0. Step timing calls it
        back to back: the device time of a step, without the host building its inputs each time."""
        graphs = self.graphs is not None and self.graphs.can_run(
            len(step.input_ids), len(step.seq_lens), len(step.sample_indices), step.mode
        )
        pad = 0 if graphs else -len(step.input_ids) % self.model_for(step.mode).layout.sp
        tensors = self.upload(step, pad)

        @torch.inference_mode()
        def run() -> torch.Tensor | None:
            logits = self._run(tensors, graphs)
            return logits if self.state.rank == 0 else None

        return run

    @torch.inference_mode()
    def execute(self, delta: StepDelta) -> ModelRunnerOutput | None:
        """Runs one engine step from its delta and samples it, without waiting for the device; on rank 0
        returns a handle whose `result()` reads the sampled tokens back."""
        timer = StepTimer(self.device)
        batch = self.input_batch
        batch.update(delta)
        t, b, k = len(delta.token_ids), len(delta.req_ids), len(delta.sampling)
        graphs = self.graphs is not None and self.graphs.can_run(t, b, k, delta.mode)
        if graphs and self._graph_inputs_in_one_launch:
            rows, rows_dev = batch.load_graph(delta, self.graphs)
            logits = self.graphs.replay(delta.mode, t, b, k)
        else:
            step, rows, rows_dev = batch.prepare(delta, 0 if graphs else -t % self.model_for(delta.mode).layout.sp)
            logits = self._run(step, graphs)
        batch.advance(delta)
        sampled = batch.sample(logits, rows, rows_dev) if k else None
        if self.state.rank != 0:
            return None
        return ModelRunnerOutput(sampled, [batch.sampler.settings[r].logprobs for r in rows], timer)

    def _run(self, step: StepTensors, graphs: bool) -> torch.Tensor | None:
        if graphs:
            return self.graphs.run(step)
        model = self.model_for(step.mode)
        meta = AttentionMetadata(
            slot_mapping=step.slot_mapping,
            query_start_loc=step.query_start_loc,
            seq_lens=step.seq_lens,
            block_tables=step.block_tables,
            query_start_loc_cpu=step.query_start_loc_cpu,
            seq_lens_cpu=step.seq_lens_cpu,
            block_spans=step.block_spans,
        )
        meta.plan = self.attention.plan(meta)
        samples = step.sample_indices if step.sample_indices.numel() else None
        return self.forward(model, step.ids, step.positions, meta, step.num_tokens, samples)


class StepTimer:
    """A step's device time: CUDA events around it on GPU (read when the result is), wall time on CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self.start.record()
        else:
            self.start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.end.record()
        else:
            self.end = time.perf_counter()

    def seconds(self) -> float:
        """After the step's work is done."""
        return self.start.elapsed_time(self.end) / 1e3 if self.cuda else self.end - self.start


class ModelRunnerOutput:
    """One step's sampled tokens (and logprobs), copied to pinned host memory behind the step's work."""

    def __init__(self, sampled: SamplerOutput | None, want: list[int | None], timer: StepTimer):
        self.want, self.timer = want, timer
        self.errors = (sampled.errors if sampled is not None else None) or {}
        self.host: list[torch.Tensor | None] = []
        if sampled is not None:
            pin = sampled.tokens.is_cuda
            parts = (sampled.tokens, sampled.chosen_logprobs, sampled.chosen_ranks, sampled.top_logprobs,
                     sampled.top_ids)  # fmt: skip
            self.host = [None if x is None else x.to("cpu", non_blocking=True) if pin else x for x in parts]
        timer.stop()
        self.ready = None
        if timer.cuda:
            self.ready = torch.cuda.Event()
            self.ready.record()

    def result(self) -> tuple[list[int], list[dict[int, Logprob] | None], dict[int, str], float]:
        """(tokens, logprobs per token, errors by position, device seconds of the step); waits for the step."""
        if self.ready is not None:
            self.ready.synchronize()
        if not self.host:
            return [], [], {}, self.timer.seconds()
        tokens, chosen, ranks, top_vals, top_ids = (None if x is None else x.tolist() for x in self.host)
        lps = logprobs_dicts(tokens, chosen, ranks, top_vals, top_ids, self.want)
        return tokens, lps, self.errors, self.timer.seconds()
