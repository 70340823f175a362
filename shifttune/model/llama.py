"""The decoder (Llama, Mistral, Qwen2, Qwen3 dense) for one weight layout of one rank.

In SP mode with SP > 1, each rank holds a contiguous slice of the step's tokens; attention is
wrapped in the Ulysses all-to-all (one before: my tokens x my heads -> all tokens x 1/SP of my heads,
q, k and v packed together; one after, back). Everything else runs on the token slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from shifttune.config import ModelConfig
from shifttune.kernels.attention import AttentionBackend, AttentionMetadata, attend, write_kv
from shifttune.model.layers import (
    ColumnParallelLinear,
    ParallelLMHead,
    RMSNorm,
    RotaryEmbedding,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from shifttune.model.layout import Layout


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: Layout, rotary: RotaryEmbedding, dtype: torch.dtype, attn_fn):
        super().__init__()
        self.layout, self.rotary, self.d, self.attn_fn = layout, rotary, cfg.head_dim, attn_fn
        self.num_q, self.num_kv = len(layout.q_heads), len(layout.kv_heads)
        self.qkv_proj = ColumnParallelLinear(
            cfg.hidden_size, (self.num_q + 2 * self.num_kv) * self.d, cfg.qkv_bias, dtype
        )
        self.o_proj = RowParallelLinear(self.num_q * self.d, cfg.hidden_size, layout.group, dtype)
        self.q_norm = RMSNorm(self.d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.k_norm = RMSNorm(self.d, cfg.rms_norm_eps, dtype) if cfg.qk_norm else None
        self.register_buffer("kv_send_index", torch.tensor(layout.kv_send_index), persistent=False)
        self.scale = self.d**-0.5
        self.k_cache = self.v_cache = torch.empty(0)  # bound by the model runner

    def forward(
        self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata, num_tokens: int
    ) -> torch.Tensor:
        t_local, d, sp = x.shape[0], self.d, self.layout.sp
        qkv = self.qkv_proj(x)
        q, k, v = qkv.split([self.num_q * d, self.num_kv * d, self.num_kv * d], dim=-1)
        q, k, v = q.view(t_local, self.num_q, d), k.view(t_local, self.num_kv, d), v.view(t_local, self.num_kv, d)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        fused = sp == 1 and x.is_cuda  # RoPE writes the new K and V into the cache in its launch
        if fused:
            from shifttune.kernels.fused import rope_, rope_and_write_kv

            if self.q_norm is None:  # q and k side by side in the qkv rows: one launch rotates both
                qk = qkv[:, : (self.num_q + self.num_kv) * d].view(t_local, -1, d)
            else:
                rope_(q, positions, self.rotary.cos_sin)
                qk = k
            rope_and_write_kv(qk, positions, self.rotary.cos_sin, v, self.k_cache, self.v_cache, meta.slot_mapping)
        else:
            q, k = self.rotary(positions, q, k)
        if sp > 1:
            # Ulysses: per destination s, its 1/SP of my query heads and the KV heads those use.
            heads = self.num_q // sp
            send = torch.cat(
                [
                    q.view(t_local, sp, heads, d),
                    k[:, self.kv_send_index].view(t_local, sp, -1, d),
                    v[:, self.kv_send_index].view(t_local, sp, -1, d),
                ],
                dim=2,
            ).transpose(0, 1)
            recv = self.layout.sp_group.all_to_all(send)  # [SP (source), t_local, heads + 2 kv, d]
            recv = recv.reshape(sp * t_local, -1, d)[:num_tokens]  # every token of the step, padding dropped
            num_kv = (recv.shape[1] - heads) // 2
            q, k, v = recv.split([heads, num_kv, num_kv], dim=1)
        if not fused:
            write_kv(k, v, self.k_cache, self.v_cache, meta.slot_mapping)
        # NOTE: the cache holds this step's K/V (written above) before attention reads it, new tokens too.
        o = attend(self.attn_fn, q, k, v, self.k_cache, self.v_cache, meta, self.scale)
        if sp > 1:
            o = F.pad(o, (0, 0, 0, 0, 0, sp * t_local - num_tokens)).view(sp, t_local, -1, d)
            o = self.layout.sp_group.all_to_all(o).transpose(0, 1)  # [t_local, SP (head sub-block), heads, d]
        return self.o_proj(o.reshape(t_local, self.num_q * d))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: Layout, dtype: torch.dtype):
        super().__init__()
        rows = len(layout.mlp_rows)
        self.gate_up_proj = ColumnParallelLinear(cfg.hidden_size, 2 * rows, False, dtype)
        self.down_proj = RowParallelLinear(rows, cfg.hidden_size, layout.group, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate_up = self.gate_up_proj(x)
        if gate_up.is_cuda:
            from shifttune.kernels.fused import silu_and_mul

            return self.down_proj(silu_and_mul(gate_up))
        gate, up = gate_up.chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: Layout, rotary: RotaryEmbedding, dtype: torch.dtype, attn_fn):
        super().__init__()
        self.self_attn = Attention(cfg, layout, rotary, dtype, attn_fn)
        self.mlp = MLP(cfg, layout, dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)

    def forward(self, positions, hidden, residual, meta, num_tokens):
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, meta, num_tokens)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class CausalLM(nn.Module):
    """One rank's shard of the model in one layout. Parameter names follow HF (loader maps slices)."""

    def __init__(
        self, cfg: ModelConfig, layout: Layout, rotary: RotaryEmbedding, dtype: torch.dtype, attn_fn: AttentionBackend
    ):
        super().__init__()
        self.cfg, self.layout = cfg, layout
        rows = len(layout.vocab_rows)
        self.embed_tokens = VocabParallelEmbedding(layout.vocab_rows.start, rows, cfg.hidden_size, layout.group, dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, layout, rotary, dtype, attn_fn) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype)
        self.lm_head = ParallelLMHead(rows, cfg.hidden_size, cfg.vocab_size, layout.group, layout.shard_order, dtype)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, num_tokens: int
    ) -> torch.Tensor:
        """Hidden states after the final norm for this rank's tokens (a slice of the step when SP > 1)."""
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta, num_tokens)
        return self.norm(hidden, residual)[0]

    def compute_logits(self, hidden: torch.Tensor, sample_indices: torch.Tensor) -> torch.Tensor:
        """Full-vocab logits [n, V] of the step tokens at `sample_indices`, on every rank."""
        if self.layout.sp > 1:
            # Each sampled row lives on one SP member: zero-fill the others' rows and sum over SP.
            t_local = hidden.shape[0]
            local = sample_indices - self.layout.sp_group.rank_in_group * t_local
            mine = (local >= 0) & (local < t_local)
            rows = torch.where(mine.unsqueeze(-1), hidden[local.clamp(0, t_local - 1)], 0.0)
            rows = self.layout.sp_group.all_reduce(rows)
        else:
            rows = hidden[sample_indices]
        return self.lm_head(rows)
