"""Cluster decode attention: small decode steps on Hopper in one launch (`cluster_decode.cu`).

A decode step of a few sequences has too few (query block, KV head) pairs to fill the GPU, so the Triton
kernel (`paged_attention.py`) splits each pair's keys across programs and merges the partial results in a
second launch; at batch 1-2 with 2k keys that launch chain, not the bytes, is most of the time. Here a
thread-block cluster of up to 16 CTAs owns a pair, and the CTAs merge through distributed shared memory
in the same launch. Same inputs and output as `paged_attention`, for the steps `cluster_size` accepts:
tokens x KV heads below the SM count, head size 128, bf16, group size a power of two <= 16, int64
metadata (what the CUDA graphs hold). Compiled by NVRTC (through torch) on first use per shape; where that
fails, `cluster_size` says 0 and the Triton kernel runs. Checked against `attention_ref.py` on the GPU
(`tests/test_gpu.py`); there is no CPU path.
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import torch

from shifttune.kernels.attention import AttentionMetadata

log = logging.getLogger(__name__)

CLUSTER_DECODE = True  # the switch: False sends every step to the Triton kernel
# CTAs per cluster: 16 (a non-portable size) was slower than 8 at batch 1 on an H100 (17.2 vs 11.1 us at 2k;
# profiles/runs/s16_gpu/b_cp_async): not every GPC has 16 SMs free for one cluster
MAX_CLUSTER = 16
STAGES = 2  # K/V tiles in flight per CTA (STAGES - 1 ahead of the one in use)
WARPS = 8  # per CTA; a tile holds 16 keys per warp
HEAD, ROW = 128, 128 + 8  # as #defined in the source
_SOURCE = Path(__file__).with_name("cluster_decode.cu")
_FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES, _FUNC_NON_PORTABLE_CLUSTER_SIZE_ALLOWED = 8, 14  # CUfunction_attribute


def cluster_size(q: torch.Tensor, k_cache: torch.Tensor, meta: AttentionMetadata, block_m: int, num_sms: int) -> int:
    """CTAs per cluster for this step (a power of two >= 2), or 0 where the Triton kernel runs it."""
    num_tokens, hq, dim = q.shape
    num_seqs, hk = meta.block_tables.shape[0], k_cache.shape[2]
    group = hq // hk
    if not (
        CLUSTER_DECODE
        and q.is_cuda
        and block_m == 16
        and dim == HEAD
        and group in (1, 2, 4, 8, 16)
        and q.dtype == k_cache.dtype == torch.bfloat16
        and all(t.dtype == torch.int64 for t in (meta.block_tables, meta.seq_lens, meta.query_start_loc))
        and meta.block_tables.stride(1) == 1
        and torch.cuda.get_device_capability(q.device)[0] == 9
    ):
        return 0
    busy = max(num_seqs, -(-num_tokens // (16 // group))) * hk
    if 2 * busy > num_sms:
        return 0
    cluster = min(MAX_CLUSTER, 1 << int(math.log2(num_sms // busy)))
    kernel = _kernel(cluster, group, k_cache.shape[1], q.device.index or 0, STAGES, WARPS)
    return cluster if kernel is not None else 0


def smem_bytes(stages: int, warps: int) -> int:
    return stages * 2 * 16 * warps * ROW * 2  # K and V tiles, bf16


@functools.cache
def _kernel(cluster: int, group: int, block_size: int, device_index: int, stages: int, warps: int):
    """The compiled instance, or None when NVRTC or the driver refuse it (logged once)."""
    name = f"cluster_decode<{cluster}, {group}, {block_size}>"
    try:
        with torch.cuda.device(device_index):
            options = ["--use_fast_math", f"-DSTAGES={stages}", f"-DWARPS={warps}"]
            kernel = torch.cuda._compile_kernel(_SOURCE.read_text(), name, nvcc_options=options)
            libcuda = torch.cuda._utils._get_gpu_runtime_library()
            for attr, value in (
                (_FUNC_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_bytes(stages, warps)),
                (_FUNC_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1),
            ):
                torch.cuda._utils._check_cuda(libcuda.cuFuncSetAttribute(kernel.func, attr, value))
            kernel._max_shared_mem_bytes = smem_bytes(
                stages, warps
            )  # NOTE: what torch's launcher checks launches against
    except Exception as e:  # noqa: BLE001 - any failure means the Triton kernel runs instead
        log.warning("cluster decode attention %s unavailable (%s); using the Triton kernel", name, e)
        return None
    return kernel


def cluster_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scale: float,
    cluster: int,
) -> torch.Tensor:
    """`paged_attention` for a step `cluster_size` accepted (with `cluster` its answer)."""
    num_tokens, hq, dim = q.shape
    block_size, hk = k_cache.shape[1], k_cache.shape[2]
    group, num_seqs = hq // hk, meta.block_tables.shape[0]
    assert q.stride(2) == 1 and q.stride(1) == dim and k_cache.is_contiguous() and v_cache.is_contiguous()
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grid_q = num_tokens // (16 // group) + num_seqs  # as launch_shape: a sequence's blocks start at qsl / BQ + i
    _kernel(cluster, group, block_size, q.device.index or 0, STAGES, WARPS)(
        grid=(cluster, hk, grid_q),
        block=(32 * WARPS, 1, 1),
        args=[
            out,
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.query_start_loc,
            num_seqs,
            meta.block_tables.stride(0),
            q.stride(0),
            hk,
            float(scale * 1.4426950408889634),  # base 2: the kernel's softmax uses exp2
        ],
        shared_mem=smem_bytes(STAGES, WARPS),
    )
    return out
