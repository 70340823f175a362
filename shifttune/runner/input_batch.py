"""The persistent batch: what every rank keeps about each running request across steps, and the step
message that updates it (only what changed), turned into the step's device tensors.

The driver sends a `StepDelta` per step: new requests with their blocks and sampling settings, blocks
appended to running ones, requests gone (finished, aborted, preempted), and the scheduled requests with
their token counts. Its size grows with the batch, not with context length: block tables, positions
and the sampling state stay here. Positions, slot mappings and the step's block tables are built with
tensor ops on the device. A new token of -1 stands for the token this request's previous step sampled,
which is still on the device (the engine schedules step n + 1 before it has read step n's tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from shifttune.kernels.attention import BlockSpan
from shifttune.kernels.upload import to_device, to_device_parts
from shifttune.runner.sampler import RequestSampling, Sampler
from shifttune.runner.step_input import StepTensors

PENDING = -1  # a new token the previous step sampled on the device


@dataclass
class NewRequest:
    req_id: int
    block_ids: list[int]
    num_computed_tokens: int  # already in the cache (prefix-cache hits)
    num_output_tokens: int  # sampled before (a request resumed after preemption)
    sampling: RequestSampling


@dataclass
class StepDelta:
    mode: str
    req_ids: list[int]  # scheduled, in step order
    num_tokens: list[int]  # new tokens of each
    token_ids: list[int]  # those tokens, flattened; PENDING where the device holds it
    sampling: list[int]  # positions in req_ids of the requests that sample a token this step
    new_requests: list[NewRequest] = field(default_factory=list)
    new_block_ids: list[tuple[int, list[int]]] = field(default_factory=list)  # (req_id, blocks appended)
    finished_req_ids: list[int] = field(default_factory=list)  # gone since the last step: free their rows


class InputBatch:
    def __init__(
        self, max_rows: int, max_blocks: int, block_size: int, scratch_block: int, max_tokens: int, device: torch.device
    ):
        self.block_size, self.device = block_size, device
        self.rows: dict[int, int] = {}  # req id -> row
        self.free_rows = list(range(max_rows - 1, -1, -1))
        self.num_computed = [0] * max_rows
        self.block_spans = [BlockSpan() for _ in range(max_rows)]  # each row's blocks so far: their count, id range
        self.block_table = torch.full((max_rows, max_blocks), scratch_block, dtype=torch.int64, device=device)
        self.last_token = torch.zeros(max_rows, dtype=torch.int64, device=device)
        self.sampler = Sampler(max_rows, device)
        self._arange = torch.arange(max(max_rows, max_tokens), dtype=torch.int64, device=device)

    def update(self, delta: StepDelta) -> None:
        """Applies what changed since the last step (one upload for every block-table write)."""
        for req_id in delta.finished_req_ids:
            row = self.rows.pop(req_id, None)
            if row is not None:
                self.sampler.release(row)
                self.free_rows.append(row)
        writes: list[list[int]] = [[], [], []]  # rows, columns, block ids
        new_rows = []
        for r in delta.new_requests:
            row = self.rows[r.req_id] = self.free_rows.pop()
            new_rows.append(row)
            self.num_computed[row], self.block_spans[row] = r.num_computed_tokens, BlockSpan()
            self._append_blocks(row, r.block_ids, writes)
        for req_id, blocks in delta.new_block_ids:
            self._append_blocks(self.rows[req_id], blocks, writes)
        if writes[0]:
            w = to_device(writes, torch.int64, self.device)
            self.block_table[w[0], w[1]] = w[2]
        self.sampler.set_rows(new_rows, [r.sampling for r in delta.new_requests],
                              [r.num_output_tokens for r in delta.new_requests])  # fmt: skip

    def _append_blocks(self, row: int, blocks: list[int], writes: list[list[int]]) -> None:
        span = self.block_spans[row]
        n = len(span.lo)  # blocks the row holds
        span.extend(blocks)
        writes[0] += [row] * len(blocks)
        writes[1] += range(n, n + len(blocks))
        writes[2] += blocks

    def prepare(self, delta: StepDelta, pad_tokens: int = 0) -> tuple[StepTensors, list[int], torch.Tensor]:
        """The step's device inputs (ids and positions padded by `pad_tokens`), and the rows that sample
        (host list and the same on the device)."""
        rows, starts, qsl, lens, samples, sample_rows = self._host_parts(delta)
        t, b = qsl[-1], len(rows)
        parts = (delta.token_ids, rows, starts, qsl, lens, samples, sample_rows)
        ids, rows_dev, starts_dev, qsl_dev, lens_dev, samples_dev, sample_rows_dev = to_device_parts(
            parts, torch.int64, self.device
        )
        if t == b:  # decode only: one token per request
            seq_of_token = self._arange[:b]
        else:
            seq_of_token = torch.repeat_interleave(self._arange[:b], qsl_dev.diff(), output_size=t)
        pos = starts_dev[seq_of_token] + self._arange[:t] - qsl_dev[seq_of_token]
        row_of_token = rows_dev[seq_of_token]
        ids = torch.where(ids == PENDING, self.last_token[row_of_token], ids)
        bs = self.block_size
        slots = self.block_table[row_of_token, pos // bs] * bs + pos % bs
        width = -(-max(lens) // bs)
        tables = self.block_table[rows_dev, :width]
        if pad_tokens:
            zeros = torch.zeros(pad_tokens, dtype=torch.int64, device=self.device)
            ids, pos = torch.cat([ids, zeros]), torch.cat([pos, zeros])
        spans = [self.block_spans[r] for r in rows]
        step = StepTensors(delta.mode, ids, pos, slots, qsl_dev, lens_dev, tables, samples_dev, qsl, lens, spans)
        return step, sample_rows, sample_rows_dev

    def load_graph(self, delta: StepDelta, graphs) -> tuple[list[int], torch.Tensor]:
        """`prepare` for a step a CUDA graph runs (Triton): one upload, and one launch that writes the step's
        inputs straight into the graph's buffers (`StepGraphs.load`). Returns the rows that sample (host
        list and the same on the device)."""
        rows, starts, qsl, lens, samples, sample_rows = self._host_parts(delta)
        parts = (delta.token_ids, rows, starts, qsl, samples, sample_rows)
        *uploaded, sample_rows_dev = to_device_parts(parts, torch.int64, self.device)
        graphs.load(uploaded, self, -(-max(lens) // self.block_size), sum(lens))
        return sample_rows, sample_rows_dev

    def _host_parts(self, delta: StepDelta) -> tuple[list[int], ...]:
        """(rows, starts, query starts, lengths, sample indices, sampling rows) of a step, from host state."""
        rows = [self.rows[r] for r in delta.req_ids]
        starts = [self.num_computed[r] for r in rows]
        qsl = [0]
        for n in delta.num_tokens:
            qsl.append(qsl[-1] + n)
        lens = [s + n for s, n in zip(starts, delta.num_tokens)]
        samples = [qsl[i + 1] - 1 for i in delta.sampling]
        return rows, starts, qsl, lens, samples, [rows[i] for i in delta.sampling]

    def advance(self, delta: StepDelta) -> None:
        """After the step ran: its tokens are in the cache."""
        for req_id, n in zip(delta.req_ids, delta.num_tokens):
            self.num_computed[self.rows[req_id]] += n

    def sample(self, logits: torch.Tensor, rows: list[int], rows_dev: torch.Tensor):
        """Samples the rows' next tokens and keeps them on the device for the next step's PENDING inputs."""
        return self.sampler(logits, rows, rows_dev, self.last_token)
