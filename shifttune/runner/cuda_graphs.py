"""CUDA graphs for pure-decode steps, one set per mode (TP and SP x TP), padded to captured batch sizes.

A decode step of B sequences replays the graph of the smallest captured size >= B in the step's mode;
the rows past B are dummy sequences of one token that read and write only the scratch KV block. Both
modes' graphs share one memory pool and one set of input buffers, so switching modes between steps is
just replaying the other graph. NCCL collectives (all-reduce, all-to-all, all-gather) are captured too.
"""

from __future__ import annotations

import torch

from shifttune.kernels.attention_ref import AttentionMetadata
from shifttune.kernels.paged_attention import choose_num_splits

BATCH_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, runner):
        self.runner = runner
        cfg = runner.config
        limit = min(cfg.cuda_graph_max_batch, cfg.max_num_seqs, cfg.max_num_batched_tokens)
        self.sizes = [b for b in BATCH_SIZES if b <= limit] or [1]
        if self.sizes[-1] < limit:
            self.sizes.append(limit)
        max_bs = self.sizes[-1]
        sp = cfg.parallel.sp
        dev, bs = runner.device, cfg.block_size
        width = -(-cfg.max_model_len // bs)
        self.ids = torch.zeros(max_bs + sp, dtype=torch.int64, device=dev)
        self.pos = torch.zeros(max_bs + sp, dtype=torch.int64, device=dev)
        self.slots = torch.zeros(max_bs, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(max_bs, dtype=torch.int32, device=dev)
        self.qsl = torch.arange(max_bs + 1, dtype=torch.int32, device=dev)
        self.block_tables = torch.zeros(max_bs, width, dtype=torch.int32, device=dev)
        self.samples = torch.arange(max_bs, dtype=torch.int64, device=dev)
        self.graphs: dict[tuple[str, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.num_replays = 0
        self._reset_padding(0, max_bs)
        modes = ["tp", "sp"] if sp > 1 else ["tp"]
        pool = None
        with torch.inference_mode():
            for size in reversed(self.sizes):  # largest first: later graphs reuse its memory
                for mode in modes:
                    graph = torch.cuda.CUDAGraph()
                    self._forward(mode, size)  # warm-up: Triton compiles, NCCL sets up
                    torch.cuda.synchronize()
                    with torch.cuda.graph(graph, pool=pool):
                        logits = self._forward(mode, size)
                    pool = graph.pool()
                    self.graphs[(mode, size)] = (graph, logits)
        torch.cuda.synchronize()

    def _forward(self, mode: str, size: int) -> torch.Tensor:
        model = self.runner.model_for(mode)
        sp = model.layout.sp
        padded = -(-size // sp) * sp
        hk = len(model.layout.cache_kv_heads)
        meta = AttentionMetadata(
            slot_mapping=self.slots[:size], query_start_loc=self.qsl[: size + 1], seq_lens=self.seq_lens[:size],
            block_tables=self.block_tables[:size], query_start_loc_cpu=None, seq_lens_cpu=None,
            num_splits=choose_num_splits(size, hk, self.runner.config.max_model_len),
        )
        return self.runner.forward(model, self.ids[:padded], self.pos[:padded], meta, size, self.samples[:size])

    def _reset_padding(self, start: int, stop: int) -> None:
        scratch = self.runner.scratch_block
        self.seq_lens[start:stop] = 1
        self.slots[start:stop] = scratch * self.runner.config.block_size
        self.block_tables[start:stop, 0] = scratch

    def can_run(self, step) -> bool:
        n = len(step.seq_lens)
        return n <= self.sizes[-1] and len(step.input_ids) == n == len(step.sample_indices)

    def run(self, step) -> torch.Tensor:
        n = len(step.seq_lens)
        size = next(s for s in self.sizes if s >= n)
        width = max(len(b) for b in step.block_tables)
        tables = [x for b in step.block_tables for x in b + [0] * (width - len(b))]
        ids, pos, slots, lens, flat_tables = self.runner._upload(
            step.input_ids, step.positions, step.slot_mapping, step.seq_lens, tables)
        self.ids[:n].copy_(ids)
        self.pos[:n].copy_(pos)
        self.slots[:n].copy_(slots)
        self.seq_lens[:n].copy_(lens)
        self.block_tables[:n, :width].copy_(flat_tables.view(n, width))
        self._reset_padding(n, size)
        graph, logits = self.graphs[(step.mode, size)]
        graph.replay()
        self.num_replays += 1
        return logits[:n]
