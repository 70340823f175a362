"""Paged KV-cache bookkeeping on the driver: free blocks, block tables, and prefix caching.

A full block is identified by a chained hash (hash of the previous block's hash and its own tokens).
Blocks whose reference count drops to zero go back to the free queue but keep their hash, so a
later request with the same prefix can take them back until they are reused for other tokens.

New blocks come from the head of the free queue, except that a sequence takes the block numbered next to
its last one (above, else below) when that one is free and caches nothing, so that a long prompt's blocks
tend to fill one range of the cache, whose keys prefill attention reads in place (`kernels.attention.BlockSpan`).
With prefix caching on, freed blocks keep caching their tokens and are not taken out of the queue's order:
once the cache has been through use, the ranges come mostly from the queue's order (runs of blocks freed
together come back together, in reverse, which is one range too).
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict

from shifttune.engine.sequence import Sequence


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None
        self.token_ids: tuple[int, ...] = ()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, watermark: float = 0.01):
        self.block_size = block_size
        # NOTE: admission keeps this many blocks free for the running sequences to grow into; without it a
        # newcomer that takes the last blocks is preempted on the next step, again and again (vLLM: 1%).
        self.watermark_blocks = max(1, int(watermark * num_blocks)) if watermark > 0 else 0
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # a queue (O(1) at both ends and, unlike a dict's first key, for any block taken out of its middle)
        self.free_block_ids: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.hash_to_block_id: dict[int, int] = {}
        self.num_prefix_hits = 0  # blocks taken from the prefix cache, for stats and tests

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_block_ids)

    def _chain_hash(self, seq: Sequence, i: int, prev: int | None) -> int:
        """sha256 over the parent's hash and this block's tokens: a collision would hand one request
        another's KV, so no 64-bit Python hash here."""
        h = hashlib.sha256((prev or 0).to_bytes(32, "little"))
        h.update(array("q", seq.token_ids[i * self.block_size : (i + 1) * self.block_size]).tobytes())
        return int.from_bytes(h.digest(), "little")

    def match_prefix(self, seq: Sequence) -> list[int]:
        """Cached blocks holding a prefix of `seq`; at least one token is always left to compute."""
        if not self.enable_prefix_caching:
            return []
        matched, prev = [], None
        for i in range((len(seq) - 1) // self.block_size):
            prev = self._chain_hash(seq, i, prev)
            block_id = self.hash_to_block_id.get(prev)
            tokens = tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size])
            if block_id is None or self.blocks[block_id].token_ids != tokens:
                break
            matched.append(block_id)
        return matched

    def can_allocate(self, cached: list[int], num_tokens: int, others_running: bool = False) -> bool:
        """Whether a waiting sequence may be admitted: its blocks fit and, while other sequences run, the
        watermark stays free for them."""
        revived = sum(1 for b in cached if self.blocks[b].ref_count == 0)  # these leave the free queue
        need = blocks_for(num_tokens, self.block_size) - len(cached) + revived
        return need <= self.num_free_blocks - (self.watermark_blocks if others_running else 0)

    def allocate(self, seq: Sequence, cached: list[int], num_tokens: int) -> None:
        """Gives a waiting sequence its cached prefix blocks plus new blocks for `num_tokens` tokens."""
        assert not seq.block_table
        for block_id in cached:
            block = self.blocks[block_id]
            if block.ref_count == 0:
                del self.free_block_ids[block_id]
            block.ref_count += 1
        self.num_prefix_hits += len(cached)
        seq.block_table = list(cached)
        self.append(seq, num_tokens)

    def can_append(self, seq: Sequence, num_tokens: int) -> bool:
        return blocks_for(num_tokens, self.block_size) - len(seq.block_table) <= self.num_free_blocks

    def append(self, seq: Sequence, num_tokens: int) -> None:
        """Grows the block table to hold `num_tokens` tokens."""
        while len(seq.block_table) < blocks_for(num_tokens, self.block_size):
            block = self.blocks[self._take(seq.block_table[-1] if seq.block_table else None)]
            if self._caches(block.block_id):
                del self.hash_to_block_id[block.hash]  # evict: this block now gets other tokens
            block.hash, block.token_ids, block.ref_count = None, (), 1
            seq.block_table.append(block.block_id)

    def _take(self, last: int | None) -> int:
        """A free block for a table that ends in `last`: last + 1 or last - 1 when free and caching nothing,
        else the head of the queue (the block freed longest ago)."""
        if last is not None:
            for block_id in (last + 1, last - 1):
                if block_id in self.free_block_ids and not self._caches(block_id):
                    del self.free_block_ids[block_id]
                    return block_id
        return self.free_block_ids.popitem(last=False)[0]

    def _caches(self, block_id: int) -> bool:
        h = self.blocks[block_id].hash
        return h is not None and self.hash_to_block_id.get(h) == block_id

    def mark_computed(self, seq: Sequence, old: int, new: int) -> None:
        """Registers the hashes of blocks that became full when computed tokens went from old to new."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        prev = self.blocks[seq.block_table[old // bs - 1]].hash if old >= bs else None
        for i in range(old // bs, new // bs):
            block = self.blocks[seq.block_table[i]]
            if block.hash is None:
                block.hash = self._chain_hash(seq, i, prev)
                block.token_ids = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                self.hash_to_block_id.setdefault(block.hash, block.block_id)
            prev = block.hash

    def free(self, seq: Sequence) -> None:
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free_block_ids[block_id] = None
        seq.block_table = []
