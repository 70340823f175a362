"""One rank's work in each mode, as shapes and bytes, without torch: heads, MLP rows and vocab rows per
rank, weight bytes per layout, KV bytes per token, and whether a factorization fits a GPU's memory.

The arithmetic is `model/layout.py`'s (which imports torch through the process groups): TP mode
shards every weight P ways, SP x TP mode TP ways, and after the Ulysses all-to-all a rank attends
with P-th of the query heads in both modes, over the KV heads its cache holds (one replicated head
when there are fewer KV heads than ranks). `tests/test_predict.py` checks both agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from shifttune.config import SP, TP, ModelConfig

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class RankShapes:
    mode: str
    tp: int  # the factorization (TP mode: tp = P, sp = 1)
    sp: int
    shards: int  # the mode's weights are split this many ways: P in TP mode, TP in SP x TP mode
    q_heads: int  # query heads this rank projects
    kv_heads: int  # KV heads this rank projects (SP x TP mode: those its SP peers' head blocks need)
    attn_q_heads: int  # query heads this rank attends with (after the all-to-all in SP x TP mode)
    cache_kv_heads: int  # KV heads this rank's cache holds (the same in both modes)
    kv_heads_per_dest: int  # KV heads sent to each SP peer with the queries
    mlp_rows: int  # rows of gate/up on this rank (rank 0's block)
    vocab_rows: int  # rows of the embedding / LM head (padded to a whole number per shard)

    @property
    def world_size(self) -> int:
        return self.tp * self.sp

    def gemm_rows(self, tokens: int) -> int:
        """Rows every linear layer runs on for a step of `tokens` tokens (SP pads to a multiple of SP)."""
        return -(-tokens // self.sp)


def rank_shapes(cfg: ModelConfig, mode: str, tp: int, sp: int) -> RankShapes:
    p = tp * sp
    if mode == TP:
        tp, sp = p, 1
    n = p if mode == TP else tp
    k = cfg.num_kv_heads
    return RankShapes(
        mode=mode,
        tp=tp,
        sp=sp,
        shards=n,
        q_heads=cfg.num_heads // n,
        kv_heads=max(1, k // n),
        attn_q_heads=cfg.num_heads // p,
        cache_kv_heads=max(1, k // p),
        kv_heads_per_dest=max(1, k // p),
        mlp_rows=cfg.intermediate_size // n,
        vocab_rows=-(-cfg.vocab_size // n),
    )


def layer_params(cfg: ModelConfig, s: RankShapes) -> int:
    d, h = cfg.head_dim, cfg.hidden_size
    qkv = (s.q_heads + 2 * s.kv_heads) * d
    return (
        qkv * h
        + (qkv if cfg.qkv_bias else 0)
        + h * s.q_heads * d
        + (2 * d if cfg.qk_norm else 0)
        + 3 * h * s.mlp_rows
        + 2 * h
    )


def weight_bytes(cfg: ModelConfig, s: RankShapes, elem: int) -> int:
    """Bytes of one layout's weights on one rank (what `ModelRunner.weight_bytes` counts)."""
    emb = s.vocab_rows * cfg.hidden_size
    params = cfg.num_layers * layer_params(cfg, s) + emb * (1 if cfg.tie_word_embeddings else 2) + cfg.hidden_size
    return params * elem


def weight_bytes_per_rank(cfg: ModelConfig, tp: int, sp: int, elem: int) -> dict[str, int]:
    """{tp: TP mode's weights, sp: SP x TP mode's (0 when SP = 1: one layout serves both)}."""
    return {
        TP: weight_bytes(cfg, rank_shapes(cfg, TP, tp, sp), elem),
        SP: weight_bytes(cfg, rank_shapes(cfg, SP, tp, sp), elem) if sp > 1 else 0,
    }


def kv_bytes_per_token(cfg: ModelConfig, world_size: int, elem: int) -> int:
    """K and V of one token on one rank, every layer."""
    return 2 * cfg.num_layers * max(1, cfg.num_kv_heads // world_size) * cfg.head_dim * elem


def memory_check(
    cfg: ModelConfig, tp: int, sp: int, elem: int, memory_bytes: int, utilization: float, max_context: int
) -> str | None:
    """Why (tp, sp) cannot hold its weights and one `max_context` sequence on a GPU of `memory_bytes`, or
    None: `shifttune profile`'s own rule (weights W/TP x (1 + 1/SP) from the parameter count)."""
    weights = cfg.num_params * elem / tp * (1 + (1 / sp if sp > 1 else 0))
    memory = memory_bytes * utilization
    kv = kv_bytes_per_token(cfg, tp * sp, elem) * max_context
    if weights + kv > memory:
        return (
            f"weights {weights / 2**30:.0f} GiB per GPU (W/TP x (1 + 1/SP)) plus KV for one "
            f"{max_context}-token sequence exceed {memory / 2**30:.0f} GiB"
        )
    return None
