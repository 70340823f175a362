"""Launch facts shared by the Triton kernels: the SM count, and programmatic dependent launch (PDL).

On sm_90 and newer a kernel launched with `launch_pdl=True` may start while the launch before it on the stream
is still finishing; it must call `gdc_wait()` before touching anything that launch writes (the kernels here call
it before their first such load or store). Its launch latency and any work before the wait then overlap the
previous kernel. Off GPU (the interpreter) and before Hopper it is off.
"""

from __future__ import annotations

import functools

import torch

LAUNCH_PDL = True  # the switch for every kernel that supports it


def pdl(device: torch.device) -> bool:
    """Whether launches on `device` use programmatic dependent launch."""
    return LAUNCH_PDL and device.type == "cuda" and _sm90(-1 if device.index is None else device.index)


def pdl_args(device: torch.device, enabled: bool = True) -> dict[str, bool]:
    """A PDL kernel's `PDL` constexpr and the `launch_pdl` launch option, which go together."""
    on = enabled and pdl(device)
    return {"PDL": on, "launch_pdl": on}


@functools.cache
def _sm90(index: int) -> bool:
    return torch.cuda.get_device_capability(None if index < 0 else index)[0] >= 9


def sm_count(device: torch.device | None = None) -> int:
    """SMs of `device` (the current CUDA device when None); 132 (an H100) without CUDA, where only launch logic runs."""
    if (device is not None and device.type != "cuda") or not torch.cuda.is_available():
        return 132
    return _sm_count(device.index if device is not None and device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
