"""Scheduler behaviour that must not change outputs: preemption, chunked prefill, prefix caching."""

from __future__ import annotations

from shifttune import LLM, SamplingParams
from shifttune.engine.block_manager import BlockManager
from shifttune.engine.sequence import Sequence
from conftest import MAX_TOKENS, PROMPTS, hf_reference

GREEDY = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_small_kv_cache_preempts_and_outputs_are_unchanged(hf_models):
    path = hf_models["llama"]
    ref, _ = hf_reference(path)
    # 4 sequences need 5 + 3 + 8 + 4 = 20 blocks of 4 tokens at the end; 10 blocks force preemption.
    with LLM(str(path), sequence_parallel_size=2, shift_threshold=4, block_size=4, num_kv_blocks=10) as llm:
        outs = llm.generate(PROMPTS, GREEDY)
        assert llm.llm_engine.stats.num_preemptions > 0
        assert tokens(outs) == ref
        assert llm.llm_engine.block_manager.num_free_blocks == 10  # everything freed at the end


def test_chunked_prefill_equals_unchunked(hf_models):
    path = hf_models["qwen3"]
    ref, _ = hf_reference(path)
    with LLM(
        str(path),
        tensor_parallel_size=2,
        sequence_parallel_size=2,
        shift_threshold=4,
        block_size=4,
        max_num_batched_tokens=7,
    ) as llm:
        outs = llm.generate(PROMPTS, GREEDY)
        steps = list(llm.llm_engine.stats.steps)
        assert max(s.shape.num_tokens for s in steps) <= 7
        # the 23-token prompt needed several chunks: some steps carried prefill tokens but sampled nothing new
        assert sum(s.shape.num_prefill_tokens for s in steps) == sum(map(len, PROMPTS))
        assert {s.mode for s in steps} == {"tp", "sp"}
        assert tokens(outs) == ref


def test_prefix_cache_hit_changes_only_the_work(hf_models):
    path = hf_models["qwen2"]
    ref, _ = hf_reference(path)
    with LLM(str(path), sequence_parallel_size=2, shift_threshold=4, block_size=4) as llm:
        engine = llm.llm_engine
        first = tokens(llm.generate(PROMPTS, GREEDY))
        work_first = sum(s.shape.num_tokens for s in engine.stats.steps)
        hits_before = engine.stats.num_prefix_cache_hit_blocks
        outs = llm.generate(PROMPTS, GREEDY)
        work_second = sum(s.shape.num_tokens for s in engine.stats.steps) - work_first
        assert engine.stats.num_prefix_cache_hit_blocks > hits_before
        assert sum(o.num_cached_tokens for o in outs) > 0
        assert work_second == work_first - sum(o.num_cached_tokens for o in outs)
        assert first == tokens(outs) == ref


def _seq(ids, rid="r"):
    return Sequence(rid, None, ids, GREEDY)


def test_block_manager_prefix_chain_refcounts_and_eviction():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = _seq([1, 2, 3, 4, 5], "a")
    assert bm.match_prefix(a) == []
    bm.allocate(a, [], 5)
    assert len(a.block_table) == 3 and bm.num_free_blocks == 1
    bm.mark_computed(a, 0, 5)  # blocks [1,2] and [3,4] are full and hashed
    b = _seq([1, 2, 3, 4, 9], "b")
    assert bm.match_prefix(b) == a.block_table[:2]
    c = _seq([1, 2, 7, 4, 9], "c")  # same second block tokens, different prefix: chain must not match
    assert bm.match_prefix(c) == a.block_table[:1]
    exact = _seq([1, 2, 3, 4], "e")  # a full match must leave one token to compute
    assert bm.match_prefix(exact) == a.block_table[:1]
    cached = bm.match_prefix(b)
    assert bm.can_allocate(cached, 5)
    bm.allocate(b, cached, 5)
    assert bm.blocks[a.block_table[0]].ref_count == 2 and bm.num_free_blocks == 0
    bm.free(a)
    bm.free(b)
    assert bm.num_free_blocks == 4
    # freed blocks keep their hashes until reused for other tokens
    assert bm.match_prefix(_seq([1, 2, 3, 4, 0])) != []
    d = _seq(list(range(100, 108)), "d")
    bm.allocate(d, [], 8)
    assert bm.match_prefix(_seq([1, 2, 3, 4, 0])) == []


def test_a_growing_sequence_takes_the_block_next_to_its_last():
    """A sequence's next block is the one numbered next to its last (above, else below) when that one is free,
    so its blocks fill one range of the cache and prefill attention reads its prefix in place; but a free block
    that still caches a prefix is not taken out of the queue's order for that."""
    from shifttune.kernels.attention import BlockSpan

    for caching in (False, True):
        bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=caching)
        a, b, c = _seq(list(range(8)), "a"), _seq(list(range(20, 24)), "b"), _seq(list(range(50, 66)), "c")
        for seq in (a, b):
            bm.allocate(seq, [], len(seq.token_ids))
            bm.mark_computed(seq, 0, len(seq.token_ids))
        assert (a.block_table, b.block_table) == ([0, 1, 2, 3], [4, 5])
        bm.free(a)
        bm.free(b)  # the queue: 6, 7, then 3, 2, 1, 0, then 5, 4
        bm.allocate(c, [], 2)
        for n in range(4, 17, 2):
            bm.append(c, n)
        assert c.block_table == ([6, 7, 3, 2, 1, 0, 5, 4] if caching else [6, 7, 3, 4, 5, 2, 1, 0])
        assert (BlockSpan().extend(c.block_table).range_start(5) == 3) is not caching
