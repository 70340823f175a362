"""shifttune: a shift-parallel LLM inference engine (TP <-> SP x TP per step over one KV cache).

`from shifttune import LLM, SamplingParams` as in vLLM. The names load on first use, so that tools
which never run the engine (`shifttune --help`, `shifttune recommend`) do not import torch.
"""

from __future__ import annotations

import importlib

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
__version__ = "0.1.0"
_HOMES = {
    "LLM": "shifttune.engine.llm",
    "SamplingParams": "shifttune.engine.sampling_params",
    "RequestOutput": "shifttune.engine.sequence",
    "CompletionOutput": "shifttune.engine.sequence",
    "Logprob": "shifttune.runner.sampler",
}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'shifttune' has no attribute {name!r}")
