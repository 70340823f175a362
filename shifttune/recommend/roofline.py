"""A provisional operator table where none was measured: each rank's work from bytes and FLOPs against
a GPU's measured ceilings, with efficiencies calibrated on measured engine steps. Never measured itself.

Per decoder layer on one rank (shapes from `shapes.py`): the four GEMMs (qkv, o, gate-up, down) take
the longer of reading their weights and activations at `gemm_bw` x the HBM ceiling and their FLOPs at
`gemm_mm` x the matmul ceiling; attention the longer of reading the KV of the step at `attn_bw` and its
FLOPs at `attn_mm` (scaled by a power of the GQA group over 4: the kernel works on all query heads of a
KV head at once), or at `attn_sdpa_mm` for the long eager chunks the engine sends to cuDNN SDPA, plus a
fixed `attn_us`; in a graphed step attention runs on the share of the GPU its programs fill (a graph fixes
its split-KV ways for its bucket, so one sequence's prefill chunk may hold few programs); norms, RoPE,
SiLU x up and the Ulysses packing move their bytes at `elem_bw`, the KV write at `index_bw`; every kernel
adds `kernel_us`; an eager SP-mode layer takes at least `eager_sp_us`. The head (embedding, final norm,
LM head, full-vocab logits) the same way, plus `head_us` per step.

The constants (`data/gpus.json`, "roofline") are fitted by `profiles/commands/roofline_fit.py` to the
measured H200 op tables of Llama-3.1-8B and Qwen3-8B (today's kernels, every layout of P = 1-8);
`tests/test_predict.py` holds them to the 8B table, to the 70B table and to the one-GPU profiles measured on
an H100 (the last two unseen by the fit). Some are fudge factors more than rates: the fit puts `index_bw` at its
bound (0.3), the KV write absorbing per-token costs the model lacks, and `gemm_bw` a little above the copy rate.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from shifttune.config import SP, TP, ModelConfig
from shifttune.engine.profile_schema import model_summary
from shifttune.kernels import split_kv
from shifttune.kernels.split_kv import choose_num_splits, launch_shape
from shifttune.recommend.gpus import GPUS_FILE, GpuSpec
from shifttune.recommend.grid import (
    CUDA_GRAPH_MAX_TOKENS,
    GPU_CONTEXTS,
    GPU_TOKENS,
    GRAPH_TOKEN_BUCKETS,
    MAX_DECODE,
    SDPA_MIN_PAIRS,
    SDPA_MIN_TOKENS,
    step_shape,
)
from shifttune.recommend.op_table import OpEntry, OpTable
from shifttune.recommend.shapes import DTYPE_BYTES, RankShapes, rank_shapes

ASSUMED_MEMORY_OVERHEAD = 1 << 30  # CUDA context and buffers besides weights and KV: assumed, not measured


@dataclass(frozen=True)
class RooflineConstants:
    gemm_bw: float  # fraction of the HBM ceiling GEMMs reach streaming weights
    gemm_mm: float  # fraction of the matmul ceiling on large GEMMs
    attn_bw: float  # fraction of the HBM ceiling attention reaches reading K/V
    attn_mm: float  # fraction of the matmul ceiling attention reaches (at a GQA group of 4)
    attn_group_exp: float  # attention's FLOP rate grows as (GQA group / 4) ** this
    attn_us: float  # fixed time of one attention call
    attn_sdpa_mm: float  # fraction of the matmul ceiling torch's cuDNN SDPA reaches on long eager prefill chunks
    elem_bw: float  # fraction of the HBM ceiling elementwise kernels reach
    index_bw: float  # the same for the KV-cache write (an indexed copy; fitted: absorbs other per-token costs)
    kernel_us: float  # per kernel in a replayed graph
    head_us: float  # per step: input upload and graph launch
    attn_fill: float = 1.0  # programs an SM must hold for graphed attention to reach its full rate
    eager_sp_us: float = 0.0  # least time of an SP-mode layer in an eager step (fitted; its kernels' launches)
    source: str = ""

    @classmethod
    def shipped(cls) -> RooflineConstants:
        return cls(**json.loads(GPUS_FILE.read_text())["roofline"])


def _gemm_ms(m: int, n: int, k: int, elem: int, gpu: GpuSpec, c: RooflineConstants) -> float:
    read = (n * k * elem) / (c.gemm_bw * gpu.hbm_bytes_per_s) + (m * (n + k) * elem) / gpu.hbm_bytes_per_s
    compute = 2 * m * n * k / (c.gemm_mm * gpu.matmul_flops_per_s)
    return 1e3 * max(read, compute)


def sdpa_chunk(tokens: int, per: int, context: int) -> bool:
    """Whether the engine's "auto" prefill attention sends chunks of `per` new tokens at `context` to SDPA
    (`kernels/prefill_attention.py`): in eager steps only (graphs run the paged kernel), long enough chunks."""
    pairs = per * (context - per + per / 2)
    return tokens > CUDA_GRAPH_MAX_TOKENS and per >= SDPA_MIN_TOKENS and pairs >= SDPA_MIN_PAIRS


def graph_attention_programs(tokens: int, seqs: int, per: int, context: int, hq: int, hk: int, sms: int,
                             max_decode: int = MAX_DECODE, chunk_split: bool | None = None) -> int:  # fmt: skip
    """Programs with work in a graphed step's paged attention. The step replays the graph of the smallest bucket
    that holds it, whose split-KV ways were fixed as if the bucket's sequence capacity held its tokens
    (`runner/cuda_graphs.py`, `kernels/split_kv.py`: the kernel's own rule); in a chunk bucket, a step of few
    enough sequences with enough cached context replays the graph split for one sequence's chunk
    (CHUNK_SPLIT_GRAPHS; `chunk_split` None: as the engine's `split_kv` says now)."""
    bucket = next((b for b in GRAPH_TOKEN_BUCKETS if b >= tokens), tokens)
    capacity = min(bucket, max_decode + 1)  # StepGraphs.max_seqs: one row more than max_num_seqs
    block_m = 16 if bucket < max_decode + 1 else 64  # StepGraphs.block_m_for
    _, block_q, _ = launch_shape(bucket, capacity, hq, hk, block_m)
    splits = choose_num_splits(bucket, capacity, hq, hk, block_m, sms)
    chunk_split = split_kv.CHUNK_SPLIT_GRAPHS if chunk_split is None else chunk_split
    chunk = (
        chunk_split
        and bucket >= max_decode + 1
        and seqs < capacity
        and context >= split_kv.CHUNK_SPLIT_MIN_KV_RATIO * per
    )
    if chunk and choose_num_splits(bucket, seqs + 1, hq, hk, block_m, sms) > splits:  # StepGraphs.use_split_graph
        splits = choose_num_splits(bucket, 1, hq, hk, block_m, sms)
    return seqs * -(-per // block_q) * hk * splits


def attention_ms(hq: int, hk: int, d: int, seqs: int, per: int, context: int, elem: int, gpu: GpuSpec,
                 c: RooflineConstants, sdpa: bool = False, programs: int | None = None) -> float:  # fmt: skip
    """The paged-attention kernel (or, `sdpa`, cuDNN SDPA) for `seqs` sequences of `per` new tokens each at
    `context`; `programs`: how many hold work in a graphed step, which runs on the share of the GPU they fill
    (full from `attn_fill` programs an SM)."""
    kv_read = seqs * context * hk * d * 2 * elem
    visible = seqs * (per * (context - per) + per * (per + 1) / 2)
    mm = c.attn_sdpa_mm if sdpa else c.attn_mm * (max(1, hq // hk) / 4) ** c.attn_group_exp
    share = min(1.0, programs / (c.attn_fill * gpu.sm_count)) if programs else 1.0
    rate = min(1.0, mm) * gpu.matmul_flops_per_s * share
    return c.attn_us / 1e3 + 1e3 * max(kv_read / (c.attn_bw * gpu.hbm_bytes_per_s * share), 4 * hq * d * visible / rate)


def layer_ms(cfg: ModelConfig, s: RankShapes, tokens: int, context: int, elem: int, gpu: GpuSpec, c: RooflineConstants,
             max_decode: int = MAX_DECODE, chunk_split: bool | None = None) -> float:  # fmt: skip
    """One decoder layer on one rank, collectives excluded; `chunk_split`: as an engine with CHUNK_SPLIT_GRAPHS
    on or off (an op table's `engine.chunk_split_graphs`) runs it."""
    seqs, per = step_shape(tokens, context, max_decode)
    m, h, d = s.gemm_rows(tokens), cfg.hidden_size, cfg.head_dim
    gemms = (
        _gemm_ms(m, (s.q_heads + 2 * s.kv_heads) * d, h, elem, gpu, c)
        + _gemm_ms(m, h, s.q_heads * d, elem, gpu, c)
        + _gemm_ms(m, 2 * s.mlp_rows, h, elem, gpu, c)
        + _gemm_ms(m, h, s.mlp_rows, elem, gpu, c)
    )
    hq, hk = s.attn_q_heads, s.cache_kv_heads
    graphed = tokens <= CUDA_GRAPH_MAX_TOKENS
    programs = (
        graph_attention_programs(tokens, seqs, per, context, hq, hk, gpu.sm_count, max_decode, chunk_split)
        if graphed
        else None
    )
    attention = attention_ms(hq, hk, d, seqs, per, context, elem, gpu, c, sdpa_chunk(tokens, per, context), programs)
    moved = 2 * 4 * m * h + 2 * m * (s.q_heads + s.kv_heads) * d + 3 * m * s.mlp_rows
    kernels = 4 + 2 + 2 + 1 + 2 + 1  # GEMMs, norms, RoPE on q and k, SiLU, KV write (k, v), attention
    if s.sp > 1:  # Ulysses: pack q/k/v for the all-to-all, unpack after; the output back the same way
        moved += 2 * 2 * m * (s.q_heads + 2 * s.kv_heads) * d + 2 * 2 * tokens * hq * d
        kernels += 6
    elementwise = 1e3 * (moved * elem / (c.elem_bw * gpu.hbm_bytes_per_s))
    kv_write = 1e3 * (2 * tokens * hk * d * elem / (c.index_bw * gpu.hbm_bytes_per_s))
    gpu_ms = gemms + attention + elementwise + kv_write + kernels * c.kernel_us / 1e3
    return gpu_ms if graphed or s.sp == 1 else max(gpu_ms, c.eager_sp_us / 1e3)


def head_ms(cfg: ModelConfig, s: RankShapes, tokens: int, context: int, elem: int, gpu: GpuSpec,
            c: RooflineConstants, max_decode: int = MAX_DECODE) -> float:  # fmt: skip
    """Everything outside the layers on one rank: upload, embedding, final norm, LM head, logits."""
    seqs, _ = step_shape(tokens, context, max_decode)
    m, h = s.gemm_rows(tokens), cfg.hidden_size
    lm_head = _gemm_ms(seqs, s.vocab_rows, h, elem, gpu, c)
    moved = 3 * m * h * elem + 3 * m * h * elem + 3 * seqs * cfg.vocab_size * elem  # embed + mask, norm, logits
    return c.head_us / 1e3 + lm_head + 1e3 * moved / (c.elem_bw * gpu.hbm_bytes_per_s) + 6 * c.kernel_us / 1e3


def roofline_table(
    name: str,
    cfg: ModelConfig,
    gpu: GpuSpec,
    world_sizes: list[int],
    dtype: str = "bfloat16",
    tokens: list[int] | None = None,
    contexts: list[int] | None = None,
    constants: RooflineConstants | None = None,
) -> OpTable:
    """The analytic table of `name` on `gpu` for every valid factorization of each world size."""
    c = constants or RooflineConstants.shipped()
    elem = DTYPE_BYTES[dtype]
    tokens, contexts = tokens or GPU_TOKENS, contexts or GPU_CONTEXTS
    table = OpTable(
        method="roofline",
        source=f"analytic roofline on {gpu.name}'s ceilings ({c.source}); provisional, not measured",
        gpu={"name": gpu.name, "slug": gpu.slug, "memory_bytes": gpu.memory_bytes},
        model=model_summary(name, cfg, dtype),
        engine={
            "block_size": 16,
            "max_decode_batch": MAX_DECODE,
            "cuda_graphs": True,
            "cuda_graph_max_tokens": CUDA_GRAPH_MAX_TOKENS,
            "chunk_split_graphs": split_kv.CHUNK_SPLIT_GRAPHS,
            "dtype": dtype,
        },  # fmt: skip
        grid={"tokens": list(tokens), "contexts": list(contexts)},
        memory_overhead_bytes=ASSUMED_MEMORY_OVERHEAD,
    )
    for p in world_sizes:
        layouts = [(TP, p, 1)] + [(SP, p // sp, sp) for sp in range(2, p + 1) if p % sp == 0]
        for mode, tp, sp in layouts:
            s = rank_shapes(cfg, mode, tp, sp)
            for ctx in contexts:
                for t in tokens:
                    seqs, per = step_shape(t, ctx)
                    table.add(
                        OpEntry(mode, s.tp, s.sp, t, ctx, seqs, per,
                                head_ms(cfg, s, t, ctx, elem, gpu, c), layer_ms(cfg, s, t, ctx, elem, gpu, c))
                    )  # fmt: skip
    return table


def with_split_graphs(table: OpTable, cfg: ModelConfig, gpu: GpuSpec,
                      constants: RooflineConstants | None = None) -> OpTable:  # fmt: skip
    """A measured table whose engine ran without CHUNK_SPLIT_GRAPHS (`engine.chunk_split_graphs` absent or false)
    as today's engine would time it, with how many entries changed in `engine.split_graph_entries_adjusted`
    (and its `source`): each entry whose step now replays a split graph
    loses the layer time the roofline says the split saves (keeping at least half of
    what the roofline's ratio would). On the H100 llama-3.1-8b table measured both ways
    (profiles/runs/s21_h100/a, s22_h100/d) this takes the split entries' |error| from a median of 56% (max 304%)
    to 4.7% (max 13%). Tables measured with split graphs, and engines without them, come back unchanged."""
    if not split_kv.CHUNK_SPLIT_GRAPHS or table.engine.get("chunk_split_graphs", False):
        return table
    c, elem = constants or RooflineConstants.shipped(), DTYPE_BYTES[table.model.get("dtype", "bfloat16")]
    entries, changed = [], 0
    max_decode = table.engine.get("max_decode_batch", MAX_DECODE)
    for e in table.entries:
        s = rank_shapes(cfg, e.mode, e.tp, e.sp)
        off = layer_ms(cfg, s, e.tokens, e.context, elem, gpu, c, max_decode, chunk_split=False)
        on = layer_ms(cfg, s, e.tokens, e.context, elem, gpu, c, max_decode, chunk_split=True)
        if on < off:
            # NOTE: the roofline's saving transfers better than its ratio (s21 -> s22 H100 table: |error| median 4.7%
            # vs 5.2%); where the saving would leave less than half what the ratio does, the ratio's half is kept
            layer = max(e.layer_ms - (off - on), 0.5 * e.layer_ms * on / off)
            entries.append(replace(e, layer_ms=layer))
            changed += 1
        else:
            entries.append(e)
    if not changed:
        return table
    source = f"{table.source}; {changed} entries adjusted by the roofline for split graphs (measured without them)"
    engine = {**table.engine, "split_graph_entries_adjusted": changed}
    return replace(table, entries=entries, source=source, engine=engine)
