"""Every layout x policy produces HF transformers' greedy tokens and prefill log-probs (fp32, CPU, gloo)."""

from __future__ import annotations

import pytest
import torch

from shifttune import LLM, SamplingParams
from conftest import LAYOUTS, MAX_TOKENS, PROMPTS, cpu_llm, hf_reference

# threshold 4: the batched prefill (> 4 tokens) runs in SP x TP mode, the 4-sequence decode steps in TP
POLICIES = [("tp", 256), ("sp", 256), ("threshold", 4)]


@pytest.mark.parametrize("model_kind", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("tp,sp", LAYOUTS)
def test_greedy_matches_hf(hf_models, model_kind, tp, sp):
    path = hf_models[model_kind]
    ref_tokens, ref_logprobs = hf_reference(path)
    vocab = len(ref_logprobs[0])
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=vocab)
    with cpu_llm(path, tp, sp, block_size=4) as llm:
        engine = llm.llm_engine
        for policy, threshold in POLICIES:
            engine.set_policy(policy, threshold)
            first = len(engine.stats.steps)
            outs = llm.generate(PROMPTS, params)
            modes = [s.mode for s in list(engine.stats.steps)[first:]]
            for out, tokens, lp in zip(outs, ref_tokens, ref_logprobs):
                assert out.outputs[0].token_ids == tokens, (policy, out.prompt_token_ids)
                got = torch.full((vocab,), float("-inf"))
                for tok, value in out.outputs[0].logprobs[0].items():
                    got[tok] = value
                torch.testing.assert_close(got, lp, atol=2e-5, rtol=1e-4)
            if sp == 1:
                assert set(modes) == {"tp"}
            elif policy == "threshold":
                assert modes[0] == "sp" and set(modes[1:]) == {"tp"}, modes
            else:
                assert set(modes) == {policy}


@pytest.mark.parametrize("model_kind", ["llama", "qwen3"])
def test_triton_attention_backend_matches_hf(hf_models, model_kind):
    """The engine with the Triton kernel (interpreted on CPU; one rank, where the interpreter runs in-process)."""
    path = hf_models[model_kind]
    ref_tokens, _ = hf_reference(path)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), attention_backend="triton", block_size=4, max_num_batched_tokens=16) as llm:
        outs = llm.generate(PROMPTS, params)
        assert [o.outputs[0].token_ids for o in outs] == ref_tokens


def test_bf16_on_cpu_follows_the_bf16_rule(hf_models):
    from conftest import check_against_hf_fp32

    path = hf_models["llama"]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), dtype="bfloat16", sequence_parallel_size=2, shift_threshold=4, block_size=4) as llm:
        outs = llm.generate(PROMPTS, params)
        assert {s.mode for s in llm.llm_engine.stats.steps} == {"tp", "sp"}
    exact = check_against_hf_fp32(str(path), PROMPTS, [o.outputs[0].token_ids for o in outs])
    assert exact >= len(PROMPTS) // 2


def test_padded_graph_buffers_give_the_same_tokens(hf_models):
    """The static, padded inputs CUDA graphs replay (padding sequence, scratch block, padded samples),
    run eagerly on CPU with the Triton kernel (interpreted): tokens must not change."""
    from shifttune.runner.cuda_graphs import StepGraphs

    path = hf_models["qwen3"]
    ref_tokens, _ = hf_reference(path)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(
        str(path),
        attention_backend="triton",
        block_size=4,
        max_num_seqs=8,
        max_num_batched_tokens=64,
        cuda_graph_max_tokens=64,
    ) as llm:
        runner = llm.llm_engine.executor.runner
        runner.graphs = StepGraphs(runner, capture=False)
        outs = llm.generate(PROMPTS, params)
        assert runner.graphs.num_replays == len(llm.llm_engine.stats.steps)  # every step took the padded path
        assert [o.outputs[0].token_ids for o in outs] == ref_tokens
        # fewer sequences than the last step: rows that held real sequences must go back to scratch
        again = llm.generate(PROMPTS[2:0:-1], params)
        assert [o.outputs[0].token_ids for o in again] == ref_tokens[2:0:-1]


def test_chunk_split_graphs_give_the_same_tokens(hf_models, monkeypatch):
    """CHUNK_SPLIT_GRAPHS: prefill chunks of one or two sequences in buckets past the sequence limit run the
    graph split for one sequence's chunk (eagerly here, the Triton kernel interpreted), a 150-token prompt's later
    64-token chunks over several 64-key tiles, so that more than one split holds keys: tokens must not change."""
    from shifttune.kernels import split_kv
    from shifttune.runner import cuda_graphs

    monkeypatch.setattr(split_kv, "CHUNK_SPLIT_GRAPHS", True)
    path = hf_models["qwen3"]
    prompts = [*PROMPTS[:2], [1, *range(100, 249)]]  # the last: 150 tokens
    ref_tokens, _ = hf_reference(path, prompts)
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    with LLM(str(path), attention_backend="triton", block_size=4, max_num_seqs=2, max_num_batched_tokens=64,
             cuda_graph_max_tokens=64) as llm:  # fmt: skip
        runner = llm.llm_engine.executor.runner
        graphs = runner.graphs = cuda_graphs.StepGraphs(runner, capture=False)
        assert graphs.split_plan, "no chunk bucket got a split graph"
        runs = []  # (split graph, longest sequence of the step in keys)
        forward = graphs._forward

        def logged(mode, b, split=False):
            runs.append((split, int(graphs.seq_lens[: graphs.seqs_for(b)].max())))
            return forward(mode, b, split)

        monkeypatch.setattr(graphs, "_forward", logged)
        outs = llm.generate(prompts, params)
        assert [o.outputs[0].token_ids for o in outs] == ref_tokens
        assert any(split and keys > 64 for split, keys in runs), runs  # chunks split over several tiles
        assert any(not split for split, _ in runs), runs  # decodes: the bucket's own graph
