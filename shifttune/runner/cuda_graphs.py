"""CUDA graphs for steps of up to `cuda_graph_max_tokens` tokens, one set per mode, padded to buckets.

A step of T tokens over n sequences replays the graph of the smallest token bucket b >= T in the
step's mode. The graph has room for S_b = min(b, max_num_seqs) sequences: the real ones first, then
one padding sequence that owns the b - T padding tokens and empty ones after it. Padding reads and
writes only the scratch KV block. Decode batches are the case T = n; mixed and prefill steps of a
few hundred tokens, which are launch-bound when run eagerly, are covered too. Both modes' graphs
share one memory pool and one set of input buffers, so switching modes between steps is just
replaying the other graph. NCCL collectives (all-reduce, all-to-all, all-gather) are captured too.

With `capture=False` the same padded buffers run eagerly: that is how CPU tests check the padding.

`sp_cuda_graph_tokens_per_gpu` (EngineConfig, experimental, off by default) gives SP mode buckets past
`cuda_graph_max_tokens` as well, up to that many tokens per GPU of the deployment: eager SP steps at P = 4-8 wait on
the host.

A graph fixes its attention's split-KV ways for its bucket as if the bucket's sequence capacity held its
tokens, so a prefill chunk of one or a few sequences in a chunk bucket runs split too little (with 257
sequences of capacity, unsplit), on as few programs as its query blocks x KV heads (at TP 8 a quarter of
an H100 at 512 tokens). With CHUNK_SPLIT_GRAPHS (`kernels/split_kv.py`) such buckets also get a graph split
for one sequence's chunk, replayed when the step's own sequences would split more than the bucket's graph does
and their cached + new tokens are at least twice their new tokens (a prompt's first chunk gains nothing from the
split).
"""

from __future__ import annotations

import torch

from shifttune.config import SP
from shifttune.kernels import split_kv
from shifttune.kernels.attention import AttentionMetadata
from shifttune.kernels.launch import sm_count
from shifttune.kernels.split_kv import choose_num_splits
from shifttune.kernels.upload import to_device_parts
from shifttune.runner.step_input import StepTensors

TOKEN_BUCKETS = (
    1,
    2,
    4,
    8,
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    160,
    192,
    224,
    256,
    320,
    384,
    448,
    512,
    640,
    768,
    1024,
    1280,
    1536,
    2048,
)
# SP-mode buckets past `cuda_graph_max_tokens`, up to `sp_cuda_graph_tokens_per_gpu` x TP x SP tokens (and that
# limit itself). NOTE: the option is off by default until checked. Eager SP steps at P = 4-8 are paced by the host (a
# 4096-token step 1.1-3.4x its device time on H100s, 1.6-3.4x at P = 8); replayed from graphs (the paged Triton
# kernel then runs their attention, 7-23% slower than cuDNN SDPA) one rank's 4096-token step took 26-65% less time at
# 512 tokens a GPU (SP 4 x TP 2, SP 8), but at 1024 a GPU it ranged from -30% to +13% (SP 4) and was +6% at 8192
# tokens on SP 8 (profiles/runs/s23_h100/h_eager_vs_graphed, k_sp_graph_rule, l_sp_graph_option): 512 is the
# candidate. At SP 2, SP 2 x TP 2 and SP 4, SP-mode graphs past a 64-token graph limit pass the HF oracle
# (tests/test_gpu.py, profiles/runs/s25_gpu c and f); past 2048 tokens they have run on no multi-GPU machine (CPU
# ranks cannot check them: graphs need the Triton kernel, whose interpreter runs in the test's own process only),
# and the predictions do not mirror them yet.
SP_TOKEN_BUCKETS = (3072, 4096, 6144, 8192, 12288, 16384)


class StepGraphs:
    def __init__(self, runner, capture: bool = True):
        self.runner, self.capture = runner, capture
        cfg = runner.config
        limit = min(cfg.cuda_graph_max_tokens, cfg.max_num_batched_tokens)
        self.buckets = [b for b in TOKEN_BUCKETS if b <= limit] or [1]
        if self.buckets[-1] < limit:
            self.buckets.append(limit)
        # one row more than max_num_seqs: a full batch still has room for the padding sequence
        self.max_seqs = min(cfg.max_num_seqs + 1, self.buckets[-1])
        # the most tokens a step of each mode may hold to replay a graph (sp_cuda_graph_tokens_per_gpu: SP further)
        self.mode_limit = dict.fromkeys(runner.modes, self.buckets[-1])
        if SP in runner.modes:
            sp_limit = min(cfg.sp_cuda_graph_tokens_per_gpu * cfg.parallel.world_size, cfg.max_num_batched_tokens)
            if sp_limit > self.buckets[-1]:
                self.buckets += [b for b in SP_TOKEN_BUCKETS if self.buckets[-1] < b < sp_limit] + [sp_limit]
                self.mode_limit[SP] = sp_limit
        t_max, s_max, sp = self.buckets[-1], self.max_seqs, cfg.parallel.sp
        dev, bs = runner.device, cfg.block_size
        # wide enough for real sequences and for the padding sequence, which may own up to t_max tokens
        self.width = max(-(-cfg.max_model_len // bs), -(-t_max // bs))
        self.scratch_slot = runner.scratch_block * bs
        self.ids = torch.zeros(t_max + sp, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(t_max + sp, dtype=torch.int64, device=dev)
        self.slots = torch.full((t_max,), self.scratch_slot, dtype=torch.int64, device=dev)
        self.qsl = torch.zeros(s_max + 1, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(s_max, dtype=torch.int64, device=dev)
        self.block_tables = torch.full((s_max, self.width), runner.scratch_block, dtype=torch.int64, device=dev)
        self.samples = torch.zeros(s_max, dtype=torch.int64, device=dev)
        self.rows_in_use = 0  # block-table rows holding real sequences since the last step
        self.kv_tokens = 0  # cached + new tokens of the step in the buffers
        # NOTE: every graph writes its logits here; a [rows, vocab] output per bucket would keep
        # ~0.05 GB per bucket alive at a 128k vocabulary, allocated after the KV cache was sized.
        self.logits = torch.empty(s_max, cfg.model_config.vocab_size, dtype=cfg.torch_dtype, device=dev)
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.split_graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}  # CHUNK_SPLIT_GRAPHS's
        # (mode, bucket) -> (split-KV ways of its split graph, the most sequences a step may hold to replay it)
        self.split_plan = self._split_plan(runner.modes) if split_kv.CHUNK_SPLIT_GRAPHS else {}
        self.num_replays = 0
        if not capture:
            return
        pool = None
        with torch.inference_mode():
            for b in reversed(self.buckets):  # largest first: later graphs reuse its memory
                self._fill_padding(0, 0, 0, b)
                for mode in self.modes_for(b):
                    for split in (False, True) if (mode, b) in self.split_plan else (False,):
                        graph = torch.cuda.CUDAGraph()
                        self._forward(mode, b, split)  # warm-up: Triton compiles, NCCL sets up
                        torch.cuda.synchronize()
                        with torch.cuda.graph(graph, pool=pool):
                            logits = self._forward(mode, b, split)
                            self.logits[: logits.shape[0]].copy_(logits)
                        del logits  # its pool memory serves the next capture
                        pool = graph.pool()
                        (self.split_graphs if split else self.graphs)[(mode, b)] = graph
        torch.cuda.synchronize()

    def release(self) -> None:
        """Destroys every captured graph now, whoever still holds this object.
        NOTE: NCCL (>= 2.26) will not destroy a communicator while a CUDA graph that captured its collectives is
        alive (`commDestroySync` polls until the graphs die), so a rank must call this before it leaves its
        process group, or that rank hangs on shutdown."""
        for graph in [*self.graphs.values(), *self.split_graphs.values()]:
            graph.reset()
        self.graphs.clear()
        self.split_graphs.clear()

    def modes_for(self, bucket: int) -> list[str]:
        """The modes whose graphs include this bucket (SP only, past `cuda_graph_max_tokens`)."""
        return [mode for mode in self.runner.modes if bucket <= self.mode_limit[mode]]

    def seqs_for(self, bucket: int) -> int:
        return min(bucket, self.max_seqs)

    def block_m_for(self, bucket: int) -> int:
        """Query rows per attention program of a bucket's graph. NOTE: the padded sequence count says nothing
        about tokens per sequence: buckets past the sequence limit hold prefill chunks, which want tall tiles."""
        return 16 if bucket < self.max_seqs else 64

    def _heads(self, mode: str) -> tuple[int, int]:
        """(query heads, cached KV heads) of this rank's attention in `mode`."""
        cfg = self.runner.config
        hk = len(self.runner.model_for(mode).layout.cache_kv_heads)
        return cfg.model_config.num_heads // cfg.parallel.world_size, hk

    def _split_plan(self, modes) -> dict[tuple[str, int], tuple[int, int]]:
        """CHUNK_SPLIT_GRAPHS's plan: for each chunk bucket (past the sequence limit) whose graph splits less
        than one sequence's chunk of its size would, the chunk's split-KV ways and the most sequences a step may
        hold while its own demand (`choose_num_splits` with its sequences and a padding one) still splits more
        than the bucket's graph."""
        plan, sms = {}, sm_count(self.runner.device)
        for mode in modes:
            hq, hk = self._heads(mode)
            for b in self.buckets:
                if b < self.max_seqs or b > self.mode_limit[mode]:
                    continue
                block_m = self.block_m_for(b)
                main = choose_num_splits(b, self.seqs_for(b), hq, hk, block_m, sms)
                wants = [
                    n for n in range(1, self.seqs_for(b)) if choose_num_splits(b, n + 1, hq, hk, block_m, sms) > main
                ]
                if wants:  # NOTE: the demand falls as sequences grow: `wants` is 1..max(wants)
                    plan[(mode, b)] = (choose_num_splits(b, 1, hq, hk, block_m, sms), max(wants))
        return plan

    def use_split_graph(self, mode: str, b: int, num_seqs: int, num_tokens: int, kv_tokens: int) -> bool:
        """Whether a step of `num_seqs` sequences, `num_tokens` new tokens and `kv_tokens` cached + new tokens in
        bucket b replays the bucket's split graph (CHUNK_SPLIT_GRAPHS)."""
        plan = self.split_plan.get((mode, b))
        return plan is not None and num_seqs <= plan[1] and kv_tokens >= split_kv.CHUNK_SPLIT_MIN_KV_RATIO * num_tokens

    def _forward(self, mode: str, b: int, split: bool = False) -> torch.Tensor:
        model = self.runner.model_for(mode)
        sp, s = model.layout.sp, self.seqs_for(b)
        hq, hk = self._heads(mode)
        padded = -(-b // sp) * sp
        block_m = self.block_m_for(b)
        meta = AttentionMetadata(
            slot_mapping=self.slots[:b],
            query_start_loc=self.qsl[: s + 1],
            seq_lens=self.seq_lens[:s],
            block_tables=self.block_tables[:s],
            query_start_loc_cpu=None,
            seq_lens_cpu=None,
            num_splits=self.split_plan[(mode, b)][0]
            if split
            else choose_num_splits(b, s, hq, hk, block_m, sm_count(self.runner.device)),
            block_m=block_m,
        )
        return self.runner.forward(model, self.ids[:padded], self.pos[:padded], meta, b, self.samples[:s])

    def _fill_padding(self, num_tokens: int, num_seqs: int, num_samples: int, b: int) -> None:
        """Padding for a step of `num_tokens` real tokens over `num_seqs` sequences in bucket b."""
        s = self.seqs_for(b)
        self.ids[num_tokens:b].zero_()
        self.pos[num_tokens:b].zero_()
        self.slots[num_tokens:b].fill_(self.scratch_slot)
        self.qsl[num_seqs + 1 : s + 1].fill_(b)  # one padding sequence owns tokens num_tokens..b
        if num_seqs < s:
            self.seq_lens[num_seqs : num_seqs + 1].fill_(max(1, b - num_tokens))  # a fill: no host-to-device copy
            self.seq_lens[num_seqs + 1 : s].fill_(1)
        if self.rows_in_use > num_seqs:
            self.block_tables[num_seqs : self.rows_in_use].fill_(self.runner.scratch_block)
        self.rows_in_use = num_seqs
        self.samples[num_samples:s].zero_()

    def can_run(self, num_tokens: int, num_seqs: int, num_samples: int, mode: str) -> bool:
        t = num_tokens
        if t > self.mode_limit[mode]:
            return False
        b = self.bucket_for(t)
        return num_seqs <= self.seqs_for(b) - (1 if t < b else 0) and num_samples <= self.seqs_for(b)

    def bucket_for(self, num_tokens: int) -> int:
        return next(x for x in self.buckets if x >= num_tokens)

    def run(self, step: StepTensors) -> torch.Tensor:
        """Copies a step's inputs into the graph's buffers, pads them and replays (the torch path)."""
        self.copy_inputs(step)
        return self.replay(step.mode, step.num_tokens, len(step.seq_lens_cpu), step.sample_indices.shape[0])

    def copy_inputs(self, step: StepTensors) -> None:
        t, n, k = step.num_tokens, len(step.seq_lens_cpu), step.sample_indices.shape[0]
        b = self.bucket_for(t)
        self.ids[:t].copy_(step.ids[:t])
        self.pos[:t].copy_(step.positions[:t])
        self.slots[:t].copy_(step.slot_mapping)
        self.qsl[: n + 1].copy_(step.query_start_loc)
        self.seq_lens[:n].copy_(step.seq_lens)
        self.block_tables[:n, : step.block_tables.shape[1]].copy_(step.block_tables)
        self.samples[:k].copy_(step.sample_indices)
        self.kv_tokens = sum(step.seq_lens_cpu)
        self._fill_padding(t, n, k, b)

    def load(self, parts: list[torch.Tensor], batch, width: int, kv_tokens: int) -> None:
        """Writes a step's inputs and padding into the graph's buffers in one launch (GPU,
        `kernels/step_inputs.py`) from its upload `parts` (token ids, rows, starts, query starts, sample
        indices) and the persistent batch; `width`: block-table columns the step reads; `kv_tokens`: its
        cached + new tokens."""
        from shifttune.kernels.step_inputs import load_graph_inputs  # NOTE: lazy: Triton is GPU-only here
        from shifttune.runner.input_batch import PENDING

        b = self.bucket_for(parts[0].shape[0])
        buffers = (self.ids, self.pos, self.slots, self.qsl, self.seq_lens, self.block_tables, self.samples)
        load_graph_inputs(parts, batch.block_table, batch.last_token, buffers, b, self.seqs_for(b), width,
                          self.rows_in_use, self.runner.scratch_block, self.runner.config.block_size,
                          PENDING)  # fmt: skip
        self.kv_tokens = kv_tokens

    def warm_up_load(self, batch) -> None:
        """Compiles the graph-inputs kernel at start: one token of a row no request holds, written into the
        buffers (row 0 of the block tables gets that row's first block: the next step resets or rewrites it)."""
        row = batch.free_rows[-1]
        parts = to_device_parts(([0], [row], [0], [0, 1], [0]), torch.int64, self.runner.device)
        self.load(parts, batch, 1, 1)
        self.rows_in_use = max(self.rows_in_use, 1)

    def _pick(self, mode: str, num_tokens: int, num_seqs: int) -> tuple[int, bool]:
        """(bucket, whether its split graph) for the step whose inputs are in the buffers."""
        b = self.bucket_for(num_tokens)
        return b, self.use_split_graph(mode, b, num_seqs, num_tokens, self.kv_tokens)

    def graph_for(self, mode: str, num_tokens: int, num_seqs: int) -> torch.cuda.CUDAGraph:
        """The captured graph that the step whose inputs are in the buffers replays."""
        b, split = self._pick(mode, num_tokens, num_seqs)
        return (self.split_graphs if split else self.graphs)[(mode, b)]

    def replay(self, mode: str, num_tokens: int, num_seqs: int, num_samples: int) -> torch.Tensor:
        """Runs the step whose inputs are in the buffers; returns its logits [num_samples, vocab]."""
        self.rows_in_use = num_seqs
        self.num_replays += 1
        if not self.capture:
            return self._forward(mode, *self._pick(mode, num_tokens, num_seqs))[:num_samples]
        self.graph_for(mode, num_tokens, num_seqs).replay()
        return self.logits[:num_samples]
