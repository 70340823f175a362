"""Paged attention in Triton: one kernel for prefill chunks (with a cached prefix) and decode, GQA, split-KV.

A program takes BLOCK_Q query tokens of one sequence times all query heads of one KV head (so the
K/V it reads serve every query head that shares them) and runs an online softmax over the sequence's
cached keys, gathered through its block table. For small steps the key range is also split NUM_SPLITS
ways across programs (flash-decoding) and a second kernel merges the partial results by their
log-sum-exp, so a decode step of a few sequences still fills the GPU. Grid sizes depend only on the
number of tokens and sequences, never on context lengths, so launches can be captured in CUDA graphs.
Tested on CPU under TRITON_INTERPRET=1 against `attention_ref.py`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from shifttune.kernels.attention import AttentionMetadata


@triton.jit
def _find_seq(query_start_loc, num_seqs, q_block, BLOCK_Q: tl.constexpr):
    """The sequence that owns global query block `q_block`: blocks of sequence i start at qsl[i] // BLOCK_Q + i."""
    lo = 0
    hi = num_seqs
    while lo < hi:
        mid = (lo + hi) // 2
        first = tl.load(query_start_loc + mid) // BLOCK_Q + mid
        if first <= q_block:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _attend_tile(
    Q,
    k_cache,
    v_cache,
    block_tables,
    seq,
    stride_bt,
    start,
    kv_hi,
    q_pos,
    kv_head,
    qk_scale,
    m_i,
    l_i,
    acc,
    HK: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    TILE: tl.constexpr,
    MASK: tl.constexpr,
):
    """One tile of TILE keys gathered through the block table, folded into the online softmax (base 2)."""
    d = tl.arange(0, D)
    k_idx = start + tl.arange(0, TILE)
    k_ok = k_idx < kv_hi
    block = tl.load(block_tables + seq * stride_bt + k_idx // BLOCK_SIZE, mask=k_ok, other=0)
    slot = block.to(tl.int64) * BLOCK_SIZE + k_idx % BLOCK_SIZE
    kv_off = slot[:, None] * (HK * D) + kv_head * D + d[None, :]
    K = tl.load(k_cache + kv_off, mask=k_ok[:, None], other=0.0)
    V = tl.load(v_cache + kv_off, mask=k_ok[:, None], other=0.0)
    s = tl.dot(Q, tl.trans(K)) * qk_scale
    if MASK:
        s = tl.where(k_ok[None, :] & (k_idx[None, :] <= q_pos[:, None]), s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype), V)
    return m_new, l_i, acc


@triton.jit
def _paged_attention_kernel(
    out,
    q,
    k_cache,
    v_cache,
    block_tables,
    seq_lens,
    query_start_loc,
    part_out,
    part_lse,
    scale,
    num_seqs,
    stride_bt,
    num_tokens,
    stride_qt,
    HQ: tl.constexpr,
    HK: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq = _find_seq(query_start_loc, num_seqs, q_block, BLOCK_Q)
    q_start = tl.load(query_start_loc + seq)
    q_len = tl.load(query_start_loc + seq + 1) - q_start
    local_block = q_block - (q_start // BLOCK_Q + seq)
    if local_block * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens + seq)
    G: tl.constexpr = HQ // HK
    rows = tl.arange(0, BLOCK_M)
    tok = local_block * BLOCK_Q + rows // G  # query index within the sequence's new tokens
    head = kv_head * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (tok < q_len)
    d = tl.arange(0, D)
    q_off = (q_start + tok)[:, None] * stride_qt + head[:, None] * D + d[None, :]  # q may be a view into qkv
    out_off = (q_start + tok)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    Q = tl.load(q + q_off, mask=row_ok[:, None], other=0.0)
    q_pos = seq_len - q_len + tok  # absolute position: query sees keys 0 .. q_pos
    last_tok = tl.minimum(q_len, (local_block + 1) * BLOCK_Q) - 1
    kv_end = seq_len - q_len + last_tok + 1
    per_split = tl.cdiv(tl.cdiv(kv_end, NUM_SPLITS), TILE) * TILE
    kv_lo = split * per_split
    kv_hi = tl.minimum(kv_end, kv_lo + per_split)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    qk_scale = scale * 1.4426950408889634  # softmax in base 2: exp2 is the native instruction
    # Keys up to the block's first query position are visible to every row: no mask there.
    first_pos = seq_len - q_len + local_block * BLOCK_Q
    full_hi = kv_lo + tl.maximum(tl.minimum(kv_hi, first_pos + 1) - kv_lo, 0) // TILE * TILE
    # fmt: off
    for start in range(kv_lo, full_hi, TILE):
        m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block_tables, seq, stride_bt, start, kv_hi, q_pos, kv_head,
                                     qk_scale, m_i, l_i, acc, HK, D, BLOCK_SIZE, TILE, False)
    for start in range(full_hi, kv_hi, TILE):
        m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block_tables, seq, stride_bt, start, kv_hi, q_pos, kv_head,
                                     qk_scale, m_i, l_i, acc, HK, D, BLOCK_SIZE, TILE, True)
    # fmt: on
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if NUM_SPLITS == 1:
        tl.store(out + out_off, o.to(out.dtype.element_ty), mask=row_ok[:, None])
    else:
        row = (q_start + tok) * HQ + head  # index into [tokens, heads]
        part = split * num_tokens * HQ + row
        tl.store(part_out + part[:, None] * D + d[None, :], o, mask=row_ok[:, None])
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(l_safe))  # base 2, as m_i
        tl.store(part_lse + part, lse, mask=row_ok)


@triton.jit
def _merge_splits_kernel(
    out,
    part_out,
    part_lse,
    num_tokens,
    HQ: tl.constexpr,
    D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    SPLITS_P2: tl.constexpr,
):
    row = tl.program_id(0)  # token * HQ + head
    s = tl.arange(0, SPLITS_P2)
    s_ok = s < NUM_SPLITS
    lse = tl.load(part_lse + s * num_tokens * HQ + row, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - top), 0.0)
    d = tl.arange(0, D)
    parts = tl.load(part_out + (s * num_tokens * HQ + row)[:, None] * D + d[None, :], mask=s_ok[:, None], other=0.0)
    o = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out + row * D + d, o.to(out.dtype.element_ty))


def launch_shape(num_tokens: int, num_seqs: int, hq: int, hk: int, block_m: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_Q, query-block grid size) the kernel uses for a step of this size."""
    group = hq // hk
    decode_like = num_tokens <= 4 * num_seqs
    block_m = max(block_m or (16 if decode_like else 64), triton.next_power_of_2(group))
    block_q = block_m // group
    return block_m, block_q, num_tokens // block_q + num_seqs


def choose_num_splits(num_q_blocks: int, num_kv_heads: int, max_seq_len: int, num_sms: int = 132) -> int:
    """Enough programs to fill the GPU about twice over, but no split shorter than 256 keys."""
    programs = max(1, num_q_blocks * num_kv_heads)
    want = triton.cdiv(2 * num_sms, programs)
    return max(1, min(want, triton.cdiv(max_seq_len, 256), 64))


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    num_splits: int | None = None,
    block_m: int | None = None,
    tile: int | None = None,
    num_warps: int = 4,
    num_stages: int = 2,
) -> torch.Tensor:
    """q: [T, Hq, D] with unit stride over heads and D (a view into the qkv output is fine); caches:
    [num_blocks, block_size, Hk, D] (this step's K/V already written). Returns a contiguous [T, Hq, D]."""
    num_tokens, hq, dim = q.shape
    block_size, hk = k_cache.shape[1], k_cache.shape[2]
    num_seqs = meta.block_tables.shape[0]
    block_m, block_q, grid_q = launch_shape(num_tokens, num_seqs, hq, hk, block_m or meta.block_m)
    num_splits = num_splits or meta.num_splits or choose_num_splits(grid_q, hk, meta.max_seq_len)
    assert q.stride(2) == 1 and q.stride(1) == dim
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    if num_splits > 1:
        part_out = torch.empty((num_splits, num_tokens, hq, dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_splits, num_tokens, hq), dtype=torch.float32, device=q.device)
    else:
        part_out = part_lse = out  # unused
    _paged_attention_kernel[(grid_q, hk, num_splits)](
        out,
        q,
        k_cache,
        v_cache,
        meta.block_tables,
        meta.seq_lens,
        meta.query_start_loc,
        part_out,
        part_lse,
        scale,
        num_seqs,
        meta.block_tables.stride(0),
        num_tokens,
        q.stride(0),
        HQ=hq,
        HK=hk,
        D=dim,
        BLOCK_SIZE=block_size,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE=tile or (64 if dim <= 128 else 32),
        NUM_SPLITS=num_splits,
        num_warps=num_warps,
        num_stages=num_stages,
    )
    if num_splits > 1:
        _merge_splits_kernel[(num_tokens * hq,)](
            out,
            part_out,
            part_lse,
            num_tokens,
            HQ=hq,
            D=dim,
            NUM_SPLITS=num_splits,
            SPLITS_P2=triton.next_power_of_2(num_splits),
        )
    return out
