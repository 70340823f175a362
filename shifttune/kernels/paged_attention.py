"""Paged attention in Triton: one kernel for prefill chunks (with a cached prefix) and decode, GQA, split-KV.

A program takes BLOCK_Q query tokens of one sequence times all query heads of one KV head (GQA
packing: the G = Hq / Hk heads that share a KV head are rows of one tile, so a decode token fills G
rows and the K/V it reads serve all of them) and runs an online softmax over the sequence's cached
keys, gathered through its block table. For small steps the key range is also split across programs
(flash-decoding). Each split writes its partial output and log-sum-exp, and a second, small launch
merges them (`merge="kernel"`, the default). `merge="fused"` instead lets each split take a ticket
from a per-(query block, KV head) counter, and the split that arrives last merges in the same launch:
one kernel, not two, but measured 6% slower over the decode sweep on an H200 and 10% at batch <= 8
(`profiles/runs/kernels_h200_s9/decode_attention.json`), so it stays for comparison. A query block's
keys are cut into equal TILE-aligned splits inside the kernel, so a short context uses fewer of the
launched splits and the others exit at once.

Grid sizes depend only on the number of tokens and sequences, never on context lengths, and the split-KV ways
(`split_kv.choose_num_splits`) only on token, sequence, head and SM counts, so launches can be captured in CUDA
graphs. Tested on CPU under TRITON_INTERPRET=1 against `attention_ref.py`; timed on GPUs by
`shifttune.profile.attention_bench`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from shifttune.kernels import split_kv
from shifttune.kernels.attention import AttentionMetadata
from shifttune.kernels.launch import pdl_args, sm_count
from shifttune.kernels.split_kv import choose_num_splits, launch_shape, step_kind

# Launch configuration by path: decode-like steps (16-row tiles; small ones: SMALL_STEP_CONFIG[_WIDE_GROUP] or
# WIDE_TILE_CONFIG) and prefill chunks (64-row tiles). Decode's num_stages 3 keeps two K/V tiles in flight per
# program (stages - 1).
DECODE_CONFIG = dict(tile=64, num_warps=4, num_stages=3)
# Small decode steps (`split_kv.step_kind` "small") other than the larger ones below (batch 1-2 of 8 KV heads, 1-8 of
# one, on 132 SMs) split into 4 programs per SM and run them unpipelined: their loads, not a program's pipeline, are
# what the step waits for. Tile and warps by the GQA group (query heads per KV head): on an H100, over batch 1-16 x
# 2k-32k, groups of 4 (Llama-3.1-8B) ran best on 64-key tiles and 2 warps, groups of 8 (a TP rank of Llama-3.3-70B) on
# 32-key tiles and 4 warps; with them decode attention came within 3% of each row's best of 48 launch options (geometric
# mean; 13% at worst) against 12% (32% at worst) for one program per SM and DECODE_CONFIG
# (profiles/runs/s19_h100/d_options, profiles/runs/s19_derived.txt; the options marked "one" there ran a path for
# one-tile splits without the key loop, within noise of the loop and dropped).
SMALL_STEP_CONFIG = dict(tile=64, num_warps=2, num_stages=1)  # groups of up to 4 query heads per KV head
SMALL_STEP_CONFIG_WIDE_GROUP = dict(tile=32, num_warps=4, num_stages=1)  # groups of more than 4
# The larger small steps of GQA groups over 4 (`split_kv.step_kind` "wide_tile": batch 5-8 of two KV heads, 9-16 of one,
# on 132 SMs) at 2 programs per SM, on 128-key tiles. Against SMALL_STEP_CONFIG_WIDE_GROUP at 4 programs per SM, at
# 16/2 heads batch 6 and 8 and 8/1 heads batch 12 and 16, 2k-32k: 3-14% less time on an H100, 6-20% on an H200
# (profiles/runs/s28_gpu/c_probe_h100, e_probe_tests_h200); the rows it leaves alone moved -7% to +1% in the same calls.
WIDE_TILE_CONFIG = dict(tile=128, num_warps=4, num_stages=1)
MERGE = "kernel"  # how split-KV partials merge: "kernel" (a second launch) or "fused" (see the docstring)
PREFILL_CONFIG = dict(tile=64, num_warps=4, num_stages=2)  # d > 128: tile 32
MERGE_ELEMS = 8192  # fp32 partial-output elements the merging program loads at once
MERGE_COLUMNS = 32  # output columns per program of the merge kernel (a row's d split over d / 32 programs)
# The merge kernel runs one warp a program for up to this many splits (padded to a power of two), so a row's reduction
# over its splits stays within a warp (shuffles, no shared-memory round between warps), and 4 warps above. On an H100,
# read + merge of batch 1 / 2's K/V bytes at 2k with no attention math: 6.22 / 9.20 us with one warp against 6.64 /
# 9.57 with four (profiles/runs/s29_gpu/d_merges_h100, split_floor_probe.py); Llama-3.1-8B's attention at batch 1 / 2,
# 2k: 8.6 -> 8.2 / 11.5 -> 10.9 us (e_probe_marginal_h100). At 256 splits (8/1 heads, batch 1) two warps took 4% more
# than four.
MERGE_ONE_WARP_SPLITS = 128
# Programmatic dependent launch (`launch.pdl`): the attention kernel starts while the launch before it (RoPE,
# which writes q and the new K/V) finishes, and waits for it (`gdc_wait`) only before reading q; the merge
# launch starts as the attention programs leave their key loops, and waits before reading the partials. On an
# H100, decode attention at batch 1-8, 2k: 0.6-1.5 us less per layer (profiles/runs/s13_h100/f_pdl).

_NO_SPLIT, _FUSED_MERGE, _KERNEL_MERGE = 0, 1, 2


@triton.jit
def _find_seq(query_start_loc, seq_lens, num_seqs, q_block, BLOCK_Q: tl.constexpr):
    """(sequence, its first query token, the token after its last, its length) of global query block `q_block`
    (blocks of sequence i start at qsl[i] // BLOCK_Q + i).
    NOTE: in a decode step each sequence holds one token, so sequence i owns block i + i // BLOCK_Q, and every
    BLOCK_Q-th sequence also the empty block after it. That guess's three loads go out at once, first thing; the
    binary search, a chain of dependent loads ahead of the block table's and the K/V's, runs only where the guess
    misses (prefill chunks)."""
    seq = tl.minimum(q_block - (q_block + 1) // (BLOCK_Q + 1), num_seqs - 1)
    q_start = tl.load(query_start_loc + seq)
    q_end = tl.load(query_start_loc + seq + 1)
    seq_len = tl.load(seq_lens + seq)
    if (q_start // BLOCK_Q + seq > q_block) | (q_end // BLOCK_Q + seq + 1 <= q_block):
        lo = 0
        hi = num_seqs
        while lo < hi:
            mid = (lo + hi) // 2
            first = tl.load(query_start_loc + mid) // BLOCK_Q + mid
            if first <= q_block:
                lo = mid + 1
            else:
                hi = mid
        seq = lo - 1
        q_start = tl.load(query_start_loc + seq)
        q_end = tl.load(query_start_loc + seq + 1)
        seq_len = tl.load(seq_lens + seq)
    return seq, q_start, q_end, seq_len


@triton.jit
def _tile_blocks(block_tables, seq, stride_bt, start, kv_hi, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr):
    """Physical block of each key start .. start + TILE of the sequence (0 past kv_hi)."""
    k_idx = start + tl.arange(0, TILE)
    return tl.load(block_tables + seq * stride_bt + k_idx // BLOCK_SIZE, mask=k_idx < kv_hi, other=0)


@triton.jit
def _attend_tile(
    Q,
    k_cache,
    v_cache,
    block,
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
    """One tile of TILE keys (in the physical blocks `block`), folded into the online softmax (base 2)."""
    d = tl.arange(0, D)
    k_idx = start + tl.arange(0, TILE)
    k_ok = k_idx < kv_hi
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
def _key_loops(Q, k_cache, v_cache, block_tables, seq, stride_bt, block, kv_lo, full_hi, kv_hi, q_pos, kv_head,
               qk_scale, m_i, l_i, acc, HK: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
               TILE: tl.constexpr):  # fmt: skip
    """Keys kv_lo .. kv_hi a tile at a time (`block`: the first tile's blocks): unmasked up to full_hi, then masked.
    NOTE: each iteration loads the next tile's block numbers itself (carried to the next iteration): with the
    block-table load inside the K/V address chain, Triton's pipeliner keeps one K/V buffer whatever num_stages
    is (no load in flight during a tile's math); this way it keeps num_stages - 1."""
    for start in range(kv_lo, full_hi, TILE):
        next_block = _tile_blocks(block_tables, seq, stride_bt, start + TILE, kv_hi, BLOCK_SIZE, TILE)
        m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block, start, kv_hi, q_pos, kv_head, qk_scale, m_i, l_i,
                                     acc, HK, D, BLOCK_SIZE, TILE, False)  # fmt: skip
        block = next_block
    for start in range(full_hi, kv_hi, TILE):
        next_block = _tile_blocks(block_tables, seq, stride_bt, start + TILE, kv_hi, BLOCK_SIZE, TILE)
        m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block, start, kv_hi, q_pos, kv_head, qk_scale, m_i, l_i,
                                     acc, HK, D, BLOCK_SIZE, TILE, True)  # fmt: skip
        block = next_block
    return m_i, l_i, acc


@triton.jit
def _store_partial(
    part_out, part_lse, o, m_i, l_i, split, num_tokens, token, head, row_ok, HQ: tl.constexpr, D: tl.constexpr
):
    """A split's normalized output and base-2 log-sum-exp, at [split, token, head] of the partial buffers."""
    d = tl.arange(0, D)
    part = split * num_tokens * HQ + token * HQ + head
    tl.store(part_out + part.to(tl.int64)[:, None] * D + d[None, :], o, mask=row_ok[:, None])
    lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log2(tl.where(l_i == 0.0, 1.0, l_i)))
    tl.store(part_lse + part, lse, mask=row_ok)


@triton.jit
def _merge_block(
    out,
    part_out,
    part_lse,
    first_token,
    n_tok,
    kv_head,
    n_act,
    num_tokens,
    HQ: tl.constexpr,
    D: tl.constexpr,
    G: tl.constexpr,
    GP2: tl.constexpr,
    S_CHUNK: tl.constexpr,
):
    """Merges the `n_act` partial results of tokens first_token .. first_token + n_tok (all G heads of
    `kv_head`) by their log-sum-exp, S_CHUNK splits at a time (rescaled as the online softmax is, so
    each chunk is one round of loads), and writes them to `out`."""
    g = tl.arange(0, GP2)
    g_ok = g < G
    d = tl.arange(0, D)
    s_chunk = tl.arange(0, S_CHUNK)
    split_stride = num_tokens * HQ  # rows of one split's partials ([tokens, heads])
    for t in range(0, n_tok):
        row = (first_token + t) * HQ + kv_head * G + g  # [GP2] rows of [tokens, heads]
        m = tl.full([GP2], float("-inf"), tl.float32)
        w_sum = tl.zeros([GP2], tl.float32)
        acc = tl.zeros([GP2, D], tl.float32)
        for c in range(0, n_act, S_CHUNK):
            s = c + s_chunk
            ok = (s < n_act)[:, None] & g_ok[None, :]
            part = s[:, None] * split_stride + row[None, :]  # [S_CHUNK, GP2]
            # NOTE: .cg loads (L2, not L1): the partials were written by other programs of this launch.
            lse = tl.load(part_lse + part, mask=ok, other=float("-inf"), cache_modifier=".cg")
            off = part.to(tl.int64)[:, :, None] * D + d[None, None, :]
            o = tl.load(part_out + off, mask=ok[:, :, None], other=0.0, cache_modifier=".cg")
            m_new = tl.maximum(m, tl.max(lse, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # padding heads; rows no split saw yet
            alpha = tl.exp2(m - m_safe)
            w = tl.exp2(lse - m_safe[None, :])
            w_sum = w_sum * alpha + tl.sum(w, 0)
            acc = acc * alpha[:, None] + tl.sum(o * w[:, :, None], 0)
            m = m_new
        o = acc / tl.where(w_sum == 0.0, 1.0, w_sum)[:, None]
        tl.store(out + row.to(tl.int64)[:, None] * D + d[None, :], o.to(out.dtype.element_ty), mask=g_ok[:, None])


# counts that change with every step are not specialized on: fewer compiled variants, same code
@triton.jit(do_not_specialize=["num_seqs", "num_tokens", "num_splits"])
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
    counters,
    scale,
    num_seqs,
    stride_bt,
    num_tokens,
    stride_qt,
    num_splits,
    HQ: tl.constexpr,
    HK: tl.constexpr,
    D: tl.constexpr,
    BLOCK_SIZE: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_M: tl.constexpr,
    TILE: tl.constexpr,
    SPLIT: tl.constexpr,  # _NO_SPLIT, _FUSED_MERGE or _KERNEL_MERGE
    GP2: tl.constexpr,
    S_CHUNK: tl.constexpr,
    PDL: tl.constexpr,
):
    q_block = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq, q_start, q_end, seq_len = _find_seq(query_start_loc, seq_lens, num_seqs, q_block, BLOCK_Q)
    q_len = q_end - q_start
    local_block = q_block - (q_start // BLOCK_Q + seq)
    if local_block * BLOCK_Q >= q_len:
        return
    G: tl.constexpr = HQ // HK
    last_tok = tl.minimum(q_len, (local_block + 1) * BLOCK_Q) - 1
    kv_end = seq_len - q_len + last_tok + 1  # keys the block's last query sees
    # Equal TILE-aligned splits of this block's keys: a short context leaves the last splits empty.
    per_split = tl.cdiv(tl.cdiv(kv_end, num_splits), TILE) * TILE
    n_act = tl.cdiv(kv_end, per_split)  # splits that hold keys
    if SPLIT == 1:
        if split >= n_act:
            return
    kv_lo = split * per_split
    kv_hi = tl.minimum(kv_end, kv_lo + per_split)

    rows = tl.arange(0, BLOCK_M)
    tok = local_block * BLOCK_Q + rows // G  # query index within the sequence's new tokens
    head = kv_head * G + rows % G
    row_ok = (rows < BLOCK_Q * G) & (tok < q_len)
    d = tl.arange(0, D)
    q_off = (q_start + tok)[:, None] * stride_qt + head[:, None] * D + d[None, :]  # q may be a view into qkv
    out_off = (q_start + tok)[:, None] * (HQ * D) + head[:, None] * D + d[None, :]
    if PDL:  # NOTE: q and this step's K/V come from the launch before (RoPE); the lengths and tables from earlier
        gdc_wait()
    Q = tl.load(q + q_off, mask=row_ok[:, None], other=0.0)
    q_pos = seq_len - q_len + tok  # absolute position: query sees keys 0 .. q_pos

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    qk_scale = scale * 1.4426950408889634  # softmax in base 2: exp2 is the native instruction
    # Keys up to the block's first query position are visible to every row: no mask there.
    first_pos = seq_len - q_len + local_block * BLOCK_Q
    full_hi = kv_lo + tl.maximum(tl.minimum(kv_hi, first_pos + 1) - kv_lo, 0) // TILE * TILE
    block = _tile_blocks(block_tables, seq, stride_bt, kv_lo, kv_hi, BLOCK_SIZE, TILE)
    m_i, l_i, acc = _key_loops(Q, k_cache, v_cache, block_tables, seq, stride_bt, block, kv_lo, full_hi, kv_hi,
                               q_pos, kv_head, qk_scale, m_i, l_i, acc, HK, D, BLOCK_SIZE, TILE)  # fmt: skip
    if PDL:
        gdc_launch_dependents()  # the merge may launch (it waits for this launch to finish before reading)
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    o = acc / l_safe[:, None]
    if SPLIT == 0:
        tl.store(out + out_off, o.to(out.dtype.element_ty), mask=row_ok[:, None])
    elif SPLIT == 2:
        _store_partial(part_out, part_lse, o, m_i, l_i, split, num_tokens, q_start + tok, head, row_ok, HQ, D)
    elif n_act == 1:  # fused merge, and one split holds all keys of this block: no partials
        tl.store(out + out_off, o.to(out.dtype.element_ty), mask=row_ok[:, None])
    else:
        _store_partial(part_out, part_lse, o, m_i, l_i, split, num_tokens, q_start + tok, head, row_ok, HQ, D)
        # NOTE: the barrier orders every thread's partial stores before the (one-thread, acq_rel,
        # GPU-scope) ticket; the last ticket holder reads them all and puts the counter back to
        # zero, which the next launch on this stream relies on.
        tl.debug_barrier()
        counter = counters + q_block * HK + kv_head
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == n_act - 1:
            n_tok = last_tok + 1 - local_block * BLOCK_Q
            _merge_block(out, part_out, part_lse, q_start + local_block * BLOCK_Q, n_tok, kv_head, n_act,
                         num_tokens, HQ, D, G, GP2, S_CHUNK)  # fmt: skip
            tl.atomic_xchg(counter, 0)


@triton.jit
def _merge_splits_kernel(
    out,
    part_out,
    part_lse,
    num_tokens,
    num_splits,
    HQ: tl.constexpr,
    D: tl.constexpr,
    DC: tl.constexpr,
    SPLITS_P2: tl.constexpr,
    PDL: tl.constexpr,
):
    """Columns DC * program_id(1) .. + DC of one (token, head) row, from all its splits' partials."""
    if PDL:
        gdc_wait()
    row = tl.program_id(0)  # token * HQ + head
    s = tl.arange(0, SPLITS_P2)
    s_ok = s < num_splits
    lse = tl.load(part_lse + s * num_tokens * HQ + row, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, 0)
    w = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - top), 0.0)
    d = tl.program_id(1) * DC + tl.arange(0, DC)
    off = (s * num_tokens * HQ + row).to(tl.int64)[:, None] * D + d[None, :]
    parts = tl.load(part_out + off, mask=s_ok[:, None], other=0.0)
    o = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(out + row.to(tl.int64) * D + d, o.to(out.dtype.element_ty))


_counters: dict[torch.device, list[torch.Tensor]] = {}


def _split_counters(device: torch.device, n: int) -> torch.Tensor:
    """Zeroed int32 tickets, one per (query block, KV head), shared by every launch on `device`.
    NOTE: buffers are never freed, since a captured CUDA graph keeps using the address it saw."""
    bufs = _counters.setdefault(device, [])
    if not bufs or bufs[-1].numel() < n:
        bufs.append(torch.zeros(max(n, 1 << 14), dtype=torch.int32, device=device))
    return bufs[-1]


def paged_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    num_splits: int | None = None,
    block_m: int | None = None,
    tile: int | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
    merge: str = MERGE,
) -> torch.Tensor:
    """q: [T, Hq, D] with unit stride over heads and D (a view into the qkv output is fine); caches:
    [num_blocks, block_size, Hk, D] (this step's K/V already written). Returns a contiguous [T, Hq, D].
    Launch options left None come from `meta`, `choose_num_splits` and DECODE_CONFIG (SMALL_STEP_CONFIG[_WIDE_GROUP]
    or WIDE_TILE_CONFIG for small decode steps) / PREFILL_CONFIG;
    `merge` is "fused" (the last split merges) or "kernel" (a second launch merges)."""
    num_tokens, hq, dim = q.shape
    block_size, hk = k_cache.shape[1], k_cache.shape[2]
    num_seqs = meta.block_tables.shape[0]
    block_m, block_q, grid_q = launch_shape(num_tokens, num_seqs, hq, hk, block_m or meta.block_m)
    sms = sm_count(q.device)
    num_splits = num_splits or meta.num_splits or choose_num_splits(num_tokens, num_seqs, hq, hk, block_m, sms)
    kind = step_kind(num_tokens, num_seqs, hq, hk, block_m, sms)
    if block_m >= 64:
        config = PREFILL_CONFIG
    elif kind == "wide_tile":
        config = WIDE_TILE_CONFIG
    elif kind == "small":
        config = SMALL_STEP_CONFIG if hq // hk <= 4 else SMALL_STEP_CONFIG_WIDE_GROUP
    else:
        config = DECODE_CONFIG
    tile = tile or (config["tile"] if dim <= 128 else 32)
    assert q.stride(2) == 1 and q.stride(1) == dim
    assert merge in ("fused", "kernel")
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    group_p2 = triton.next_power_of_2(hq // hk)
    pdl = pdl_args(q.device)
    if num_splits > 1:
        part_out = torch.empty((num_splits, num_tokens, hq, dim), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((num_splits, num_tokens, hq), dtype=torch.float32, device=q.device)
        mode = _FUSED_MERGE if merge == "fused" else _KERNEL_MERGE
        counters = _split_counters(q.device, grid_q * hk) if mode == _FUSED_MERGE else part_lse
    else:
        part_out = part_lse = counters = out  # unused
        mode = _NO_SPLIT
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
        counters,
        scale,
        num_seqs,
        meta.block_tables.stride(0),
        num_tokens,
        q.stride(0),
        num_splits,
        HQ=hq,
        HK=hk,
        D=dim,
        BLOCK_SIZE=block_size,
        BLOCK_Q=block_q,
        BLOCK_M=block_m,
        TILE=tile,
        SPLIT=mode,
        GP2=group_p2,
        S_CHUNK=min(triton.next_power_of_2(split_kv.MAX_SPLITS), max(1, MERGE_ELEMS // (group_p2 * dim))),
        **pdl,
        num_warps=num_warps or config["num_warps"],
        num_stages=num_stages or config["num_stages"],
    )
    if mode == _KERNEL_MERGE:
        columns, splits_p2 = min(MERGE_COLUMNS, dim), triton.next_power_of_2(num_splits)
        _merge_splits_kernel[(num_tokens * hq, dim // columns)](
            out,
            part_out,
            part_lse,
            num_tokens,
            num_splits,
            HQ=hq,
            D=dim,
            DC=columns,
            SPLITS_P2=splits_p2,
            **pdl,
            num_warps=1 if splits_p2 <= MERGE_ONE_WARP_SPLITS else 4,
        )
    return out
