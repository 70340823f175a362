"""The runner's input contract: one engine step, flattened, identical on every rank.

The engine builds it from the scheduler's output, the step-timing code from synthetic sequences;
both go through `build_step_input`, so positions, slots and block tables are made one way only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


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
