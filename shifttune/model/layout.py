"""Weight layouts: which slice of every weight one rank holds, in SP x TP mode ("base") and TP mode ("shift").

base:  sharded TP ways by the rank's TP index, Ulysses over its SP group (SP > 1).
shift: sharded P ways by the rank's shift index t*SP + s, so that after the base layout's all-to-all
       and in the shift layout a rank holds the same query-head block and the same KV heads; the paged
       KV cache is therefore one and the same in both modes.
With SP == 1 both layouts are the same and the engine keeps one.
"""

from __future__ import annotations

from dataclasses import dataclass

from shifttune.config import ModelConfig, ParallelConfig, kv_heads_of_block
from shifttune.parallel.state import Group, ParallelState


@dataclass(frozen=True)
class Layout:
    name: str  # "base" | "shift"
    shard: int  # this rank's shard index
    num_shards: int  # TP (base) or P (shift)
    group: Group  # row-parallel outputs are all-reduced here, vocab shards gathered here
    shard_order: list[int]  # shard_order[i] = group rank that holds shard i
    sp_group: Group  # Ulysses group (size 1 in the shift layout)
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


def make_layout(name: str, model: ModelConfig, state: ParallelState) -> Layout:
    par: ParallelConfig = state.parallel
    p = par.world_size
    cache_kv = kv_heads_of_block(par.shift_index(state.rank), p, model.num_kv_heads)
    if name == "base":
        shard, n, group, sp_group = state.tp_index, par.tp, state.tp_group, state.sp_group
        shard_order = list(range(n))
        # The base shard projects the KV heads that its SP peers' head blocks t*SP + s need.
        blocks = [shard * par.sp + s for s in range(par.sp)]
        per_dest = [kv_heads_of_block(b, p, model.num_kv_heads) for b in blocks]
        kv_heads = sorted({h for heads in per_dest for h in heads})
        kv_send_index = [kv_heads.index(h) for heads in per_dest for h in heads]
    else:
        shard, n, group = state.shift_index, p, state.world_group
        sp_group = Group([state.rank], 0, None)
        shard_order = [next(r for r in range(p) if par.shift_index(r) == i) for i in range(p)]
        kv_heads = cache_kv
        kv_send_index = list(range(len(kv_heads)))
    vocab_per_shard = -(-model.vocab_size // n)
    return Layout(
        name=name,
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
