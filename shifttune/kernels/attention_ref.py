"""Reference attention over the paged KV cache, in plain torch: the oracle for every faster kernel.

One call serves a whole engine step (whose new K/V `write_kv` has already put in the cache): for each
sequence it attends the new queries to every cached token of that sequence (causal).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from shifttune.kernels.attention import AttentionMetadata


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
