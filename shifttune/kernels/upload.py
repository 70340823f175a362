"""Host lists to the device in one non-blocking copy: what every step uploads (token ids, positions, lengths,
block tables, sampling rows) before its kernels run."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def to_device(values, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Host values to the device without waiting: a pinned staging buffer and a non-blocking copy (a
    copy from pageable memory would wait for the device to finish its queued work)."""
    host = torch.tensor(values, dtype=dtype, pin_memory=device.type == "cuda")
    return host.to(device, non_blocking=True)


ALIGN_BYTES = 16


def aligned_length(n: int, dtype: torch.dtype) -> int:
    """n elements rounded up so that a part of one buffer after them starts on 16 bytes.

    NOTE: Triton specializes a kernel's pointer arguments on 16-byte alignment: a view that starts at an odd
    offset compiles another binary at its first launch, which stalled a served H200 for 1.2-3.7 s (the
    sampler, the eager paged launch) although warm-up had compiled the aligned ones. Buffers cut into parts
    that kernels read (uploads here, the sampler's workspace) cut them at these lengths."""
    return n + (-n % max(1, ALIGN_BYTES // dtype.itemsize))


def to_device_parts(parts: Sequence[Sequence], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Several host lists to the device in one copy (see `to_device`), as 1-D views that each start on a
    16-byte boundary (`aligned_length`)."""
    sizes = [len(p) for p in parts]
    padded = [aligned_length(n, dtype) for n in sizes]
    flat = []
    for p, n, m in zip(parts, sizes, padded):
        flat += p
        flat += [0] * (m - n)
    return [v[:n] for v, n in zip(to_device(flat, dtype, device).split(padded), sizes)]
