"""`shifttune bench`: vLLM's metric definitions on hand-made results, the datasets, and the client and the
command against a small local SSE server (a fixture on 127.0.0.1 that streams known chunks with known
delays, can reject ignore_eos and can fail requests)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import typer
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from typer.testing import CliRunner

from shifttune.bench.client import DONE, CompletionsClient, RequestResult, error_message, parse_sse_line
from shifttune.bench.config import BenchConfig, LengthRange
from shifttune.bench.datasets import (
    BenchRequest,
    build_requests,
    random_requests,
    sharegpt_requests,
    trace_requests,
    with_arrivals,
)
from shifttune.bench.metrics import compute_metrics, per_request, summarize, tpot
from shifttune.bench.runner import run_bench, run_requests
from shifttune.bench.tokenizer import load_tokenizer
from shifttune.cli.bench import bench
from shifttune.config import ConfigError
from shifttune.recommend.workload import Workload

REPO = Path(__file__).resolve().parent.parent
TTFT_S, ITL_S = 0.05, 0.02
SLACK_S = 0.15  # the CPU is shared: sleeps run late, never early

VLLM_KEYS = {"duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
             "request_goodput", "output_throughput", "total_token_throughput", "request_rate", "max_concurrency",
             "model_id", "backend", "date", "input_lens", "output_lens", "ttfts", "itls", "errors"} | {
    f"{stat}_{m}_ms" for stat in ("mean", "median", "std", "p90", "p99") for m in ("ttft", "tpot", "itl", "e2el")
}  # fmt: skip


# ---------------------------------------------------------------- the fixture server


@dataclass
class FakeServer:
    """Streams max_tokens chunks "t0 ", "t1 ", ...: the first after ttft_s, the others itl_s apart."""

    ttft_s: float = TTFT_S
    itl_s: float = ITL_S
    send_usage: bool = True
    reject_ignore_eos: bool = False
    fail_every: int = 0  # every n-th request answers 500
    fail_from: int = 0  # the n-th request and all after it answer 500
    abort_after: int = 0  # streams end after this many chunks, the last with finish_reason "abort" (as at shutdown)
    text_bytes: int = 0  # each chunk's text padded to this many bytes
    line_end: str = "\n"  # what ends each line of the stream (SSE allows "\r\n")
    api_key: str | None = None  # GET /v1/models answers 401 without `Authorization: Bearer <this>`
    models: list[str] = field(default_factory=lambda: ["tiny"])  # what GET /v1/models lists
    max_model_len: int | None = None  # listed with each model when set (as vLLM and `shifttune serve` do)
    requests: list[dict] = field(default_factory=list)
    rejections: int = 0
    url: str = ""

    def reset(self) -> None:
        self.__init__(url=self.url)  # type: ignore[misc]


def _app(state: FakeServer) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models(request: Request):
        if state.api_key and request.headers.get("authorization") != f"Bearer {state.api_key}":
            return JSONResponse({"error": {"message": "bad key"}}, 401)
        extra = {} if state.max_model_len is None else {"max_model_len": state.max_model_len}
        return {"object": "list", "data": [{"id": m, "object": "model", **extra} for m in state.models]}

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await request.json()
        if state.reject_ignore_eos and "ignore_eos" in body:
            state.rejections += 1
            return JSONResponse({"error": {"message": "unknown field ignore_eos", "type": "invalid_request"}}, 400)
        state.requests.append(body)
        n_req = len(state.requests)
        if (state.fail_every and n_req % state.fail_every == 0) or (state.fail_from and n_req >= state.fail_from):
            return JSONResponse({"error": {"message": "boom"}}, 500)
        n = body["max_tokens"]
        prompt = body["prompt"]
        cut = state.abort_after or n + 1

        async def stream():
            await asyncio.sleep(state.ttft_s)
            for i in range(min(n, cut)):
                if i:
                    await asyncio.sleep(state.itl_s)
                reason = "abort" if i == cut - 1 else None
                text = f"t{i} ".ljust(state.text_bytes, "x")
                chunk = {"choices": [{"index": 0, "text": text, "finish_reason": reason}]}
                yield f"data: {json.dumps(chunk)}{state.line_end * 2}"
            if state.send_usage:
                plen = len(prompt) if isinstance(prompt, list) else len(prompt.split())
                m = min(n, cut)
                usage = {"prompt_tokens": plen, "completion_tokens": m, "total_tokens": plen + m}
                yield f"data: {json.dumps({'choices': [], 'usage': usage})}{state.line_end * 2}"
            yield f"data: [DONE]{state.line_end * 2}"

        return StreamingResponse(stream(), media_type="text/event-stream")

    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_state():
    state = FakeServer()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(_app(state), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "the fixture server did not start"
        time.sleep(0.02)
    state.url = f"http://127.0.0.1:{port}"
    yield state
    server.should_exit = True
    thread.join(10)


@pytest.fixture
def fake(server_state):
    server_state.reset()
    return server_state


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny")


# ---------------------------------------------------------------- metrics


def _ok(ttft, latency, out, prompt=10, itl=()):
    return RequestResult(True, "", prompt, out, ttft, list(itl), latency)


def test_tpot_is_e2e_minus_ttft_over_output_tokens_minus_one():
    assert tpot(_ok(0.1, 0.5, 5)) == pytest.approx(0.1)
    assert tpot(_ok(0.2, 0.2, 1)) is None  # one token: no TPOT
    assert tpot(RequestResult(False, "x")) is None


def test_metrics_on_hand_made_results():
    results = [
        _ok(0.1, 0.5, 5, prompt=10, itl=[0.1] * 4),
        _ok(0.2, 1.2, 11, prompt=20, itl=[0.05, 0.15] * 5),
        _ok(0.3, 0.3, 1, prompt=30),
        RequestResult(False, "HTTP 500: boom", 40),
    ]
    m = compute_metrics(results, duration_s=2.0)
    assert (m["completed"], m["failed"]) == (3, 1)
    assert m["total_input_tokens"] == 60  # completed requests only, as vLLM
    assert m["total_output_tokens"] == 17
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(8.5) and m["input_throughput"] == pytest.approx(30)
    assert m["total_token_throughput"] == pytest.approx(38.5)
    assert m["request_goodput"] is None  # no SLO given
    assert m["mean_ttft_ms"] == pytest.approx(200) and m["median_ttft_ms"] == pytest.approx(200)
    assert m["p99_ttft_ms"] == pytest.approx(298)  # linear interpolation: 200 + 0.98 x 100
    assert m["p90_ttft_ms"] == pytest.approx(280)
    assert m["std_ttft_ms"] == pytest.approx(math.sqrt(20000 / 3))  # population std
    assert m["mean_tpot_ms"] == pytest.approx(100) and m["std_tpot_ms"] == pytest.approx(0, abs=1e-9)
    itls = [0.1] * 4 + [0.05, 0.15] * 5
    assert m["mean_itl_ms"] == pytest.approx(1000 * sum(itls) / len(itls))
    assert m["p99_itl_ms"] == pytest.approx(1000 * np.percentile(itls, 99))
    assert m["median_e2el_ms"] == pytest.approx(500)
    lists = per_request(results)
    assert lists["output_lens"] == [5, 11, 1, 0] and lists["ttfts"][3] == 0.0 and lists["errors"][3] == "HTTP 500: boom"


def test_goodput_counts_requests_meeting_every_slo():
    results = [_ok(0.1, 0.5, 5), _ok(0.2, 2.2, 11), _ok(0.3, 0.3, 1), RequestResult(False, "x")]
    # TPOTs: 100 ms, 200 ms, none (counts as 0); TTFTs 100, 200, 300 ms
    assert compute_metrics(results, 2.0, slo_ttft_ms=250)["request_goodput"] == pytest.approx(1.0)
    assert compute_metrics(results, 2.0, slo_tpot_ms=150)["request_goodput"] == pytest.approx(1.0)
    assert compute_metrics(results, 2.0, slo_ttft_ms=250, slo_tpot_ms=150)["request_goodput"] == pytest.approx(0.5)
    assert compute_metrics(results, 2.0, slo_ttft_ms=1000, slo_tpot_ms=1000)["request_goodput"] == pytest.approx(1.5)


def test_percentiles_match_numpy_and_empty_reads_zero():
    xs = [random.Random(3).uniform(0, 1) for _ in range(37)]
    s = summarize("x", xs)
    for p in (50, 90, 99):
        key = "median_x_ms" if p == 50 else f"p{p}_x_ms"
        assert s[key] == pytest.approx(1000 * np.percentile(xs, p))
    assert s["std_x_ms"] == pytest.approx(1000 * np.std(xs))
    assert set(summarize("x", []).values()) == {0.0}
    assert compute_metrics([], 1.0)["completed"] == 0


# ---------------------------------------------------------------- datasets


def test_length_ranges_parse_and_draw_within_bounds():
    assert LengthRange.parse("128", "input_len") == LengthRange(128, 128)
    r = LengthRange.parse("100:200", "input_len")
    draws = [r.draw(random.Random(i)) for i in range(200)]
    assert min(draws) >= 100 and max(draws) <= 200 and len(set(draws)) > 20
    for bad in ("0", "200:100", "x", "1:2:3", ""):
        with pytest.raises(ConfigError) as e:
            LengthRange.parse(bad, "input_len")
        assert e.value.field == "input_len"


def test_random_prompts_have_exact_token_lengths(tok):
    reqs = random_requests(tok, 50, LengthRange(10, 20), LengthRange(7, 7), seed=1)
    assert all(isinstance(r.prompt, list) and len(r.prompt) == r.input_len for r in reqs)
    assert {r.output_len for r in reqs} == {7}
    assert min(r.input_len for r in reqs) >= 10 and max(r.input_len for r in reqs) <= 20
    ids = {i for r in reqs for i in r.prompt}
    assert not ids & tok.special_ids and max(ids) < tok.vocab_size
    assert reqs == random_requests(tok, 50, LengthRange(10, 20), LengthRange(7, 7), seed=1)  # seeded
    assert reqs != random_requests(tok, 50, LengthRange(10, 20), LengthRange(7, 7), seed=2)


def test_sharegpt_parsing(tok, tmp_path):
    long_reply = "the answer is a fairly long reply"
    data = [
        {"conversations": [{"from": "human", "value": "What is shift parallelism?"},
                           {"from": "gpt", "value": long_reply}]},
        {"conversations": [{"from": "human", "value": "only one turn here"}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": long_reply}]},  # < 4 tokens
        "not a conversation",
        {"id": "x"},
    ]  # fmt: skip
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    reqs = sharegpt_requests(path, tok, 10, None, seed=0)
    assert [r.prompt for r in reqs] == ["What is shift parallelism?"]
    assert reqs[0].input_len == tok.count("What is shift parallelism?")
    assert reqs[0].output_len == tok.count(long_reply)
    fixed = sharegpt_requests(path, tok, 10, LengthRange(5, 5), seed=0)
    assert {r.output_len for r in fixed} == {5}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError) as e:
        sharegpt_requests(tmp_path / "bad.json", tok, 10, None, 0)
    assert e.value.field == "dataset_path"


def _write_trace(path: Path, offsets: list[float], ctx: list[int], gen: list[int]) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for t, c, g in zip(offsets, ctx, gen):
        sec = 10 + t
        lines.append(f"2023-11-16 18:15:{int(sec):02d}.{round((sec % 1) * 1e6):06d}0,{c},{g}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_trace_replay_times_scale(tok, tmp_path):
    path = _write_trace(tmp_path / "trace.csv", [0.0, 1.0, 2.5], [12, 30, 7], [3, 5, 2])
    reqs = trace_requests(path, tok, 10, time_scale=0.5, seed=0)
    assert [r.arrival_s for r in reqs] == pytest.approx([0.0, 0.5, 1.25])
    assert [r.input_len for r in reqs] == [12, 30, 7] and [len(r.prompt) for r in reqs] == [12, 30, 7]
    assert [r.output_len for r in reqs] == [3, 5, 2]
    assert len(trace_requests(path, tok, 2, time_scale=1.0, seed=0)) == 2  # --num-prompts: the first N


def test_arrivals_inf_all_at_once_and_poisson_at_a_rate(tok):
    reqs = random_requests(tok, 400, LengthRange(4, 4), LengthRange(2, 2), seed=0)
    assert {r.arrival_s for r in with_arrivals(reqs, math.inf, 0)} == {0.0}
    timed = [r.arrival_s for r in with_arrivals(reqs, 8.0, 0)]
    assert timed[0] == 0.0 and timed == sorted(timed)
    gaps = np.diff(timed)
    assert np.mean(gaps) == pytest.approx(1 / 8, rel=0.15)
    expected = [w.arrival_s for w in Workload(rate=8.0, num_requests=400, seed=0).requests()]
    assert np.allclose(np.diff(expected), gaps)  # the project's one arrival process
    assert with_arrivals(reqs, None, 0) is reqs  # a trace keeps its own times


def test_bursty_arrivals_keep_the_rate_and_cluster(tok):
    """--burstiness k: Gamma gaps of shape k, mean 1 / rate, coefficient of variation 1 / sqrt(k) (Poisson's
    is 1); the recommender's simulator gets the same arrivals (`Workload`); bad values are refused."""
    reqs = random_requests(tok, 4000, LengthRange(4, 4), LengthRange(2, 2), seed=0)
    for k, cv in ((1.0, 1.0), (0.25, 2.0), (4.0, 0.5)):
        gaps = np.diff([r.arrival_s for r in with_arrivals(reqs, 8.0, 3, burstiness=k)])
        assert np.mean(gaps) == pytest.approx(1 / 8, rel=0.1) and np.std(gaps) / np.mean(gaps) == pytest.approx(
            cv, rel=0.15
        )
        sim = [w.arrival_s for w in Workload(rate=8.0, num_requests=4000, seed=3, burstiness=k).requests()]
        assert np.allclose(np.diff(sim), gaps)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ConfigError, match="burstiness"):
            Workload(rate=8.0, burstiness=bad).requests()
        with pytest.raises(ConfigError) as e:
            BenchConfig(base_url="http://127.0.0.1:1", burstiness=bad).validate()
        assert e.value.field == "burstiness"


# ---------------------------------------------------------------- the client


def test_sse_lines_and_error_messages():
    assert parse_sse_line('data: {"a": 1}') == {"a": 1}
    assert parse_sse_line("data: [DONE]") is DONE
    assert parse_sse_line(": keep-alive") is None and parse_sse_line("") is None
    assert error_message(400, b'{"error": {"message": "bad ignore_eos"}}') == "HTTP 400: bad ignore_eos"
    assert error_message(422, b'{"detail": "nope"}') == "HTTP 422: nope"
    assert error_message(502, b"gateway down") == "HTTP 502: gateway down"


def _send_all(url: str, reqs: list[BenchRequest], concurrency: int | None = 1, stop_after: float | None = None):
    async def go():
        stop = asyncio.Event()
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, stop.set)

        class Count:
            n = 0

            def start(self, label, total):
                pass

            def advance(self, ok):
                Count.n += 1

        async with CompletionsClient(url + "/v1/completions", "tiny", timeout_s=30) as client:
            results, duration, interrupted = await run_requests(client, reqs, concurrency, Count(), stop)
            return results, duration, interrupted, client, Count.n

    return asyncio.run(go())


def test_client_reads_crlf_lines_and_events_longer_than_a_read_buffer(fake):
    fake.line_end, fake.text_bytes = "\r\n", 300_000  # aiohttp's own limit on a line is 128 KiB
    results, _, interrupted, _, _ = _send_all(fake.url, [BenchRequest([5, 6, 7], 3, 4)])
    assert not interrupted and results[0].success, results[0].error
    assert results[0].output_len == 4 and len(results[0].itl) == 3


def test_client_measures_ttft_and_itl(fake):
    reqs = [BenchRequest([5, 6, 7], 3, 6), BenchRequest("a b c d", 4, 4)]
    results, duration, interrupted, _, advanced = _send_all(fake.url, reqs)
    assert not interrupted and advanced == 2
    for r, req in zip(results, reqs):
        assert r.success, r.error
        assert TTFT_S <= r.ttft < TTFT_S + SLACK_S
        assert len(r.itl) == req.output_len - 1
        assert all(ITL_S * 0.9 <= g < ITL_S + SLACK_S for g in r.itl)
        assert r.latency == pytest.approx(r.ttft + sum(r.itl))
        assert r.output_len == req.output_len and r.prompt_len == req.input_len
        assert tpot(r) == pytest.approx(sum(r.itl) / len(r.itl))
    sent = fake.requests[0]
    assert sent["stream"] and sent["ignore_eos"] and sent["temperature"] == 0 and sent["max_tokens"] == 6
    assert sent["stream_options"] == {"include_usage": True} and sent["prompt"] == [5, 6, 7]
    assert duration >= 2 * (TTFT_S + 3 * ITL_S)  # concurrency 1: one after the other


def test_client_counts_text_chunks_without_usage(fake):
    fake.send_usage = False
    results, *_ = _send_all(fake.url, [BenchRequest([9] * 5, 5, 4)])
    assert results[0].success and results[0].output_len == 4 and results[0].prompt_len == 5


def test_client_drops_ignore_eos_once_rejected(fake):
    fake.reject_ignore_eos = True
    results, _, _, client, _ = _send_all(fake.url, [BenchRequest([5], 1, 3)] * 3)
    assert all(r.success for r in results), [r.error for r in results]
    assert fake.rejections == 1 and not client.ignore_eos and client.ignore_eos_rejections == 1
    assert len(fake.requests) == 3 and not any("ignore_eos" in b for b in fake.requests)


def test_client_records_server_errors(fake):
    fake.fail_every = 2
    results, *_ = _send_all(fake.url, [BenchRequest([5], 1, 2)] * 4)
    assert [r.success for r in results] == [True, False, True, False]
    assert results[1].error == "HTTP 500: boom"
    m = compute_metrics(results, 1.0)
    assert (m["completed"], m["failed"]) == (2, 2)


def test_client_counts_a_stream_the_server_aborted_as_failed(fake):
    """A server that shuts down ends its streams with finish_reason "abort" and [DONE]: not a success."""
    fake.abort_after = 3
    results, *_ = _send_all(fake.url, [BenchRequest([5], 1, 8), BenchRequest([5], 1, 2)])
    assert [r.success for r in results] == [False, True]
    assert results[0].error == "aborted by the server after 3 tokens" and results[1].output_len == 2
    m = compute_metrics(results, 1.0)
    assert (m["completed"], m["failed"]) == (1, 1)


def test_requests_leave_at_their_arrival_times(fake, tok, tmp_path):
    fake.ttft_s = fake.itl_s = 0.0
    path = _write_trace(tmp_path / "trace.csv", [0.0, 1.0, 2.0], [4, 4, 4], [1, 1, 1])
    reqs = trace_requests(path, tok, 10, time_scale=0.25, seed=0)
    results, *_ = _send_all(fake.url, reqs, concurrency=None)
    sends = [r.send_time for r in results]
    assert sends == pytest.approx([0.0, 0.25, 0.5], abs=0.08)


def test_a_stop_keeps_what_completed(fake):
    fake.ttft_s = fake.itl_s = 0.0
    reqs = [BenchRequest([5], 1, 1, t) for t in (0.0, 0.05, 30.0, 60.0)]
    t0 = time.monotonic()
    results, duration, interrupted, *_ = _send_all(fake.url, reqs, concurrency=None, stop_after=0.5)
    assert interrupted and len(results) == 2 and all(r.success for r in results)
    assert time.monotonic() - t0 < 5 and duration < 5


def test_run_bench_records_carry_vllm_keys(fake):
    cfg = BenchConfig(fake.url, rates=[50.0, math.inf], num_prompts=5, input_len=LengthRange(8, 8),
                      output_len=LengthRange(3, 3), slo_ttft_ms=10_000, concurrency=2)  # fmt: skip
    run = run_bench(cfg)
    assert run.model == "tiny" and run.tokenizer == "tiny" and not run.interrupted
    assert [r["request_rate"] for r in run.records] == [50.0, "inf"]
    for r in run.records:
        assert VLLM_KEYS <= set(r), VLLM_KEYS - set(r)
        assert r["completed"] == 5 and r["failed"] == 0 and r["max_concurrency"] == 2
        assert r["input_lens"] == [8] * 5 and r["output_lens"] == [3] * 5
        assert r["request_goodput"] == pytest.approx(r["request_throughput"])
        assert all(len(i) == 2 for i in r["itls"])
        json.dumps(r, allow_nan=False)
    assert len(fake.requests) == 11  # the test request first
    assert fake.requests[0]["max_tokens"] == 3
    first, second = ({json.dumps(r["prompt"]) for r in fake.requests[a:b]} for a, b in ((1, 6), (6, 11)))
    assert len(first) == len(second) == 5 and not first & second  # each rate its own prompts: no prefix-cache hits
    test = json.dumps(fake.requests[0]["prompt"])
    assert len(fake.requests[0]["prompt"]) == 8 and test not in first | second  # nor with the test request


# ---------------------------------------------------------------- the command


def _cli(*argv: str):
    app = typer.Typer(pretty_exceptions_enable=False)
    app.command()(bench)
    return CliRunner().invoke(app, list(argv))


def test_bench_command_end_to_end(fake, tmp_path):
    out, plot = tmp_path / "new" / "res.json", tmp_path / "new" / "plots" / "sweep.png"  # folders made as it writes
    result = _cli("--base-url", fake.url, "--rates", "40,inf", "--num-prompts", "6", "--input-len", "8:16",
                  "--output-len", "4", "--concurrency", "3", "--slo-ttft", "5000", "--slo-tpot", "1000",
                  "--out", str(out), "--plot", str(plot))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rate/s" in result.output and "inf" in result.output and "results saved" in result.output
    data = json.loads(out.read_text())
    assert "command" in data and len(data["results"]) == 2
    for r in data["results"]:
        assert VLLM_KEYS <= set(r)
        assert r["completed"] == 6 and r["total_output_tokens"] == 24
        assert all(8 <= n <= 16 for n in r["input_lens"])
        assert r["request_goodput"] == pytest.approx(r["request_throughput"])
        assert TTFT_S * 1000 <= r["median_ttft_ms"] < (TTFT_S + SLACK_S) * 1000
        assert ITL_S * 900 <= r["median_tpot_ms"] < (ITL_S + SLACK_S) * 1000
    assert [r["request_rate"] for r in data["results"]] == [40.0, "inf"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command_with_sharegpt_and_trace_files(fake, tmp_path):
    fake.ttft_s = fake.itl_s = 0.0
    conv = [{"from": "human", "value": "Tell me about shift parallelism please"}, {"from": "gpt", "value": "x " * 9}]
    sharegpt = tmp_path / "sg.json"
    sharegpt.write_text(json.dumps([{"conversations": conv}] * 3))
    out = tmp_path / "sg-out.json"
    result = _cli("--base-url", fake.url, "--dataset", "sharegpt", "--dataset-path", str(sharegpt), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["completed"] == 3
    assert fake.requests[-1]["prompt"] == conv[0]["value"] and fake.requests[-1]["max_tokens"] == 18
    trace = _write_trace(tmp_path / "t.csv", [0.0, 2.0, 4.0], [6, 7, 8], [2, 3, 4])
    out = tmp_path / "trace-out.json"
    t0 = time.monotonic()
    result = _cli("--base-url", fake.url, "--dataset", "trace", "--dataset-path", str(trace), "--time-scale", "0.1",
                  "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["request_rate"] == "trace" and data["time_scale"] == 0.1
    assert data["input_lens"] == [6, 7, 8] and data["output_lens"] == [2, 3, 4]
    assert 0.4 <= data["duration"] < 3 and time.monotonic() - t0 < 10  # 4 s of trace at 0.1x
    result = _cli("--base-url", fake.url, "--dataset", "trace", "--dataset-path", str(trace), "--rate", "3")
    assert result.exit_code == 2 and "--rate / --rates: --dataset trace replays" in result.output


def test_bench_command_falls_back_without_ignore_eos(fake, tmp_path):
    fake.reject_ignore_eos = True
    out = tmp_path / "fallback.json"
    result = _cli("--base-url", fake.url, "--num-prompts", "4", "--input-len", "5", "--output-len", "3",
                  "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "rejected ignore_eos" in result.output
    data = json.loads(out.read_text())
    assert data["completed"] == 4 and data["ignore_eos"] is False and fake.rejections == 1


def test_bench_single_rate_writes_one_record(fake, tmp_path):
    out = tmp_path / "one.json"
    result = _cli("--base-url", fake.url, "--model", "tiny", "--num-prompts", "2", "--input-len", "5",
                  "--output-len", "2", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["completed"] == 2 and data["request_rate"] == "inf" and "command" in data


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--input-len", "0"], "--input-len: expected a count >= 1"),
        (["--output-len", "9:3"], "--output-len: expected a count >= 1"),
        (["--rate", "fast"], "--rate takes comma-separated numbers"),
        (["--rates", "1,,2"], "--rates takes comma-separated numbers, e.g. 2 or 1,2,4; got '1,,2'"),
        (["--rates", "1,2,"], "--rates takes comma-separated numbers"),
        (["--endpoint", "/v1/chat/completions"], "--endpoint: bench sends completions requests (a prompt), not chat"),
        (["--rate", "1", "--rates", "1,2"], "--rate / --rates: give one of them"),
        (["--rates", "1,-2"], "--rate / --rates: must be positive"),
        (["--dataset", "sharegpt"], "--dataset-path: --dataset sharegpt needs a file"),
        (["--dataset", "csv"], "--dataset: must be one of random, sharegpt, trace"),
        (["--time-scale", "0.5"], "--time-scale: only for --dataset trace"),
        (["--slo-ttft", "-1"], "--slo-ttft: must be > 0"),
        (["--concurrency", "0"], "--concurrency: must be >= 1"),
        (["--plot", "x.jpg"], "--plot must end in .png, .svg, .pdf"),
        (["--tokenizer", "no-such-model"], "--tokenizer: 'no-such-model' is not a local directory"),
    ],
)
def test_bad_flags_fail_with_one_line_naming_the_flag(fake, argv, message):
    result = _cli("--base-url", fake.url, "--num-prompts", "1", *argv)
    assert result.exit_code == 2, result.output
    assert message in result.output and result.output.count("error:") == 1
    assert "Traceback" not in result.output
    assert not fake.requests  # nothing was sent


def test_missing_url_and_a_down_server_are_one_line(fake, tmp_path):
    for argv in ([], ["--base-url", ""]):  # an empty URL was taken for http://127.0.0.1 (port 80)
        result = _cli(*argv, "--num-prompts", "1")
        assert result.exit_code == 2 and "--base-url: which server?" in result.output
    port = _free_port()  # nothing listens there
    result = _cli(
        "--base-url", f"http://127.0.0.1:{port}", "--num-prompts", "1", "--out", str(tmp_path / "n" / "x.json")
    )
    assert result.exit_code == 2 and "cannot reach the server at" in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "n").exists()  # --out's folder is made only when there is something to write


def test_the_api_key_may_come_from_the_environment_as_for_top(fake, monkeypatch):
    fake.api_key = "sekret"
    monkeypatch.delenv("SHIFTTUNE_API_KEY", raising=False)
    result = _cli("--base-url", fake.url, "--num-prompts", "1", "--input-len", "4", "--output-len", "2")
    assert result.exit_code == 2 and "the server wants an API key (--api-key)" in result.output, result.output
    monkeypatch.setenv("SHIFTTUNE_API_KEY", "sekret")
    result = _cli("--base-url", fake.url, "--num-prompts", "1", "--input-len", "4", "--output-len", "2")
    assert result.exit_code == 0 and len(fake.requests) == 2, result.output  # the test request and the one


def test_unknown_model_tokenizer_is_a_flag_error(fake):
    fake.models = ["org/remote-model"]
    result = _cli("--base-url", fake.url, "--model", "org/remote-model", "--num-prompts", "1")
    assert result.exit_code == 2 and "--tokenizer: the model 'org/remote-model'" in result.output


def test_a_model_the_server_does_not_serve_is_one_line(fake):
    """It used to be taken on trust (and then blamed on --tokenizer, or failed every request)."""
    result = _cli("--base-url", fake.url, "--model", "nosuch", "--num-prompts", "1")
    assert result.exit_code == 2 and "serves 'tiny', not --model 'nosuch'" in result.output, result.output
    assert not fake.requests


def test_a_failing_test_request_stops_before_the_run(fake):
    fake.fail_every = 1
    result = _cli("--base-url", fake.url, "--num-prompts", "5", "--input-len", "4", "--output-len", "2")
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "the test request to" in result.output and "HTTP 500: boom" in result.output
    assert len(fake.requests) == 1


def test_some_requests_failing_says_why_on_the_console(fake):
    fake.fail_every = 3  # the test request and one of every three after it
    result = _cli("--base-url", fake.url, "--num-prompts", "6", "--input-len", "4", "--output-len", "2")
    assert result.exit_code == 0 and "2 request(s) failed; most often (2x): HTTP 500: boom" in result.output, (
        result.output
    )


def test_every_request_failing_is_an_error_with_the_first_message(fake, tmp_path):
    fake.fail_from = 2  # the test request passes, the run's requests fail
    out = tmp_path / "failed.json"
    result = _cli("--base-url", fake.url, "--num-prompts", "2", "--input-len", "4", "--output-len", "2",
                  "--out", str(out))  # fmt: skip
    assert result.exit_code == 2 and "no request completed; first error: HTTP 500: boom" in result.output
    data = json.loads(out.read_text())
    assert (data["completed"], data["failed"]) == (0, 2) and data["errors"] == ["HTTP 500: boom"] * 2


@pytest.mark.parametrize("sig, rates", [(signal.SIGINT, "2"), (signal.SIGTERM, "2"), (signal.SIGTERM, "2,4")],
                         ids=["sigint", "sigterm", "sigterm-sweep"])  # fmt: skip
def test_ctrl_c_or_sigterm_keeps_and_saves_what_completed(fake, tmp_path, sig, rates):
    """SIGTERM (timeout, kill, a CI's cancel) as Ctrl-C: it used to end the process at once (143, no JSON). A sweep
    stopped during its first rate writes the sweep's shape (it used to write a single record's)."""
    fake.ttft_s, fake.itl_s = 0.0, 0.0
    out = tmp_path / "partial.json"
    code = "import typer; from shifttune.cli.bench import bench; typer.run(bench)"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--base-url", fake.url, "--rates", rates, "--num-prompts", "50", "--input-len",
         "4", "--output-len", "1", "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while len(fake.requests) < 4:  # the test request, then 50 requests at 2/s: ~25 s
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, output
    data = json.loads(out.read_text())
    if rates == "2":
        assert "results" not in data and "command" in data
    else:
        assert set(data) == {"command", "results"} and len(data["results"]) == 1
        (data,) = data["results"]
    # NOTE: at least 1: arrivals are Poisson, so the last one or two that reached the server may still be answering
    # (CI once saw 1 completed when the 3rd request arrived)
    assert data["interrupted"] and 1 <= data["completed"] < 50 and data["failed"] == 0
    assert "interrupted" in output and "Traceback" not in output


def test_requests_that_all_fail_have_no_latencies(fake, tmp_path):
    """Latencies over no successful request are null in the JSON and n/a in the table, not 0."""
    fake.fail_from = 2  # the test request passes, the run's requests fail
    out = tmp_path / "failed.json"
    result = _cli("--base-url", fake.url, "--num-prompts", "2", "--input-len", "4", "--output-len", "2",
                  "--out", str(out))  # fmt: skip
    assert result.exit_code == 2, result.output
    data = json.loads(out.read_text())
    latency_keys = {f"{stat}_{m}_ms" for stat in ("mean", "median", "std", "p90", "p99")
                    for m in ("ttft", "tpot", "itl", "e2el")}  # fmt: skip
    assert {k: data[k] for k in latency_keys} == dict.fromkeys(latency_keys)
    assert data["output_throughput"] == 0.0 and data["completed"] == 0
    assert "n/a" in result.output and "0.00" not in result.output.split("latencies (ms)")[1]
    assert compute_metrics([_ok(0.1, 0.1, 1)], 1.0)["mean_tpot_ms"] == 0.0  # one-token outputs: TPOT 0, as vLLM


def test_pre_flight_refuses_lengths_over_the_servers_context(fake, tmp_path):
    """--input-len + --output-len over the max_model_len the server lists: refused before any request (the test
    request's max_tokens is capped, so it passed and then every request failed)."""
    fake.max_model_len = 2048
    result = _cli("--base-url", fake.url, "--num-prompts", "2", "--input-len", "16", "--output-len", "1000:3000")
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    assert ("--input-len + --output-len: 16 + 3000 = 3016 tokens (prompt + max_tokens) is over the server's context "
            "of 2048 tokens (max_model_len of 'tiny')") in " ".join(result.output.split())  # fmt: skip
    assert not fake.requests
    fake.max_model_len, fake.itl_s = 24, 0.0
    result = _cli("--base-url", fake.url, "--num-prompts", "2", "--input-len", "16", "--output-len", "8")
    assert result.exit_code == 0 and len(fake.requests) == 3, result.output  # fits exactly


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/"])
def test_base_url_may_end_in_v1_as_the_openai_client_s(fake, tmp_path, suffix):
    out = tmp_path / "v1.json"
    result = _cli("--base-url", fake.url + suffix, "--num-prompts", "2", "--input-len", "4", "--output-len", "2",
                  "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert data["completed"] == 2 and data["base_url"] == fake.url


def test_failures_that_each_happened_once_are_examples_not_the_most_common(fake):
    fake.fail_every = 3  # the test request, two good ones, then one failure
    result = _cli("--base-url", fake.url, "--num-prompts", "4", "--input-len", "4", "--output-len", "2")
    assert result.exit_code == 0, result.output
    assert "1 request(s) failed, e.g.: HTTP 500: boom" in result.output and "most often" not in result.output


def test_tables_mark_an_interrupted_run_legibly_in_80_columns():
    from rich.console import Console

    from shifttune.bench.report import compare_table, latency_table, results_table

    metrics = compute_metrics([_ok(0.1, 0.5, 5, itl=[0.1] * 4)] * 3, 12.5, slo_ttft_ms=100)
    done, stopped = ({"request_rate": rate, "interrupted": i, **metrics} for rate, i in ((4.0, False), (2.0, True)))
    failed = {"request_rate": 8.0, "interrupted": False, **compute_metrics([RequestResult(False, "x")], 1.0)}

    def text(table) -> str:
        console = Console(width=80, record=True, file=open(os.devnull, "w"))
        console.print(table)
        return console.export_text()

    for table in (results_table([done, stopped]), compare_table({"tp": [done], "sp": [done], "shift": [stopped]})):
        out = text(table)
        assert "…" not in out and "* interrupted: only the requests that completed" in " ".join(out.split())
        assert out.count("*") == 2  # the run's mark and the caption's
    assert "3 / 0*" in text(compare_table({"tp": [done], "shift": [stopped]}))
    assert "*" not in text(results_table([done])) + text(compare_table({"tp": [done]}))
    assert "n/a" in text(latency_table([failed])) and "n/a" in text(compare_table({"tp": [failed], "sp": [done]}))


def test_the_command_module_is_light():
    heavy = "{'torch', 'httpx', 'aiohttp', 'matplotlib'}"
    code = f"import sys, shifttune.cli.bench; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ---------------------------------------------------------------- --compare's server handling (stand-ins only)

STAND_IN = """
import http.server, signal, sys, time
port, ignore_sigint = int(sys.argv[1]), sys.argv[2] == "1"
if ignore_sigint:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print("stand-in starting", flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


STAND_IN_API = """
import http.server, json, os, sys, time
port, workdir, healthy = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
with open(os.path.join(workdir, "pid"), "w") as f:
    f.write(str(os.getpid()))
if not healthy:
    time.sleep(120)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"data": [{"id": "tiny"}]}).encode() if self.path == "/v1/models" else b"{}"
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with open(os.path.join(workdir, "requests"), "a") as f:
            f.write("x\\n")
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(body["max_tokens"]):
            self.wfile.write(b'data: {"choices": [{"index": 0, "text": "t ", "finish_reason": null}]}\\n\\n')
        self.wfile.write(b"data: [DONE]\\n\\n")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _alive(pid: int) -> bool:
    """Running (a zombie, killed and not yet reaped, is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _compare_cli(workdir: Path, healthy: bool, *argv: str) -> subprocess.Popen:
    """`bench --compare` in a process of its own, whose `shifttune serve` is STAND_IN_API (which writes its pid, and a
    line per completions request, in `workdir`; one that is not `healthy` never answers)."""
    stand_in = f"[sys.executable, '-c', {STAND_IN_API!r}, str(port), {str(workdir)!r}, {'1' if healthy else '0'!r}]"
    code = ("import sys, typer, shifttune.bench.compare as c; from shifttune.cli.bench import bench; "
            f"c.serve_command = lambda cfg, mode, port: {stand_in}; typer.run(bench)")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code, "--compare", "tp", "--model", "tiny", *argv], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def _wait_for(path: Path, lines: int, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or len(path.read_text().splitlines()) < lines:
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read() if proc.poll() else ""
        time.sleep(0.05)


def test_compare_on_sigterm_stops_its_server_and_saves_what_was_measured(tmp_path):
    """It used to die at once (143, no JSON), leaving its `shifttune serve` running with PPID 1."""
    out = tmp_path / "cmp.json"
    proc = _compare_cli(tmp_path, True, "--rate", "2", "--num-prompts", "50", "--input-len", "4", "--output-len", "1",
                        "--out", str(out), "--startup-timeout", "60")  # fmt: skip
    try:
        _wait_for(tmp_path / "requests", 3, proc)  # the test request, then 50 at 2/s: ~25 s
        pid = int((tmp_path / "pid").read_text())
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
        assert proc.returncode == 143, output
        assert not _alive(pid)
        data = json.loads(out.read_text())
        (rec,) = data["results"]
        assert rec["mode"] == "tp" and rec["interrupted"] and 2 <= rec["completed"] < 50
        assert "* interrupted" in output and "Traceback" not in output
    finally:
        proc.kill()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)


@pytest.mark.parametrize("how", ["startup timeout", "sigterm"])
def test_compare_kills_a_server_that_never_answers(tmp_path, how):
    """A server that never answers GET /health: given up after --startup-timeout, or stopped by SIGTERM while waited
    for; killed either way."""
    timeout = "1" if how == "startup timeout" else "600"
    proc = _compare_cli(tmp_path, False, "--num-prompts", "2", "--startup-timeout", timeout)
    try:
        _wait_for(tmp_path / "pid", 1, proc)
        pid = int((tmp_path / "pid").read_text())
        if how == "sigterm":
            time.sleep(0.5)  # in the wait for GET /health
            proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == (2 if how == "startup timeout" else 143), output
        if how == "startup timeout":
            assert "did not answer GET /health with 200 within 1 s" in output
        assert not _alive(pid) and "Traceback" not in output
    finally:
        proc.kill()
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((tmp_path / "pid").read_text()), signal.SIGKILL)


@pytest.mark.parametrize(
    "arg", ["--shift-policy sp", "--port 5", "--port=5", "-tp 2", "--ulysses-sequence-parallel-size=2", "-sp 4",
            "--device cuda", "--host 0.0.0.0", "--shift-parallel-threshold 8", "--model other"],
)  # fmt: skip
def test_compare_refuses_server_args_it_sets_itself(monkeypatch, arg):
    """`--server-arg '--shift-policy sp'` made the "tp" column a measurement of SP; `--port 5` hung until the
    startup timeout. Refused before any server starts."""
    import shifttune.bench.compare as compare

    started = []
    monkeypatch.setattr(compare, "serve_command", lambda *a: started.append(a) or [sys.executable, "-c", "1"])
    result = _cli("--compare", "tp", "--model", "tiny", "--num-prompts", "1", "--server-arg", arg,
                  "--startup-timeout", "1")  # fmt: skip
    assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
    flag = arg.split("=")[0].split()[0]
    assert f"--server-arg: --compare sets {flag} for each server itself" in " ".join(result.output.split())
    assert not started
    ok = _cli("--compare", "tp", "--model", "tiny", "--num-prompts", "1", "--server-arg", "--max-num-seqs=8",
              "--startup-timeout", "1")  # fmt: skip
    assert len(started) == 1 and "exited with code 0 before it was healthy" in ok.output  # allowed: started


def test_compare_refuses_every_spelling_of_what_serve_command_sets():
    """SERVE_FLAGS is written by hand beside `serve_command`: every `serve` option that command passes must be
    listed under all of serve's spellings of it (an alias missed is a column mislabelled), and nothing else."""
    import typer.main

    from shifttune.bench.compare import SERVE_FLAGS, CompareConfig, serve_command
    from shifttune.cli import app

    serve_cmd = typer.main.get_command(app).commands["serve"]
    spellings = {opt: p for p in serve_cmd.params for opt in [*p.opts, *p.secondary_opts] if opt.startswith("-")}
    cmd = serve_command(CompareConfig(["tp"], "tiny"), "tp", 1234)
    passed = {spellings[a] for a in cmd if a in spellings} | {spellings["--model"]}  # MODEL is also --model
    expected = {opt for p in passed for opt in p.opts if opt.startswith("-")} - {"--no-tui", "--tui"}
    assert set(SERVE_FLAGS) == expected


def test_serve_command_follows_the_contract():
    from shifttune.bench.compare import CompareConfig, serve_command

    cfg = CompareConfig(["tp", "sp", "shift"], "tiny", sp=2, tp=1, device="cpu", threshold=64,
                        server_args=["--max-num-seqs", "8"])  # fmt: skip
    cmd = serve_command(cfg, "shift", 1234)
    assert cmd[:5] == [sys.executable, "-m", "shifttune.cli", "serve", "tiny"]
    flags = dict(zip(cmd[5:-4:2], cmd[6:-3:2]))
    assert flags == {
        "--device": "cpu",
        "--tensor-parallel-size": "1",
        "--sequence-parallel-size": "2",
        "--shift-policy": "threshold",
        "--shift-threshold": "64",
        "--host": "127.0.0.1",
        "--port": "1234",
    }
    assert cmd[-3:] == ["--no-tui", "--max-num-seqs", "8"]
    assert [serve_command(cfg, m, 1)[cmd.index("--shift-policy") + 1] for m in ("tp", "sp")] == ["tp", "sp"]
    for bad, field_name in (
        (CompareConfig(["tp", "pp"], "tiny"), "compare"),
        (CompareConfig(["sp"], "tiny", sp=1), "sp"),
    ):
        with pytest.raises(ConfigError) as e:
            bad.validate()
        assert e.value.field == field_name


PROFILE_X2 = REPO / "shifttune" / "data" / "profiles" / "tiny_cpux2.json"


def test_shift_ratios_put_shift_against_the_mode_it_should_match():
    from shifttune.bench.report import shift_ratio_table, shift_ratios

    def rec(rate, ttft, tpot, thr):
        return {"request_rate": rate, "median_ttft_ms": ttft, "p99_ttft_ms": 2 * ttft, "median_tpot_ms": tpot,
                "p99_tpot_ms": 2 * tpot, "output_throughput": thr}  # fmt: skip

    runs = {"tp": [rec(1.0, 100, 10, 50), rec(8.0, 400, 12, 300)], "sp": [rec(1.0, 60, 30, 55), rec(8.0, 90, 33, 360)],
            "shift": [rec(1.0, 62, 10.5, 55), rec(8.0, 99, 15, 342)]}  # fmt: skip
    ratios = shift_ratios(runs)
    assert [r["rate"] for r in ratios] == [1.0, 8.0]
    assert ratios[1]["shift_over_sp_ttft_p50"] == pytest.approx(99 / 90)
    assert ratios[1]["shift_over_tp_tpot_p99"] == pytest.approx(15 / 12)
    assert ratios[1]["shift_over_sp_output_throughput"] == pytest.approx(342 / 360)
    assert shift_ratios({"tp": runs["tp"], "sp": runs["sp"]}) == []  # no shift run, nothing to say
    assert shift_ratio_table(ratios).row_count == 2


def test_compare_refuses_a_profile_it_cannot_use(tmp_path):
    """--profile: only with --compare, of the layout it runs, and without --concurrency; refused before any
    server starts."""
    base = ["--model", "tiny", "--num-prompts", "2", "--rate", "4"]
    r = _cli("--base-url", "http://127.0.0.1:1", "--profile", str(PROFILE_X2), *base[2:])
    assert r.exit_code != 0 and "--profile: only with --compare" in r.output
    r = _cli("--compare", "tp,shift", "--sp", "4", "--profile", str(PROFILE_X2), *base)
    assert r.exit_code != 0 and "measured on 2 ranks" in r.output and "server logs" not in r.output
    r = _cli("--compare", "tp", "--profile", str(PROFILE_X2), "--concurrency", "2", *base)
    assert r.exit_code != 0 and "--concurrency" in r.output
    r = _cli("--compare", "tp", "--profile", str(tmp_path / "none.json"), *base)
    assert r.exit_code != 0 and "none.json" in r.output


def test_compare_predicts_each_run_beside_the_measured_one(tmp_path):
    """Two real CPU servers (tp and shift, SP=2 gloo ranks, the tiny model): each record carries the simulator's
    TTFT, TPOT and throughput for the requests it sent on the shipped 2-rank profile, with the measured values
    and their relative errors, and the table shows them."""
    out = tmp_path / "cmp.json"
    r = _cli("--compare", "tp,shift", "--model", "tiny", "--sp", "2", "--profile", str(PROFILE_X2),
             "--num-prompts", "6", "--rate", "4", "--burstiness", "0.5", "--input-len", "48", "--output-len", "6",
             "--out", str(out), "--startup-timeout", "300")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "predicted (measured profile, simulator) vs measured" in r.output
    data = json.loads(out.read_text())
    records = data["results"]
    assert [x["mode"] for x in records] == ["tp", "shift"] and all(x["burstiness"] == 0.5 for x in records)
    tp, shift = records
    (ratios,) = data["shift_ratios"]  # no sp run: only the TPOT ratios
    assert set(ratios) == {"rate", "shift_over_tp_tpot_p50", "shift_over_tp_tpot_p99"}
    assert ratios["shift_over_tp_tpot_p50"] == pytest.approx(shift["median_tpot_ms"] / tp["median_tpot_ms"])
    for rec in records:
        pred = rec["predicted"]
        assert pred["profile"] == str(PROFILE_X2) and pred["profile_kind"] == "measured"
        assert pred["host_time"]["requests"] >= 1 and pred["host_time"]["host_ms"] > 0  # probed after the run
        metrics = pred["metrics"]
        assert set(metrics) == {"ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "output_throughput"}
        assert metrics["output_throughput"]["measured"] == rec["output_throughput"]
        assert metrics["ttft_p99_ms"]["measured"] == rec["p99_ttft_ms"]
        for m in metrics.values():
            assert m["predicted"] > 0 and m["rel_error"] == pytest.approx(
                (m["predicted"] - m["measured"]) / m["measured"]
            )
        per_req = pred["ttft_ms_per_request"]  # each request's simulated TTFT, in the order sent
        assert len(per_req) == 6 and all(t > 0 for t in per_req)
        assert sorted(per_req)[2] <= metrics["ttft_p50_ms"]["predicted"] <= sorted(per_req)[3]
        gaps = sorted(1e3 * m - p for m, p in zip(rec["ttfts"], per_req))
        assert pred["ttft_gap_ms"]["max"] == pytest.approx(gaps[-1])


@pytest.mark.parametrize("ignore_sigint", [False, True])
def test_a_server_is_waited_for_then_stopped(tmp_path, ignore_sigint):
    from shifttune.bench.compare import ServeProcess

    port = _free_port()
    cmd = [sys.executable, "-c", STAND_IN, str(port), "1" if ignore_sigint else "0"]
    server = ServeProcess(cmd, port, tmp_path / "serve.log")
    with server:
        server.wait_healthy(30, poll_s=0.05)
        assert server.proc.poll() is None
        t0 = time.monotonic()
        code = server.stop(timeout_s=0.5)
    assert code is not None and server.proc.poll() is not None
    assert time.monotonic() - t0 < (10 if ignore_sigint else 5)  # SIGTERM after 0.5 s when SIGINT is ignored
    assert "stand-in starting" in server.tail()


def test_a_server_that_dies_or_never_answers_shows_its_log(tmp_path):
    from shifttune.bench.client import ServerError
    from shifttune.bench.compare import ServeProcess

    died = ServeProcess([sys.executable, "-c", "print('no weights here'); raise SystemExit(3)"], _free_port(),
                        tmp_path / "died.log")  # fmt: skip
    with died, pytest.raises(ServerError) as e:
        died.wait_healthy(30, poll_s=0.05)
    assert "exited with code 3" in str(e.value) and "no weights here" in str(e.value)
    silent = ServeProcess([sys.executable, "-c", "print('loading', flush=True); import time; time.sleep(60)"],
                          _free_port(), tmp_path / "silent.log")  # fmt: skip
    t0 = time.monotonic()
    with silent, pytest.raises(ServerError) as e:
        silent.wait_healthy(1.0, poll_s=0.05)
    assert "did not answer GET /health with 200 within 1 s" in str(e.value) and "loading" in str(e.value)
    assert silent.proc.poll() is not None and time.monotonic() - t0 < 10


def test_serve_vs_offline_trace_summary_leaves_the_test_request_out():
    """The bench's test request (first by arrival) and its steps are not the run: times start at its last step."""
    from shifttune.bench.serve_vs_offline import trace_summary
    from shifttune.server.trace import HTTP_FIELDS, STEP_FIELDS

    def req(rid, http, piped, core_in):
        return {"id": rid, **dict.fromkeys(HTTP_FIELDS), "http": http, "piped": piped, "core_in": core_in}

    def step(scheduled, seqs):
        return [scheduled, scheduled + 0.01, "tp", seqs, 0, seqs, 10.0, 5.0]

    requests = [req("t", 10.0, 10.001, 10.002), req("b", 11.2, 11.21, 11.23), req("a", 11.1, 11.1, 11.12),
                req("c", 11.3, 11.31, 11.33)]  # fmt: skip
    steps = [step(10.0, 1), step(10.5, 1), step(11.15, 1), step(11.25, 2), step(11.35, 3), step(11.4, 3)]
    trace = {"step_fields": list(STEP_FIELDS), "requests": requests, "steps": steps}
    s = trace_summary(trace, max_num_seqs=2)
    assert s["requests"] == 3 and s["steps"] == 4  # the test request's two steps are not the run's
    assert s["first_http_s"] == pytest.approx(0.59) and s["last_http_s"] == pytest.approx(0.79)  # after 10.51
    assert s["steps_until_full"] == 1 and s["full_at_s"] == pytest.approx(0.74)  # 2 seqs: all max_num_seqs allows
    assert s["http_to_piped_ms"] == pytest.approx(10 * 2 / 3) and s["piped_to_core_ms"] == pytest.approx(20)
    assert s["seqs_first_steps"] == [1, 2, 3, 3]


def test_serve_vs_offline_gives_every_case_and_repeat_its_own_prompts():
    """No run finds its prompts in the prefix cache an earlier run (a warm-up, another case, an earlier repeat) filled:
    the cases of 256 and inf used to run the same 512 prompts, the second of them decode only."""
    from argparse import Namespace

    from shifttune.bench.serve_vs_offline import CASES, bench_config, case_seed

    args = Namespace(input_len=16, output_len=4)
    tok = load_tokenizer("tiny")

    def prompts(n: int, seed: int) -> set[tuple]:
        return {tuple(r.prompt) for r in build_requests(bench_config("http://x", None, n, args, seed), tok)}

    runs = [prompts(64, 1)] + [prompts(64, case_seed(0, r, i, len(CASES))) for r in range(2) for i in range(len(CASES))]
    assert all(len(run) == 64 for run in runs)
    assert len(set().union(*runs)) == 64 * len(runs)  # no prompt in two runs
    assert prompts(64, case_seed(0, 1, 2, len(CASES))) == runs[1 + len(CASES) + 2]  # both sides: the same per seed
