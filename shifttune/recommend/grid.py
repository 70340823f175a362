"""The profile grid without torch: default tokens per step and contexts on GPUs, and the step shape a
grid point stands for (decode batch or whole prefill chunks), for the predictor.

These mirror what `shifttune profile` measures (`profile/profiler.py`, `profile/step_sweep.py`, which
import torch); `tests/test_predict.py` checks that both say the same.
"""

from __future__ import annotations

DECODE = [1, 2, 4, 8, 16, 32, 64, 128, 256]
PREFILL = [512, 1024, 2048, 4096, 8192, 16384]
GPU_TOKENS = DECODE + PREFILL
GPU_CONTEXTS = [512, 2048, 8192, 32768]
MAX_DECODE = 256  # tokens per step up to this are decode batches (the profile's max_decode_batch)
CUDA_GRAPH_MAX_TOKENS = 2048  # steps up to this many tokens replay CUDA graphs (EngineConfig's default)
# the token counts CUDA graphs are captured for; a step replays the smallest that holds it (runner/cuda_graphs.py)
GRAPH_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
                       1024, 1280, 1536, 2048)  # fmt: skip
# prefill chunks "auto" sends to SDPA: at least this many new tokens and query-key pairs (kernels/prefill_attention.py)
SDPA_MIN_TOKENS = 256
SDPA_MIN_PAIRS = 4 * 1024 * 1024


def step_shape(tokens: int, context: int, max_decode: int = MAX_DECODE) -> tuple[int, int]:
    """(num_seqs, tokens_per_seq) for a step of `tokens` tokens at `context`."""
    if tokens <= max_decode:
        return tokens, 1
    per = min(tokens, context)
    return max(1, tokens // per), per


def blocks_needed(num_seqs: int, context: int, block_size: int) -> int:
    return num_seqs * -(-context // block_size)
