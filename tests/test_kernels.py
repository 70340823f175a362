"""The Triton paged-attention kernel against the torch reference (CPU: TRITON_INTERPRET=1; GPU: bf16)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "Triton on CPU needs TRITON_INTERPRET=1 (set by tests/conftest.py before triton loads)", allow_module_level=True
    )

from shifttune.kernels.attention import AttentionMetadata  # noqa: E402
from shifttune.kernels.attention_ref import paged_attention_ref  # noqa: E402
from shifttune.kernels.paged_attention import paged_attention  # noqa: E402


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
]


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "q_lens, ctx", [([1] * 32, [2047] * 32), ([1] * 3, [100, 3000, 7]), ([512, 1, 300], [0, 900, 4000]), ([2048], [0])]
)
def test_triton_matches_reference_on_gpu_bf16(q_lens, ctx):
    q, kc, vc, meta = make_case(q_lens, ctx, 16, 2, 128, 16, device="cuda", dtype=torch.bfloat16)
    scale = 128**-0.5
    out = paged_attention(q, kc, vc, meta, scale)
    ref = reference(q.cpu(), kc.cpu(), vc.cpu(), _to_cpu(meta), scale)
    err = (out.double().cpu() - ref).norm() / ref.norm()
    assert err < 1e-2, err


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


@pytest.mark.parametrize("n, vocab", [(6, 50), (6, 2500), (6, 20000)])  # 20000: three chunks
def test_sample_kernel_matches_the_torch_reference(n, vocab):
    """Filters (top-k cut, temperature, sort-free top-p, min-p) and the seeded draw, row for row."""
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
    got, ref = sample(logits, *args), sample_ref(logits, *args)
    assert got.tolist() == ref.tolist() and got[0] >= 7
