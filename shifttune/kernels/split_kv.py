"""How paged attention splits a step's keys across programs (flash-decoding), in plain Python: no torch, no Triton.

The kernel (`paged_attention.py`) and the CUDA graphs (`runner/cuda_graphs.py`) launch by these rules, and the
torch-free roofline (`recommend/roofline.py`) predicts with the same functions. Split counts depend only on token,
sequence and head counts and the SM count, never on context lengths, so a captured graph's choice holds for every
replay.
"""

from __future__ import annotations

MAX_SPLITS = 256  # the most split-KV ways `choose_num_splits` returns
# split until this many programs per SM hold work (when the step alone has fewer), small steps aside (below). 1,
# not 2: on an H100 every batch 1-8 decode row (2k-32k) of attention_bench ran as fast or faster, and batch-1
# decode steps 0.6% faster (profiles/runs/s12_h100, before small steps had their own rule)
PROGRAMS_PER_SM = 1
# Small decode steps (query blocks x KV heads with work x SMALL_STEP_RATIO <= SMs: batch 1-2 of 8 KV heads, 1-16
# of one, on 132 SMs) split into SMALL_STEP_PROGRAMS_PER_SM programs per SM (their launch configuration:
# paged_attention.SMALL_STEP_CONFIG[_WIDE_GROUP]), the larger of them (below) into WIDE_TILE_PROGRAMS_PER_SM.
SMALL_STEP_RATIO = 8
SMALL_STEP_PROGRAMS_PER_SM = 4
# The larger small steps of GQA groups over 4 query heads per KV head (query blocks x KV heads with work x
# WIDE_TILE_RATIO > SMs: batch 5-8 of two KV heads, 9-16 of one, on 132 SMs) split into WIDE_TILE_PROGRAMS_PER_SM
# programs per SM on 128-key tiles (paged_attention.WIDE_TILE_CONFIG): at 2k context one tile a split.
WIDE_TILE_RATIO = 16
WIDE_TILE_PROGRAMS_PER_SM = 2
# Measured on an H100 (profiles/runs/s22_h100/a_chunk_split): a TP-4 / TP-8 rank of an 8B model, one sequence's
# chunk of 512 tokens 11-25% less time a layer at 2k context, 512-1024 tokens 21-57% at 8k and 40-75% at 32k; steps
# on the bucket's own graph unchanged. So chunk buckets also capture a graph split for one sequence's chunk
# (runner/cuda_graphs.py) ...
CHUNK_SPLIT_GRAPHS = True
# NOTE: ... replayed only for steps whose KV (cached + new tokens) is at least this many times their new tokens: a
# prompt's first 512-token chunk ran 3-12% slower split (s22_h100/c, the op table's entries at context = chunk).
CHUNK_SPLIT_MIN_KV_RATIO = 2


def next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def launch_shape(num_tokens: int, num_seqs: int, hq: int, hk: int, block_m: int | None = None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_Q, query-block grid size) the kernel uses for a step of this size."""
    group = hq // hk
    decode_like = num_tokens <= 4 * num_seqs
    block_m = max(block_m or (16 if decode_like else 64), next_power_of_2(group))
    block_q = block_m // group
    return block_m, block_q, num_tokens // block_q + num_seqs


def busy_programs(num_tokens: int, num_seqs: int, hq: int, hk: int, block_m: int | None = None) -> int:
    """Query blocks x KV heads that hold tokens in a step of this size (the grid's other query blocks are empty)."""
    _, block_q, _ = launch_shape(num_tokens, num_seqs, hq, hk, block_m)
    return max(num_seqs, -(-num_tokens // block_q)) * hk


def step_kind(num_tokens: int, num_seqs: int, hq: int, hk: int, block_m: int | None, num_sms: int) -> str:
    """How the kernel launches a step of this size: "small" (a decode step, 16-row tiles, with so few programs of work
    that it runs SMALL_STEP_CONFIG[_WIDE_GROUP] at SMALL_STEP_PROGRAMS_PER_SM), "wide_tile" (one of the larger small
    steps of a GQA group over 4, which run WIDE_TILE_CONFIG at WIDE_TILE_PROGRAMS_PER_SM), or "plain" (the rest).
    NOTE: groups of 4 (Llama-3.1-8B) stay "small": at batch 2 the wide tiles took 5% less time at 2k but 1% (H100) and
    4% (H200) more at 32k (profiles/runs/s28_gpu/b_probe_marginal_h200)."""
    block_m, _, _ = launch_shape(num_tokens, num_seqs, hq, hk, block_m)
    busy = busy_programs(num_tokens, num_seqs, hq, hk, block_m)
    if block_m >= 64 or busy * SMALL_STEP_RATIO > num_sms:
        return "plain"
    if hq // hk > 4 and busy * WIDE_TILE_RATIO > num_sms:
        return "wide_tile"
    return "small"


def choose_num_splits(
    num_tokens: int,
    num_seqs: int,
    hq: int,
    hk: int,
    block_m: int | None,
    num_sms: int,
    programs_per_sm: int | None = None,
) -> int:
    """Split-KV ways for a step of this many tokens and sequences on `num_sms` SMs: none when the query blocks that
    hold tokens already fill the GPU once, else enough for about `programs_per_sm` programs with work per SM
    (default PROGRAMS_PER_SM; SMALL_STEP_PROGRAMS_PER_SM for small steps, WIDE_TILE_PROGRAMS_PER_SM for the larger
    ones)."""
    busy = busy_programs(num_tokens, num_seqs, hq, hk, block_m)
    if busy >= num_sms:
        return 1
    kind = step_kind(num_tokens, num_seqs, hq, hk, block_m, num_sms)
    default = {"small": SMALL_STEP_PROGRAMS_PER_SM, "wide_tile": WIDE_TILE_PROGRAMS_PER_SM}.get(kind, PROGRAMS_PER_SM)
    per_sm = programs_per_sm or default
    return max(1, min(-(-per_sm * num_sms // busy), MAX_SPLITS))
