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


def to_device_parts(parts: Sequence[Sequence], dtype: torch.dtype, device: torch.device) -> list[torch.Tensor]:
    """Several host lists to the device in one copy (see `to_device`), as 1-D views that each start on a
    16-byte boundary.

    NOTE: Triton specializes a kernel's pointer arguments on 16-byte alignment: a view that starts at an odd
    int64 offset compiles another binary at its first launch, which stalled a served H200 for 1.2-3.7 s
    (the sampler, the eager paged launch) although warm-up had compiled the aligned ones."""
    per = max(1, ALIGN_BYTES // torch.empty(0, dtype=dtype).element_size())
    sizes = [len(p) for p in parts]
    flat = []
    for p, n in zip(parts, sizes):
        flat += p
        flat += [0] * (-n % per)
    views = to_device(flat, dtype, device).split([n + (-n % per) for n in sizes])
    return [v[:n] for v, n in zip(views, sizes)]
