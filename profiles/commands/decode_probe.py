"""Where small-batch decode attention loses its time: probe kernels beside the engine's, in the same graphs.

    PYTHONPATH=$PWD python profiles/commands/decode_probe.py --out decode_probe.json        (a CUDA GPU)

At batch 1, 2k context the engine's paged kernel takes ~11 us a layer (H100, attention_bench) against a 2.8 us
HBM floor, while a kernel on the same grid that only loads one value takes 1.3 us. The engine kernel's programs
wait on a chain of dependent loads before their K/V loads can start: the query-start table (binary search for
the sequence), then the sequence's query start and length, then its length in the cache (from which its split
range follows), then the block-table entries of the range, then K and V. Pure-decode probe kernels (one query
token per sequence: the program's sequence is its grid index) cut that chain. (Since session 23 the engine kernel
guesses a decode program's sequence and loads its query start, length and cache length at once, d9d3184; the
binary search runs only where the guess misses.)

- `contiguous`: splits are equal key ranges from the sequence length (as the engine's): seq_len, then block
  table, then K/V;
- `interleaved`: split s takes tiles s, s + S, s + 2S, ...: its first block-table load does not wait for the
  length, so the chain is (seq_len, block table, Q in parallel), then K/V;
- each with the partials merged by a second launch (`kernel`) or by the split that arrives last (`fused`);
- `tma_kernel`: K and V by the tensor-memory accelerator, one [16, d] descriptor load per block of each (the
  engine kernel spends most of its instructions on per-thread cp.async addresses), kernel merge.

Every variant is checked against the fp32 reference on the GPU (`rel_err` of each timing; the interpreter
cannot run these loops: its scalars are 1-element arrays, which Python's range refuses), and timed as
`layers` calls on distinct caches in one CUDA graph (attention_bench's harness), with the engine kernel and
the one-load launch in the same process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

from shifttune.kernels import split_kv
from shifttune.kernels.paged_attention import _attend_tile, _merge_block, _merge_splits_kernel, _store_partial


@triton.jit
def _attend_tile_fma(Q, k_cache, v_cache, block, start, kv_hi, kv_head, qk_scale, m_i, l_i, acc, HK: tl.constexpr,
                     D: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
    """`_attend_tile` on CUDA cores (broadcast products and sums, no tl.dot) for the GP2 rows of one token."""
    d = tl.arange(0, D)
    k_idx = start + tl.arange(0, TILE)
    k_ok = k_idx < kv_hi
    slot = block.to(tl.int64) * BLOCK_SIZE + k_idx % BLOCK_SIZE
    kv_off = slot[:, None] * (HK * D) + kv_head * D + d[None, :]
    K = tl.load(k_cache + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
    V = tl.load(v_cache + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
    s = tl.sum(Q[:, None, :] * K[None, :, :], 2) * qk_scale  # [GP2, TILE]
    s = tl.where(k_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * V[None, :, :], 1)
    return m_new, l_i, acc


@triton.jit
def _probe_decode_kernel(out, q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, counters, scale,
                         stride_bt, num_tokens, num_splits, HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr,
                         BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, TILE: tl.constexpr,
                         INTERLEAVE: tl.constexpr, FUSED: tl.constexpr, GP2: tl.constexpr,
                         S_CHUNK: tl.constexpr, MMA: tl.constexpr):  # fmt: skip
    seq = tl.program_id(0)  # pure decode: one query token per sequence, token index = sequence index
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    G: tl.constexpr = HQ // HK
    R: tl.constexpr = BLOCK_M if MMA else GP2  # query rows of the tiles: tl.dot needs 16
    rows = tl.arange(0, R)
    head = kv_head * G + rows
    row_ok = rows < G
    d = tl.arange(0, D)
    qk_scale = scale * 1.4426950408889634
    if INTERLEAVE:  # the first tile's blocks are loaded before the length is known (masked to the table row)
        k0 = split * TILE + tl.arange(0, TILE)
        block = tl.load(block_tables + seq * stride_bt + k0 // BLOCK_SIZE, mask=k0 // BLOCK_SIZE < stride_bt, other=0)
    seq_len = tl.load(seq_lens + seq)
    Q = tl.load(q + seq * HQ * D + head[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    if not MMA:
        Q = Q.to(tl.float32)
    q_pos = tl.zeros([R], tl.int32) + seq_len - 1
    m_i = tl.full([R], float("-inf"), tl.float32)
    l_i = tl.zeros([R], tl.float32)
    acc = tl.zeros([R, D], tl.float32)
    if INTERLEAVE:
        n_tiles = (seq_len + TILE - 1) // TILE
        n_act = tl.minimum(num_splits, n_tiles)
        if split >= n_act:
            return
        for t in range(split, n_tiles, num_splits):
            nk = (t + num_splits) * TILE + tl.arange(0, TILE)
            next_block = tl.load(block_tables + seq * stride_bt + nk // BLOCK_SIZE, mask=nk < seq_len, other=0)
            if MMA:
                m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block, t * TILE, seq_len, q_pos, kv_head, qk_scale,
                                             m_i, l_i, acc, HK, D, BLOCK_SIZE, TILE, False)  # fmt: skip
            else:
                m_i, l_i, acc = _attend_tile_fma(Q, k_cache, v_cache, block, t * TILE, seq_len, kv_head, qk_scale, m_i,
                                                 l_i, acc, HK, D, BLOCK_SIZE, TILE)  # fmt: skip
            block = next_block
    else:
        per_split = ((seq_len + num_splits - 1) // num_splits + TILE - 1) // TILE * TILE
        n_act = (seq_len + per_split - 1) // per_split
        if split >= n_act:
            return
        kv_lo = split * per_split
        kv_hi = tl.minimum(seq_len, kv_lo + per_split)
        k0 = kv_lo + tl.arange(0, TILE)
        block = tl.load(block_tables + seq * stride_bt + k0 // BLOCK_SIZE, mask=k0 < kv_hi, other=0)
        for start in range(kv_lo, kv_hi, TILE):
            nk = start + TILE + tl.arange(0, TILE)
            next_block = tl.load(block_tables + seq * stride_bt + nk // BLOCK_SIZE, mask=nk < kv_hi, other=0)
            if MMA:
                m_i, l_i, acc = _attend_tile(Q, k_cache, v_cache, block, start, kv_hi, q_pos, kv_head, qk_scale, m_i,
                                             l_i, acc, HK, D, BLOCK_SIZE, TILE, False)  # fmt: skip
            else:
                m_i, l_i, acc = _attend_tile_fma(Q, k_cache, v_cache, block, start, kv_hi, kv_head, qk_scale, m_i, l_i,
                                                 acc, HK, D, BLOCK_SIZE, TILE)  # fmt: skip
            block = next_block
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tok = tl.zeros([R], tl.int32) + seq
    _store_partial(part_out, part_lse, o, m_i, l_i, split, num_tokens, tok, head, row_ok, HQ, D)
    if FUSED:
        tl.debug_barrier()
        counter = counters + seq * HK + kv_head
        ticket = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
        if ticket == n_act - 1:
            _merge_block(out, part_out, part_lse, seq, 1, kv_head, n_act, num_tokens, HQ, D, G, GP2, S_CHUNK)
            tl.atomic_xchg(counter, 0)


@triton.jit
def _probe_tma_kernel(q, k_desc, v_desc, block_tables, seq_lens, part_out, part_lse, scale, stride_bt, num_tokens,
                      num_splits, HQ: tl.constexpr, HK: tl.constexpr, D: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                      BLOCK_M: tl.constexpr):  # fmt: skip
    """Pure decode with K/V brought in by the tensor-memory accelerator: one descriptor load per 16-token block
    of K and of V ([BLOCK_SIZE, D] boxes of the caches seen as [slots, Hk x D]) instead of per-thread address
    arithmetic; split s takes an equal run of whole blocks; partials merged by `_merge_splits_kernel`."""
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    G: tl.constexpr = HQ // HK
    rows = tl.arange(0, BLOCK_M)
    head = kv_head * G + rows
    row_ok = rows < G
    d = tl.arange(0, D)
    seq_len = tl.load(seq_lens + seq)
    n_blocks = (seq_len + BLOCK_SIZE - 1) // BLOCK_SIZE
    per_split = (n_blocks + num_splits - 1) // num_splits
    b_lo = split * per_split
    b_hi = tl.minimum(n_blocks, b_lo + per_split)
    Q = tl.load(q + seq * HQ * D + head[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
    qk_scale = scale * 1.4426950408889634
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    col = (kv_head * D).to(tl.int32)
    # NOTE: each iteration loads the next block number (carried), as the engine kernel does, so the descriptor
    # loads' coordinates do not wait on a load of the same iteration
    block = tl.load(block_tables + seq * stride_bt + b_lo, mask=b_lo < b_hi, other=0)
    for b in range(b_lo, b_hi):
        next_block = tl.load(block_tables + seq * stride_bt + b + 1, mask=b + 1 < b_hi, other=0)
        row = (block * BLOCK_SIZE).to(tl.int32)
        K = k_desc.load([row, col])
        V = v_desc.load([row, col])
        k_idx = b * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        s = tl.where((k_idx < seq_len)[None, :], tl.dot(Q, tl.trans(K)) * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(V.dtype), V)
        m_i = m_new
        block = next_block
    o = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tok = tl.zeros([BLOCK_M], tl.int32) + seq
    _store_partial(part_out, part_lse, o, m_i, l_i, split, num_tokens, tok, head, row_ok, HQ, D)


def probe_tma_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, num_splits, num_warps=4, num_stages=4):
    """[T, Hq, D] attention of T decode tokens (token i of sequence i) through `_probe_tma_kernel`."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    t, hq, d = q.shape
    bs, hk = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    part_out = torch.empty((num_splits, t, hq, d), dtype=torch.float32, device=q.device)
    part_lse = torch.empty((num_splits, t, hq), dtype=torch.float32, device=q.device)
    k_desc, v_desc = (TensorDescriptor.from_tensor(c.view(-1, hk * d), block_shape=[bs, d]) for c in (k_cache, v_cache))
    _probe_tma_kernel[(t, hk, num_splits)](q, k_desc, v_desc, block_tables, seq_lens, part_out, part_lse, scale,
                                           block_tables.stride(0), t, num_splits, HQ=hq, HK=hk, D=d, BLOCK_SIZE=bs,
                                           BLOCK_M=16, num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    _merge_splits_kernel[(t * hq,)](out, part_out, part_lse, t, num_splits, HQ=hq, D=d, DC=d,
                                    SPLITS_P2=triton.next_power_of_2(num_splits), PDL=False)  # fmt: skip
    return out


@triton.jit
def _load_only_kernel(out, k_cache, v_cache, block_tables, seq_lens, stride_bt, num_splits, HK: tl.constexpr,
                      D: tl.constexpr, BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr):  # fmt: skip
    """The K/V loads of `_probe_decode_kernel` (contiguous splits) and nothing else: one sum stored per program."""
    seq, kv_head, split = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    seq_len = tl.load(seq_lens + seq)
    per_split = ((seq_len + num_splits - 1) // num_splits + TILE - 1) // TILE * TILE
    kv_lo = split * per_split
    kv_hi = tl.minimum(seq_len, kv_lo + per_split)
    d = tl.arange(0, D)
    total = tl.zeros([TILE, D], tl.float32)
    for start in range(kv_lo, kv_hi, TILE):
        k_idx = start + tl.arange(0, TILE)
        k_ok = k_idx < kv_hi
        block = tl.load(block_tables + seq * stride_bt + k_idx // BLOCK_SIZE, mask=k_ok, other=0)
        kv_off = (block.to(tl.int64) * BLOCK_SIZE + k_idx % BLOCK_SIZE)[:, None] * (HK * D) + kv_head * D + d[None, :]
        total += tl.load(k_cache + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
        total += tl.load(v_cache + kv_off, mask=k_ok[:, None], other=0.0).to(tl.float32)
    pid = (seq * tl.num_programs(1) + kv_head) * num_splits + split
    tl.store(out + pid, tl.sum(tl.sum(total, 1), 0))


def load_only(k_cache, v_cache, block_tables, seq_lens, num_splits, tile=64, num_warps=4, num_stages=3):
    """Runs `_load_only_kernel` on the decode grid; returns its [T * Hk * splits] sums."""
    t, hk = seq_lens.shape[0], k_cache.shape[2]
    out = torch.empty(t * hk * num_splits, dtype=torch.float32, device=k_cache.device)
    _load_only_kernel[(t, hk, num_splits)](out, k_cache, v_cache, block_tables, seq_lens, block_tables.stride(0),
                                           num_splits, HK=hk, D=k_cache.shape[3], BLOCK_SIZE=k_cache.shape[1],
                                           TILE=tile, num_warps=num_warps, num_stages=num_stages)  # fmt: skip
    return out


def probe_attention(q, k_cache, v_cache, block_tables, seq_lens, scale, num_splits, interleave, fused, tile=64,
                    num_warps=4, num_stages=3, mma=True, merge=True):  # fmt: skip
    """[T, Hq, D] attention of T decode tokens (token i of sequence i)."""
    t, hq, d = q.shape
    bs, hk = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    part_out = torch.empty((num_splits, t, hq, d), dtype=torch.float32, device=q.device)
    # NOTE: splits past a short sequence's last tile write nothing: their log-sum-exp must read -inf
    part_lse = torch.full((num_splits, t, hq), float("-inf"), dtype=torch.float32, device=q.device)
    counters = _counters(q.device, t * hk)
    gp2 = triton.next_power_of_2(hq // hk)
    _probe_decode_kernel[(t, hk, num_splits)](
        out, q, k_cache, v_cache, block_tables, seq_lens, part_out, part_lse, counters, scale, block_tables.stride(0),
        t, num_splits, HQ=hq, HK=hk, D=d, BLOCK_SIZE=bs, BLOCK_M=16, TILE=tile, INTERLEAVE=interleave, FUSED=fused,
        GP2=gp2, S_CHUNK=min(64, max(1, 8192 // (gp2 * d))), MMA=mma, num_warps=num_warps,
        num_stages=num_stages)  # fmt: skip
    if not merge:  # timing only: the attention launch alone
        return out
    if not fused:
        _merge_splits_kernel[(t * hq,)](out, part_out, part_lse, t, num_splits, HQ=hq, D=d, DC=d,
                                        SPLITS_P2=triton.next_power_of_2(num_splits), PDL=False)  # fmt: skip
    return out


_COUNTERS: dict = {}


def _counters(device, n):
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < n:
        buf = _COUNTERS[device] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
    return buf


VARIANTS = {f"{s}_{m}": dict(interleave=s == "interleaved", fused=m == "fused")
            for s in ("contiguous", "interleaved") for m in ("kernel", "fused")}  # fmt: skip


# launch options tried one at a time on contiguous_kernel_x1 (--sweep); "no_merge": the attention launch alone
SWEEP = [("stages_1", dict(num_stages=1)), ("stages_2", dict(num_stages=2)), ("tile_16", dict(tile=16)),
         ("tile_32", dict(tile=32)), ("tile_128", dict(tile=128)), ("warps_2", dict(num_warps=2)),
         ("warps_8", dict(num_warps=8)), ("fma_tile_16", dict(mma=False, tile=16)),
         ("fma_tile_32_w8", dict(mma=False, tile=32, num_warps=8)),
         ("fma_tile_64_w8", dict(mma=False, tile=64, num_warps=8)),
         ("no_merge", dict(merge=False))]  # fmt: skip
# --sweep also times `load_only` (the K/V loads alone) and the engine kernel on a cache whose blocks are in
# order (`contiguous_blocks`): what the loads cost by themselves, and what scattered blocks add


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--contexts", default="2048,8192")
    ap.add_argument("--sweep", action="store_true", help="also launch options of contiguous_kernel_x1 (SWEEP)")
    args = ap.parse_args(argv)
    from shifttune.kernels import paged_attention as pa
    from shifttune.profile.attention_bench import Step, launch_floor_us, time_layers
    from shifttune.profile.step_timing import measure_ceilings

    dev = torch.device("cuda")
    name, t0 = torch.cuda.get_device_name(), time.perf_counter()
    ceil = measure_ceilings(dev)
    hq, hk, d, bs, scale, sms = 32, 8, 128, 16, 128**-0.5, pa.sm_count(dev)
    rows = []
    for b in (int(x) for x in args.batches.split(",")):
        for c in (int(x) for x in args.contexts.split(",")):
            kv_bytes = 2 * b * c * hk * d * 2
            layers = max(1, min(32, -(-(256 << 20) // kv_bytes)))
            step = Step([1] * b, [c] * b, hq, hk, d, bs, layers, dev)
            ref = step.reference(scale)
            splits = pa.choose_num_splits(b, b, hq, hk, None, sms)
            row = dict(batch=b, context=c, layers_in_graph=layers, num_splits=splits,
                       floor_us=1e6 * kv_bytes / ceil.hbm_bytes_per_s,
                       launch_floor_us=launch_floor_us(step, pa, hq, hk, sms),
                       engine=time_layers(step, lambda *a: pa.paged_attention(*a), dev, scale, ref))  # fmt: skip
            for vname, opts in VARIANTS.items():
                for s_mult in (1, 2):  # the engine's split count, and twice as many (shorter chains per split)
                    n_splits = min(split_kv.MAX_SPLITS, splits * s_mult)
                    call = (lambda o, n: lambda qq, kc, vc, meta, sc: probe_attention(
                        qq, kc, vc, meta.block_tables, meta.seq_lens, sc, n, **o))(opts, n_splits)  # fmt: skip
                    row[f"{vname}_x{s_mult}"] = time_layers(step, call, dev, scale, ref)
            for s_mult in (1, 2):  # K/V by TMA descriptor loads, one 16-token block at a time
                n_splits = min(split_kv.MAX_SPLITS, splits * s_mult)
                call = (lambda n: lambda qq, kc, vc, meta, sc: probe_tma_attention(
                    qq, kc, vc, meta.block_tables, meta.seq_lens, sc, n))(n_splits)  # fmt: skip
                row[f"tma_kernel_x{s_mult}"] = time_layers(step, call, dev, scale, ref)
            if args.sweep:  # launch options of contiguous_kernel_x1, one at a time
                opts0 = VARIANTS["contiguous_kernel"]
                for label, extra in SWEEP:
                    call = (lambda o: lambda qq, kc, vc, meta, sc: probe_attention(
                        qq, kc, vc, meta.block_tables, meta.seq_lens, sc, splits, **o))(opts0 | extra)  # fmt: skip
                    row[label] = time_layers(step, call, dev, scale, None if extra.get("merge") is False else ref)

                def loads(qq, kc, vc, meta, sc):
                    load_only(kc, vc, meta.block_tables, meta.seq_lens, splits)
                    return qq

                row["load_only"] = time_layers(step, loads, dev, scale, None)
                in_order = Step([1] * b, [c] * b, hq, hk, d, bs, layers, dev, scattered=False)
                row["engine_contiguous_blocks"] = time_layers(in_order, lambda *a: pa.paged_attention(*a), dev, scale,
                                                              in_order.reference(scale))  # fmt: skip
                row["load_only_contiguous_blocks"] = time_layers(in_order, loads, dev, scale, None)
                del in_order
            rows.append(row)
            partial = ("no_merge", "load_only", "load_only_contiguous_blocks")  # not whole attentions
            best = min((v["us"], k) for k, v in row.items() if isinstance(v, dict) and "us" in v and k not in partial)
            print(f"b={b} C={c}: floor {row['floor_us']:.1f} us, one-load launch {row['launch_floor_us']:.1f}, "
                  f"engine {row['engine'].get('us', float('nan')):.1f}, best {best[1]} {best[0]:.1f} "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)  # fmt: skip
            del step
    result = dict(command="python profiles/commands/decode_probe.py " + " ".join(argv or sys.argv[1:]), card=name,
                  torch=torch.__version__, triton=triton.__version__, rows=rows)  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
