"""The engine loop (issue: the loop costs nothing): a persistent batch on every rank with per-step
deltas, and async scheduling (step n + 1 scheduled before step n's tokens are read back) that leaves
every output exactly as the synchronous loop gives it."""

from __future__ import annotations

import pytest
import torch

from shifttune import LLM, SamplingParams
from conftest import _small


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("long") / "llama"
    cfg = _small(LlamaConfig, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8448)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def _decode_message_bytes(llm: LLM, context: int, batch: int = 4, new_tokens: int = 24) -> list[int]:
    """Bytes the driver broadcast for each step in which all `batch` requests decode."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=1, max_tokens=new_tokens, ignore_eos=True)
    for i in range(batch):
        engine.add_request(f"c{context}-{i}", [(i * 31 + j) % 300 + 1 for j in range(context)], params)
    sizes = []
    while engine.has_unfinished_requests():
        engine.step()
        last = engine._in_flight
        if last is not None and last.shape.num_prefill_tokens == 0 and last.shape.num_seqs == batch:
            sizes.append(engine.executor.last_message_bytes)
    return sizes


def test_bytes_sent_per_decode_step_do_not_grow_with_context(long_model):
    """P = 2 CPU ranks: a decode step's message holds the batch's changes, not its block tables."""
    with LLM(str(long_model), tensor_parallel_size=2, max_model_len=8448, block_size=16, num_kv_blocks=2200,
             max_num_batched_tokens=8448, enable_prefix_caching=False, async_scheduling=True) as llm:  # fmt: skip
        short = _decode_message_bytes(llm, 512)
        long = _decode_message_bytes(llm, 8192)
    assert len(short) >= 20 and len(long) >= 20
    assert sorted(short)[len(short) // 2] == sorted(long)[len(long) // 2]  # steps that append no block
    assert max(long) <= max(short) + 4 * 8  # one new block id per request every 16 tokens (bigger ids)
    assert max(long) < 1000  # the whole batch's block tables alone would be 4 x 512 ids


CASES = [  # (prompt, params): stops by token, string, EOS and length; min_tokens; logprobs; seeded sampling
    ([1, 17, 42, 99, 5, 8, 250, 13, 77], SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)),
    ([1, 3], SamplingParams(temperature=0.9, top_p=0.8, seed=4, max_tokens=17, ignore_eos=True, logprobs=2)),
    ([1, 60, 61, 62, 63], SamplingParams(temperature=0, max_tokens=30, min_tokens=5)),
    ([1, 200, 201, 202, 7], SamplingParams(temperature=1.2, top_k=20, seed=9, max_tokens=25, ignore_eos=True)),
    ([1, 9, 9, 9], SamplingParams(temperature=0.7, min_p=0.1, seed=2, max_tokens=12, ignore_eos=True)),
]


def _with_stops(llm: LLM) -> list:
    """CASES plus stops taken from their own free-running outputs: a stop token in the middle, a stop string."""
    free = llm.generate([p for p, _ in CASES], [sp for _, sp in CASES])
    cases = list(CASES)
    for (prompt, sp), out in zip(CASES[:2], free):
        token = out.outputs[0].token_ids[6]
        cases.append((prompt, SamplingParams(**{**sp.__dict__, "stop_token_ids": [token], "stop": None})))
    return cases


@pytest.mark.parametrize("tp, sp", [(1, 1), (1, 2)])
def test_async_scheduling_gives_exactly_the_synchronous_outputs(hf_models, tp, sp):
    path = str(hf_models["llama"])
    outs = {}
    for async_scheduling in (False, True):
        with LLM(path, tensor_parallel_size=tp, sequence_parallel_size=sp, block_size=4, shift_threshold=8,
                 async_scheduling=async_scheduling) as llm:  # fmt: skip
            cases = _with_stops(llm)
            res = llm.generate([p for p, _ in cases], [c for _, c in cases])
            outs[async_scheduling] = [(o.outputs[0].token_ids, o.outputs[0].finish_reason, o.outputs[0].stop_reason,
                                       o.outputs[0].logprobs) for o in res]  # fmt: skip
            bm = llm.llm_engine.block_manager
            assert bm.num_free_blocks == bm.num_blocks
    assert outs[True] == outs[False]
    stopped = outs[True][len(CASES) :]
    for (tokens, reason, stop, _), (_, sp_) in zip(stopped, CASES[:2]):
        assert reason == "stop" and tokens[-1] == stop and stop not in tokens[:-1]  # nothing past the stop


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_request_runs_to_the_context_limit_exactly(hf_models, async_scheduling):
    """Under async scheduling the length check counted the token still in flight: a request that ran to
    max_model_len ended one token short (31 of 32) and the in-flight token was thrown away."""
    params = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    with LLM(str(hf_models["llama"]), max_model_len=32, async_scheduling=async_scheduling) as llm:
        (out,) = llm.generate([[1, 17, 42, 99, 5]], params)
    assert len(out.outputs[0].token_ids) == 32 - 5 and out.outputs[0].finish_reason == "length"


def test_preemption_and_aborts_under_async_scheduling(hf_models):
    """A cache too small for the batch preempts and recomputes; an abort mid-flight frees everything;
    outputs equal those of a cache that never preempts."""
    path = str(hf_models["llama"])
    prompts = [[1, 17 + i, 42, 99, 5, 8] for i in range(6)]
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=24, ignore_eos=True)
    with LLM(path, block_size=4) as llm:
        ref = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    with LLM(path, block_size=4, num_kv_blocks=24, enable_prefix_caching=False, async_scheduling=True) as llm:
        engine = llm.llm_engine
        got = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
        assert engine.stats.num_preemptions > 0
        engine.add_request("gone", [1, 2, 3], params)
        engine.add_request("kept", prompts[0], params)
        done = {}
        for i in range(200):
            for out in engine.step():
                done[out.request_id] = out
            if i == 3:
                engine.abort_request("gone")
            if not engine.has_unfinished_requests():
                break
        assert done["kept"].outputs[0].token_ids == ref[0] and "gone" not in done or not done["gone"].finished
        assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks
    assert got == ref


def test_uploaded_parts_start_on_16_bytes():
    """Triton compiles a binary per pointer alignment: a step's uploaded views must all start aligned, as the
    warm-up's fresh tensors do, or the first steps of a new shape stall on a compile."""
    from shifttune.kernels.upload import to_device_parts

    parts = ([1, 2, 3], [], [4, 5, 6, 7, 8], [9])
    views = to_device_parts(parts, torch.int64, torch.device("cpu"))
    assert [v.tolist() for v in views] == [list(p) for p in parts]
    assert all(v.data_ptr() % 16 == 0 for v in views)


def test_every_step_tensor_is_aligned(monkeypatch):
    from shifttune.runner.input_batch import InputBatch

    seen = []
    prepare = InputBatch.prepare

    def spy(self, *args, **kwargs):
        step, rows, rows_dev = prepare(self, *args, **kwargs)
        tensors = [getattr(step, f) for f in ("ids", "positions", "slot_mapping", "query_start_loc", "seq_lens",
                                               "block_tables", "sample_indices")] + [rows_dev]  # fmt: skip
        seen.append([t.data_ptr() % 16 for t in tensors if t.numel()])
        return step, rows, rows_dev

    monkeypatch.setattr(InputBatch, "prepare", spy)
    llm = LLM("tiny", device="cpu")
    params = SamplingParams(temperature=0.8, seed=3, max_tokens=5, ignore_eos=True)
    llm.generate([[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]], params)  # odd counts: the parts' offsets would be odd
    llm.shutdown()
    assert seen and all(offset == 0 for step in seen for offset in step)


def test_timeline_summary_splits_a_window_into_busy_and_idle():
    from shifttune.profile.loop_overhead import timeline_summary

    spans = [(20.0, 30.0, "c"), (0.0, 10.0, "a"), (5.0, 12.0, "b"), (31.0, 40.0, "d"), (32.0, 35.0, "e")]
    t = timeline_summary(spans)
    assert t["window_us"] == 40 and t["busy_us"] == 12 + 10 + 9 and t["idle_us"] == 9
    assert t["gaps"] == [{"us": 8.0, "after": "b", "before": "c"}, {"us": 1.0, "after": "c", "before": "d"}]
    assert t["kernels_us"] == {"a": 10, "c": 10, "d": 9, "b": 7, "e": 3}
    assert timeline_summary([])["window_us"] == 0


def test_the_loop_benchmark_decodes_its_whole_batch_however_long_the_prefill():
    """Prompts are admitted one chunk per step, and the first ones decode meanwhile: with only `new_tokens`
    each, they would finish before the last ones start and no step would hold the whole batch (a case run
    alone measured nothing). The benchmark gives each request as many extra tokens as the prefill takes."""
    from shifttune.profile.loop_overhead import GREEDY, SAMPLED, measure

    llm = LLM("tiny", device="cpu", max_num_batched_tokens=256)  # 8 x ~500-token prompts: ~16 prefill steps
    try:
        row = measure(llm.llm_engine, 8, 512, GREEDY, 4)
        # the same shape sampled: its prompts share no prefix with the greedy case's (no prefix-cache hit)
        again = measure(llm.llm_engine, 8, 512, SAMPLED, 4)
        hits = llm.llm_engine.stats.num_prefix_cache_hit_blocks
    finally:
        llm.shutdown()
    assert row["decode_steps"] >= 4 and row["loop_ms"] > 0 and again["decode_steps"] >= 4
    assert hits == 0


def test_the_persistent_batch_keeps_each_tables_span():
    """Each row's `BlockSpan` across appends, the step's spans in its order, and a row reused by a new request
    starting over."""
    from shifttune.config import TP
    from shifttune.runner.input_batch import InputBatch, NewRequest, StepDelta
    from shifttune.runner.sampler import RequestSampling

    batch = InputBatch(4, 16, 4, 0, 64, torch.device("cpu"))

    def step(new=(), appended=(), finished=(), ids=(1, 2)):
        delta = StepDelta(TP, list(ids), [1] * len(ids), [5] * len(ids), [], [NewRequest(r, b, 0, 0, RequestSampling())
                          for r, b in new], list(appended), list(finished))  # fmt: skip
        batch.update(delta)
        return [(s.lo, s.hi) for s in batch.prepare(delta)[0].block_spans]

    assert step(new=[(1, [6, 5]), (2, [3])]) == [([6, 5], [6, 6]), ([3], [3])]
    assert step(appended=[(1, [9])], ids=(2, 1)) == [([3], [3]), ([6, 5, 5], [6, 6, 9])]
    assert step(new=[(3, [1, 2])], finished=[1], ids=(3, 2)) == [([1, 1], [1, 2]), ([3], [3])]


def test_a_step_with_first_tokens_is_read_back_before_an_eager_step_launches(hf_models):
    """Async scheduling with CUDA graphs: once a prompt ends in the step in flight and the next step runs eagerly,
    `step` returns that step's tokens before launching the next one, so the first token never waits behind
    another step's launch; with nothing eager to launch, it launches first."""
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    with LLM(str(hf_models["llama"]), block_size=4, async_scheduling=True) as llm:
        engine = llm.llm_engine
        assert engine._graph_tokens is None  # no graphs on CPU: no such rule
        engine._graph_tokens = 0  # as on a GPU whose graphs cover no step
        engine.add_request("a", [1, 17, 42, 99, 5, 8], params)
        assert engine.step() == []  # a's prefill launched; nothing was in flight
        engine.add_request("b", [1, 60, 61, 62, 63], params)
        outs = engine.step()
        assert [(o.request_id, len(o.outputs[0].token_ids)) for o in outs] == [("a", 1)]
        assert engine._in_flight is None and [s.request_id for s in engine.scheduler.waiting] == ["b"]
        assert engine.step() == [] and engine._in_flight.shape.num_prefill_tokens == 5  # b's prefill, a's decode
        engine._graph_tokens = engine.scheduler.next_step_tokens()  # the next step (2 decodes) just fits a graph
        outs = engine.step()  # so it is launched first and b's first token read back after
        assert [(o.request_id, len(o.outputs[0].token_ids)) for o in outs] == [("a", 2), ("b", 1)]
        step = engine._in_flight
        assert step is not None and step.shape.num_prefill_tokens == 0 and not step.first_tokens  # b's 2nd token
