"""The split-K GEMV (decode-sized linear layers) against torch's matmul (CPU: TRITON_INTERPRET=1; GPU: bf16)."""

from __future__ import annotations

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton on CPU needs TRITON_INTERPRET=1 (set by tests/conftest.py)", allow_module_level=True)

from shifttune.kernels.gemv import choose_split_k, gemv  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: the interpreter


@pytest.mark.parametrize("m,n,k", [(1, 100, 300), (3, 256, 1024), (16, 130, 513), (5, 64, 128)])
@pytest.mark.parametrize("split_k", [None, 1, 3, 8])
@pytest.mark.parametrize("early_w,reduce", [(False, "kernel"), (True, "kernel"), (False, "fused")])
def test_gemv_matches_matmul(m, n, k, split_k, early_w, reduce):
    """Ragged N and K (masked tiles), splits that leave the last one short or empty, every row count up to 16."""
    gen = torch.Generator().manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, generator=gen)
    w = torch.randn(n, k, generator=gen)
    dtype = torch.bfloat16 if DEV == "cuda" else torch.float32
    got = gemv(x.to(DEV, dtype), w.to(DEV, dtype), split_k=split_k, early_w=early_w, reduce=reduce).float().cpu()
    want = x.to(dtype).float() @ w.to(dtype).float().T
    tol = 2e-2 * k**0.5 if dtype == torch.bfloat16 else 1e-3
    assert got.shape == (m, n) and (got - want).abs().max().item() < tol


def test_gemv_takes_a_row_strided_view():
    """x may be a view whose rows are strided (a slice of a wider activation)."""
    gen = torch.Generator().manual_seed(1)
    wide = torch.randn(4, 512, generator=gen)
    x, w = wide[:, :256], torch.randn(96, 256, generator=gen)
    got = gemv(x.to(DEV), w.to(DEV)).float().cpu()
    assert (got - x @ w.T).abs().max().item() < (0.5 if DEV == "cuda" else 1e-3)


def test_split_k_fills_the_gpu_with_whole_k_blocks():
    assert choose_split_k(2560, 8192, 132) == 8  # 40 column tiles x 8 = 320 programs, 1024 columns each
    assert choose_split_k(1280, 8192, 132) == 16
    assert choose_split_k(28672, 4096, 132) == 1  # 448 tiles fill 132 SMs already
    assert choose_split_k(64, 128, 132) == 1  # one K block: nothing to split


def test_fused_reduce_leaves_its_tickets_at_zero():
    """The last split of each column tile puts its ticket back: a second launch (as a graph replay) is right too."""
    from shifttune.kernels.paged_attention import split_counters

    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(2, 1024, generator=gen).to(DEV), torch.randn(200, 1024, generator=gen).to(DEV)
    for _ in range(2):
        got = gemv(x, w, split_k=4, reduce="fused").float().cpu()
        assert (got - x.cpu() @ w.cpu().T).abs().max().item() < (0.5 if DEV == "cuda" else 1e-3)
    assert int(split_counters(torch.device(DEV), 4, "gemv").abs().sum()) == 0
