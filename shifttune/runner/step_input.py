"""A step as the model runs it: `StepTensors` (device tensors, identical on every rank), and `StepInput`,
the same step as host lists, which the step-timing code builds from synthetic sequences with
`build_step_input` and uploads (`ModelRunner.upload`). The engine's steps come through the persistent
batch instead (`input_batch.py`), which builds the same tensors on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from shifttune.kernels.attention import BlockSpan


@dataclass
class StepInput:
    mode: str  # TP | SP
    input_ids: list[int]
    positions: list[int]
    slot_mapping: list[int]
    query_start_loc: list[int]
    seq_lens: list[int]
    block_tables: list[list[int]]
    sample_indices: list[int]


@dataclass
class StepTensors:
    mode: str
    ids: torch.Tensor  # [T (+ SP padding)]
    positions: torch.Tensor  # [T (+ SP padding)]
    slot_mapping: torch.Tensor  # [T]
    query_start_loc: torch.Tensor  # [B + 1]
    seq_lens: torch.Tensor  # [B]
    block_tables: torch.Tensor  # [B, width]
    sample_indices: torch.Tensor  # [k] positions in the step of the tokens that sample
    query_start_loc_cpu: list[int]
    seq_lens_cpu: list[int]
    block_spans: list[BlockSpan] | None = None  # per sequence, of its block table (host)

    @property
    def num_tokens(self) -> int:
        return self.query_start_loc_cpu[-1]


@dataclass(frozen=True)
class ScheduledTokens:
    """One sequence's part of a step: `new_token_ids` at positions start.. (KV cache written there)."""

    new_token_ids: list[int]
    start: int  # tokens of this sequence already in the cache
    block_table: list[int]
    samples: bool  # the step computes its last known token, so a new one is sampled from it


def build_step_input(mode: str, seqs: Iterable[ScheduledTokens], block_size: int) -> StepInput:
    ids, pos, slots, qsl, lens, tables, samples = [], [], [], [0], [], [], []
    for s in seqs:
        end = s.start + len(s.new_token_ids)
        ids += s.new_token_ids
        pos += range(s.start, end)
        slots += [s.block_table[p // block_size] * block_size + p % block_size for p in range(s.start, end)]
        qsl.append(len(ids))
        lens.append(end)
        tables.append(s.block_table)
        if s.samples:
            samples.append(len(ids) - 1)
    return StepInput(mode, ids, pos, slots, qsl, lens, tables, samples)
