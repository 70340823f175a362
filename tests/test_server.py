"""`shifttune serve` on CPU ranks, started as a user starts it (a subprocess), queried over 127.0.0.1 only.

The official `openai` client for completions and chat, streaming and not; 64 concurrent streams against
offline generation; bad requests (hand-picked and fuzzed) never get a 5xx nor stop the engine; a soak
with clients that leave mid-stream ends with an empty KV cache; the API key; the queue limit; Ctrl-C,
a dead worker and startup errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import openai
import pytest

from shifttune import LLM, SamplingParams

SERVE = [sys.executable, "-m", "shifttune.cli", "serve"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(*args: str, ready_timeout: float = 120):
    """A `shifttune serve` subprocess on a free port; yields (base_url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [*SERVE, *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + ready_timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{proc.stdout.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("server did not become healthy")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def metric(url: str, name: str, default: float | None = None) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = [
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if re.match(rf"{re.escape(name)}[{{ ,}}]", line)
    ]
    if not values and default is not None:  # a labelled series that has not been counted yet
        return default
    assert values, f"{name} not in /metrics"
    return sum(values)


def wait_until_idle(url: str, timeout_s: float) -> None:
    """Until /metrics shows no running request and no KV block in use, or `timeout_s` passes (the caller asserts)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline and (metric(url, "vllm:num_requests_running") or
                                      metric(url, "shifttune:kv_blocks_used")):  # fmt: skip
        time.sleep(0.2)


@pytest.fixture(scope="module")
def tiny_server():
    with server("tiny", "--device", "cpu", "--sequence-parallel-size", "2", "--shift-threshold", "16") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(tiny_server):
    return openai.OpenAI(base_url=f"{tiny_server}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def offline():
    with LLM("tiny") as llm:
        yield llm


GREEDY = dict(temperature=0, max_tokens=12, extra_body={"ignore_eos": True})


def test_completions_with_the_openai_client(client, offline):
    ref = offline.generate(["Hello there"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0]
    out = client.completions.create(model="tiny", prompt="Hello there", **GREEDY)
    assert out.choices[0].text == ref.outputs[0].text and out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (len(ref.prompt_token_ids), 12)
    assert out.usage.total_tokens == out.usage.prompt_tokens + 12
    stream = client.completions.create(
        model="tiny", prompt="Hello there", stream=True, stream_options={"include_usage": True}, **GREEDY
    )
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.outputs[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    batch = client.completions.create(model="tiny", prompt=["Hello there", "abc"], **GREEDY)
    assert [c.index for c in batch.choices] == [0, 1] and batch.usage.completion_tokens == 24


def test_chat_with_the_openai_client(client, offline):
    tok = offline.llm_engine.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    ids = tok.encode(text, add_special_tokens=False)
    ref = offline.generate([ids], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    messages = [{"role": "user", "content": "hi"}]
    out = client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
    assert out.choices[0].message.content == ref.text and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens == 12
    chunks = list(
        client.chat.completions.create(
            model="tiny", messages=messages, stream=True, stream_options={"include_usage": True}, **GREEDY
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == 12


def test_stop_strings_are_honoured_streaming_or_not(client, offline):
    free = offline.generate(["xyz"], SamplingParams(temperature=0, max_tokens=16, ignore_eos=True))[0].outputs[0]
    stop = free.text[4:6]
    expected = free.text[: free.text.find(stop)]
    out = client.completions.create(model="tiny", prompt="xyz", stop=stop, **GREEDY | {"max_tokens": 16})
    assert out.choices[0].text == expected and out.choices[0].finish_reason == "stop"
    chunks = list(client.completions.create(model="tiny", prompt="xyz", stop=[stop], stream=True,
                                            **GREEDY | {"max_tokens": 16}))  # fmt: skip
    assert "".join(c.choices[0].text for c in chunks) == expected  # never a piece of the stop string
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_logprobs(client):
    out = client.completions.create(model="tiny", prompt="abc", logprobs=2, **GREEDY | {"max_tokens": 3})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and all(v <= 0 for v in lp.token_logprobs)
    assert all(max(top.values()) == pytest.approx(v) for top, v in zip(lp.top_logprobs, lp.token_logprobs))
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "a"}], logprobs=True,
                                          top_logprobs=2, **GREEDY | {"max_tokens": 3})  # fmt: skip
    content = chat.choices[0].logprobs.content
    assert len(content) == 3 and all(len(c.top_logprobs) == 2 for c in content)
    # streamed, each chunk's text_offset continues the whole response's (a chunk may hold back a piece of text)
    body = {"prompt": "a", "max_tokens": 8, "logprobs": 1, "temperature": 0, "ignore_eos": True}
    whole = httpx.post(f"{client.base_url}completions", json=body, timeout=60).json()["choices"][0]["logprobs"]
    offsets, tokens = [], []
    with httpx.stream("POST", f"{client.base_url}completions", json=body | {"stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                lp = json.loads(line[6:])["choices"][0]["logprobs"]
                offsets += lp["text_offset"]
                tokens += lp["tokens"]
    assert (offsets, tokens) == (whole["text_offset"], whole["tokens"]) and len(offsets) == 8


def test_completion_text_offsets_count_the_text_each_token_returned(tiny_server):
    """text_offset[i] is the length of the text returned before token i: a special token that adds no text (the
    tiny model's greedy first token after "Hello" is <|bos|>) does not move the next one (it used to: [0, 7])."""
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0, "logprobs": 0, "ignore_eos": True}
    whole = httpx.post(f"{tiny_server}/v1/completions", json=body, timeout=60).json()["choices"][0]
    lp = whole["logprobs"]
    assert lp["tokens"][:2] == ["<|bos|>", "B"] and whole["text"].startswith("B")
    assert lp["text_offset"][:2] == [0, 0] and lp["text_offset"] == sorted(lp["text_offset"])
    assert all(o <= len(whole["text"]) for o in lp["text_offset"])
    text, offsets = "", []
    with httpx.stream("POST", f"{tiny_server}/v1/completions", json=body | {"stream": True}, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                choice = json.loads(line[6:])["choices"][0]
                assert choice["logprobs"]["text_offset"] == [len(text)] * len(choice["logprobs"]["tokens"])
                offsets += choice["logprobs"]["text_offset"]
                text += choice["text"]
    assert (text, offsets) == (whole["text"], lp["text_offset"])


def test_completion_top_logprobs_are_best_first_and_bounded(tiny_server):
    body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=tiny_server, timeout=60) as c:
        lp = c.post("/v1/completions", json=body | {"logprobs": 3}).json()["choices"][0]["logprobs"]
        assert [list(top.values()) for top in lp["top_logprobs"]] == [
            sorted(top.values(), reverse=True) for top in lp["top_logprobs"]
        ]
        assert [next(iter(top)) for top in lp["top_logprobs"]] == lp["tokens"]  # greedy: the sampled one is first
        assert all(3 <= len(top) <= 4 for top in lp["top_logprobs"])
        for too_many in (21, 100, -1):
            r = c.post("/v1/completions", json=body | {"logprobs": too_many})
            assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs", r.text
        assert c.post("/v1/completions", json=body | {"logprobs": 20}).status_code == 200


def test_completion_top_logprobs_keep_the_likeliest_of_tokens_with_the_same_text():
    from shifttune.server.logprobs import completion_logprobs

    class Tokenizer:
        def decode(self, ids: list[int]) -> str:
            return {1: "a", 2: "\ufffd", 3: "\ufffd", 4: "b"}[ids[0]]

    lps = {1: -1.0, 2: -3.0, 3: -2.0, 4: -0.5}
    out = completion_logprobs(Tokenizer(), [1], [lps], [0])
    assert list(out.top_logprobs[0].items()) == [("b", -0.5), ("a", -1.0), ("\ufffd", -2.0)]
    assert (out.tokens, out.token_logprobs, out.text_offset) == (["a"], [-1.0], [0])


def test_64_concurrent_streams_match_offline_generation(tiny_server, offline):
    prompts = [[0] + [(7 * i + 3 * j) % 250 + 3 for j in range(1 + i % 9)] for i in range(64)]
    refs = offline.generate(prompts, SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))
    aclient = openai.AsyncOpenAI(base_url=f"{tiny_server}/v1", api_key="none", max_retries=0)

    async def one(prompt):
        stream = await aclient.completions.create(
            model="tiny", prompt=prompt, stream=True, **GREEDY | {"max_tokens": 10}
        )
        return "".join([c.choices[0].text async for c in stream])

    async def everything():
        return await asyncio.gather(*(one(p) for p in prompts))

    texts = asyncio.run(everything())
    assert texts == [r.outputs[0].text for r in refs]


BAD_REQUESTS = [
    ("/v1/completions", b"{bad json"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": -3}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "lots"}),
    ("/v1/completions", {"model": "nope", "prompt": "hi"}),
    ("/v1/completions", {"prompt": [1, 2, 10**6]}),
    ("/v1/completions", {"prompt": [5] * 5000}),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 10**6}),  # past the context: vLLM's 400, not a silent cut
    ("/v1/completions", {"prompt": "hi", "temperature": -1}),
    ("/v1/completions", {"prompt": "hi", "top_p": 2}),
    ("/v1/completions", {"prompt": "hi", "top_k": -7}),
    ("/v1/completions", {"prompt": "hi", "seed": -1}),
    ("/v1/completions", {"prompt": "hi", "n": 3}),
    ("/v1/completions", {"prompt": "hi", "stop": [""]}),
    ("/v1/completions", {"prompt": "hi", "min_tokens": 9, "max_tokens": 2}),
    ("/v1/completions", {"prompt": []}),
    ("/v1/completions", {}),
    ("/v1/completions", []),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}),
    ("/v1/chat/completions", {"messages": []}),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}),
    ("/v1/completions", b'{"prompt": "\\ud800", "max_tokens": 2}'),  # a lone surrogate: no UTF-8 for it
    ("/v1/completions", b'{"prompt": ["ok", "\\udfff"], "max_tokens": 2}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\ud800"}]}'),
]


@pytest.mark.parametrize("path, body", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_with_an_openai_error_body(tiny_server, path, body):
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(f"{tiny_server}{path}", headers={"content-type": "application/json"}, timeout=30, **kwargs)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert error["message"] and error["code"] == r.status_code


def test_refusals_name_the_field_and_unknown_routes_get_an_openai_error_body(tiny_server):
    with httpx.Client(base_url=tiny_server, timeout=30) as c:  # one keep-alive connection throughout
        for top in (-1, 21):
            body = {"messages": [{"role": "user", "content": "a"}], "logprobs": True, "top_logprobs": top}
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs", r.text
        r = c.post("/v1/completions", content=b'{"prompt": "\\ud800"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", r.text
        assert c.post("/v1/completions", json={"prompt": "ok", "max_tokens": 2}).status_code == 200
        for method, path, status in [("GET", "/v1/nothing", 404), ("GET", "/v1/completions", 405)]:
            r = c.request(method, path)
            assert r.status_code == status and r.json()["error"]["code"] == status, r.text


def test_fuzzed_requests_never_get_a_5xx_and_the_engine_keeps_serving(tiny_server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                        st.text(max_size=8))  # fmt: skip
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=12)
    fields = ["prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "n", "stop", "stream", "logprobs",
              "min_tokens", "stop_token_ids", "ignore_eos", "messages", "model", "stream_options"]  # fmt: skip
    bodies = st.dictionaries(st.sampled_from(fields), values, max_size=6)
    c = httpx.Client(base_url=tiny_server, timeout=60)

    @settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=bodies)
    def check(path, body):
        body = {"prompt": "hi", "max_tokens": 2} | body if path == "/v1/completions" else body
        r = c.post(path, content=json.dumps(body, allow_nan=True), headers={"content-type": "application/json"})
        assert r.status_code < 500, (body, r.status_code, r.text[:300])

    check()
    ok = c.post("/v1/completions", json={"prompt": "still there?", "max_tokens": 3})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_soak_with_clients_leaving_mid_stream_frees_every_kv_block(tiny_server):
    async def one(i: int, http: httpx.AsyncClient) -> str:
        body = {"prompt": [0] + [(i * 11 + j) % 250 + 3 for j in range(4 + i % 20)], "max_tokens": 24,
                "ignore_eos": True, "temperature": 0, "stream": True}  # fmt: skip
        leave = i % 5 == 0  # about 20% of the clients disconnect after their second chunk
        chunks = 0
        async with http.stream("POST", "/v1/completions", json=body) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    chunks += 1
                    if leave and chunks == 2:
                        return "left"
                if line == "data: [DONE]":
                    return "done"
        return "cut"

    async def soak() -> list[str]:
        limits = httpx.Limits(max_connections=48)
        async with httpx.AsyncClient(base_url=tiny_server, timeout=120, limits=limits) as http:
            return await asyncio.gather(*(one(i, http) for i in range(500)))

    results = asyncio.run(soak())
    assert results.count("left") == 100 and results.count("done") == 400
    wait_until_idle(tiny_server, 20)
    assert metric(tiny_server, "shifttune:kv_blocks_used") == 0
    assert metric(tiny_server, "vllm:kv_cache_usage_perc") == 0
    # (a client that left may still see its request finish before the abort reaches the engine)
    assert metric(tiny_server, 'vllm:request_success_total{finished_reason="abort"') >= 90


CHAT = {"messages": [{"role": "user", "content": "a"}], "max_tokens": 1}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    "field, value",
    [
        ("response_format", {"type": "json_object"}),
        ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}),
        ("tools", [TOOL]),
        ("tool_choice", "auto"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("functions", [TOOL["function"]]),
        ("function_call", "auto"),
        ("guided_json", {"type": "object"}),
        ("guided_regex", "[a-z]+"),
        ("guided_choice", ["yes", "no"]),
        ("guided_grammar", 'root ::= "x"'),
        ("structured_outputs", {"regex": "[a-z]+"}),
        # vLLM's other sampling extensions: they returned 200 and the output of a plain request
        ("repetition_penalty", 5.0),
        ("length_penalty", 2.0),
        ("use_beam_search", True),
        ("allowed_token_ids", [5, 6]),
        ("bad_words", ["a"]),
        ("logits_processors", ["x"]),
        ("include_stop_str_in_output", True),
        ("skip_special_tokens", False),
        ("spaces_between_special_tokens", False),
        ("truncate_prompt_tokens", 4),
        ("prompt_logprobs", 1),
        ("priority", 1),
    ],
)
def test_structured_output_and_tool_fields_are_refused_not_ignored(tiny_server, field, value):
    for path, body in [("/v1/chat/completions", CHAT), ("/v1/completions", {"prompt": "a", "max_tokens": 1})]:
        r = httpx.post(f"{tiny_server}{path}", json=body | {field: value}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == field and field in r.json()["error"]["message"]


def test_structured_output_and_tool_fields_at_their_neutral_value_are_accepted(tiny_server):
    neutral = {"response_format": {"type": "text"}, "tools": [], "tool_choice": "none", "functions": None,
               "function_call": None, "guided_json": None, "structured_outputs": None}  # fmt: skip
    r = httpx.post(f"{tiny_server}/v1/chat/completions", json=CHAT | neutral, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 1, r.text
    r = httpx.post(f"{tiny_server}/v1/chat/completions", json=CHAT | {"tools": None, "tool_choice": None}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    "field, value",
    [("echo", True), ("continue_final_message", True), ("chat_template", "{{ x }}"),
     ("documents", [{"text": "x"}])],
)  # fmt: skip
def test_chat_template_extensions_are_refused_not_ignored(tiny_server, field, value):
    r = httpx.post(f"{tiny_server}/v1/chat/completions", json=CHAT | {field: value}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text
    neutral = {
        "echo": False,
        "continue_final_message": False,
        "chat_template": None,
        "chat_template_kwargs": {"enable_thinking": False},
    }  # template variables are passed on (Qwen3's)
    assert httpx.post(f"{tiny_server}/v1/chat/completions", json=CHAT | neutral, timeout=30).status_code == 200


def test_null_means_the_default_for_openais_nullable_fields(tiny_server):
    """Clients that send unset fields as null got a 400 ("temperature: Input should be a valid number")."""
    nulls = dict.fromkeys(["temperature", "top_p", "n", "stream", "presence_penalty", "frequency_penalty", "top_k",
                           "min_p", "min_tokens", "ignore_eos", "stream_options", "seed", "stop"])  # fmt: skip
    body = {"prompt": "Hello", "max_tokens": 3, "temperature": 0}
    plain = httpx.post(f"{tiny_server}/v1/completions", json=body, timeout=30).json()
    r = httpx.post(f"{tiny_server}/v1/completions", json=nulls | {"echo": None, "logprobs": None} | body, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == plain["choices"][0]["text"], r.text
    r = httpx.post(f"{tiny_server}/v1/chat/completions", json=CHAT | nulls | {"logprobs": None}, timeout=30)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion", r.text
    body = {"prompt": [5] * 2040, "max_tokens": None, "ignore_eos": True}  # null max_tokens: up to the context
    r = httpx.post(f"{tiny_server}/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2048 - 2040, r.text


def test_chat_request_checks_name_what_the_client_sent(tiny_server):
    with httpx.Client(base_url=tiny_server, timeout=30) as c:
        # max_completion_tokens 0 was read as "not given": the request ran to the end of the context
        for body, param in [({"max_completion_tokens": 0}, "max_completion_tokens"),
                            ({"max_completion_tokens": -1, "max_tokens": 3}, "max_completion_tokens"),
                            ({"max_tokens": 0}, "max_tokens"),
                            ({"stream_options": {"include_usage": True}}, "stream_options")]:  # fmt: skip
            r = c.post("/v1/chat/completions", json={"messages": CHAT["messages"]} | body)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, (body, r.text)
        r = c.post("/v1/chat/completions", json={"messages": CHAT["messages"], "max_completion_tokens": 2,
                                                  "max_tokens": 5, "ignore_eos": True})  # fmt: skip
        assert r.json()["usage"]["completion_tokens"] == 2, r.text
        image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
        for messages, says in [([{"role": "user", "content": [{"type": "text", "text": "a"}, image]}],
                                "messages[0].content[1] is a 'image_url' part"),
                               ([{"role": "user", "content": "a"}, {"role": "assistant", "content": None}],
                                "messages[1].content is missing")]:  # fmt: skip
            error = c.post("/v1/chat/completions", json={"messages": messages}).json()["error"]
            assert error["param"] == "messages" and says in error["message"], error
        parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": parts}], "max_tokens": 1})
        assert r.status_code == 200, r.text
        assert (
            c.post("/v1/completions", json={"prompt": "a", "model": "nope"}).json()["error"]["type"] == "NotFoundError"
        )
        assert c.get("/v1/completions").json()["error"]["type"] == "MethodNotAllowedError"


def test_chat_refusals_name_messages_and_a_missing_body_names_the_required_field(tiny_server):
    with httpx.Client(base_url=tiny_server, timeout=30) as c:
        long = {"messages": [{"role": "user", "content": "a " * 3000}]}  # past the 2048-token context
        error = c.post("/v1/chat/completions", json=long).json()["error"]
        assert error["param"] == "messages" and error["message"].startswith("messages: has "), error
        for path, field in [("/v1/completions", "prompt"), ("/v1/chat/completions", "messages")]:
            for body in ({"content": b""}, {"content": b"", "headers": {"content-type": "application/json"}}):
                r = c.post(path, **body)
                error = r.json()["error"]
                assert r.status_code == 400 and error["param"] == field, r.text
                assert error["message"].startswith(f"{field}: Field required"), r.text
        error = c.post("/v1/completions", json={}).json()["error"]
        assert (error["param"], error["message"]) == ("prompt", "prompt: Field required")


def test_metrics_show_an_idle_engine_once_clients_leave(tiny_server):
    """Requests aborted between two steps leave the engine idle with no step to report it: the gauges still showed
    the last one running and its KV blocks held until another request ran."""
    aborted = 'vllm:request_success_total{finished_reason="abort"'
    before = metric(tiny_server, aborted, default=0)
    body = {"prompt": "Hello", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    for _ in range(3):
        with httpx.stream("POST", f"{tiny_server}/v1/completions", json=body, timeout=30) as r:
            next(line for line in r.iter_lines() if line.startswith("data: {"))
    wait_until_idle(tiny_server, 10)
    assert metric(tiny_server, "vllm:num_requests_running") == 0
    assert metric(tiny_server, "vllm:num_requests_waiting") == 0
    assert metric(tiny_server, "shifttune:kv_blocks_used") == 0
    assert metric(tiny_server, "vllm:kv_cache_usage_perc") == 0
    assert metric(tiny_server, aborted) == before + 3
    live = httpx.get(f"{tiny_server}/v1/shifttune/live", timeout=10).json()
    assert live["kv_blocks"][0] == 0 and live["num_steps"] == metric(tiny_server, "shifttune:steps_total")


def test_metrics_show_both_modes_and_the_policy(tiny_server):
    body = {"prompt": list(range(3, 43)), "max_tokens": 4, "ignore_eos": True}  # a 40-token prefill, then decode
    assert httpx.post(f"{tiny_server}/v1/completions", json=body, timeout=60).status_code == 200
    assert metric(tiny_server, 'shifttune:steps_total{mode="sp"') > 0  # prefill bursts above the threshold of 16
    assert metric(tiny_server, 'shifttune:steps_total{mode="tp"') > 0
    assert metric(tiny_server, "shifttune:shift_threshold") == 16
    assert metric(tiny_server, 'shifttune:shift_policy{policy="threshold"') == 1
    assert metric(tiny_server, "vllm:generation_tokens_total") > 0


def test_api_key_and_queue_limit():
    args = ("tiny", "--device", "cpu", "--api-key", "sekret", "--max-queue-len", "2", "--max-num-seqs", "1")
    with server(*args) as (url, proc):
        assert httpx.get(f"{url}/v1/models").status_code == 401
        # the key is checked before the body is read, as OpenAI and vLLM do (a bad body said 400 to anyone)
        r = httpx.post(f"{url}/v1/completions", content=b"{bad", headers={"content-type": "application/json"})
        assert r.status_code == 401 and r.json()["error"]["type"] == "AuthenticationError", r.text
        assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer wrong"}).status_code == 401
        auth = {"authorization": "Bearer sekret"}
        assert httpx.get(f"{url}/v1/models", headers=auth).json()["data"][0]["id"] == "tiny"
        assert httpx.get(f"{url}/health").status_code == 200  # health and metrics stay open
        # bench says why it gets no model list (it said "lists no model; name one with --model")
        from shifttune.bench.client import ServerError, list_models

        with pytest.raises(ServerError, match="wants an API key"):
            asyncio.run(list_models(url))
        with pytest.raises(ServerError, match="refused this --api-key"):
            asyncio.run(list_models(url, "wrong"))
        assert list(asyncio.run(list_models(url, "sekret"))) == ["tiny"]

        async def burst() -> list[httpx.Response]:
            body = {"prompt": "x", "max_tokens": 64, "ignore_eos": True}
            async with httpx.AsyncClient(base_url=url, headers=auth, timeout=120) as http:
                return await asyncio.gather(*(http.post("/v1/completions", json=body | {"stream": i % 2 == 1})
                                              for i in range(12)))  # fmt: skip

        responses = asyncio.run(burst())  # half of them streams: refused with a 503 too, not cut after a 200
        codes = [r.status_code for r in responses]
        assert set(codes) == {200, 503} and codes.count(503) >= 6 and 503 in codes[1::2]
        assert all("busy" in r.json()["error"]["message"] for r in responses if r.status_code == 503)
        assert all(r.text.endswith("data: [DONE]\n\n") for r in responses[1::2] if r.status_code == 200)
    assert "Traceback" not in proc.stdout.read()


def test_clients_that_leave_are_aborted_quietly_and_counted_once():
    """A client gone mid-request, streamed or not, aborts it: the tokens of a step already under way do not count as
    its first token again (they did: a TTFT of 0 and a live view that showed it running for good), and the log has
    no traceback (it had one for every non-streamed request whose client left)."""
    with server("tiny", "--device", "cpu") as (url, proc):
        body = {"prompt": "x", "max_tokens": 1500, "ignore_eos": True}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(30, read=1.0))
        with httpx.stream("POST", f"{url}/v1/completions", json=body | {"stream": True}, timeout=30) as r:
            next(line for line in r.iter_lines() if line.startswith("data: {"))
        aborted = 'vllm:request_success_total{finished_reason="abort"'
        deadline = time.time() + 20
        while time.time() < deadline and (metric(url, aborted) < 2 or metric(url, "vllm:num_requests_running")):
            time.sleep(0.2)
        time.sleep(1.0)  # any step under way when the clients left has reported by now
        assert metric(url, aborted) == 2 and metric(url, "vllm:time_to_first_token_seconds_count") == 2
        assert metric(url, "vllm:e2e_request_latency_seconds_count") == 0
        live = httpx.get(f"{url}/v1/shifttune/live", timeout=10).json()
        assert [r["state"] for r in live["requests"]] == ["abort", "abort"]
    assert "Traceback" not in proc.stdout.read()


def _signal_mid_stream(url: str, pid: int, sig: int) -> list[str]:
    """The SSE lines of a long stream during which process `pid` (the server, or one of its own) got `sig` (after
    the stream's third line)."""
    lines = []
    with httpx.stream("POST", f"{url}/v1/completions", json={"prompt": "x", "max_tokens": 1500,
                      "ignore_eos": True, "stream": True}, timeout=60) as r:  # fmt: skip
        for line in filter(None, r.iter_lines()):
            lines.append(line)
            if len(lines) == 3:
                os.kill(pid, sig)
    return lines


def test_ctrl_c_ends_streams_and_releases_the_port():
    with server("tiny", "--device", "cpu", "--tensor-parallel-size", "2") as (url, proc):
        port = int(url.rsplit(":", 1)[1])
        lines = _signal_mid_stream(url, proc.pid, signal.SIGINT)
        assert lines[-1] == "data: [DONE]" and '"finish_reason":"abort"' in lines[-2] and len(lines) < 100
        assert proc.wait(20) == 130  # 128 + SIGINT, as a shell reports a Ctrl-C
        assert "stopped by SIGINT; workers stopped" in proc.stdout.read()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a restarted server binds (TIME_WAIT aside)
        s.bind(("127.0.0.1", port))  # free again


def _spawned_children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid), "-f", "spawn_main"], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        return "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    except FileNotFoundError:
        return False


def test_sigterm_stops_the_server_gracefully_too():
    with server("tiny", "--device", "cpu", "--tensor-parallel-size", "2") as (url, proc):
        (core,) = _spawned_children(proc.pid)
        processes = [core, *_spawned_children(core)]  # the engine core and rank 1
        lines = _signal_mid_stream(url, proc.pid, signal.SIGTERM)
        assert lines[-1] == "data: [DONE]" and '"finish_reason":"abort"' in lines[-2]
        # uvicorn raised SIGTERM again once stopped, whose default action ended the process (-15) before the
        # server's cleanup (the terminal view, the port) ran; now the CLI gets there and reports it
        assert proc.wait(20) == 143
        out = proc.stdout.read()
        assert "stopped by SIGTERM; workers stopped" in out and "Traceback" not in out
    time.sleep(1)
    assert not [p for p in processes if _alive(p)]


def test_a_worker_dying_mid_stream_is_said_in_one_line_to_the_log_and_the_client():
    """The core printed gloo's traceback and sent its text ("pair.cc:537] Read error ... Connection reset by peer")
    to every client, with "(exit code 0)" of a core that had not died."""
    with server("tiny", "--device", "cpu", "--tensor-parallel-size", "2") as (url, proc):
        (core,) = _spawned_children(proc.pid)
        (rank1,) = _spawned_children(core)
        lines = _signal_mid_stream(url, rank1, signal.SIGKILL)
        assert proc.wait(20) == 1
        out = proc.stdout.read()
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert lines[-1] == "data: [DONE]" and "worker rank 1 exited (code -9)" in error["message"], lines[-3:]
    assert "Traceback" not in out and "pair.cc" not in out and "exit code 0" not in out, out


def test_a_dead_worker_ends_the_server_with_a_clear_message():
    with server("tiny", "--device", "cpu", "--tensor-parallel-size", "2") as (url, proc):
        (core,) = _spawned_children(proc.pid)  # the engine core process; rank 1 is its child
        workers = _spawned_children(core)
        assert workers
        started = time.time()
        os.kill(workers[0], signal.SIGKILL)
        code = proc.wait(15)
        assert time.time() - started < 10 and code != 0
        out = proc.stdout.read()
        assert "worker rank 1 exited" in out and "Traceback" not in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["no-such-model", "--device", "cpu"], "is not a local directory nor a bundled model"),
        (["tiny", "--device", "cpu", "--tensor-parallel-size", "3"], "heads do not divide by SP x TP = 3"),
        (["tiny", "--device", "cpu", "--shift-policy", "fast"], "--shift-policy: must be one of"),
    ],
)
def test_startup_errors_are_one_line(args, message):
    proc = subprocess.run([*SERVE, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout


def test_a_port_in_use_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([*SERVE, "tiny", "--device", "cpu", "--port", str(port)], capture_output=True,
                              text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and f"--port: cannot listen on 127.0.0.1:{port}" in proc.stderr
    # an address this machine does not have is the host's fault, not the port's (it said --port)
    proc = subprocess.run([*SERVE, "tiny", "--device", "cpu", "--host", "999.1.1.1"], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--host: cannot listen on 999.1.1.1:8000" in proc.stderr, proc.stderr


def test_bench_against_the_cpu_server_writes_a_valid_report(tiny_server, tmp_path):
    from typer.testing import CliRunner

    from shifttune.cli import app

    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    result = CliRunner().invoke(app, ["bench", "--base-url", tiny_server, "--rates", "20,inf", "--num-prompts", "24",
                                      "--input-len", "16:48", "--output-len", "8", "--slo-ttft", "60000",
                                      "--slo-tpot", "60000", "--out", str(out), "--plot", str(plot)])  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(out.read_text())["results"]
    assert [r["request_rate"] for r in runs] == [20.0, "inf"]
    for r in runs:
        assert r["completed"] == 24 and r["failed"] == 0 and r["model_id"] == "tiny"
        assert r["total_output_tokens"] == 24 * 8  # ignore_eos honoured: exact lengths
        assert all(16 <= n <= 48 for n in r["input_lens"]) and r["total_input_tokens"] == sum(r["input_lens"])
        assert 0 < r["median_ttft_ms"] <= r["p99_ttft_ms"] and r["mean_tpot_ms"] > 0
        assert r["request_goodput"] == pytest.approx(r["request_throughput"])
        assert r["output_throughput"] == pytest.approx(r["total_output_tokens"] / r["duration"])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_compare_runs_tp_sp_and_shift_on_cpu_ranks(tmp_path):
    from typer.testing import CliRunner

    from shifttune.cli import app

    out = tmp_path / "compare.json"
    result = CliRunner().invoke(app, ["bench", "--compare", "tp,sp,shift", "--model", "tiny", "--sp", "2", "--tp", "1",
                                      "--device", "cpu", "--threshold", "32", "--num-prompts", "16", "--input-len",
                                      "64", "--output-len", "8", "--rate", "inf", "--out", str(out),
                                      "--startup-timeout", "120"])  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(out.read_text())["results"]
    assert [r["mode"] for r in runs] == ["tp", "sp", "shift"]
    assert all(r["completed"] == 16 and r["total_output_tokens"] == 16 * 8 for r in runs)
    assert "TTFT" in result.output and "shift" in result.output


def test_openapi_describes_the_request_and_response_bodies(tiny_server):
    spec = httpx.get(f"{tiny_server}/openapi.json", timeout=10).json()
    schemas = spec["components"]["schemas"]
    assert {"CompletionRequest", "CompletionResponse", "ChatCompletionRequest", "ChatCompletionResponse"} <= set(
        schemas
    )
    assert {"prompt", "max_tokens", "stream", "stream_options", "ignore_eos"} <= set(
        schemas["CompletionRequest"]["properties"]
    )
    assert "/v1/chat/completions" in spec["paths"] and "/v1/completions" in spec["paths"]


def test_the_policy_changes_between_steps_and_shows_in_metrics(tiny_server):
    c = httpx.Client(base_url=tiny_server, timeout=60)
    assert c.get("/v1/shifttune/policy").json() == {"policy": "threshold", "threshold": 16}
    try:
        assert c.post("/v1/shifttune/policy", json={"policy": "sp"}).json() == {"policy": "sp", "threshold": 16}
        before = metric(tiny_server, 'shifttune:steps_total{mode="tp"')
        c.post("/v1/completions", json={"prompt": "abc", "max_tokens": 5, "ignore_eos": True})
        assert metric(tiny_server, 'shifttune:steps_total{mode="tp"') == before  # forced SP x TP: no TP step
        assert metric(tiny_server, 'shifttune:shift_policy{policy="sp"') == 1
        r = c.post("/v1/shifttune/policy", json={"policy": "profile"})  # the server was started without a profile
        assert r.status_code == 400 and r.json()["error"]["param"] == "shift_profile"
        assert c.post("/v1/shifttune/policy", json={"threshold": -1}).status_code == 400
        huge = '{"threshold": 1' + "0" * 400 + "}"  # past a float: the metrics' gauge would overflow
        r = c.post("/v1/shifttune/policy", content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "threshold"
        assert c.get("/v1/shifttune/policy").json() == {"policy": "sp", "threshold": 16}
    finally:
        c.post("/v1/shifttune/policy", json={"policy": "threshold", "threshold": 16})
    assert metric(tiny_server, "shifttune:shift_threshold") == 16


def test_the_trace_times_a_request_through_both_processes(tiny_server):
    """/v1/shifttune/trace: one streamed request's stamps in causal order on one clock (HTTP process, pipe,
    engine core, back), its prompt's step with its device time; /live tells the engine loop's settings."""
    c = httpx.Client(base_url=tiny_server, timeout=60)
    since = c.get("/v1/shifttune/trace", params={"since": 1e18}).json()["now"]
    body = {"prompt": list(range(5, 45)), "max_tokens": 4, "ignore_eos": True, "stream": True}
    with c.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200 and sum(line.startswith("data: {") for line in r.iter_lines()) == 4
    trace = c.get("/v1/shifttune/trace", params={"since": since}).json()
    [req] = trace["requests"]
    assert req["prompt_tokens"] == 40 and since <= req["http"] <= trace["now"]
    order = ["http", "queued", "core_in", "scheduled", "first_token", "handed", "http_first", "sse_first"]
    assert [req[k] for k in order] == sorted(req[k] for k in order)
    assert req["piped"] >= req["queued"] and req["sent"] >= req["handed"]
    steps = [dict(zip(trace["step_fields"], s)) for s in trace["steps"]]
    assert [s["tokens"] for s in steps] == [40, 1, 1, 1] and steps[0]["prefill_tokens"] == 40
    assert steps[0]["scheduled"] == req["scheduled"] and steps[0]["mean_context"] == 40
    assert all(s["device_ms"] > 0 and s["completed"] >= s["scheduled"] and s["mode"] in ("tp", "sp") for s in steps)
    engine = c.get("/v1/shifttune/live").json()["engine"]
    assert engine == {"async_scheduling": False, "max_num_seqs": 256, "max_num_batched_tokens": 8192,
                      "block_size": 16, "cuda_graph_max_tokens": 0}  # fmt: skip


def test_a_burst_of_long_prompts_goes_to_the_core_without_the_writer_thread():
    """The pipe is grown to PIPE_BYTES where Linux allows it, so the adds of 40 prompts of 1k tokens (what one
    step's worth of a burst is) are written by the caller itself while the core has not read any: with Linux's
    64 KiB pipe only ~3 fit, and the rest waited for the writer thread, which waits for the GIL."""
    import multiprocessing as mp
    import threading

    from shifttune.server.pipes import PIPE_BYTES, PipeWriter, pipe_capacity

    limit = Path("/proc/sys/fs/pipe-max-size")
    if not limit.exists() or int(limit.read_text()) < PIPE_BYTES:
        pytest.skip("this system does not let a pipe grow to PIPE_BYTES")
    read, write = mp.Pipe(duplex=False)
    sent_by: list[str] = []
    writer = PipeWriter(write, "test-writer", on_sent=lambda tag: sent_by.append(threading.current_thread().name))
    assert pipe_capacity(write.fileno()) == PIPE_BYTES
    ids = list(range(100_000, 101_024))  # token ids as a served prompt's: ~5 kB pickled
    for i in range(40):
        writer.send(("add", f"r{i}", ids, None, "x" * 4000), i)
    assert sent_by == [threading.current_thread().name] * 40
    assert [read.recv()[1] for _ in range(40)] == [f"r{i}" for i in range(40)]
    writer.close()
    read.close()
    write.close()


def test_pipe_writer_keeps_order_and_never_blocks_on_a_stalled_reader():
    """Messages go in order; while the reader does not read, the writer's caller returns at once (the thread
    holds what does not fit); a message while the pipe is empty is written by the caller itself."""
    import multiprocessing as mp
    import threading

    from shifttune.server.pipes import PipeWriter, pipe_unread

    read, write = mp.Pipe(duplex=False)
    sent_by: list[str] = []
    writer = PipeWriter(write, "test-writer", on_sent=lambda tag: sent_by.append(threading.current_thread().name))
    writer.send(("small", 0), "a")
    assert sent_by == [threading.current_thread().name] and pipe_unread(write.fileno()) > 0  # no thread hop
    big = "x" * 20_000
    start = time.monotonic()
    for i in range(1, 40):  # ~800 kB: far more than the pipe holds, nobody reads
        writer.send(("big", i, big), "b")
    writer.send_queued(("last",))
    assert time.monotonic() - start < 5.0
    got = [read.recv() for _ in range(41)]
    assert [m[1] for m in got[:40]] == list(range(40)) and got[40] == ("last",)
    assert "test-writer" in sent_by
    writer.close()
    read.close()
    write.close()


def test_a_checked_request_reaches_the_core_before_its_response_starts_and_ends_with_it():
    """The handler sends the add itself (the response body starts later, behind every request of a burst); a
    response that ends before its body ever ran (the client left) still aborts the request in the core."""
    from shifttune.config import EngineConfig
    from shifttune.server.api import EngineStream
    from shifttune.server.async_engine import AsyncEngine
    from shifttune.server.metrics import ServerMetrics
    from shifttune.server.protocol import CompletionRequest
    from shifttune.server.serving import Serving

    sent: list[tuple] = []

    class Outgoing:
        def send(self, msg: tuple, tag: object = None) -> None:
            sent.append(msg)

    engine = AsyncEngine(EngineConfig(model="tiny", device="cpu"), ServerMetrics("tiny"))
    engine._outgoing = Outgoing()
    serving = Serving(engine, "tiny", engine.tokenizer, 2048)

    async def scenario() -> None:
        req = CompletionRequest(model="tiny", prompt=[1, 2, 3], max_tokens=4, stream=True)
        choices, params = serving.completion_choices(req)
        assert [m[0] for m in sent] == ["add"] and sent[0][2] == [1, 2, 3]  # no body has run yet
        rid = choices[0].request_id
        response = EngineStream(serving.completion_events(choices, params, False), lambda: serving.release(choices))

        async def receive() -> dict:
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:  # the client is gone: the headers never leave
            await asyncio.Event().wait()

        await response({"type": "http", "asgi": {"spec_version": "2.3"}}, receive, send)
        assert sent[1:] == [("abort", rid)] and engine.streams == {}
        serving.release(choices)  # again (the body's own cleanup, had it run): nothing more is sent
        assert len(sent) == 2

    asyncio.run(scenario())


def test_a_burst_into_an_idle_engine_counts_as_waiting_only_past_its_free_sequence_slots():
    """--max-queue-len bounds requests that wait: before the core's next report, a burst's first max_num_seqs
    requests will run at once (it used to count them all as waiting and refuse all but 1 + the limit)."""
    from shifttune.config import EngineConfig
    from shifttune.server.async_engine import AsyncEngine, QueueFullError
    from shifttune.server.engine_core import StepReport
    from shifttune.server.metrics import ServerMetrics

    engine = AsyncEngine(EngineConfig(model="tiny", device="cpu", max_num_seqs=4), ServerMetrics("tiny"), 2)
    for _ in range(6):  # 4 run, 2 wait
        engine.admit(1)
    with pytest.raises(QueueFullError, match="2 requests are waiting"):
        engine.admit(1)
    engine._observe(StepReport(3, 1, 1, 10, 0, "tp", 3, 0, 0.01), [])  # 3 run, 1 waits: 1 slot free, 1 may wait
    engine.admit(2)
    with pytest.raises(QueueFullError, match="2 requests are waiting"):
        engine.admit(1)


def test_an_idle_connection_outlives_the_clients_keep_alive(tiny_server):
    """The server keeps an idle connection open past the 5 s for which httpx (so the openai SDK) reuses one, so no
    request is sent on a connection the server is closing (`launcher.KEEP_ALIVE_S`; uvicorn's default closes at 5 s);
    the bench's own client reuses one for less than 5 s, for servers that do close then."""
    from shifttune.bench.client import KEEPALIVE_EXPIRY_S
    from shifttune.server.launcher import KEEP_ALIVE_S

    connects = []

    def trace(name, info):
        if name == "connection.connect_tcp.started":
            connects.append(name)

    with httpx.Client(limits=httpx.Limits(keepalive_expiry=60), trust_env=False, timeout=10) as c:
        assert c.get(f"{tiny_server}/health", extensions={"trace": trace}).status_code == 200
        time.sleep(6.0)  # past uvicorn's default keep-alive
        assert c.get(f"{tiny_server}/health", extensions={"trace": trace}).status_code == 200
    assert len(connects) == 1  # the second request went out on the first connection: the server had kept it open
    assert KEEPALIVE_EXPIRY_S < 5 < KEEP_ALIVE_S
