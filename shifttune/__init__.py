"""shifttune: a shift-parallel LLM inference engine (TP <-> SP x TP per step over one KV cache)."""

from shifttune.engine.llm import LLM
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.sequence import CompletionOutput, RequestOutput

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
