"""Engine defects a review and a randomized run found: each test failed before its fix."""

from __future__ import annotations

import dataclasses
import math
import os

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.block_manager import BlockManager
from shifttune.engine.detokenizer import Detokenizer
from shifttune.engine.sampling_params import DELTA
from shifttune.engine.scheduler import Scheduler
from shifttune.engine.sequence import Sequence
from shifttune.runner.executor import WorkerError

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    with LLM("tiny") as llm:
        yield llm


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": math.nan}, "temperature"),
        ({"temperature": math.inf, "min_tokens": 2}, "temperature"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"max_tokens": "5"}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop": 5}, "stop"),
    ],
)
def test_sampling_values_that_would_break_the_sampler_are_refused(kwargs, field):
    with pytest.raises(ConfigError) as e:
        SamplingParams(**kwargs)
    assert e.value.field == field


def test_tiny_temperatures_are_greedy(llm):
    greedy = llm.generate([[0, 5, 6]], GREEDY)[0].outputs[0].token_ids
    tiny = SamplingParams(temperature=1e-40, max_tokens=6, ignore_eos=True, seed=3)
    assert llm.generate([[0, 5, 6]], tiny)[0].outputs[0].token_ids == greedy


def test_stop_ids_that_mask_every_token_under_min_tokens_are_refused(llm):
    vocab = llm.llm_engine.config.model_config.vocab_size
    with pytest.raises(ConfigError, match="min_tokens: with stop_token_ids and EOS masking every token"):
        llm.generate([[0, 5]], SamplingParams(min_tokens=2, stop_token_ids=list(range(vocab)), max_tokens=4))
    assert not llm.llm_engine.has_unfinished_requests()


@pytest.mark.parametrize("prompt", [None, 7, b"\x00\x01", [True, False], {"a": 1}])
def test_wrong_prompt_types_are_a_config_error(llm, prompt):
    with pytest.raises(ConfigError, match="prompt: "):
        llm.llm_engine.add_request(None, prompt, GREEDY)
    assert not llm.llm_engine.requests


def test_the_offline_api_takes_vllm_s_prompt_dicts_chat_and_whole_outputs(llm):
    """vLLM code runs as it is: {"prompt"} / {"prompt_token_ids"} dicts (one or a list), `chat`, `get_tokenizer`,
    `cumulative_logprob`; and `generate` returns whole completions even for delta output_kind (it returned the last
    step's delta)."""
    tok = llm.get_tokenizer()
    ids = tok.encode("Hello")
    ref = llm.generate("Hello", GREEDY)[0].outputs[0]
    for prompt in ({"prompt": "Hello"}, [{"prompt": "Hello"}], [{"prompt_token_ids": ids}]):
        assert llm.generate(prompt, GREEDY)[0].outputs[0].token_ids == ref.token_ids
    with pytest.raises(ConfigError, match="prompt_token_ids"):
        llm.generate({"text": "Hello"}, GREEDY)
    delta = llm.generate("Hello", dataclasses.replace(GREEDY, output_kind="delta"))[0].outputs[0]
    assert (delta.token_ids, delta.text) == (ref.token_ids, ref.text) and len(ref.token_ids) == 6
    lp = llm.generate("Hello", dataclasses.replace(GREEDY, logprobs=2))[0].outputs[0]
    assert ref.cumulative_logprob is None and lp.cumulative_logprob < 0
    assert lp.cumulative_logprob == pytest.approx(sum(d[t] for t, d in zip(lp.token_ids, lp.logprobs)))
    messages = [{"role": "user", "content": "hi"}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    chat_ref = llm.generate([tok.encode(text, add_special_tokens=False)], GREEDY)[0].outputs[0]
    chats = llm.chat([messages, messages], GREEDY)
    assert [c.outputs[0].token_ids for c in chats] == [chat_ref.token_ids] * 2
    assert llm.chat(messages, GREEDY)[0].outputs[0].token_ids == chat_ref.token_ids


def test_generate_after_shutdown_says_so():
    llm = LLM("tiny")
    llm.shutdown()
    with pytest.raises(RuntimeError, match="has been shut down"):
        llm.generate("Hello", GREEDY)


def test_a_request_that_fails_in_a_step_fails_alone(llm, monkeypatch):
    from shifttune.runner.sampler import Sampler

    engine = llm.llm_engine
    batch = engine.executor.runner.input_batch
    real = Sampler._sample

    def flaky(self, logits, rows, rows_dev, last_token):  # the runner's sampler fails on the row of request "bad"
        if batch.rows.get(bad) in rows:
            raise RuntimeError("boom")
        return real(self, logits, rows, rows_dev, last_token)

    monkeypatch.setattr(Sampler, "_sample", flaky)
    engine.add_request("bad", [0, 5, 6], GREEDY)
    bad = engine.requests["bad"].runner_id
    engine.add_request("good", [0, 7, 8], GREEDY)
    done = {}
    for _ in range(50):
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out
        if not engine.has_unfinished_requests():
            break
    assert done["bad"].outputs[0].finish_reason == "error" and "'bad'" in done["bad"].error
    assert done["good"].outputs[0].finish_reason == "length" and len(done["good"].outputs[0].token_ids) == 6
    assert engine.block_manager.num_free_blocks == engine.block_manager.num_blocks


def test_auto_request_ids_skip_ids_in_use(llm):
    engine = llm.llm_engine
    probe = engine.add_request(None, [0, 5], GREEDY)  # auto ids count up: the next ones are known
    taken = [engine.add_request(str(int(probe) + i), [0, 5], GREEDY) for i in (1, 2)]
    auto = engine.add_request(None, [0, 5], GREEDY)
    assert auto not in taken and auto != probe
    for rid in [probe, *taken, auto]:
        engine.abort_request(rid)


def test_returned_outputs_do_not_change_afterwards(llm):
    engine = llm.llm_engine
    engine.add_request("lp", [0, 5, 6], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=1))
    outputs = []
    while not outputs:  # the first step's tokens come back from the step after it (async scheduling)
        outputs = engine.step()
    first = outputs[0]
    snapshot = (list(first.outputs[0].token_ids), len(first.outputs[0].logprobs))
    while engine.has_unfinished_requests():
        engine.step()
    assert (first.outputs[0].token_ids, len(first.outputs[0].logprobs)) == snapshot


def test_delta_outputs_add_up_to_the_cumulative_output(llm):
    engine = llm.llm_engine
    ref = llm.generate(["Hello there"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    engine.add_request(
        "d", "Hello there", SamplingParams(temperature=0, max_tokens=12, ignore_eos=True, output_kind=DELTA)
    )
    text, ids = "", []
    while engine.has_unfinished_requests():
        for out in engine.step():
            text += out.outputs[0].text
            ids += out.outputs[0].token_ids
    assert (text, ids) == (ref.text, ref.token_ids)


def test_a_rank_that_fails_after_loading_is_reported():
    with pytest.raises(WorkerError, match="rank"):
        LLM("tiny", tensor_parallel_size=2, num_kv_blocks=10**12)  # the KV cache allocation fails on every rank


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["worker", "driver"])
def test_a_rank_destroys_its_graphs_before_it_leaves_the_process_group(monkeypatch, timeout):
    """NCCL (>= 2.26) waits forever to destroy a communicator while a CUDA graph that captured its collectives is
    alive: on 2 GPUs a shutdown hung where a caller held the graphs (profiles/runs/s25_gpu/a_sp_graph_test_x2), and
    every worker left its group with its graphs alive. Each rank's last act resets every graph, then leaves (the
    driver's way: in a thread it waits for at most `timeout` s)."""
    from types import SimpleNamespace

    from conftest import stand_in_step_graphs
    from shifttune.runner import executor
    from shifttune.runner.model_runner import ModelRunner

    graphs = stand_in_step_graphs(8, 2, 4)
    reset = []
    stand_in = type("Graph", (), {"reset": lambda self: reset.append(self)})
    graphs.graphs = {("tp", 1): stand_in(), ("tp", 2): stand_in()}
    graphs.split_graphs = {("tp", 64): stand_in()}
    runner = ModelRunner.__new__(ModelRunner)  # only what release() touches
    model = SimpleNamespace(layers=[])
    runner.graphs, runner.models, runner.k_cache, runner.v_cache, runner.input_batch = graphs, {"tp": model}, 1, 1, 1
    seen = []
    monkeypatch.setattr(executor, "destroy_parallel_state", lambda state: seen.append((len(reset), runner.graphs)))
    executor.leave(runner, None, timeout)
    assert seen == [(3, None)]  # all three graphs reset before the group was left
    assert graphs.graphs == {} and graphs.split_graphs == {}  # a caller holding the StepGraphs keeps no graph


def test_the_driver_does_not_wait_forever_to_leave_the_group(monkeypatch, capsys):
    """A teardown that does not finish (a dead peer in NCCL's) holds the driver for `timeout` s, then it goes on."""
    import threading
    import time

    from shifttune.runner import executor

    stuck = threading.Event()
    monkeypatch.setattr(executor, "destroy_parallel_state", lambda state: stuck.wait(10))
    start = time.perf_counter()
    executor.leave(None, None, timeout=0.2)
    assert time.perf_counter() - start < 2 and "did not close within" in capsys.readouterr().err
    stuck.set()


def test_a_rank_that_fails_to_start_leaves_after_releasing_its_runner(monkeypatch):
    """Any failure during a rank's start (a WorkerError from another rank, Ctrl-C, a gloo error) releases what the
    rank built (its graphs) before it leaves the group, not only a WorkerError."""
    from types import SimpleNamespace

    from shifttune.runner import executor

    events = []
    runner = SimpleNamespace(num_kv_blocks=4, release=lambda: events.append("release"))
    runner.allocate_kv_cache = lambda n: None
    runner.capture_graphs = lambda: (_ for _ in ()).throw(KeyboardInterrupt)
    state = SimpleNamespace(cpu_group=None)
    monkeypatch.setattr(executor, "init_parallel_state", lambda *a: state)
    monkeypatch.setattr(executor, "ModelRunner", lambda config, state: runner)
    monkeypatch.setattr(executor, "destroy_parallel_state", lambda state: events.append("leave"))
    config = SimpleNamespace(parallel=SimpleNamespace(world_size=1), device="cpu", all_reduce="nccl", torch_dtype=None)
    with pytest.raises(KeyboardInterrupt):
        executor._start_rank(config, 0, None)
    assert events == ["release", "leave"]


def test_workers_end_by_themselves_on_shutdown():
    """Each spawned rank leaves on the driver's word with exit code 0 (not terminated after the driver's wait; on
    GPUs the driver leaves the process group before it waits: NCCL's teardown waits for every rank's)."""
    llm = LLM("tiny", tensor_parallel_size=2)
    procs = llm.llm_engine.executor.procs
    assert llm.generate([[1, 2, 3]], GREEDY)[0].outputs[0].token_ids
    llm.shutdown()
    assert [p.exitcode for p in procs] == [0]
    assert not torch.distributed.is_initialized()  # the driver left the group within its wait


def test_a_ctrl_c_while_a_worker_starts_up_does_not_kill_it(monkeypatch):
    """Ctrl-C reaches every process of the terminal's group; a worker still importing torch died of it (a traceback,
    and "worker rank 1 exited") before it could ignore SIGINT. Now it is born with SIGINT blocked."""
    import multiprocessing.context
    import signal

    start = multiprocessing.context.SpawnProcess.start

    def start_then_interrupt(self):
        start(self)
        os.kill(self.pid, signal.SIGINT)  # the moment a terminal's Ctrl-C would land

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", start_then_interrupt)
    llm = LLM("tiny", tensor_parallel_size=2)
    procs = llm.llm_engine.executor.procs
    assert llm.generate([[1, 2, 3]], GREEDY)[0].outputs[0].token_ids
    llm.shutdown()
    assert [p.exitcode for p in procs] == [0]


def test_world_size_that_is_not_sp_x_tp_is_refused(monkeypatch):
    monkeypatch.setitem(os.environ, "WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match="WORLD_SIZE=3 but SP x TP = 2"):
        EngineConfig(model="tiny", tensor_parallel_size=2)


def test_the_torch_attention_backend_runs_eager():
    assert EngineConfig(model="tiny", attention_backend="torch").enforce_eager


def test_sentencepiece_first_token_keeps_its_space():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "▁Hello": 1, "▁world": 2, "!": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()  # as Llama 2 / Mistral: the first token of a decode loses its space
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    assert hf.decode([2]) == "world"
    seq = Sequence("r", "Hello", [1], GREEDY)
    detok = Detokenizer(hf)
    seq.token_ids.append(2)
    detok.update(seq)
    seq.token_ids.append(3)
    detok.update(seq)
    assert seq.output_text == " world!"
    detok.finalize(seq)
    assert seq.output_text == " world!"


def test_dummy_weights_give_the_same_text_in_both_modes(hf_models):
    path = str(hf_models["llama"])
    outs = {}
    for policy in ("tp", "sp"):
        with LLM(path, load_format="dummy", sequence_parallel_size=2, shift_policy=policy) as llm:
            outs[policy] = [o.outputs[0].token_ids for o in llm.generate([[1, 5, 6, 7], [1, 9]], GREEDY)]
    assert outs["tp"] == outs["sp"]


def test_admission_keeps_a_watermark_for_the_running_sequences():
    bm = BlockManager(num_blocks=5, block_size=4)
    scheduler = Scheduler(bm, max_num_seqs=8, max_num_batched_tokens=64)
    for rid in ("a", "b"):
        scheduler.add(Sequence(rid, None, [1] * 6, GREEDY))
    out = scheduler.schedule()
    assert [s.seq.request_id for s in out.scheduled] == ["a", "b"] and bm.num_free_blocks == 1
    scheduler.update_computed(out)
    scheduler.add(Sequence("c", None, [1] * 3, GREEDY))  # fits the last free block, which a and b will need
    assert "c" not in [s.seq.request_id for s in scheduler.schedule().scheduled]
    lone = Scheduler(BlockManager(num_blocks=1, block_size=4), max_num_seqs=8, max_num_batched_tokens=64)
    lone.add(Sequence("d", None, [1] * 3, GREEDY))  # nothing else runs: the whole cache may be used
    assert [s.seq.request_id for s in lone.schedule().scheduled] == ["d"]


def test_under_torchrun_a_dead_rank_ends_the_job(tmp_path):
    """torchrun's agent watches every rank: killing rank 1 mid-generation ends rank 0 too, non-zero, with
    the dead rank named as the root cause (nothing waits in a collective)."""
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent("""
        import time
        from shifttune import LLM, SamplingParams
        llm = LLM("tiny", tensor_parallel_size=2)
        print("ready", flush=True)
        while True:
            llm.generate([[0, 5, 6]], SamplingParams(temperature=0, max_tokens=50, ignore_eos=True))
    """)
    )
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        "29561",
        str(script),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        ranks = {}
        for pid in subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout.split():
            env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            rank = next((e.split(b"=")[1] for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[int(rank)] = int(pid)
        os.kill(ranks[1], signal.SIGKILL)
        started = time.time()
        code = proc.wait(30)
        out = proc.stdout.read()
        assert code != 0 and time.time() - started < 10
        assert "Root Cause" in out and "rank      : 1" in out
    finally:
        if proc.poll() is None:
            proc.kill()
