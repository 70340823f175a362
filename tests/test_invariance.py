"""KV-cache invariance: a sequence prefilled in one mode and decoded in the other gives single-rank tokens."""

from __future__ import annotations

import pytest

from shifttune import LLM, SamplingParams
from conftest import LAYOUTS, MAX_TOKENS, PROMPTS, cpu_llm, hf_reference


def run_with_modes(llm: LLM, prompts, first: str, then: str):
    """Runs the first step in mode `first` and every later step in mode `then`; returns outputs, modes."""
    engine = llm.llm_engine
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
    ids = [engine.add_request(None, p, params) for p in prompts]
    engine.set_policy(first)
    done, before = {}, engine.stats.num_steps
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        engine.set_policy(then)  # from the second step on (a step's mode is chosen when it is launched)
    steps = list(engine.stats.steps)
    return [done[i] for i in ids], [s.mode for s in steps[len(steps) - (engine.stats.num_steps - before) :]]


@pytest.mark.parametrize("model_kind", ["llama", "qwen3"])
@pytest.mark.parametrize("tp,sp", [(tp, sp) for tp, sp in LAYOUTS if sp > 1])  # the layouts with two modes
def test_prefill_in_one_mode_decode_in_the_other(hf_models, model_kind, tp, sp):
    path = hf_models[model_kind]
    ref, _ = hf_reference(path)
    with cpu_llm(
        path,
        tp,
        sp,
        block_size=4,
        enable_prefix_caching=False,
        async_scheduling=True,  # a step's mode is chosen at launch, before the step before it is read back
    ) as llm:
        for first, then in (("sp", "tp"), ("tp", "sp")):
            tokens, modes = run_with_modes(llm, PROMPTS, first, then)
            assert modes[0] == first and set(modes[1:]) == {then}, modes  # the mode really changed
            assert tokens == ref
