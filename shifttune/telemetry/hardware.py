"""What machine a measurement was taken on: GPUs (name, memory, driver, link topology from NVML), or CPU."""

from __future__ import annotations

import os
import platform

import torch


def _nvml_info() -> dict | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        n = pynvml.nvmlDeviceGetCount()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        gpus = []
        for h in handles:
            name = pynvml.nvmlDeviceGetName(h)
            gpus.append(
                {
                    "name": name.decode() if isinstance(name, bytes) else name,
                    "memory_bytes": pynvml.nvmlDeviceGetMemoryInfo(h).total,
                }
            )
        topology = []
        for i in range(n):
            row = []
            for j in range(n):
                if i == j:
                    row.append("X")
                    continue
                level = pynvml.nvmlDeviceGetTopologyCommonAncestor(handles[i], handles[j])
                row.append(
                    {
                        0: "internal",
                        10: "single-switch",
                        20: "multi-switch",
                        30: "host-bridge",
                        40: "numa-node",
                        50: "system",
                    }.get(level, str(level))
                )
            topology.append(row)
        nvlinks = []
        for h in handles:
            active = 0
            for link in range(18):
                try:
                    active += pynvml.nvmlDeviceGetNvLinkState(h, link) == 1
                except pynvml.NVMLError:
                    break
            nvlinks.append(active)
        driver = pynvml.nvmlSystemGetDriverVersion()
        return {
            "gpus": gpus,
            "driver": driver.decode() if isinstance(driver, bytes) else driver,
            "pcie_topology": topology,
            "active_nvlinks_per_gpu": nvlinks,
        }
    finally:
        pynvml.nvmlShutdown()


def describe_hardware(device: str) -> dict:
    if device == "cuda":
        info = _nvml_info() or {}
        if not info:  # NVML missing: what torch can tell
            info = {
                "gpus": [
                    {
                        "name": torch.cuda.get_device_name(i),
                        "memory_bytes": torch.cuda.get_device_properties(i).total_memory,
                    }
                    for i in range(torch.cuda.device_count())
                ]
            }
        return {
            "device": "cuda",
            "gpu_name": info["gpus"][0]["name"] if info["gpus"] else None,
            "gpu_count": len(info["gpus"]),
            **info,
        }
    return {"device": "cpu", "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def describe_software() -> dict:
    import sys

    import shifttune

    sw = {"shifttune": shifttune.__version__, "torch": torch.__version__, "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        sw["cuda"] = torch.version.cuda
        sw["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    try:
        import triton

        sw["triton"] = triton.__version__
    except ImportError:
        pass
    return sw
