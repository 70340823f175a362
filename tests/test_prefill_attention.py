"""The SDPA prefill path (torch's math backend on CPU) against the torch reference and HF, and the step plans
that split a step between it and the paged kernel (issue 14)."""

from __future__ import annotations

import os
import weakref

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.kernels.attention import AttentionMetadata, BlockSpan, attend
from shifttune.kernels.attention_ref import paged_attention_ref
from shifttune.kernels.prefill_attention import (
    PAGED_PAD,
    PAGED_SPLITS,
    SdpaPrefill,
    SdpaSupport,
    StepAttention,
    probe_sdpa,
)
from conftest import LAYOUTS, MAX_TOKENS, PROMPTS, cpu_llm, hf_reference


def make_step(q_lens, ctx_lens, hq, hk, d, block_size, seed=0, in_order=False):
    """A step in a paged cache: sequence i has ctx_lens[i] cached tokens and q_lens[i] new ones (their K/V
    already written, as the model writes them before attention). Its blocks are numbered in order when
    `in_order`, else shuffled. Returns q, k, v, caches, meta (with each table's `BlockSpan`)."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + n for c, n in zip(ctx_lens, q_lens)]
    per_seq = [-(-n // block_size) for n in seq_lens]
    perm = torch.randperm(sum(per_seq) + 2, generator=gen).tolist()
    if in_order:
        perm = list(range(2, len(perm))) + [0, 1]
    tables, used = [], 0
    for nb in per_seq:
        tables.append(perm[used : used + nb])
        used += nb
    width = max(per_seq)
    k_cache = torch.randn(len(perm), block_size, hk, d, generator=gen)
    v_cache = torch.randn(len(perm), block_size, hk, d, generator=gen)
    t = sum(q_lens)
    q, k, v = (
        torch.randn(t, hq, d, generator=gen),
        torch.randn(t, hk, d, generator=gen),
        torch.randn(t, hk, d, generator=gen),
    )
    qsl, slots = [0], []
    for i, n in enumerate(q_lens):
        qsl.append(qsl[-1] + n)
        slots += [tables[i][p // block_size] * block_size + p % block_size for p in range(ctx_lens[i], seq_lens[i])]
    slots_t = torch.tensor(slots)
    k_cache.view(-1, hk, d)[slots_t], v_cache.view(-1, hk, d)[slots_t] = k, v
    meta = AttentionMetadata(
        slot_mapping=slots_t,
        query_start_loc=torch.tensor(qsl),
        seq_lens=torch.tensor(seq_lens),
        block_tables=torch.tensor([b + [0] * (width - len(b)) for b in tables]),
        query_start_loc_cpu=qsl,
        seq_lens_cpu=seq_lens,
        block_spans=[BlockSpan().extend(b) for b in tables],
    )
    return q, k, v, k_cache, v_cache, meta


def reference(q, k_cache, v_cache, meta, scale):
    return paged_attention_ref(q.double(), k_cache.double(), v_cache.double(), meta, scale).float()


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("pad", [1, 4, 8, 64])
@pytest.mark.parametrize(
    "n, prefix, hq, hk", [(13, 0, 4, 2), (9, 3, 4, 2), (16, 16, 4, 1), (7, 37, 2, 2), (30, 70, 8, 2)]
)
def test_one_sequence_matches_the_reference(pad, n, prefix, hq, hk):
    """Padding, the prefix split (P0 keys unmasked, the rest joined to the causal block) and the log-sum-exp
    merge give the reference's attention, GQA included."""
    d, bs = 16, 4
    q, k, v, kc, vc, meta = make_step([n], [prefix], hq, hk, d, bs)
    out = torch.empty_like(q)
    SdpaPrefill(SdpaSupport("math"), pad).sequence(q, k, v, kc, vc, meta.block_tables[0], prefix, d**-0.5, out)
    assert rel_err(out, reference(q, kc, vc, meta, d**-0.5)) < 1e-5


def test_strided_views_as_the_model_passes_them():
    """q, k, v are views into the fused qkv projection in the model: not contiguous."""
    hq, hk, d = 4, 2, 16
    q, k, v, kc, vc, meta = make_step([11], [6], hq, hk, d, 4)
    qkv = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1)
    qv, kv, vv = qkv.split([hq * d, hk * d, hk * d], dim=1)
    out = torch.empty_like(q)
    impl = SdpaPrefill(SdpaSupport("math"), 4)
    impl.sequence(qv.view(11, hq, d), kv.view(11, hk, d), vv.view(11, hk, d), kc, vc, meta.block_tables[0], 6,
                  d**-0.5, out)  # fmt: skip
    assert rel_err(out, reference(q, kc, vc, meta, d**-0.5)) < 1e-5


# decode tokens, a short chunk after a prefix, fresh prompts, a long chunk after a long prefix
MIXED = ([1, 5, 40, 1, 23, 2], [30, 12, 0, 7, 50, 0])


def test_block_span():
    span = BlockSpan().extend([7, 5, 6, 9, 8, 20])
    assert [span.range_start(n) for n in range(8)] == [None, 7, None, 5, None, 5, None, None]
    assert BlockSpan().range_start(1) is None


@pytest.mark.parametrize("layout", ["ascending", "descending", "shuffled"])
def test_a_prefix_that_fills_one_range_of_the_cache_is_read_in_place(layout):
    """A chunk's unmasked prefix keys in blocks that fill one range of the cache (in order or not) are read as a
    slice of the cache, not through the block table: the table's entries for them overwritten with a wrong
    block change nothing then, and do change the output when the blocks are not one range (the test's own check
    that it can fail). The prefix rows past P0 (here 6 of 30) still come through the table."""
    hq, hk, d, bs, pad, n, prefix = 4, 2, 16, 4, 8, 9, 30
    q, k, v, kc, vc, meta = make_step([n], [prefix], hq, hk, d, bs, in_order=layout != "shuffled")
    table = meta.block_tables[0].clone()
    if layout == "descending":  # as a table gets them back after another sequence freed them (in reverse)
        nb = -(-(n + prefix) // bs)
        order = table[:nb].flip(0)
        kc[order], vc[order] = kc[table[:nb]].clone(), vc[table[:nb]].clone()
        table[:nb] = order
        meta.block_tables[0] = table
    want = reference(q, kc, vc, meta, d**-0.5)
    span = BlockSpan().extend(table.tolist())
    assert (span.range_start(24 // bs) is not None) == (layout != "shuffled")
    wrong = table.clone()
    wrong[: 24 // bs] = table[-1]  # a block past the prefix
    out = torch.empty_like(q)
    SdpaPrefill(SdpaSupport("math"), pad).sequence(q, k, v, kc, vc, wrong, prefix, d**-0.5, out, span)
    assert (rel_err(out, want) < 1e-5) == (layout != "shuffled")
    SdpaPrefill(SdpaSupport("math"), pad).sequence(q, k, v, kc, vc, table, prefix, d**-0.5, out, span)
    assert rel_err(out, want) < 1e-5


@pytest.mark.parametrize("bs, pad, prefix, in_place", [(4, 2, 7, False), (4, 8, 13, True), (4, 8, 16, True),
                                                       (8, 4, 12, False), (2, 8, 17, True)])  # fmt: skip
def test_prefix_keys_past_p0_come_from_the_table(bs, pad, prefix, in_place):
    """Pads and block sizes that leave P0 inside a block (then the first P0 keys are gathered too) or the last
    r prefix keys across blocks from an offset: in order, the result is the reference's either way."""
    hq, hk, d, n = 4, 2, 16, 9
    q, k, v, kc, vc, meta = make_step([n], [prefix], hq, hk, d, bs, in_order=True)
    out = torch.empty_like(q)
    impl = SdpaPrefill(SdpaSupport("math"), pad)
    impl.sequence(q, k, v, kc, vc, meta.block_tables[0], prefix, d**-0.5, out, meta.block_spans[0])
    assert rel_err(out, reference(q, kc, vc, meta, d**-0.5)) < 1e-5
    assert impl.prefix_reads == {"in_place": int(in_place), "gathered": int(not in_place)}


def test_the_step_plan_passes_each_sequence_its_span():
    q, k, v, kc, vc, meta = make_step(*MIXED, 8, 2, 16, 4, in_order=True)
    meta.plan = StepAttention(SdpaPrefill(SdpaSupport("math"), 8), 2, False, 8, 2).plan(meta)
    assert [span for *_, span in meta.plan.sdpa_seqs] == [meta.block_spans[i] for i in (1, 2, 4, 5)]
    out = attend(paged_attention_ref, q, k, v, kc, vc, meta, 16**-0.5)
    assert rel_err(out, reference(q, kc, vc, meta, 16**-0.5)) < 1e-5


@pytest.mark.parametrize("min_tokens", [2, 20])
def test_a_mixed_step_splits_by_sequence(min_tokens):
    q, k, v, kc, vc, meta = make_step(*MIXED, 8, 2, 16, 4)
    attention = StepAttention(SdpaPrefill(SdpaSupport("math"), 8), min_tokens, False, 8, 2)
    meta.plan = attention.plan(meta)
    taken = [row for row, *_ in meta.plan.sdpa_seqs]
    assert taken == ([1, 2, 4, 5] if min_tokens == 2 else [2, 4])
    out = attend(paged_attention_ref, q, k, v, kc, vc, meta, 16**-0.5)
    assert rel_err(out, reference(q, kc, vc, meta, 16**-0.5)) < 1e-5


@pytest.mark.parametrize("prefix", [0, 3, 20])
def test_a_step_of_one_prompt_chunk_returns_the_sdpa_output(prefix):
    """The whole step is one sequence's chunk: its attention comes back from SDPA without a copy into a step-sized
    buffer (with no cached prefix, a prefix shorter than the pad, or one merged by log-sum-exp), and matches."""
    q, k, v, kc, vc, meta = make_step([12], [prefix], 4, 2, 16, 4)
    meta.plan = StepAttention(SdpaPrefill(SdpaSupport("math"), 8), 2, False, 4, 2).plan(meta)
    assert meta.plan.paged_meta is None and len(meta.plan.sdpa_seqs) == 1
    out = attend(paged_attention_ref, q, k, v, kc, vc, meta, 0.25)
    assert out.shape == q.shape and rel_err(out, reference(q, kc, vc, meta, 0.25)) < 1e-5


def test_without_log_sum_exp_prefix_chunks_stay_paged():
    q, k, v, kc, vc, meta = make_step([40, 40], [0, 20], 4, 2, 16, 4)
    attention = StepAttention(SdpaPrefill(SdpaSupport("math", lse=False), 8), 2, False, 4, 2)
    assert attention.takes(40, 0) and attention.takes(40, 7) and not attention.takes(40, 8)
    meta.plan = attention.plan(meta)
    assert [row for row, *_ in meta.plan.sdpa_seqs] == [0]
    out = attend(paged_attention_ref, q, k, v, kc, vc, meta, 0.25)
    assert rel_err(out, reference(q, kc, vc, meta, 0.25)) < 1e-5


def test_paged_only_steps_need_no_plan_unless_pinned():
    _, _, _, _, _, meta = make_step([1, 1], [5, 9], 4, 2, 16, 4)
    assert StepAttention(None, 2, False, 4, 2).plan(meta) is None
    plan = StepAttention(None, 2, True, 4, 2).plan(meta)
    m = plan.paged_meta
    # every integer Triton specializes on is a multiple of 16, and the split count one of the warmed ones
    assert plan.paged_padded % PAGED_PAD == 0 and m.block_tables.shape[0] % PAGED_PAD == 0
    assert m.block_tables.shape[1] % PAGED_PAD == 0 and m.num_splits in PAGED_SPLITS and m.block_m == 16
    assert m.query_start_loc_cpu[-1] == plan.paged_padded and len(m.seq_lens_cpu) == m.block_tables.shape[0]
    # and every pointer starts on 16 bytes, as in warm-up (the lengths follow 17 int64 start offsets)
    assert all(t.data_ptr() % 16 == 0 for t in (m.query_start_loc, m.seq_lens, m.block_tables))


def test_warm_up_covers_every_launch_configuration_of_padded_decode(monkeypatch):
    """Eager decode launches pad to PAGED_PAD sequences, so with one KV head (132 SMs) 16 sequences run the larger
    small steps' 128-key tiles and 32 the plain decode configuration: warm-up compiles both, at every split count;
    with eight KV heads 16 sequences already fill the GPU's small-step budget. On a GPU of 264 SMs, one KV head
    runs all three decode configurations, at 16, 32 and 48 sequences."""
    from shifttune.kernels import prefill_attention
    from shifttune.kernels.split_kv import step_kind

    cpu = torch.device("cpu")  # sm_count: 132 off CUDA
    one = StepAttention(None, 2, True, 8, 1)._warm_launches(cpu)
    assert sorted({(m, n) for m, n, _ in one}) == [(16, 16), (16, 32), (64, 16)]
    assert step_kind(16, 16, 8, 1, 16, 132) == "wide_tile" and step_kind(32, 32, 8, 1, 16, 132) == "plain"
    assert {s for m, n, s in one if (m, n) == (16, 16)} == set(PAGED_SPLITS)
    eight = StepAttention(None, 2, True, 32, 8)._warm_launches(cpu)
    assert sorted({(m, n) for m, n, _ in eight}) == [(16, 16), (64, 16)]
    monkeypatch.setattr(prefill_attention, "sm_count", lambda device: 264)
    big = StepAttention(None, 2, True, 8, 1)._warm_launches(cpu)
    assert sorted({(m, n) for m, n, _ in big}) == [(16, 16), (16, 32), (16, 48), (64, 16)]
    assert step_kind(16, 16, 8, 1, 16, 264) == "small" and step_kind(32, 32, 8, 1, 16, 264) == "wide_tile"


# tests of CPU tensors through Triton's interpreter (the GPU counterparts are in tests/test_gpu.py)
triton_on_cpu = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1", reason="Triton interpreter test (CPU)"
)


@triton_on_cpu
@pytest.mark.parametrize("sdpa", [False, True])
def test_pinned_triton_launches_match_the_reference(sdpa):
    """The paged part padded to the warmed specializations (padding sequence, empty sequences, wide tables),
    through the Triton kernel (interpreted on CPU), with and without SDPA sequences beside it."""
    pytest.importorskip("triton")
    from shifttune.kernels.paged_attention import paged_attention

    q, k, v, kc, vc, meta = make_step(*MIXED, 4, 2, 16, 4)
    attention = StepAttention(SdpaPrefill(SdpaSupport("math"), 8) if sdpa else None, 20, True, 4, 2)
    meta.plan = attention.plan(meta)
    out = attend(paged_attention, q, k, v, kc, vc, meta, 0.25)
    assert rel_err(out, reference(q, kc, vc, meta, 0.25)) < 1e-5


def test_warm_shapes_cover_the_shapes_of_chunked_prompts():
    """Every SDPA call a prompt chunked at the full budget makes (its last chunk one token short, as the
    128k benchmark prompt) has a shape the start-up warm-up already ran."""
    calls = []
    pad, chunk, max_len, hq, hk, d, bs = 8, 32, 160, 4, 2, 16, 4  # the longest prompt: 159 tokens
    math = SdpaPrefill(SdpaSupport("math"), pad)

    class Recording(SdpaPrefill):  # the shapes as on a GPU (cuDNN), computed by the math backend
        def attention(self, q, k, v, causal, scale, lse):
            calls.append((q.shape[0], k.shape[0], causal, lse))
            return math.attention(q, k, v, causal, scale, lse)

    impl = Recording(SdpaSupport("cudnn"), pad)
    attention = StepAttention(impl, 2, False, hq, hk)
    shapes = attention.sdpa_warm_shapes(chunk, max_len, cache_tokens=10_000)
    assert all(n % pad == 0 and p % pad == 0 for n, p in shapes)
    blocks = torch.arange(max_len // bs + 2)
    kc = torch.zeros(len(blocks), bs, hk, d)
    for n, prefix in shapes:
        impl.sequence(torch.zeros(n, hq, d), torch.zeros(n, hk, d), torch.zeros(n, hk, d), kc, kc, blocks, prefix,
                      1.0, torch.empty(n, hq, d))  # fmt: skip
    warmed, calls[:] = set(calls), []
    for prompt in (chunk, 4 * chunk, 5 * chunk - 1):  # whole chunks, the last one a token short
        for start in range(0, prompt, chunk):
            n = min(chunk, prompt - start)
            impl.sequence(torch.zeros(n, hq, d), torch.zeros(n, hk, d), torch.zeros(n, hk, d), kc, kc, blocks, start,
                          1.0, torch.empty(n, hq, d))  # fmt: skip
    assert set(calls) <= warmed, set(calls) - warmed


def test_probe_on_cpu_is_the_math_backend():
    assert probe_sdpa(torch.device("cpu"), torch.float32, 4, 2, 16).backend == "math"


# ---- the engine against HF ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model_kind, tp, sp", [("llama", tp, sp) for tp, sp in LAYOUTS] + [("qwen3", 1, 1), ("qwen3", 2, 2)]
)
def test_engine_with_sdpa_prefill_matches_hf(hf_models, model_kind, tp, sp):
    """Forced SDPA prefill, chunks of an odd budget (prefixes that are not multiples of the pad, steps
    that mix chunks with decode tokens), shift between modes every step (threshold 4): HF's greedy
    tokens and first-token log-probs, in every layout."""
    path = hf_models[model_kind]
    ref_tokens, ref_logprobs = hf_reference(path)
    vocab = len(ref_logprobs[0])
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=vocab)
    with cpu_llm(path, tp, sp, block_size=4, shift_threshold=4, prefill_attention="sdpa",
                 max_num_batched_tokens=11) as llm:  # fmt: skip
        assert llm.llm_engine.executor.runner.attention.path == "sdpa"
        outs = llm.generate(PROMPTS, params)
        for out, tokens, lp in zip(outs, ref_tokens, ref_logprobs):
            assert out.outputs[0].token_ids == tokens, out.prompt_token_ids
            got = torch.full((vocab,), float("-inf"))
            for tok, value in out.outputs[0].logprobs[0].items():
                got[tok] = value
            torch.testing.assert_close(got, lp, atol=2e-5, rtol=1e-4)
        if sp > 1:
            assert {s.mode for s in llm.llm_engine.stats.steps} == {"tp", "sp"}


def test_prefix_cache_hits_and_preemption_with_sdpa_prefill(hf_models):
    """A prompt whose first blocks are cached runs its chunk after a cached prefix; a cache too small for
    every request preempts and recomputes. Tokens stay HF's."""
    path = hf_models["llama"]
    shared = list(range(100, 140))
    prompts = [shared + [7, 8, 9], shared + [11, 12], [1, 2, 3] * 9]
    ref_tokens, _ = hf_reference(path, prompts)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), block_size=4, prefill_attention="sdpa", num_kv_blocks=22) as llm:
        first = llm.generate(prompts[:1], params)
        rest = llm.generate(prompts, params)
        assert llm.llm_engine.stats.num_prefix_cache_hit_blocks > 0 and llm.llm_engine.stats.num_preemptions > 0
    assert [o.outputs[0].token_ids for o in first + rest] == ref_tokens[:1] + ref_tokens


def test_kv_cache_invariance_with_sdpa_prefill(hf_models):
    """Prefill (SDPA) in one mode, decode in the other, both ways: the shared cache holds the same K/V."""
    path = hf_models["qwen3"]
    ref, _ = hf_reference(path)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), tensor_parallel_size=2, sequence_parallel_size=2, block_size=4, enable_prefix_caching=False,
             prefill_attention="sdpa", async_scheduling=True) as llm:  # fmt: skip
        engine = llm.llm_engine
        for first, then in (("sp", "tp"), ("tp", "sp")):
            before = engine.stats.num_steps
            ids = [engine.add_request(None, p, params) for p in PROMPTS]
            engine.set_policy(first)
            done = {}
            while engine.has_unfinished_requests():
                for out in engine.step():
                    if out.finished:
                        done[out.request_id] = out.outputs[0].token_ids
                engine.set_policy(then)
            modes = [s.mode for s in list(engine.stats.steps)[before:]]
            assert modes[0] == first and set(modes[1:]) == {then}
            assert [done[i] for i in ids] == ref


def test_auto_on_cpu_keeps_the_paged_path_and_bad_values_are_refused():
    from shifttune.config import ConfigError

    with LLM("tiny") as llm:
        assert llm.llm_engine.executor.runner.attention.path == "paged"
    with pytest.raises(ConfigError, match="prefill_attention"):
        LLM("tiny", prefill_attention="cudnn")


def test_shutdown_frees_the_runner_even_when_someone_holds_it():
    llm = LLM("tiny", prefill_attention="sdpa")
    runner = llm.llm_engine.executor.runner  # a tool keeping a reference
    llm.generate([[1, 2, 3, 4, 5]], SamplingParams(temperature=0, max_tokens=2))
    refs = [weakref.ref(runner.k_cache), weakref.ref(runner.models["tp"]), weakref.ref(runner.input_batch)]
    llm.shutdown()
    assert all(r() is None for r in refs)
    assert runner.models == {} and runner.k_cache is None and runner.graphs is None


@triton_on_cpu
def test_the_start_up_warm_up_runs(hf_models, monkeypatch):
    """What a GPU engine runs at start (the pinned Triton launches, interpreted here; one eager step per mode;
    sampled rows), on CPU, where engines skip it: it runs, and the engine's tokens do not change after it."""
    from shifttune.kernels import prefill_attention

    monkeypatch.setattr(prefill_attention, "PAGED_SPLITS", (1, 4))  # the interpreter is slow with 64 splits
    path = hf_models["llama"]
    ref_tokens, _ = hf_reference(path)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), attention_backend="triton", prefill_attention="sdpa", sequence_parallel_size=1,
             block_size=4, max_num_batched_tokens=16) as llm:  # fmt: skip
        runner = llm.llm_engine.executor.runner
        runner.warm_up()
        assert {"paged_kernel_s", "sdpa_plans_s", "eager_step_and_sampler_s"} <= set(runner.startup)
        assert runner.startup["sdpa_shapes"] == 0  # no cuDNN plans to build on CPU
        assert [o.outputs[0].token_ids for o in llm.generate(PROMPTS[:2], params)] == ref_tokens[:2]


@pytest.mark.parametrize("hq, hk", [(8, 1), (32, 8)])
def test_eager_pinned_launches_run_warmed_configurations(hq, hk, monkeypatch):
    """Every paged launch of a pinned eager step uses a kernel configuration (constexprs, warps, stages) that the
    start-up warm-up launched: with one KV head a padded decode launch of 16 sequences is a small step (its own
    launch options) and one of 32 is not, and the warm-up covers both."""
    from shifttune.kernels import paged_attention as pa

    launches = []

    class Recorder:  # stands in for a Triton kernel: records each launch's keyword options
        def __init__(self, name):
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **options: launches.append((self.name, tuple(sorted(options.items()))))

    monkeypatch.setattr(pa, "_paged_attention_kernel", Recorder("attention"))
    monkeypatch.setattr(pa, "_merge_splits_kernel", Recorder("merge"))
    attention = StepAttention(None, 0, True, hq, hk)
    cache = torch.zeros(64, 4, hk, 16)
    attention.warm_up(pa.paged_attention, cache, cache, 0.25, 64, 256, 64, 0)
    warmed = set(launches)
    launches.clear()
    for seqs in (1, 5, 15, 16, 17, 33):
        for per_seq in (1, 4):
            q, k, v, kc, vc, meta = make_step([per_seq] * seqs, [20] * seqs, hq, hk, 16, 4)
            attention.plan(meta).run(pa.paged_attention, q, k, v, kc, vc, 0.25)
    configs = {
        tuple(dict(o)[k] for k in ("TILE", "num_warps", "num_stages")) for name, o in launches if name == "attention"
    }
    assert launches and set(launches) <= warmed
    assert len(configs) == (2 if hk == 1 else 1)  # one KV head: small steps' configuration and the other one


def test_auto_takes_chunks_by_query_key_pairs():
    from shifttune.kernels.prefill_attention import SDPA_MIN_PAIRS, SDPA_MIN_TOKENS

    attention = StepAttention(SdpaPrefill(SdpaSupport("math"), 8), SDPA_MIN_TOKENS, False, 4, 2, SDPA_MIN_PAIRS)
    assert not attention.takes(1024, 0) and not attention.takes(2048, 0) and attention.takes(4096, 0)
    assert attention.takes(256, 16384) and attention.takes(512, 8192) and not attention.takes(255, 100_000)
    assert not attention.takes(1, 131_072)  # decode tokens stay paged at any context


def test_the_pair_threshold_agrees_with_the_committed_h200_sweep():
    """SDPA_MIN_PAIRS sits between the largest chunk the paged kernel won and the suggestion of the sweep."""
    import json
    from pathlib import Path

    from shifttune.kernels.prefill_attention import SDPA_MIN_PAIRS
    from shifttune.profile.long_prompts import query_key_pairs, suggest_min_pairs

    rows = json.loads((Path(__file__).parent.parent / "profiles/long_prompts_h200.json").read_text())
    rows = rows["attention_layer"]["threshold"]
    lost = [query_key_pairs(r["tokens"], r["prefix"]) for r in rows if r["engine_sdpa"]["ms"] > r["engine_paged"]["ms"]]
    assert max(lost) < SDPA_MIN_PAIRS <= suggest_min_pairs(rows)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("in_order", [False, True])
@pytest.mark.parametrize("n, prefix", [(512, 300), (1000, 2048), (256, 4096), (512, 0), (1024, 2048)])
def test_chunks_after_a_prefix_on_cudnn_match_the_reference(n, prefix, in_order):
    """On the GPU's own SDPA (cuDNN where the probe finds it, in bf16), q, k, v views into one projection
    output as the model passes them: a chunk after a cached prefix runs as two calls merged by their
    log-sum-exp in one Triton launch (`fused.merge_by_lse`); a chunk that needs no padding (n and the prefix
    multiples of the pad) goes to SDPA as those views, with no copies. `in_order`: the prefix's blocks are one
    range of the cache, read in place (a view) with the table's span."""
    hq, hk, d, bs = 32, 8, 128, 16
    q, k, v, kc, vc, meta = make_step([n], [prefix], hq, hk, d, bs, in_order=in_order)
    want = reference(q, kc, vc, meta, d**-0.5)
    support = probe_sdpa(torch.device("cuda"), torch.bfloat16, hq, hk, d)
    if prefix and not support.lse:
        pytest.skip(f"this GPU's SDPA gives no log-sum-exp: {support.notes}")
    qkv = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1)], dim=1).cuda().bfloat16()
    q, k, v = (x.view(n, -1, d) for x in qkv.split([hq * d, hk * d, hk * d], dim=1))
    kc, vc = kc.cuda().bfloat16(), vc.cuda().bfloat16()
    out = torch.full_like(q, float("nan"))
    impl = SdpaPrefill(support, 256)
    span = meta.block_spans[0] if in_order else None
    impl.sequence(q, k, v, kc, vc, meta.block_tables[0].cuda(), prefix, d**-0.5, out, span)
    assert rel_err(out.float().cpu(), want) < 1e-2
    assert impl.prefix_reads["in_place"] == (1 if in_order and prefix >= 256 else 0)
