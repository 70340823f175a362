"""The attention backend interface: per-step metadata, the KV-cache write, and `attend`, the one call a layer makes.

A paged backend is a function `attn(q, k_cache, v_cache, meta, scale) -> out` over the paged cache,
after `write_kv` has put the step's new K/V in it: `torch` (`attention_ref.py`, the oracle, CPU) or
`triton` (`paged_attention.py`, GPU). The model runner picks one. For an eager step the runner may also
attach a plan to the metadata (`prefill_attention.StepPlan`: long prefill chunks through torch SDPA,
the rest through the paged backend); `attend` runs the plan when there is one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # NOTE: prefill_attention imports this module; the plan's type is only named here
    from shifttune.kernels.prefill_attention import StepPlan


@dataclass
class BlockSpan:
    """The lowest and highest block id among a block table's first 1, 2, ... blocks: where its first n blocks
    are one range of the paged cache (in any order), prefill attention reads their keys as one slice."""

    lo: list[int] = field(default_factory=list)
    hi: list[int] = field(default_factory=list)

    def extend(self, blocks: Iterable[int]) -> BlockSpan:
        for b in blocks:
            self.lo.append(min(self.lo[-1], b) if self.lo else b)
            self.hi.append(max(self.hi[-1], b) if self.hi else b)
        return self

    def range_start(self, n: int) -> int | None:
        """The lowest block id when the first n blocks are the ids [it, it + n) (a table never holds a block
        twice), else None."""
        if 0 < n <= len(self.lo) and self.hi[n - 1] - self.lo[n - 1] + 1 == n:
            return self.lo[n - 1]
        return None


@dataclass
class AttentionMetadata:
    """Per-step attention inputs, identical on every rank (each rank attends all tokens of the step)."""

    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    query_start_loc: torch.Tensor  # [B + 1] offsets of each sequence's new tokens in the step
    seq_lens: torch.Tensor  # [B] tokens of each sequence in the cache after this step
    block_tables: torch.Tensor  # [B, max_blocks] (-1 padded)
    query_start_loc_cpu: list[int] | None  # host copies: the torch reference loops over sequences
    seq_lens_cpu: list[int] | None
    block_spans: list[BlockSpan] | None = None  # per sequence, of its block table (host; prefill attention)
    num_splits: int | None = None  # split-KV ways for the Triton kernel; fixed when captured in a graph
    block_m: int | None = None  # query rows per Triton program; None: chosen from tokens per sequence
    plan: StepPlan | None = None  # eager steps: how the step splits between SDPA and the paged backend

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu)


AttentionBackend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, AttentionMetadata, float], torch.Tensor]


def attend(
    paged: AttentionBackend,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """A layer's attention for the step's tokens (q: [T, Hq, d]; k, v: [T, Hk, d], already in the cache)."""
    if meta.plan is None:
        return paged(q, k_cache, v_cache, meta, scale)
    return meta.plan.run(paged, q, k, v, k_cache, v_cache, scale)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k, v: [T, Hk, d]; caches: [num_blocks, block_size, Hk, d]. On GPU one Triton launch for both."""
    if k.is_cuda:
        from shifttune.kernels.fused import write_kv_fused

        write_kv_fused(k, v, k_cache, v_cache, slots)
        return
    k_cache.view(-1, *k.shape[1:])[slots] = k
    v_cache.view(-1, *v.shape[1:])[slots] = v
