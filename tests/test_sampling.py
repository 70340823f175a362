"""Sampling semantics on the tiny built-in model (single rank): seeds, top-k, stops, min_tokens, text."""

from __future__ import annotations

import pytest
import torch

from shifttune import LLM, SamplingParams
from shifttune.engine.sampler import Sampler
from shifttune.engine.sequence import Sequence


@pytest.fixture(scope="module")
def llm():
    with LLM("tiny") as llm:
        yield llm


def test_seeded_sampling_is_reproducible_and_seeds_differ(llm):
    prompt = "Hello"
    a = llm.generate([prompt], SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))
    b = llm.generate([prompt], SamplingParams(temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))
    c = llm.generate([prompt], SamplingParams(temperature=1.0, seed=8, max_tokens=12, ignore_eos=True))
    assert a[0].outputs[0].token_ids == b[0].outputs[0].token_ids
    assert a[0].outputs[0].token_ids != c[0].outputs[0].token_ids


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(["abc"], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    topk1 = llm.generate(["abc"], SamplingParams(temperature=1.5, top_k=1, seed=3, max_tokens=10, ignore_eos=True))
    assert greedy[0].outputs[0].token_ids == topk1[0].outputs[0].token_ids


def test_stop_token_ids_min_tokens_and_stop_strings(llm):
    free = llm.generate(["xyz"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    stop_tok = free.token_ids[3]
    first = free.token_ids.index(stop_tok)
    out = llm.generate(
        ["xyz"], SamplingParams(temperature=0, max_tokens=12, stop_token_ids=[stop_tok], ignore_eos=True)
    )
    c = out[0].outputs[0]
    assert c.finish_reason == "stop" and c.stop_reason == stop_tok and c.token_ids == free.token_ids[: first + 1]
    # min_tokens masks the stop token until that many tokens exist
    out = llm.generate(
        ["xyz"],
        SamplingParams(temperature=0, max_tokens=12, min_tokens=first + 2, stop_token_ids=[stop_tok], ignore_eos=True),
    )
    assert stop_tok not in out[0].outputs[0].token_ids[: first + 2]
    # a stop string cuts the text before it
    stop_text = free.text[2:4]
    c = llm.generate(["xyz"], SamplingParams(temperature=0, max_tokens=12, stop=stop_text, ignore_eos=True))[0].outputs[
        0
    ]
    assert c.finish_reason == "stop" and c.stop_reason == stop_text
    assert c.text == free.text[: free.text.find(stop_text)]


def test_text_matches_tokenizer_decode(llm):
    out = llm.generate(["The quick brown fox"], SamplingParams(temperature=0.8, seed=1, max_tokens=24, ignore_eos=True))
    c = out[0].outputs[0]
    assert c.text == llm.llm_engine.tokenizer.decode(c.token_ids, skip_special_tokens=True)
    assert len(c.token_ids) == 24 and c.finish_reason == "length"


def test_top_p_keeps_the_smallest_set_with_enough_mass():
    seqs = [Sequence("a", None, [1], SamplingParams(top_p=0.6)), Sequence("b", None, [1], SamplingParams(top_k=2))]
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    filtered = Sampler._filter(logits.clone(), seqs)
    assert torch.isfinite(filtered[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(filtered[1]).tolist() == [True, True, False, False]


def test_logprobs_are_raw_log_softmax(llm):
    out = llm.generate([[0, 9, 10]], SamplingParams(temperature=0, max_tokens=2, logprobs=3, ignore_eos=True))
    lp = out[0].outputs[0].logprobs
    assert len(lp) == 2 and all(len(d) == 3 for d in lp)  # the greedy token is in the top 3
    assert max(lp[0], key=lp[0].get) == out[0].outputs[0].token_ids[0]
    assert all(v <= 0 for d in lp for v in d.values())


def test_top_p_applies_after_top_k():
    """As HF's TopK -> TopP warpers: top-p mass is measured on the distribution renormalized by top-k."""
    seq = Sequence("a", None, [1], SamplingParams(top_k=2, top_p=0.6))
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]]))
    assert torch.isfinite(Sampler._filter(logits, [seq])[0]).tolist() == [True, False, False]


def test_a_bad_prompt_leaves_nothing_queued(llm):
    from shifttune.config import ConfigError

    with pytest.raises(ConfigError):
        llm.generate([[0, 5], [0, 10**9]], SamplingParams(max_tokens=2))
    assert not llm.llm_engine.has_unfinished_requests() and not llm.llm_engine.requests
    with pytest.raises(ConfigError, match="stop_token_ids: must be in"):
        llm.generate([[0, 5]], SamplingParams(stop_token_ids=[10**6]))
