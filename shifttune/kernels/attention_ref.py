"""Reference attention over the paged KV cache, in plain torch: the oracle for every faster kernel.

One call serves a whole engine step (whose new K/V `write_kv` has already put in the cache): for each
sequence it attends the new queries to every cached token of that sequence (causal).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    """Per-step attention inputs, identical on every rank (each rank attends all tokens of the step)."""

    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    query_start_loc: torch.Tensor  # [B + 1] offsets of each sequence's new tokens in the step
    seq_lens: torch.Tensor  # [B] tokens of each sequence in the cache after this step
    block_tables: torch.Tensor  # [B, max_blocks] (-1 padded)
    query_start_loc_cpu: list[int] | None  # host copies: the torch reference loops over sequences
    seq_lens_cpu: list[int] | None
    num_splits: int | None = None  # split-KV ways for the Triton kernel; fixed when captured in a graph
    block_m: int | None = None  # query rows per Triton program; None: chosen from tokens per sequence

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """k, v: [T, Hk, d]; caches: [num_blocks, block_size, Hk, d]."""
    k_cache.view(-1, *k.shape[1:])[slots] = k
    v_cache.view(-1, *v.shape[1:])[slots] = v


def paged_attention_ref(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata, scale: float
) -> torch.Tensor:
    """q: [T, Hq, d]; caches: [num_blocks, block_size, Hk, d] -> [T, Hq, d]."""
    block_size, num_kv, group = k_cache.shape[1], k_cache.shape[2], q.shape[1] // k_cache.shape[2]
    out = torch.empty_like(q)
    qsl, lens = meta.query_start_loc_cpu, meta.seq_lens_cpu
    for i, seq_len in enumerate(lens):
        start, end = qsl[i], qsl[i + 1]
        n_blocks = -(-seq_len // block_size)
        blocks = meta.block_tables[i, :n_blocks]
        keys = k_cache[blocks].reshape(-1, num_kv, k_cache.shape[3])[:seq_len]
        values = v_cache[blocks].reshape(-1, num_kv, v_cache.shape[3])[:seq_len]
        keys = keys.repeat_interleave(group, dim=1).transpose(0, 1)  # [Hq, L, d]
        values = values.repeat_interleave(group, dim=1).transpose(0, 1)
        n = end - start
        # query j sits at position seq_len - n + j and sees keys 0 .. seq_len - n + j
        mask = (
            torch.arange(seq_len, device=q.device)[None, :]
            <= torch.arange(seq_len - n, seq_len, device=q.device)[:, None]
        )
        o = F.scaled_dot_product_attention(q[start:end].transpose(0, 1), keys, values, attn_mask=mask, scale=scale)
        out[start:end] = o.transpose(0, 1)
    return out
