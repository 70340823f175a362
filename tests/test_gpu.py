"""GPU runs of the HF oracle (bf16, Triton attention, CUDA graphs on), for every layout the GPUs allow.

The bf16 rule is `conftest.check_against_hf_fp32`.
"""

from __future__ import annotations

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.config import ConfigError
from conftest import LAYOUTS, PROMPTS, check_against_hf_fp32
from test_invariance import run_with_modes

# every layout of up to 8 GPUs (skipped where fewer are visible); only the qwen3 test model's 8 query heads
# divide by P = 8 (llama and qwen2 have 4: the engine refuses, the test skips with its message)
GPU_LAYOUTS = LAYOUTS + [(4, 1), (1, 4), (8, 1), (4, 2), (2, 4), (1, 8)]


def _gpu_llm(path, tp: int, sp: int, **kwargs) -> LLM:
    """An engine on tp * sp GPUs, or a skip: too few GPUs, or heads that do not divide (the engine says)."""
    if tp * sp > torch.cuda.device_count():
        pytest.skip(f"needs {tp * sp} GPUs")
    try:
        return LLM(str(path), tensor_parallel_size=tp, sequence_parallel_size=sp, device="cuda", dtype="bfloat16",
                   block_size=16, **kwargs)  # fmt: skip
    except ConfigError as e:
        pytest.skip(f"TP={tp} SP={sp}: {e.message}")


pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model_kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("tp,sp", GPU_LAYOUTS)
def test_hf_oracle_bf16_cuda_graphs(hf_models, model_kind, tp, sp):
    path = hf_models[model_kind]
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with _gpu_llm(path, tp, sp) as llm:
        engine = llm.llm_engine
        for policy, threshold in (("tp", 256), ("sp", 256), ("threshold", 4)):
            engine.set_policy(policy, threshold)
            outs = llm.generate(PROMPTS, params)
            exact = check_against_hf_fp32(str(path), PROMPTS, [o.outputs[0].token_ids for o in outs])
            assert exact >= len(PROMPTS) // 2  # most sequences match outright; the rest pass the rule
        assert engine.executor.runner.graphs.num_replays > 0  # decode steps replayed CUDA graphs
        procs = engine.executor.procs
    assert [proc.exitcode for proc in procs] == [0] * (tp * sp - 1)  # workers left by themselves (graphs died first)
    assert not torch.distributed.is_initialized()  # and so did the driver, within its wait


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_chunk_split_graphs_on_gpu(hf_models, monkeypatch):
    """CHUNK_SPLIT_GRAPHS on: chunk buckets (past a sequence limit of 2) capture a split graph, prefill chunks
    of one or two sequences replay it, and the tokens pass the bf16 rule against HF."""
    from shifttune.kernels import split_kv

    monkeypatch.setattr(split_kv, "CHUNK_SPLIT_GRAPHS", True)
    path = hf_models["llama"]
    prompts = [*PROMPTS, [1, *range(100, 249)]]  # the last: 150 tokens, its later chunks over several 64-key tiles
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with _gpu_llm(path, 1, 1, max_num_seqs=2, cuda_graph_max_tokens=64, max_num_batched_tokens=64) as llm:
        graphs = llm.llm_engine.executor.runner.graphs
        assert graphs.split_graphs and set(graphs.split_graphs) == set(graphs.split_plan)
        used = []
        pick = graphs.use_split_graph
        monkeypatch.setattr(graphs, "use_split_graph", lambda *a: used.append(pick(*a)) or used[-1])
        outs = llm.generate(prompts, params)
        assert True in used and False in used, used
        assert check_against_hf_fp32(str(path), prompts, [o.outputs[0].token_ids for o in outs]) >= len(prompts) // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.timeout(300)  # a hang fails, not blocks
@pytest.mark.parametrize("tp,sp", [(1, 2), (2, 2), (1, 4)])
def test_sp_mode_graphs_past_the_graph_limit_on_gpus(hf_models, monkeypatch, tp, sp):
    """sp_cuda_graph_tokens_per_gpu (experimental, off by default) on SP ranks over NCCL: SP-mode steps past
    `cuda_graph_max_tokens` (64 here; up to 64 x P tokens) replay their graphs, TP-mode steps past it run eagerly, and
    the tokens pass the bf16 rule against HF in each policy (no prefix caching: each round prefills all again)."""
    path = hf_models["qwen3"]
    prompts = [*PROMPTS, [1, *range(100, 249)]]  # the last: 150 tokens, prefilled in chunks of up to 64 x P
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    p = tp * sp
    with _gpu_llm(path, tp, sp, cuda_graph_max_tokens=64, sp_cuda_graph_tokens_per_gpu=64,
                  max_num_batched_tokens=64 * p, enable_prefix_caching=False) as llm:  # fmt: skip
        graphs = llm.llm_engine.executor.runner.graphs  # rank 0's; every rank takes the same path
        assert graphs.mode_limit == {"tp": 64, "sp": 64 * p} and graphs.buckets[-1] == 64 * p
        replayed = []
        replay = graphs.replay
        monkeypatch.setattr(graphs, "replay", lambda mode, t, *a: replayed.append((mode, t)) or replay(mode, t, *a))
        for policy in ("sp", "threshold", "tp"):
            llm.llm_engine.set_policy(policy, 16)
            outs = llm.generate(prompts, params)
            exact = check_against_hf_fp32(str(path), prompts, [o.outputs[0].token_ids for o in outs])
            assert exact >= len(prompts) // 2, policy
        assert any(mode == "sp" and t > 64 for mode, t in replayed), replayed
        steps = [(s.mode, s.shape.num_tokens) for s in llm.llm_engine.stats.steps]
        assert any(mode == "tp" and t > 64 for mode, t in steps), steps  # the "tp" round's prefill chunks ...
        assert all(t <= 64 for mode, t in replayed if mode == "tp"), replayed  # ... ran eagerly
        procs = llm.llm_engine.executor.procs
    # NOTE: `graphs` is still held here: the shutdown hung before StepGraphs.release (s25_gpu/a_sp_graph_test_x2)
    assert [proc.exitcode for proc in procs] == [0] * (p - 1)  # the workers left by themselves, not terminated
    assert not torch.distributed.is_initialized()  # and so did the driver, within its wait


_SYMM_CASE = """
import json, sys
from shifttune import LLM, SamplingParams
path, tp, sp, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
out = {}
with LLM(path, tensor_parallel_size=tp, sequence_parallel_size=sp, device="cuda", dtype="bfloat16", block_size=16,
         all_reduce="symm_mem") as llm:
    engine = llm.llm_engine
    assert engine.executor.runner.state.world_group.one_shot is not None
    for policy, threshold in (("tp", 256), ("sp", 256), ("threshold", 4)):
        engine.set_policy(policy, threshold)
        out[policy] = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
print("TOKENS " + json.dumps(out))
"""


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("tp,sp", [(2, 1), (1, 2), (2, 2), (4, 1), (8, 1), (2, 4)])
def test_hf_oracle_with_the_symmetric_memory_all_reduce(hf_models, tp, sp):
    """all_reduce="symm_mem": the row-parallel layers' sums go through the one-shot kernel (in graphs and eager),
    in both modes; the tokens pass the bf16 rule against HF in float32. NOTE: each case in its own process:
    torch sets symmetric memory up once per process (`symm_mem_used_in_this_process`)."""
    import json
    import subprocess
    import sys

    if tp * sp > torch.cuda.device_count():
        pytest.skip(f"needs {tp * sp} GPUs")
    path = hf_models["qwen3"]
    run = subprocess.run([sys.executable, "-c", _SYMM_CASE, str(path), str(tp), str(sp), json.dumps(PROMPTS)],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    line = next((x for x in run.stdout.splitlines() if x.startswith("TOKENS ")), None)
    assert run.returncode == 0 and line is not None, run.stderr[-3000:]
    for policy, tokens in json.loads(line[len("TOKENS ") :]).items():
        assert check_against_hf_fp32(str(path), PROMPTS, tokens) >= len(PROMPTS) // 2, policy


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_step_does_not_sync_the_host(hf_models):
    """Inside execute_model (inputs, forward, logits) nothing waits for the GPU: decode steps replayed from
    graphs and an eager step past the graphs' largest bucket. Only reading sampled tokens syncs, later."""
    from shifttune.profile.step_timing import synthetic_step

    with LLM(
        str(hf_models["llama"]), device="cuda", dtype="bfloat16", max_num_batched_tokens=4096, cuda_graph_max_tokens=256
    ) as llm:
        runner = llm.llm_engine.executor.runner
        steps = [synthetic_step("tp", 8, 1, 100, 16), synthetic_step("tp", 2, 200, 200, 16)]
        for step in steps:  # warm up (Triton compiles on first use)
            runner.execute_model(step)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in steps:
                logits = runner.execute_model(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert logits.shape[0] == 2 and runner.graphs.num_replays >= 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("prefill_attention", ["auto", "sdpa"])  # "sdpa": the eager chunk through cuDNN
def test_launching_engine_steps_does_not_sync_the_host(hf_models, prefill_attention):
    """Async scheduling needs a launch (schedule, delta, inputs on the device, graph or eager step, sampling
    with every filter, logprobs, the copy back) that never waits for the GPU: three steps in a row, with a
    new request and an eager prefill among them, under sync-debug mode; their tokens are read after."""
    mix = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
           SamplingParams(temperature=0.8, top_p=0.9, seed=1, max_tokens=12, ignore_eos=True),
           SamplingParams(temperature=1.0, top_k=5, min_p=0.05, max_tokens=12, ignore_eos=True, logprobs=2),
           SamplingParams(temperature=0.7, min_tokens=4, stop_token_ids=[3], max_tokens=12)]  # fmt: skip
    with LLM(str(hf_models["llama"]), device="cuda", dtype="bfloat16", cuda_graph_max_tokens=128,
             prefill_attention=prefill_attention) as llm:  # fmt: skip
        engine = llm.llm_engine
        llm.generate(PROMPTS + [list(range(1, 201))], [mix[i % 4] for i in range(len(PROMPTS) + 1)])  # warm-up
        for i, p in enumerate(PROMPTS):
            engine.add_request(f"r{i}", p, mix[i % 4])
        engine.step()
        engine.add_request("late", list(range(1, 201)), mix[1])  # 200 tokens: past the graphs, eager
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            launched = [engine._launch() for _ in range(3)]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        outputs = [o for s in [engine._in_flight, *launched] for o in engine._complete(s)]
        engine._in_flight = None
        assert len(outputs) >= 3 * len(PROMPTS) and any(o.request_id == "late" for o in outputs)
        while engine.has_unfinished_requests():
            engine.step()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_every_graph_writes_one_shared_logits_buffer(hf_models):
    from shifttune.profile.step_timing import synthetic_step

    with LLM(str(hf_models["llama"]), device="cuda", dtype="bfloat16", cuda_graph_max_tokens=256) as llm:
        runner = llm.llm_engine.executor.runner
        shared, before = runner.graphs.logits.data_ptr(), runner.graphs.num_replays  # start-up may replay one
        for step in (synthetic_step("tp", 1, 1, 40, 16), synthetic_step("tp", 32, 1, 40, 16)):
            assert runner.execute_model(step).data_ptr() == shared
        assert runner.graphs.num_replays == before + 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_torch_attention_backend_runs_eager_on_gpu(hf_models):
    path = str(hf_models["llama"])
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    with LLM(path, device="cuda", dtype="bfloat16", attention_backend="torch") as llm:
        assert llm.llm_engine.executor.runner.graphs is None
        outs = llm.generate(PROMPTS, params)
    assert check_against_hf_fp32(path, PROMPTS, [o.outputs[0].token_ids for o in outs]) >= len(PROMPTS) // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_shutdown_gives_the_gpu_memory_back(hf_models):
    """Weights, KV cache, graphs and the persistent batch are freed by `LLM.shutdown()`: the same process
    builds the engine again and again (issue 14)."""
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    for _ in range(2):  # 2M blocks of 4 KiB: an 8 GiB cache for this small model
        llm = LLM(str(hf_models["llama"]), device="cuda", dtype="bfloat16", num_kv_blocks=2_000_000)
        assert torch.cuda.memory_allocated() - before > 4 << 30
        llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        llm.shutdown()
        del llm
        assert torch.cuda.memory_allocated() - before < 64 << 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_an_llm_nobody_holds_gives_the_gpu_memory_back(hf_models):
    """`llm = LLM(...)` run again (a notebook cell) without `shutdown()`: the first engine is shut down as it is freed,
    so the second fits."""
    import gc

    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    for _ in range(2):
        llm = LLM(str(hf_models["llama"]), device="cuda", dtype="bfloat16", num_kv_blocks=2_000_000)
        assert torch.cuda.memory_allocated() - before > 4 << 30
        llm.generate(PROMPTS, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        del llm
        gc.collect()
        assert torch.cuda.memory_allocated() - before < 64 << 20


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_no_triton_compile_after_start_up(hf_models):
    """Start-up compiles what steps launch: served traffic (graphed decodes of 1, 2, 3, 17 rows, eager mixed
    steps of long prompts with decodes, sampled and greedy rows) compiles no Triton kernel afterwards. A first
    use compile stalled an H200 for 1.2-3.7 s (pointer alignment: `kernels/upload.py`)."""
    import triton

    compiled = []
    with LLM(str(hf_models["llama"]), device="cuda", dtype="bfloat16", cuda_graph_max_tokens=128) as llm:
        engine = llm.llm_engine
        old, triton.knobs.runtime.jit_post_compile_hook = (
            triton.knobs.runtime.jit_post_compile_hook,
            (lambda **kw: compiled.append(kw["repr"].split("[")[0])),
        )
        try:
            sampled = SamplingParams(temperature=0.8, top_p=0.9, seed=1, max_tokens=6, ignore_eos=True)
            greedy = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
            n = 0
            for decodes, prompts in ((1, 0), (1, 2), (2, 2), (3, 1), (17, 3)):
                for _ in range(decodes):
                    engine.add_request(f"d{n}", list(range(1, 9 + n % 5)), sampled if n % 2 else greedy)
                    n += 1
                engine.step()
                engine.step()
                for _ in range(prompts):  # past the 128-token graphs: eager steps mixing prefill and decode
                    engine.add_request(f"p{n}", list(range(1, 140 + (7 * n) % 90)), sampled)  # < 256 positions
                    n += 1
                while engine.has_unfinished_requests():
                    engine.step()
        finally:
            triton.knobs.runtime.jit_post_compile_hook = old
    assert compiled == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model_kind", ["llama", "qwen3"])
@pytest.mark.parametrize("tp,sp", [(1, 2), (2, 2), (1, 4), (2, 4), (1, 8)])
def test_kv_cache_invariance_across_modes_on_gpus(hf_models, model_kind, tp, sp):
    """Prefilled in one mode, decoded in the other (the mode changes after the first step), over NCCL and
    CUDA graphs: the tokens pass the bf16 rule against HF in float32, both ways round."""
    path = hf_models[model_kind]
    with _gpu_llm(path, tp, sp, enable_prefix_caching=False) as llm:
        for first, then in (("sp", "tp"), ("tp", "sp")):
            tokens, modes = run_with_modes(llm, PROMPTS, first, then)
            assert modes[0] == first and set(modes[1:]) == {then}, modes
            assert check_against_hf_fp32(str(path), PROMPTS, tokens) >= len(PROMPTS) // 2
