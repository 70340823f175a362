"""Weight layouts: which slice of every weight one rank holds, in each mode, and the head arithmetic.

SP mode (SP x TP): sharded TP ways by the rank's TP index, Ulysses over its SP group (SP > 1).
TP mode:           sharded P ways by the rank's TP-mode shard t*SP + s, so that after SP mode's
                   all-to-all and in TP mode a rank holds the same query-head block and the same KV
                   heads; the paged KV cache is therefore one and the same in both modes.
With SP == 1 both layouts are the same and the engine keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass

from shifttune.config import SP, TP, ModelConfig, ParallelConfig
from shifttune.parallel.state import Group, ParallelState


def kv_heads_of_block(block: int, num_blocks: int, num_kv_heads: int) -> list[int]:
    """KV heads used by query-head block `block` of `num_blocks` equal blocks (GQA replication when K < P)."""
    if num_kv_heads >= num_blocks:
        per = num_kv_heads // num_blocks
        return list(range(block * per, (block + 1) * per))
    return [block * num_kv_heads // num_blocks]


@dataclass(frozen=True)
class Layout:
    mode: str  # TP | SP: the mode that runs on these weights
    shard: int  # this rank's shard index
    num_shards: int  # TP (SP mode) or P (TP mode)
    group: Group  # row-parallel outputs are all-reduced here, vocab shards gathered here
    shard_order: list[int]  # shard_order[i] = group rank that holds shard i
    sp_group: Group  # Ulysses group (size 1 in TP mode)
    q_heads: range  # global query heads this rank projects
    kv_heads: list[int]  # global KV heads this rank projects
    kv_send_index: list[int]  # per SP destination, indices into kv_heads it needs (SP * kv heads per rank)
    cache_kv_heads: list[int]  # the KV heads this rank's cache holds (same in both layouts)
    mlp_rows: range  # rows of gate/up (columns of down)
    vocab_rows: range  # rows of the embedding / LM head (may run past vocab_size: zero padding)

    @property
    def sp(self) -> int:
        return self.sp_group.size


def _blocks(total: int, n: int, i: int) -> range:
    return range(i * total // n, (i + 1) * total // n)


def make_layout(mode: str, model: ModelConfig, state: ParallelState) -> Layout:
    par: ParallelConfig = state.parallel
    p = par.world_size
    cache_kv = kv_heads_of_block(par.tp_mode_shard(state.rank), p, model.num_kv_heads)
    if mode == SP:
        shard, n, group, sp_group = state.tp_index, par.tp, state.tp_group, state.sp_group
        shard_order = list(range(n))
        # The SP-mode shard projects the KV heads that its SP peers' head blocks t*SP + s need.
        blocks = [shard * par.sp + s for s in range(par.sp)]
        per_dest = [kv_heads_of_block(b, p, model.num_kv_heads) for b in blocks]
        kv_heads = sorted({h for heads in per_dest for h in heads})
        kv_send_index = [kv_heads.index(h) for heads in per_dest for h in heads]
    else:
        assert mode == TP, mode
        shard, n, group = state.tp_mode_shard, p, state.world_group
        sp_group = Group([state.rank], 0, None)
        shard_order = [next(r for r in range(p) if par.tp_mode_shard(r) == i) for i in range(p)]
        kv_heads = cache_kv
        kv_send_index = list(range(len(kv_heads)))
    vocab_per_shard = -(-model.vocab_size // n)
    return Layout(
        mode=mode,
        shard=shard,
        num_shards=n,
        group=group,
        shard_order=shard_order,
        sp_group=sp_group,
        q_heads=_blocks(model.num_heads, n, shard),
        kv_heads=kv_heads,
        kv_send_index=kv_send_index,
        cache_kv_heads=cache_kv,
        mlp_rows=_blocks(model.intermediate_size, n, shard),
        vocab_rows=range(shard * vocab_per_shard, (shard + 1) * vocab_per_shard),
    )
