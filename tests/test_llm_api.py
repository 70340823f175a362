"""The offline `LLM` / `SamplingParams` API: engines sharing a process, and input refused with a clear error."""

from __future__ import annotations

import re

import pytest
import torch.distributed as dist

from shifttune import LLM, SamplingParams
from shifttune.config import ConfigError

GREEDY = SamplingParams(max_tokens=4, temperature=0)


def _text(llm: LLM) -> str:
    return llm.generate(["Hello"], GREEDY)[0].outputs[0].text


def test_a_second_multi_rank_llm_is_refused_and_the_first_keeps_working():
    """Before: the second LLM failed in torch ("initialize the default process group twice") and broke the first."""
    a = LLM("tiny", tensor_parallel_size=2, device="cpu")
    try:
        before = _text(a)
        with pytest.raises(ConfigError, match="another LLM with 2 ranks is running in this process; call its shut"):
            LLM("tiny", sequence_parallel_size=2, device="cpu")
        assert _text(a) == before
    finally:
        a.shutdown()
    assert not dist.is_initialized()
    with LLM("tiny", tensor_parallel_size=2, device="cpu") as b:  # once the first is shut down
        assert _text(b) == before


def test_an_llm_nobody_holds_shuts_its_ranks_down():
    """`llm = LLM(...)` run again (a notebook cell): the first one, unreachable, kept its worker and the process group,
    so the second was refused until the process restarted."""
    import gc

    llm = LLM("tiny", sequence_parallel_size=2, device="cpu")
    before = _text(llm)
    (worker,) = llm.llm_engine.executor.procs
    del llm
    gc.collect()
    worker.join(30)
    assert not worker.is_alive() and worker.exitcode == 0 and not dist.is_initialized()
    with LLM("tiny", tensor_parallel_size=2, device="cpu") as b:
        assert _text(b) == before


def test_a_one_rank_llm_leaves_a_running_multi_rank_llm_alone():
    """Before: the one-rank engine's shutdown destroyed the process group of the TP = 2 engine beside it."""
    a = LLM("tiny", tensor_parallel_size=2, device="cpu")
    try:
        before = _text(a)
        with LLM("tiny", device="cpu") as b:
            assert _text(b) == before
        assert dist.is_initialized() and _text(a) == before
    finally:
        a.shutdown()
    assert not dist.is_initialized()


@pytest.fixture(scope="module")
def tiny():
    with LLM("tiny", device="cpu") as llm:
        yield llm


@pytest.mark.parametrize("prompts", [5, None, 2.5, b"Hello"], ids=["int", "none", "float", "bytes"])
def test_generate_names_what_prompts_may_be(tiny, prompts):
    """Before: generate(5) raised "TypeError: 'int' object is not subscriptable" from inside generate."""
    with pytest.raises(ConfigError, match=r"prompts: must be a string, a list of token ids, .* or a list of these"):
        tiny.generate(prompts, GREEDY)


def test_generate_takes_prompts_in_every_documented_shape(tiny):
    ids = tiny.get_tokenizer().encode("Hello")
    want = _text(tiny)
    shapes = [
        "Hello",
        ids,
        tuple(ids),
        {"prompt": "Hello"},
        {"prompt_token_ids": ids},
        ["Hello"],
        [ids],
        (p for p in [ids]),
    ]
    assert [tiny.generate(p, GREEDY)[0].outputs[0].text for p in shapes] == [want] * len(shapes)
    assert tiny.generate([], GREEDY) == []


def test_params_changed_after_construction_are_checked_by_generate(tiny):
    """Before: `sp.temperature = -1` after construction ran as if nothing were wrong."""
    sp = SamplingParams(max_tokens=4)
    sp.temperature = -1
    with pytest.raises(ConfigError, match="temperature: must be a finite number >= 0, got -1"):
        tiny.generate("Hello", sp)
    sp.temperature, sp.top_k = 0, 0  # valid again: normalized as on construction
    assert tiny.generate("Hello", sp)[0].outputs[0].text == _text(tiny) and sp.top_k == -1
    assert not tiny.llm_engine.has_unfinished_requests()


def test_n_is_accepted_as_1_and_refused_otherwise():
    """vLLM's `n`: before, SamplingParams(n=1) raised "unexpected keyword argument 'n'"."""
    assert SamplingParams(n=1).n == 1 and SamplingParams().n == 1
    for n in (2, 0, 1.0, True):
        with pytest.raises(ConfigError, match=f"n: must be 1 \\(one completion per prompt\\), got {n!r}"):
            SamplingParams(n=n)
    sp = SamplingParams()
    sp.n = 3
    with pytest.raises(ConfigError, match="n: must be 1"):
        sp.validate()


def test_the_server_still_builds_its_sampling_params():
    from shifttune.server.protocol import CompletionRequest
    from shifttune.server.serving import APIError, sampling_params

    sp = sampling_params(CompletionRequest(prompt="Hi", n=1, temperature=0), 8, None)
    assert (sp.n, sp.temperature, sp.max_tokens) == (1, 0.0, 8)
    with pytest.raises(APIError, match="n must be 1"):
        sampling_params(CompletionRequest(prompt="Hi", n=2), 8, None)


@pytest.mark.parametrize("name", ["tensor_parallel_size", "sequence_parallel_size"])
@pytest.mark.parametrize("value", [-1, 0, 1.5])
def test_a_bad_parallel_size_names_its_argument(name, value):
    """Before: sequence_parallel_size=-1 was reported under tensor_parallel_size."""
    with pytest.raises(ConfigError, match=rf"^{name}: must be an integer( >= 1)?, got {re.escape(repr(value))}$"):
        LLM("tiny", device="cpu", **{name: value})


@pytest.mark.parametrize("messages", [5, None, [], ["hi"], [[]], [{"role": "user", "content": "a"}, ["x"]]])
def test_chat_names_what_messages_may_be(tiny, messages):
    with pytest.raises(ConfigError, match=r"messages: must be a conversation"):
        tiny.chat(messages)


def test_which_prompt_of_several_is_too_long_is_named(tiny):
    with pytest.raises(ConfigError, match=r"prompts\[1\]: has \d+ tokens but the model context"):
        tiny.generate(["Hello", [5] * 5000], GREEDY)
    with pytest.raises(ConfigError, match=r"^prompt: has \d+ tokens"):
        tiny.generate([5] * 5000, GREEDY)


def test_stop_strings_need_a_tokenizer(tmp_path):
    """A model without a tokenizer has no text to match: stop strings could never fire, and said nothing."""
    import shutil

    from shifttune.config import BUNDLED_CONFIG_DIR

    for f in ("config.json", "model.safetensors"):
        shutil.copy(BUNDLED_CONFIG_DIR / "tiny" / f, tmp_path / f)
    with LLM(str(tmp_path), device="cpu") as llm:
        assert llm.get_tokenizer() is None
        with pytest.raises(ConfigError, match="stop: stop strings are matched on text"):
            llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, stop=["a"]))
        (out,) = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, ignore_eos=True))
        assert len(out.outputs[0].token_ids) == 4


def test_chat_as_vllms_takes_text_parts_and_template_variables_and_shows_the_prompt(tiny):
    """Text parts reached the template as a Python list (the model read its repr); chat_template_kwargs (Qwen3's
    enable_thinking) was refused; outputs had prompt None; a 4th positional argument (vLLM's lora_request) was taken
    for add_generation_prompt."""
    tok = tiny.get_tokenizer()
    params = SamplingParams(max_tokens=2, temperature=0)
    parts = [{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]
    (out,) = tiny.chat(parts, params)
    assert out.prompt == "<|user|>hi there\n<|assistant|>" and out.prompt_token_ids == tok.encode(
        out.prompt, add_special_tokens=False
    )
    with pytest.raises(ConfigError, match=r"messages\[0\].content\[0\] is a 'image_url' part"):
        tiny.chat([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], params)
    template = tok.chat_template
    tok.chat_template = "{% if loud %}LOUD {% endif %}" + template
    try:
        (loud,) = tiny.chat(parts, params, chat_template_kwargs={"loud": True})
        assert loud.prompt.startswith("LOUD <|user|>hi there")
    finally:
        tok.chat_template = template
    with pytest.raises(TypeError):
        tiny.chat(parts, params, False, None)


def test_vllms_arguments_at_values_that_change_nothing_are_taken_and_others_refused_by_name():
    """`LLM(trust_remote_code=True)` and `SamplingParams(repetition_penalty=1.0)` were TypeErrors naming
    EngineConfig; a wrong type failed inside a worker or passed (enable_prefix_caching="no" turned caching on)."""
    ok = SamplingParams(presence_penalty=0.0, frequency_penalty=0, repetition_penalty=1.0, skip_special_tokens=True,
                        detokenize=True, prompt_logprobs=None, include_stop_str_in_output=False)  # fmt: skip
    assert ok.repetition_penalty == 1.0
    for name, value in [("repetition_penalty", 1.2), ("presence_penalty", 0.5), ("skip_special_tokens", False),
                        ("prompt_logprobs", 1), ("include_stop_str_in_output", True)]:  # fmt: skip
        with pytest.raises(ConfigError, match=rf"^{name}: is not supported by this engine"):
            SamplingParams(**{name: value})
    for kwargs, says in [({"trust_remote_code": "yes"}, "trust_remote_code: is not supported"),
                         ({"tokenizer": "gpt2"}, "tokenizer: a tokenizer apart from the model's"),
                         ({"swap_space": 4}, "swap_space: is not an argument of LLM"),
                         ({"max_model_len": 2.5}, "max_model_len: must be an integer or None, got 2.5"),
                         ({"max_num_seqs": "8"}, "max_num_seqs: must be an integer, got '8'"),
                         ({"enable_prefix_caching": "no"}, "enable_prefix_caching: must be true or")]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(says)):
            LLM("tiny", device="cpu", **kwargs)
    with LLM("tiny", trust_remote_code=True, tokenizer="tiny", seed=None, disable_log_stats=True) as llm:
        assert llm.llm_engine.config.device == "cpu"  # "auto": no GPU here
        assert isinstance(llm.llm_engine.config.seed, int)  # None: one drawn, and recorded
        assert llm.generate("Hello", SamplingParams(max_tokens=2, temperature=0))[0].outputs[0].token_ids


def test_logprobs_read_as_vllms_logprob_objects_and_as_floats(tiny):
    """vLLM's `lp[token].logprob` raised AttributeError ('float' object has no attribute 'logprob'); ranks and
    decoded tokens were not there at all."""
    import pickle

    from shifttune import Logprob

    params = SamplingParams(max_tokens=6, temperature=0.9, seed=5, logprobs=3, ignore_eos=True)
    (out,) = tiny.generate("Hello", params)
    c, tok = out.outputs[0], tiny.get_tokenizer()
    for token, entry in zip(c.token_ids, c.logprobs):
        chosen = entry[token]
        assert (
            isinstance(chosen, Logprob)
            and chosen.logprob == float(chosen)
            and chosen.decoded_token == tok.decode([token])
        )
        top = sorted((lp for t, lp in entry.items() if lp.rank is not None and lp.rank <= 3), key=lambda lp: lp.rank)
        assert [lp.rank for lp in top][:3] == [1, 2, 3] and all(a >= b for a, b in zip(top, top[1:]))
        assert chosen.rank == 1 + sum(lp > chosen for lp in top) or chosen.rank > 3  # the top 3 above it, or past them
    assert c.cumulative_logprob == pytest.approx(sum(entry[t].logprob for t, entry in zip(c.token_ids, c.logprobs)))
    again = pickle.loads(pickle.dumps(c.logprobs))  # as the server's engine process sends them
    assert again == c.logprobs and again[0][c.token_ids[0]].rank == c.logprobs[0][c.token_ids[0]].rank
