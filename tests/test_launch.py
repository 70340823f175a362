"""Launch paths and layouts: torchrun (env:// rendezvous), dummy weights, bundled configs, memory report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.config import ConfigError, ModelConfig, ParallelConfig, load_model_config, resolve_model_path
from shifttune.model.layout import make_layout
from shifttune.parallel.state import Group, ParallelState

GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


def test_torchrun_matches_single_rank(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
        import json, sys
        from shifttune import LLM, SamplingParams
        llm = LLM("tiny", tensor_parallel_size=1, sequence_parallel_size=2, shift_threshold=3)
        outs = llm.generate([[0, 5, 6, 7, 8], [0, 9]], SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        modes = sorted({{s.mode for s in llm.llm_engine.stats.steps}})
        llm.shutdown()
        out = {{"tokens": [o.outputs[0].token_ids for o in outs], "modes": modes}}
        json.dump(out, open({str(tmp_path / "out.json")!r}, "w"))
    """)
    )
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29533", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "out.json").read_text())
    with LLM("tiny") as llm:
        ref = [o.outputs[0].token_ids for o in llm.generate([[0, 5, 6, 7, 8], [0, 9]], GREEDY)]
    assert result["tokens"] == ref
    assert result["modes"] == ["sp", "tp"]


def test_dummy_weights_run_without_a_checkpoint(hf_models):
    with LLM(str(hf_models["qwen3"]), load_format="dummy", tensor_parallel_size=2) as llm:
        out = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, logprobs=1))
        c = out[0].outputs[0]
        assert len(c.token_ids) == 4 and all(torch.isfinite(torch.tensor(list(d.values()))).all() for d in c.logprobs)
        # random weights: the embedding is not the checkpoint's
        emb = llm.llm_engine.executor.runner.models["tp"].embed_tokens.weight
        assert emb.abs().max() > 0 and emb.std().item() == pytest.approx(0.02, rel=0.2)


def test_memory_report_per_rank():
    with LLM("tiny", tensor_parallel_size=2, sequence_parallel_size=2) as llm:
        w = llm.llm_engine.stats.weight_bytes_per_rank
        cfg = llm.llm_engine.config.model_config
        h, d, i, v = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size, cfg.vocab_size

        def expected(shards: int, kv_heads: int) -> int:  # fp32 bytes of one rank's slice
            attn = h * (cfg.num_heads // shards) * d * 2 + 2 * h * kv_heads * d
            layer = attn + 3 * h * i // shards + 2 * h
            return 4 * (cfg.num_layers * layer + 2 * (v // shards) * h + h)

        # SP mode: W/TP; TP mode: W/P, except that the 2 KV heads are replicated to one per rank on 4 ranks
        assert w["sp"] == expected(2, 1)
        assert w["tp"] == expected(4, 1)
        assert llm.llm_engine.stats.kv_cache_bytes_per_rank > 0


@pytest.mark.parametrize(
    "name, billions",
    [
        ("llama-3.1-8b", 8.03),
        ("llama-3.3-70b", 70.55),
        ("qwen3-8b", 8.19),
        ("qwen3-32b", 32.76),
        ("qwen2.5-7b", 7.62),
        ("mistral-7b-v0.3", 7.25),
    ],
)
def test_bundled_configs(name, billions):
    cfg, _ = load_model_config(resolve_model_path(name))
    assert cfg.num_params / 1e9 == pytest.approx(billions, abs=0.01)
    for tp, sp in [(4, 1), (2, 2), (1, 4), (4, 2)]:
        if cfg.num_heads % (tp * sp):  # Qwen2.5-7B: 28 heads do not split 8 ways
            with pytest.raises(ConfigError, match="do not divide"):
                ParallelConfig(tp, sp).validate(cfg)
        else:
            ParallelConfig(tp, sp).validate(cfg)


def _state(par: ParallelConfig, rank: int) -> ParallelState:
    g = Group(list(range(par.world_size)), rank, None)
    tp = Group([par.sp_index(rank) * par.tp + t for t in range(par.tp)], par.tp_index(rank), None)
    sp = Group([s * par.tp + par.tp_index(rank) for s in range(par.sp)], par.sp_index(rank), None)
    return ParallelState(rank, par, tp, sp, g, None)


@pytest.mark.parametrize("heads, kv", [(64, 8), (32, 8), (8, 2), (16, 16), (8, 1)])
@pytest.mark.parametrize("tp, sp", [(1, 2), (2, 2), (4, 2), (2, 4), (1, 8), (8, 1)])
def test_both_layouts_give_each_rank_the_same_heads(heads, kv, tp, sp):
    """After the Ulysses all-to-all, rank (s, t) holds query block t*SP + s and the KV heads it needs;
    the shift layout must give it exactly those (the KV-cache invariance), for every GQA ratio."""
    par = ParallelConfig(tp, sp)
    cfg = ModelConfig.from_dict(
        {
            "architectures": ["LlamaForCausalLM"],
            "hidden_size": heads * 16,
            "num_hidden_layers": 1,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "intermediate_size": 64,
            "vocab_size": 100,
        }
    )
    if heads % par.world_size or (kv % par.world_size and par.world_size % kv):
        pytest.skip("layout refused by validation")
    per = heads // par.world_size
    for rank in range(par.world_size):
        base, shift = make_layout("sp", cfg, _state(par, rank)), make_layout("tp", cfg, _state(par, rank))
        s = par.sp_index(rank)
        received_q = list(base.q_heads)[s * per : (s + 1) * per]  # sub-block s of the TP shard
        assert received_q == list(shift.q_heads)
        k_per = len(base.kv_send_index) // sp
        received_kv = [base.kv_heads[i] for i in base.kv_send_index[s * k_per : (s + 1) * k_per]]
        assert received_kv == shift.kv_heads == shift.cache_kv_heads
        group = heads // kv
        assert all(h // group in received_kv for h in received_q)  # every query head has its KV head


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                fields = open(f"/proc/{stat}/stat").read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(stat))
    return out


def test_ctrl_c_stops_every_rank_cleanly():
    import signal
    import time

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shifttune.cli",
            "generate",
            "--sp",
            "2",
            "--tp",
            "2",
            "--max-tokens",
            "1500",
            "--ignore-eos",
            "--threshold",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + 120
    workers: list[int] = []
    while time.time() < deadline and len(workers) < 3:  # 3 spawned ranks (plus maybe a resource tracker)
        workers = [c for c in _children(proc.pid) if "spawn_main" in open(f"/proc/{c}/cmdline").read()]
        time.sleep(0.5)
    assert len(workers) == 3
    time.sleep(8)  # let it start generating
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "interrupted" in out and "Traceback" not in out
    time.sleep(1)
    assert not [
        w for w in workers if os.path.exists(f"/proc/{w}") and "Z" not in open(f"/proc/{w}/stat").read().split()[2]
    ]


def test_a_group_sends_the_all_reduces_that_fit_its_one_shot_buffer_there(monkeypatch):
    """Group.all_reduce: through the one-shot path when the tensor fits its buffer (a new tensor), else in place
    through torch.distributed; a group of one rank returns its input."""
    import torch.distributed as dist

    class OneShot:
        calls = 0

        def fits(self, x):
            return x.numel() <= 8

        def __call__(self, x):
            OneShot.calls += 1
            return x * 2

    seen = []
    monkeypatch.setattr(dist, "all_reduce", lambda x, group: seen.append(group) or x.mul_(3))
    handle = object()
    group = Group([0, 1], 0, handle, OneShot())
    small, big = torch.ones(8), torch.ones(9)
    assert torch.equal(group.all_reduce(small), torch.full((8,), 2.0)) and torch.equal(small, torch.ones(8))
    out = group.all_reduce(big)
    assert out is big and torch.equal(big, torch.full((9,), 3.0)) and seen == [handle] and OneShot.calls == 1
    assert Group([0], 0, None, OneShot()).all_reduce(small) is small


def test_a_second_symmetric_memory_engine_in_one_process_is_refused_before_workers_start(monkeypatch):
    """Torch numbers symmetric-memory exchanges per process: the driver of a second symm_mem engine would wait
    forever for fresh workers, so the executor refuses at once (no worker is spawned)."""
    import shifttune.parallel.state as state
    from shifttune.config import EngineConfig
    from shifttune.runner.executor import Executor

    config = EngineConfig(model="tiny", tensor_parallel_size=2)
    config.all_reduce = "symm_mem"  # as on a GPU host (validate refuses it on CPU)
    monkeypatch.setattr(state, "_rendezvous_done", 1)
    spawned = []
    monkeypatch.setattr("multiprocessing.context.SpawnProcess.start", lambda self: spawned.append(self))
    with pytest.raises(ConfigError, match="start this engine in a new process"):
        Executor(config)
    assert spawned == []
