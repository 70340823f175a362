"""The Triton paged-attention kernel against the torch reference (CPU: TRITON_INTERPRET=1; GPU: bf16)."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import stand_in_step_graphs

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "Triton on CPU needs TRITON_INTERPRET=1 (set by tests/conftest.py before triton loads)", allow_module_level=True
    )

from shifttune.kernels.attention import AttentionMetadata  # noqa: E402
from shifttune.kernels.attention_ref import paged_attention_ref  # noqa: E402
from shifttune.kernels.paged_attention import paged_attention  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter
# tests of CPU tensors through the interpreter (fp32, tight tolerances); their GPU counterparts are the `gpu` ones
interpreted = pytest.mark.skipif(torch.cuda.is_available(), reason="Triton interpreter test (CPU tensors)")


def make_case(q_lens, ctx_lens, hq, hk, d, block_size, device="cpu", dtype=torch.float32, seed=0):
    """A step: sequence i has ctx_lens[i] cached tokens before this step and q_lens[i] new ones."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(ctx_lens, q_lens)]
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + 3
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # scattered physical blocks
    tables, used = [], 0
    for n in blocks_per_seq:
        tables.append(perm[used : used + n])
        used += n
    width = max(blocks_per_seq)
    k_cache = torch.randn(num_blocks, block_size, hk, d, generator=gen).to(device, dtype)
    v_cache = torch.randn(num_blocks, block_size, hk, d, generator=gen).to(device, dtype)
    t = sum(q_lens)
    q = torch.randn(t, hq, d, generator=gen).to(device, dtype)
    qsl = [0]
    for n in q_lens:
        qsl.append(qsl[-1] + n)
    meta = AttentionMetadata(
        slot_mapping=torch.zeros(0, dtype=torch.int64, device=device),
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor([b + [0] * (width - len(b)) for b in tables], dtype=torch.int32, device=device),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
    )
    return q, k_cache, v_cache, meta


def reference(q, k_cache, v_cache, meta, scale):
    return paged_attention_ref(q.double(), k_cache.double(), v_cache.double(), meta, scale)


CASES = [
    # q_lens, cached context, Hq, Hk, D, block size
    ([1, 1, 1], [5, 17, 33], 4, 1, 16, 4),  # decode, GQA 4:1
    ([7, 1, 20], [0, 9, 13], 4, 2, 16, 4),  # fresh prefill + decode + prefill after a cached prefix
    ([33], [70], 2, 2, 32, 16),  # one long chunk after a long prefix, MHA
    ([3, 5], [0, 2], 8, 2, 16, 8),
    # a decode graph's padding: five decodes, a padding sequence of 3 tokens, two empty ones; the kernel's guess of
    # a query block's sequence (one token each) holds for the decodes and misses past them
    ([1, 1, 1, 1, 1, 3, 0, 0], [40, 3, 17, 60, 9, 0, 1, 1], 8, 2, 16, 4),
    # twelve decodes of GQA 8:1, a larger small step (`step_kind` "wide_tile"): 128-key tiles, some partly filled
    ([1] * 12, [300, 1, 129, 127, 5, 256, 40, 17, 200, 2, 90, 150], 8, 1, 16, 16),
]


@interpreted
@pytest.mark.parametrize("q_lens, ctx, hq, hk, d, bs", CASES)
@pytest.mark.parametrize("num_splits", [1, 3])
def test_triton_matches_reference_on_cpu(q_lens, ctx, hq, hk, d, bs, num_splits):
    q, kc, vc, meta = make_case(q_lens, ctx, hq, hk, d, bs)
    if num_splits == 3:  # q as the engine passes it on GPU: a view into the fused qkv output
        qkv = torch.randn(q.shape[0], (hq + 2 * hk) * d)
        qkv[:, : hq * d] = q.reshape(q.shape[0], -1)
        q = qkv[:, : hq * d].view(q.shape)
    scale = d**-0.5
    out = paged_attention(q, kc, vc, meta, scale, num_splits=num_splits)
    ref = reference(q, kc, vc, meta, scale)
    err = (out.double() - ref).norm() / ref.norm()
    assert err < 1e-5, err


SPLIT_CASES = [
    # q_lens, cached context, Hq, Hk, D, block size, splits (None: `choose_num_splits`, 256 at batch 1):
    # decode at batch 1-8 over long-ish contexts; 16-key tiles give each split a few tiles
    ([1], [1500], 4, 1, 16, 16, None),  # batch 1: 256 splits, 94 of them hold keys
    ([1, 1], [1023, 40], 4, 1, 16, 8, 16),  # the short sequence uses a few of the splits
    ([1] * 4, [700, 33, 1200, 5], 4, 1, 16, 16, 16),
    ([1] * 8, [300, 1, 900, 64, 65, 511, 2000, 17], 6, 2, 16, 4, 8),  # GQA 3:1 (a group that is no power of 2)
    ([9, 1, 1], [500, 800, 3], 8, 2, 16, 16, 8),  # a prefill chunk after a cached prefix, split, and decodes
]


@interpreted
@pytest.mark.parametrize(
    "case, merge, chunk",
    [pytest.param(c, "fused", None, id=f"b{len(c[0])}-fused") for c in SPLIT_CASES]
    + [
        pytest.param(c, m, e, id=f"b{len(c[0])}-{m}{'-chunked' if e else ''}")
        for c in (SPLIT_CASES[0], SPLIT_CASES[-1])
        for m, e in (("fused", 256), ("kernel", None), ("kernel", 4))
    ],
)
def test_triton_split_decode_matches_reference_on_cpu(case, merge, chunk, monkeypatch):
    """Many splits, merged in the same launch by the last split (also a few splits at a time: chunk =
    MERGE_ELEMS) or by the merge kernel (also a row's d over several programs: chunk = MERGE_COLUMNS)."""
    from shifttune.kernels import paged_attention as pa

    q_lens, ctx, hq, hk, d, bs, splits = case
    if chunk:
        monkeypatch.setattr(pa, "MERGE_ELEMS" if merge == "fused" else "MERGE_COLUMNS", chunk)
    q, kc, vc, meta = make_case(q_lens, ctx, hq, hk, d, bs, seed=len(q_lens))
    scale = d**-0.5
    ref = reference(q, kc, vc, meta, scale)
    if merge == "kernel":  # NaN in every fresh buffer: the merge must read only partials the splits wrote
        empty = torch.empty
        monkeypatch.setattr(torch, "empty", lambda *a, **k: empty(*a, **k).fill_(float("nan")))
    for _ in range(2 if splits is None and merge == "fused" else 1):  # again: the tickets went back to zero
        out = paged_attention(q, kc, vc, meta, scale, num_splits=splits, tile=16, merge=merge)
        err = (out.double() - ref).norm() / ref.norm()
        assert err < 1e-5, err
    if merge == "fused":
        assert all(int(b.abs().sum()) == 0 for b in pa._counters[q.device])


def test_triton_num_splits_depend_on_step_shape_only():
    """Splits fill the GPU at small batches and stop once the query blocks alone fill it."""
    from shifttune.kernels.split_kv import MAX_SPLITS, choose_num_splits

    # batch 1-2 of 8 KV heads are small steps (batch 1 at SMALL_STEP_PROGRAMS_PER_SM = 4 programs per SM), 4 is not
    assert choose_num_splits(1, 1, 32, 8, None, 132) == 66  # 8 KV heads x 66 splits: 4 programs per SM
    assert choose_num_splits(2, 2, 32, 8, None, 132) == 33
    assert choose_num_splits(16, 16, 8, 1, None, 132) == 17  # a larger small step (group 8): 2 programs per SM
    assert choose_num_splits(4, 4, 8, 2, None, 132) == 66 and choose_num_splits(6, 6, 16, 2, None, 132) == 22
    assert choose_num_splits(8, 8, 8, 1, None, 132) == 66
    assert choose_num_splits(4, 4, 32, 8, None, 132) == 5  # 32 x 5: a program per SM
    assert choose_num_splits(1, 1, 32, 8, None, 132, programs_per_sm=1) == 17
    assert choose_num_splits(1, 1, 16, 2, None, 132) == MAX_SPLITS
    assert choose_num_splits(8, 8, 32, 8, None, 132) == 3
    assert choose_num_splits(128, 128, 32, 8, None, 132) == 1
    assert choose_num_splits(2048, 1, 32, 8, None, 132) == 1  # a long prefill chunk fills the GPU itself


_COMPILE_FOR_SM90 = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shifttune.kernels import paged_attention as pa

ptrs = dict(out="*bf16", q="*bf16", k_cache="*bf16", v_cache="*bf16", block_tables="*i64", seq_lens="*i64",
            query_start_loc="*i64", part_out="*fp32", part_lse="*fp32", counters="*i32")
ints = dict(scale="fp32", num_seqs="i32", stride_bt="i32", num_tokens="i32", stride_qt="i32", num_splits="i32")
buffers = {}
small, wide = pa.SMALL_STEP_CONFIG, pa.SMALL_STEP_CONFIG_WIDE_GROUP
cases = [(0, 16, pa.DECODE_CONFIG, 8), (1, 16, pa.DECODE_CONFIG, 8), (2, 16, pa.DECODE_CONFIG, 8),
         (0, 64, pa.PREFILL_CONFIG, 8), (2, 16, small, 8), (2, 16, wide, 2),  # small steps: GQA groups 4, 16
         (2, 16, pa.WIDE_TILE_CONFIG, 2)]
for split, block_m, config, hk in cases:
    group, stages = 32 // hk, config["num_stages"]
    consts = dict(HQ=32, HK=hk, D=128, BLOCK_SIZE=16, BLOCK_Q=block_m // group, BLOCK_M=block_m, TILE=config["tile"],
                  SPLIT=split, GP2=group, S_CHUNK=16, PDL=split == 2)  # the split launch with PDL: griddepcontrol
    sig = {**ptrs, **ints, **{k: "constexpr" for k in consts}}
    src = ASTSource(pa._paged_attention_kernel, sig, consts, {(i,): [["tt.divisibility", 16]] for i in range(10)})
    options = dict(num_warps=config["num_warps"], num_stages=stages)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    allocs = [ln.split("memdesc<")[1].split("x")[0] for ln in k.asm["ttgir"].splitlines() if "local_alloc :" in ln]
    buffers[f"{split}-{block_m}-{stages}-t{config['tile']}-g{group}"] = sorted(set(int(a) for a in allocs))
json.dump(buffers, sys.stdout)
"""


def _compile_for_sm90(script: str) -> str:
    """Runs a script that compiles kernels for sm_90 with Triton's bundled toolchain (no GPU, no interpreter);
    returns its stdout. Skips where that toolchain or the ASTSource format (Triton >= 3.3) is missing."""
    import subprocess
    import sys

    if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 3):
        pytest.skip("the ASTSource attribute format used here is Triton >= 3.3's")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if res.returncode != 0 and ("ptxas" in res.stderr or "ImportError" in res.stderr):
        pytest.skip(f"no sm_90 toolchain here: {res.stderr.strip().splitlines()[-1]}")
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_triton_kernel_compiles_for_h100_with_pipelined_loads():
    """The interpreter does not lower the kernel: compile it for sm_90 here (Triton's bundled ptxas, no
    GPU needed), with and without the fused merge, and check K/V tiles keep num_stages - 1 buffers
    (decode) rather than the one Triton falls back to when the block-table load is in the address chain; the
    small-step configurations (one stage, both GQA-group variants, and the larger small steps' 128-key tiles) compile
    too, with no K/V buffer at all."""
    import json

    buffers = json.loads(_compile_for_sm90(_COMPILE_FOR_SM90))
    assert buffers == {"0-16-3-t64-g4": [2], "1-16-3-t64-g4": [2], "2-16-3-t64-g4": [2], "0-64-2-t64-g4": [2],
                       "2-16-1-t64-g4": [], "2-16-1-t32-g16": [], "2-16-1-t128-g16": []}, buffers  # fmt: skip


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "q_lens, ctx",
    [
        ([1] * 32, [2047] * 32),
        ([1] * 3, [100, 3000, 7]),
        ([512, 1, 300], [0, 900, 4000]),
        ([2048], [0]),
        ([1], [32767]),  # batch 1: the most splits, each many tiles long
        ([1] * 4, [8000, 2, 20000, 511]),
        ([7, 1], [3000, 12000]),
        ([1] * 8, [2047, 5, 700, 4000, 1, 130, 9000, 64]),  # 16/2 heads: a larger small step (128-key tiles)
    ],
)
@pytest.mark.parametrize("merge", ["fused", "kernel"])
@pytest.mark.parametrize("hq, hk", [(16, 2), (32, 8)])  # GQA groups of 8 and 4: both small-step configurations
def test_triton_matches_reference_on_gpu_bf16(q_lens, ctx, merge, hq, hk):
    q, kc, vc, meta = make_case(q_lens, ctx, hq, hk, 128, 16, device="cuda", dtype=torch.bfloat16)
    scale = 128**-0.5
    out = paged_attention(q, kc, vc, meta, scale, merge=merge)
    ref = reference(q.cpu(), kc.cpu(), vc.cpu(), _to_cpu(meta), scale)
    err = (out.double().cpu() - ref).norm() / ref.norm()
    assert err < 1e-2, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_fused_merge_is_deterministic_on_gpu():
    """The last split merges in a fixed split order, whichever program it is: a stale partial (a missing
    fence) or a counter not put back to zero would show as a launch that differs from the first."""
    q, kc, vc, meta = make_case([1] * 4, [30000, 2047, 9, 4095], 32, 8, 128, 16, device="cuda", dtype=torch.bfloat16)
    scale = 128**-0.5
    first = paged_attention(q, kc, vc, meta, scale)
    outs = [paged_attention(q, kc, vc, meta, scale) for _ in range(200)]
    assert all(torch.equal(o, first) for o in outs)
    ref = reference(q.cpu(), kc.cpu(), vc.cpu(), _to_cpu(meta), scale)
    assert (first.double().cpu() - ref).norm() / ref.norm() < 1e-2


def _to_cpu(meta):
    return AttentionMetadata(
        *(
            x.cpu() if isinstance(x, torch.Tensor) else x
            for x in (
                meta.slot_mapping,
                meta.query_start_loc,
                meta.seq_lens,
                meta.block_tables,
                meta.query_start_loc_cpu,
                meta.seq_lens_cpu,
            )
        )
    )


@interpreted
def test_fused_ops_match_torch_layers():
    """The fused Triton ops (interpreted on CPU) against the torch code they replace on GPU."""
    from shifttune.kernels.fused import add_rms_norm, rope_, silu_and_mul
    from shifttune.model.layers import RMSNorm, RotaryEmbedding

    gen = torch.Generator().manual_seed(0)
    x, res = torch.randn(5, 48, generator=gen), torch.randn(5, 48, generator=gen)
    norm = RMSNorm(48, 1e-6, torch.float32)
    norm.weight.data = torch.randn(48, generator=gen)
    out, new_res = add_rms_norm(x, res, norm.weight, 1e-6)
    ref_out, ref_res = norm(x, res)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(new_res, ref_res)
    torch.testing.assert_close(add_rms_norm(x, None, norm.weight, 1e-6), norm(x))

    rotary = RotaryEmbedding(16, 64, 10000.0, None)
    qkv = torch.randn(5, (3 + 2 * 1) * 16, generator=gen)
    positions = torch.tensor([0, 3, 9, 20, 63])
    q, k = qkv[:, :48].view(5, 3, 16), qkv[:, 48:64].view(5, 1, 16)
    ref_q, ref_k = rotary(positions, q.clone(), k.clone())
    rope_(q, positions, rotary.cos_sin)
    rope_(k, positions, rotary.cos_sin)
    torch.testing.assert_close(q, ref_q)
    torch.testing.assert_close(k, ref_k)

    gate_up = torch.randn(4, 2 * 40, generator=gen)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(silu_and_mul(gate_up), torch.nn.functional.silu(gate) * up)


def _kv_case(dtype: torch.dtype, hq: int, hk: int, d: int):
    """A step of 5 tokens, the last one padding (its slot in the scratch block, as cuda_graphs pads), over a
    qkv output that is a view into wider rows (row stride != its width) and random caches (4 blocks of 4)."""
    gen = torch.Generator().manual_seed(1)
    width = (hq + 2 * hk) * d
    qkv = torch.randn(5, width + 8, generator=gen).to(dtype)[:, 3 : 3 + width]
    k_cache, v_cache = (torch.randn(4, 4, hk, d, generator=gen).to(dtype) for _ in range(2))
    scratch_slot = 3 * 4
    slots = torch.tensor([5, 0, 9, 7, scratch_slot])
    positions = torch.tensor([0, 3, 9, 20, 0])
    return qkv, k_cache, v_cache, slots, positions


def _write_kv_ref(k, v, k_cache, v_cache, slots):
    """attention.write_kv's torch path (the CPU path and the oracle)."""
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    k_cache.view(-1, *k.shape[1:])[slots] = k
    v_cache.view(-1, *v.shape[1:])[slots] = v
    return k_cache, v_cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("qk_norm", [False, True])
def test_rope_and_write_kv_match_torch(dtype, qk_norm):
    """RoPE with the KV-cache write in the same launch (interpreted on CPU, compiled on GPU) against the torch
    RoPE and cache write on CPU: q and k side by side in the qkv rows (one launch), or k alone (q_norm/k_norm:
    new tensors)."""
    from shifttune.kernels.fused import rope_and_write_kv
    from shifttune.model.layers import RotaryEmbedding

    hq, hk, d = 3, 2, 16
    rotary = RotaryEmbedding(d, 64, 10000.0, None)
    qkv, k_cache, v_cache, slots, positions = _kv_case(dtype, hq, hk, d)
    assert not qkv.is_contiguous()
    q, k, v = (qkv[:, a * d : b * d].view(5, -1, d) for a, b in ((0, hq), (hq, hq + hk), (hq + hk, hq + 2 * hk)))
    ref_q, ref_k = rotary(positions, q.clone(), k.clone())  # CPU tensors: the torch path
    ref_kc, ref_vc = _write_kv_ref(ref_k, v, k_cache, v_cache, slots)
    qkv, k_cache, v_cache, slots, positions = (x.to(DEV) for x in (qkv, k_cache, v_cache, slots, positions))
    q, k, v = (qkv[:, a * d : b * d].view(5, -1, d) for a, b in ((0, hq), (hq, hq + hk), (hq + hk, hq + 2 * hk)))
    if qk_norm:
        k = k.contiguous()
    v_before = v.clone()
    qk = k if qk_norm else qkv[:, : (hq + hk) * d].view(5, hq + hk, d)
    rope_and_write_kv(qk, positions, rotary.cos_sin.to(DEV), v, k_cache, v_cache, slots)
    if not qk_norm:
        torch.testing.assert_close(q.cpu(), ref_q)
    torch.testing.assert_close(k.cpu(), ref_k)
    assert torch.equal(v, v_before)
    torch.testing.assert_close(k_cache.cpu(), ref_kc)
    assert torch.equal(v_cache.cpu(), ref_vc)
    # the cache holds exactly the rotated k the kernel left in place; rows not in `slots` are untouched
    assert torch.equal(k_cache.cpu(), _write_kv_ref(k.cpu(), v.cpu(), ref_kc, ref_vc, slots.cpu())[0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 24])  # 24: a head size that is not a power of two
def test_write_kv_fused_matches_torch(dtype, d):
    """The one-launch Triton KV-cache write (interpreted on CPU) against the torch index_put it replaces on GPU;
    k and v are views into a wider row, as after the SP all-to-all."""
    from shifttune.kernels.fused import write_kv_fused

    hq, hk = 3, 2
    qkv, k_cache, v_cache, slots, _ = _kv_case(dtype, hq, hk, d)
    _, k, v = qkv.view(5, hq + 2 * hk, d).split([hq, hk, hk], dim=1)
    assert not k.is_contiguous() and not v.is_contiguous()
    ref_kc, ref_vc = _write_kv_ref(k, v, k_cache, v_cache, slots)
    qkv, k_cache, v_cache, slots = (x.to(DEV) for x in (qkv, k_cache, v_cache, slots))
    _, k, v = qkv.view(5, hq + 2 * hk, d).split([hq, hk, hk], dim=1)
    write_kv_fused(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.cpu(), ref_kc)
    assert torch.equal(v_cache.cpu(), ref_vc)


@pytest.mark.parametrize("n, vocab", [(6, 50), (6, 2500), (6, 20000)])  # 20000: three chunks
def test_sample_kernel_matches_the_torch_reference(n, vocab):
    """Filters (top-k cut, temperature, sort-free top-p, min-p) and the seeded draw, row for row; the kernels
    read each row's settings at rows[i] of the tables (here permuted) and move its step on."""
    from shifttune.kernels.sampling import sample
    from shifttune.kernels.sampling_ref import sample_ref

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    logits = torch.randn(n, vocab, device=dev) * 3
    logits[0, :7] = float("-inf")  # masked tokens (min_tokens) are never drawn
    kth = logits.sort(dim=-1, descending=True).values[:, 4]
    rows = [  # inv_temp, top-k cut, top_p, min_p, seed, step, greedy
        (1.0, -torch.inf, 1.0, 0.0, 2**62 + 5, 0, False),
        (1 / 0.7, -torch.inf, 0.9, 0.0, 3, 17, False),
        (1.0, kth[2].item(), 0.8, 0.0, 2**40, 2**33, False),
        (2.0, -torch.inf, 0.5, 0.05, 11, 1, False),
        (1.0, -torch.inf, 0.3, 0.0, 12, 2, True),
        (1 / 1.5, kth[5].item(), 1.0, 0.2, 13, 3, False),
    ][:n]
    args = [torch.tensor(c, device=dev) for c in zip(*rows)]
    args = [args[0].float(), args[1].float(), args[2].float(), args[3].float(), *args[4:]]
    at = torch.tensor([3, 0, 5, 1, 4, 2], device=dev)[:n]  # row i's settings at at[i]
    tables = [torch.empty_like(a).index_copy_(0, at, a) for a in args]
    got = sample(logits, at, tables[0], args[1], *tables[2:], advance=True)
    assert got.tolist() == sample_ref(logits, *args).tolist() and got[0] >= 7
    assert tables[5].tolist() == args[5].index_copy(0, at, args[5] + 1).tolist()
    no_k = [args[0], torch.full_like(args[1], -torch.inf), *args[2:5], args[5] + 1, args[6]]
    got = sample(logits, at, tables[0], None, *tables[2:])
    assert got.tolist() == sample_ref(logits, *no_k).tolist()


def test_graph_inputs_kernel_matches_the_torch_path():
    """One launch (`kernels/step_inputs.py`) fills a CUDA graph's input buffers as `InputBatch.prepare`
    plus `StepGraphs.copy_inputs` do: prefill chunks, partial chunks that do not sample, decode rows whose
    token is still on the device, a bucket with padding, and a step with fewer sequences than the last
    (their block-table rows go back to the scratch block). Every buffer is compared whole."""
    from types import SimpleNamespace

    from shifttune.runner.cuda_graphs import StepGraphs
    from shifttune.runner.input_batch import PENDING, InputBatch, NewRequest, StepDelta
    from shifttune.runner.sampler import RequestSampling

    bs, max_rows, max_len, scratch, dev = 4, 8, 64, 40, torch.device(DEV)
    cfg = SimpleNamespace(cuda_graph_max_tokens=64, max_num_batched_tokens=64, max_num_seqs=max_rows, block_size=bs,
                          torch_dtype=torch.float32,
                          parallel=SimpleNamespace(sp=1), max_model_len=max_len,
                          model_config=SimpleNamespace(vocab_size=32))  # fmt: skip
    runner = SimpleNamespace(config=cfg, device=dev, scratch_block=scratch, modes=())  # no split graphs
    ref, fused = StepGraphs(runner, capture=False), StepGraphs(runner, capture=False)
    batch = InputBatch(max_rows, max_len // bs, bs, scratch, 64, dev)
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randperm(scratch, generator=gen).tolist()  # scattered physical blocks

    def new(req: int, n_blocks: int, computed: int = 0) -> NewRequest:
        return NewRequest(req, [blocks.pop() for _ in range(n_blocks)], computed, 0, RequestSampling())

    steps = [  # prefill: 9 tokens, 6 of 11 (does not sample), 3 after a 4-token cached prefix
        StepDelta("tp", [0, 1, 2], [9, 6, 3], list(range(100, 118)), [0, 2], [new(0, 3), new(1, 3), new(2, 2, 4)]),
        StepDelta(
            "tp",
            [0, 1, 2],
            [1, 5, 1],
            [PENDING, *range(200, 205), PENDING],
            [0, 1, 2],
            new_block_ids=[(1, [blocks.pop()])],
        ),  # fmt: skip
        StepDelta("tp", [2, 1], [1, 1], [PENDING, PENDING], [0, 1], finished_req_ids=[0]),  # bucket 2: no padding
        StepDelta("tp", [1], [1], [PENDING], [0], new_block_ids=[(1, [blocks.pop()])], finished_req_ids=[2]),
        # six more requests join, then all leave at once: more stale rows than padding programs
        StepDelta(
            "tp",
            [1, *range(3, 9)],
            [1] + [2] * 6,
            [PENDING, *range(300, 312)],
            list(range(7)),
            [new(r, 1) for r in range(3, 9)],
        ),  # fmt: skip
        StepDelta("tp", [1], [1], [PENDING], [0], finished_req_ids=list(range(3, 9))),
    ]
    for delta in steps:
        batch.update(delta)
        step, rows, rows_dev = batch.prepare(delta)
        ref.copy_inputs(step)
        got_rows, got_rows_dev = batch.load_graph(delta, fused)
        assert got_rows == rows and torch.equal(got_rows_dev, rows_dev)
        for name in ("ids", "pos", "slots", "qsl", "seq_lens", "block_tables", "samples"):
            assert torch.equal(getattr(fused, name), getattr(ref, name)), name
        assert fused.kv_tokens == ref.kv_tokens == sum(step.seq_lens_cpu)
        ref.rows_in_use = fused.rows_in_use = len(delta.req_ids)
        batch.advance(delta)
        batch.last_token[rows_dev] = torch.randint(0, 32, (len(rows),), generator=gen).to(dev)


_COMPILE_STEP_INPUTS_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shifttune.kernels import step_inputs as si

names = si._graph_inputs_kernel.arg_names
consts = dict(BS=16, PENDING=-1, BLOCK=128)
ptrs = ("token_ids", "rows", "starts", "qsl_in", "samples_in", "table", "last_token", "ids", "pos", "slots", "qsl",
        "seq_lens", "tables", "samples")
sig = {n: "constexpr" if n in consts else "*i64" if n in ptrs else "i32" for n in names}
triton.compile(ASTSource(si._graph_inputs_kernel, sig, consts), target=GPUTarget("cuda", 90, 32),
               options=dict(num_warps=4))
"""


def test_graph_inputs_kernel_compiles_for_sm90():
    """The interpreter runs what the compiler may refuse (it found one: a name bound in both branches of
    an `if` with two types): compile the graph-inputs kernel for sm_90 (no GPU needed)."""
    _compile_for_sm90(_COMPILE_STEP_INPUTS_FOR_SM90)


_COMPILE_ARGMAX_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shifttune.kernels import sampling as s

ptrs = dict(logits="*bf16", rows="*i64", keys="*i64", tickets="*i32", out="*i64", steps="*i64", last_token="*i64")
consts = dict(CHUNK=s.GREEDY_CHUNK, ADVANCE=True, WRITE_LAST=True)
sig = {n: "constexpr" if n in consts else ptrs.get(n, "i32") for n in s._argmax_kernel.arg_names}
triton.compile(ASTSource(s._argmax_kernel, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
"""


def test_greedy_argmax_kernel_compiles_for_sm90():
    """The greedy sampler's one launch (64-bit atomic max, tickets) compiled for sm_90, not only interpreted."""
    _compile_for_sm90(_COMPILE_ARGMAX_FOR_SM90)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [16, 24])
def test_merge_by_lse_matches_the_torch_merge(dtype, d):
    """The one-launch merge of two SDPA parts (interpreted on CPU) against the torch expression it replaces on
    GPU: o1 and o2 are [M, H, d] views of head-major outputs, sliced past r discarded rows, as SDPA gives them."""
    from shifttune.kernels.fused import merge_by_lse

    gen = torch.Generator().manual_seed(4)
    big, heads, r, n = 300, 3, 7, 290  # 290 rows: several blocks, the last partial
    o1, o2 = (torch.randn(1, heads, big, d, generator=gen).to(dtype).transpose(1, 2)[0] for _ in range(2))
    l1, l2 = (torch.randn(heads, big, generator=gen) * 4 for _ in range(2))
    share = torch.sigmoid(l1[:, r : r + n] - l2[:, r : r + n]).t().unsqueeze(-1)
    want = torch.lerp(o2[r : r + n].float(), o1[r : r + n].float(), share).to(dtype)
    o1, o2, l1, l2 = (x.to(DEV) for x in (o1, o2, l1, l2))
    out = torch.full((n, heads, d), float("nan"), dtype=dtype, device=DEV)
    merge_by_lse(o1[r : r + n], l1[:, r : r + n], o2[r : r + n], l2[:, r : r + n], out)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.cpu().float(), want.float(), rtol=tol, atol=tol)
    assert not torch.equal(out.cpu(), o1[r : r + n].cpu()) and not torch.equal(out.cpu(), o2[r : r + n].cpu())


_COMPILE_SAMPLER_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shifttune.kernels import sampling as s

f32 = ("inv_temp", "cut_k", "top_p", "min_p", "stats", "partial", "masses", "cand_x", "best_val")
i32 = ("cand_i", "counts", "best_idx")
types = dict(logits="*bf16", rows="*i64", seeds="*i64", steps="*i64", greedy="*i1", out="*i64", last_token="*i64",
             c0="u64", c1="u64", c2="u64", c3="u64") | {n: "*fp32" for n in f32} | {n: "*i32" for n in i32}
for kernel, consts, warps in [
    (s._split_kernel, dict(HAS_K=True, C=16, CHUNK=8192, SUB=2048, W=32 * s.WARPS["split"] * s.SPLIT_ROW_BYTES // 2,
                           KEEP=2048, NT=16, FAST=True), s.WARPS["split"]),
    (s._finish_kernel, dict(ADVANCE=True, WRITE_LAST=True, HAS_K=True, C=16, CHUNK=8192, KEEP=2048, BLK=s.FINISH_BLOCK,
                            NT=16, PASSES=4, FAST=True), s.WARPS["finish"]),
]:
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in kernel.arg_names}
    triton.compile(ASTSource(kernel, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps))
"""


def test_sampler_split_and_finish_kernels_compile_for_sm90():
    """`_split_kernel` (its bracket counted per thread, then copied out in a second sweep) at the W it gets for
    bf16 logits (SPLIT_ROW_BYTES 32), and `_finish_kernel` (its loops over copies or logits, which the
    interpreter does not type-check), compiled for sm_90 with the num_warps they run with."""
    _compile_for_sm90(_COMPILE_SAMPLER_FOR_SM90)


_COMPILE_PDL_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from shifttune.kernels import fused as f, paged_attention as pa

cases = [
    (f._add_rms_norm_kernel, dict(x="*bf16", residual="*bf16", weight="*bf16", out="*bf16", res_out="*bf16",
                                  n_cols="i32", eps="fp32"), dict(HAS_RES=True, BLOCK=4096, PDL=True)),
    (f._silu_mul_kernel, dict(gate_up="*bf16", out="*bf16", n_cols="i32"), dict(BLOCK=1024, PDL=True)),
    (f._rope_kernel, dict(qk="*bf16", positions="*i64", cos_sin="*fp32", stride_t="i32", num_heads="i32", v="*bf16",
                          k_cache="*bf16", v_cache="*bf16", slots="*i64", stride_vt="i32", num_kv="i32"),
     dict(HALF=64, BLOCK_H=64, WRITE_KV=True, BLOCK_KV=8, PDL=True, TRIGGER=True)),
    (pa._merge_splits_kernel, dict(out="*bf16", part_out="*fp32", part_lse="*fp32", num_tokens="i32",
                                   num_splits="i32"), dict(HQ=32, D=128, DC=32, SPLITS_P2=32, PDL=True)),
]
for fn, types, consts in cases:
    sig = {**types, **{k: "constexpr" for k in consts}}
    k = triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    assert "griddepcontrol.wait" in k.asm["ptx"], fn.__name__
    print(fn.__name__, "griddepcontrol.launch_dependents" in k.asm["ptx"])
"""


def test_kernels_with_programmatic_dependent_launch_compile_for_sm90():
    """The PDL variants (`launch.pdl`): each waits for the launch before it (griddepcontrol.wait in its PTX);
    RoPE also lets the next launch (attention) start at once."""
    out = dict(line.split() for line in _compile_for_sm90(_COMPILE_PDL_FOR_SM90).splitlines())
    assert out == {"_add_rms_norm_kernel": "False", "_silu_mul_kernel": "False", "_rope_kernel": "True",
                   "_merge_splits_kernel": "False"}  # fmt: skip


@pytest.mark.parametrize("ctx, splits", [([100, 37, 16, 1], 1), ([100, 37, 16, 1], 3), ([255, 64], 8), ([5], 4)])
def test_tma_decode_probe_matches_reference(ctx, splits):
    """`profiles/commands/decode_probe.py`'s TMA variant (K/V by tensor-descriptor loads of whole blocks; the
    interpreter runs descriptors too), including splits that get no block."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "profiles" / "commands"))
    from decode_probe import probe_tma_attention

    n = len(ctx)
    q, kc, vc, meta = make_case([1] * n, [c - 1 for c in ctx], 8, 2, 32, 16, device=DEV)
    out = probe_tma_attention(q, kc, vc, meta.block_tables, meta.seq_lens, 32**-0.5, splits)
    ref = reference(q.cpu(), kc.cpu(), vc.cpu(), _to_cpu(meta), 32**-0.5)
    assert ((out.double().cpu() - ref).norm() / ref.norm()) < (2e-2 if DEV == "cuda" else 1e-5)


def test_sp_mode_graph_buckets_past_the_graph_limit(monkeypatch):
    """sp_cuda_graph_tokens_per_gpu (off by default): SP mode gets buckets up to that many tokens per GPU past
    `cuda_graph_max_tokens` (2048 here), TP mode keeps the limit, and the split plan covers each mode's buckets."""
    from shifttune.runner import cuda_graphs

    monkeypatch.setattr(cuda_graphs, "sm_count", lambda device=None: 132)
    off = stand_in_step_graphs(32, 1, 256, world_size=8, sp=4)
    assert off.buckets[-1] == 2048
    assert not off.can_run(4096, 1, 1, "sp") and off.can_run(2048, 1, 1, "sp") and off.can_run(2048, 1, 1, "tp")
    on = stand_in_step_graphs(32, 1, 256, world_size=8, sp=4, sp_tokens_per_gpu=512)  # SP 4 x TP 2: up to 4096
    assert on.buckets[-3:] == [2048, 3072, 4096] and on.mode_limit == {"tp": 2048, "sp": 4096}
    assert on.can_run(4096, 1, 1, "sp") and on.bucket_for(2049) == 3072 and not on.can_run(2049, 1, 1, "tp")
    assert on.modes_for(3072) == ["sp"] and on.modes_for(2048) == ["tp", "sp"]
    assert on.max_seqs == off.max_seqs and on.width * 16 >= 4096
    assert on.split_plan and all(b <= on.mode_limit[mode] for mode, b in on.split_plan)
    assert stand_in_step_graphs(32, 1, 256, 8, sp=1, sp_tokens_per_gpu=512).buckets[-1] == 2048  # no SP mode
    assert stand_in_step_graphs(32, 2, 256, 4, sp=4, sp_tokens_per_gpu=512).buckets[-1] == 2048  # P = 4: 512 x 4


def test_chunk_split_plan(monkeypatch):
    """CHUNK_SPLIT_GRAPHS's plan on 132 SMs: a TP-8 rank of an 8B model (4 query heads, 1 KV head) gets a split graph
    for its chunk buckets, 5 ways at 512 tokens (32 query blocks), replayed by steps of up to 130 sequences (with a
    padding one, fewer than 132 busy blocks) with at least as much cached context as new tokens; 8 KV heads a rank
    fill the GPU unsplit (no split graph); and where the bucket's own graph already splits as much (8 sequences of
    capacity) no second graph is captured."""
    from shifttune.kernels import split_kv
    from shifttune.runner import cuda_graphs

    monkeypatch.setattr(split_kv, "CHUNK_SPLIT_GRAPHS", True)
    monkeypatch.setattr(cuda_graphs, "sm_count", lambda device=None: 132)
    tp8 = stand_in_step_graphs(32, 1, 256, world_size=8)
    assert tp8.split_plan[("tp", 512)] == (5, 130)
    assert min(b for _, b in tp8.split_plan) == 320 and ("tp", 256) not in tp8.split_plan  # decode buckets: none
    assert tp8.use_split_graph("tp", 512, 1, 512, 1024) and tp8.use_split_graph("tp", 512, 130, 512, 8192)
    assert not tp8.use_split_graph("tp", 512, 131, 512, 8192) and not tp8.use_split_graph("tp", 256, 1, 256, 8192)
    assert not tp8.use_split_graph("tp", 512, 1, 512, 1023)  # less cached context than new tokens: unsplit
    # 32 query heads, 8 KV heads a rank: a 320-token chunk fills 132 SMs
    assert stand_in_step_graphs(256, 8, 256, world_size=8).split_plan == {}
    # capacity 9 < 10 query blocks: the graph splits as one chunk
    assert ("tp", 160) not in stand_in_step_graphs(32, 1, 8, world_size=8).split_plan


@pytest.mark.parametrize("mode", ["none", "kernel", "ticket", "touch", "touchgrid"])
def test_split_floor_probe_kernels_match_torch(mode):
    """`profiles/commands/split_floor_probe.py` (issue 14's lower bound for split-KV decode attention): each mode's
    output (chunk means, or their merge by the engine's merge kernel / last-split merge) against torch, with contiguous
    and shuffled (paged) chunks, one to four splits a KV head, including a chunk that runs past the end."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "profiles" / "commands"))
    import split_floor_probe as probe

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, generator=gen).to(torch.bfloat16).to(DEV)  # 3000 / (8 KV heads x 3 splits): a ragged end
    counters = torch.zeros(probe.HK, dtype=torch.int32, device=DEV)
    for paged, splits in [(False, 1), (False, 3), (True, 3), (True, 4)]:
        n = probe.HK * splits
        table = (torch.randperm(n, generator=gen) if paged else torch.arange(n)).int().to(DEV)
        out = probe.launch(x, table, mode, paged, splits, 64, 4, counters, merge_dc=64 if paged else 32)
        assert probe.check(x, table, mode, splits, 64, out) < (1e-2 if mode in ("kernel", "ticket") else 1e-5)  # bf16
        if mode == "none" and paged:  # the shuffled table is what the programs read
            assert not torch.equal(out, probe.reference(x, torch.arange(n).int().to(DEV), mode, splits, 64))
    assert counters.eq(0).all()  # the last split of each head put its ticket back
