"""Building blocks of a decoder layer: RMSNorm, rotary embedding, and the parallel linears/embedding.

Every parallel module holds the slice of one weight layout (see `model/layout.py`) and reduces or
gathers over that layout's group. The loader fills their parameters; they never see full weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from shifttune.parallel.state import Group


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Normalizes x, or (x + residual) returning the new residual too, as HF does in float32."""
        if x.is_cuda:
            from shifttune.kernels.fused import add_rms_norm

            shape = x.shape
            out = add_rms_norm(
                x.reshape(-1, shape[-1]),
                None if residual is None else residual.reshape(-1, shape[-1]),
                self.weight,
                self.eps,
            )
            return out.view(shape) if residual is None else (out[0].view(shape), out[1].view(shape))
        if residual is not None:
            x = x + residual
            residual = x
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        out = self.weight * xf.to(x.dtype)
        return out if residual is None else (out, residual)


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    # float32 throughout, as transformers computes it, so positions rotate bit-for-bit alike.
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    # llama3: long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = (old_len / wavelen - low) / (high - low)
    scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    mid = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    is_mid = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return torch.where(is_mid, mid, scaled)


class RotaryEmbedding(nn.Module):
    """Neox-style (rotate-half) RoPE with a precomputed cos/sin table indexed by position."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None):
        super().__init__()
        inv_freq = rope_inv_freq(head_dim, theta, scaling)
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos_sin", torch.cat([freqs.cos(), freqs.sin()], dim=-1), persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, Hq, d], k: [T, Hk, d]. On GPU rotated in place (views into the qkv output)."""
        if q.is_cuda:
            from shifttune.kernels.fused import rope_

            rope_(q, positions, self.cos_sin)
            rope_(k, positions, self.cos_sin)
            return q, k
        cos, sin = self.cos_sin[positions].unsqueeze(1).chunk(2, dim=-1)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _param(shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)


class ColumnParallelLinear(nn.Module):
    """y = x W^T for this rank's rows of W (output features); no communication."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = _param((out_features, in_features), dtype)
        self.bias = _param((out_features,), dtype) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class RowParallelLinear(nn.Module):
    """y = sum over the group of x_r W_r^T, where each rank holds W's columns for its input slice."""

    def __init__(self, in_features: int, out_features: int, group: Group, dtype: torch.dtype):
        super().__init__()
        self.group = group
        self.weight = _param((out_features, in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group.all_reduce(F.linear(x, self.weight))


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + rows) of the embedding; other ids embed to zero, then the group sums."""

    def __init__(self, start: int, rows: int, dim: int, group: Group, dtype: torch.dtype):
        super().__init__()
        self.start, self.group = start, group
        self.weight = _param((rows, dim), dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        local = ids - self.start
        mask = (local >= 0) & (local < self.weight.shape[0])
        out = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * mask.unsqueeze(-1)
        return self.group.all_reduce(out)


class ParallelLMHead(nn.Module):
    """Logits of this rank's vocab rows; `forward` gathers the group's shards into full logits."""

    def __init__(self, rows: int, dim: int, vocab_size: int, group: Group, shard_order: list[int], dtype: torch.dtype):
        super().__init__()
        self.group, self.vocab_size = group, vocab_size
        self.weight = _param((rows, dim), dtype)
        # group rank holding each vocab shard; None when it is the identity (no reordering needed)
        order = None if shard_order == sorted(shard_order) else torch.tensor(shard_order)
        self.register_buffer("shard_order", order, persistent=False)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # NOTE: in the model's dtype, not float32: the sampler's kernels widen on load (exact), so a float32
        # copy would only double the bytes every later pass over the logits reads
        shards = self.group.all_gather(F.linear(hidden, self.weight))  # [group, n, rows]
        if self.shard_order is not None:
            shards = shards.index_select(0, self.shard_order)
        logits = shards.permute(1, 0, 2).reshape(hidden.shape[0], -1)
        return logits[:, : self.vocab_size]
