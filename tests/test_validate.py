"""`shifttune recommend --validate URL` on CPU: a tiny `shifttune serve` subprocess, the shipped CPU profile,
one low rate; the table's rows and fields and the saved JSON (not the error's size: on this shared 2-core
machine a step's time moves by several times between the profile and the run). Then the simulation of the
engine's loop itself: its schedule against the CPU engine's, async scheduling, graph buckets, host time."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shifttune.bench.compare import ServeProcess, free_port
from shifttune.cli import app
from shifttune.recommend.shipped import SHIPPED_DIR

METRICS = ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory: pytest.TempPathFactory):
    """The tiny model on 2 CPU ranks (SP = 2, threshold 16), as the shipped CPU profile was measured."""
    port = free_port()
    cmd = [sys.executable, "-m", "shifttune.cli", "serve", "tiny", "--device", "cpu", "--sequence-parallel-size", "2",
           "--shift-threshold", "16", "--host", "127.0.0.1", "--port", str(port), "--no-tui"]  # fmt: skip
    with ServeProcess(cmd, port, tmp_path_factory.mktemp("serve") / "serve.log") as server:
        server.wait_healthy(120)
        yield server.base_url


def test_validate_table_and_json(tiny_server: str, tmp_path: Path):
    out = tmp_path / "validate.json"
    profile = str(SHIPPED_DIR / "tiny_cpux2.json")
    r = CliRunner().invoke(app, ["recommend", "--validate", tiny_server, "--profile", profile,
                                 "--rate", "2", "--num-requests", "6", "--input-len", "40", "--output-len", "6",
                                 "--spread", "0", "--out", str(out)])  # fmt: skip
    assert r.exit_code == 0, r.output
    for word in ("ttft_p50", "ttft_p99", "tpot_p50", "tpot_p99", "predicted ms", "measured ms", "SP=2 x TP=1"):
        assert word in r.output
    data = json.loads(out.read_text())
    assert data["command"].startswith(f"shifttune recommend --validate {tiny_server} --profile ")
    assert data["command"].endswith("--rate 2 --num-requests 6 --input-len 40 --output-len 6 --spread 0")
    assert data["server"] == {"model": "tiny", "tp": 1, "sp": 2, "policy": "threshold", "threshold": 16}
    assert (data["input_len"], data["output_len"], data["num_prompts"]) == ("40", "6", 6)
    [row] = data["rows"]
    assert row["rate"] == 2 and row["requests"] == 6 and row["failed"] == 0
    for name in METRICS:
        m = row[name]
        assert set(m) == {"predicted", "measured", "rel_error", "tolerance", "within"}
        assert all(math.isfinite(m[k]) and m[k] >= 0 for k in ("predicted", "measured", "tolerance"))
        assert m["predicted"] > 0 and m["measured"] > 0
        assert m["rel_error"] == pytest.approx((m["predicted"] - m["measured"]) / m["measured"])
        assert m["within"] == (abs(m["rel_error"]) <= m["tolerance"])
    assert [row[n]["tolerance"] for n in METRICS] == [0.05, 0.10, 0.05, 0.10]
    # what the simulation took from the server: its loop's settings (physics) and its host time (calibrated)
    sim = data["simulation"]
    assert sim["engine_loop_source"].startswith("the server's settings")
    loop = sim["engine_loop"]
    assert {
        k: loop[k] for k in ("max_num_seqs", "max_num_batched_tokens", "async_scheduling", "cuda_graph_max_tokens")
    } == {"max_num_seqs": 256, "max_num_batched_tokens": 8192, "async_scheduling": False, "cuda_graph_max_tokens": 0}
    host = sim["host_time"]
    assert host["source"].startswith("calibrated") and host["requests"] == 8 and host["same_clock"]
    assert loop["ingress_ms"] == host["ingress_ms"] > 0 and loop["egress_ms"] == host["egress_ms"] > 0
    assert 0 < host["host_ms"] < host["host_ms"] + host["prefill_device_ms"]
    diag = row["diagnostics"]
    assert diag["ttft_parts_predicted"]["host_p50_ms"] == pytest.approx(loop["ingress_ms"] + loop["egress_ms"])
    assert all(v is not None and v >= 0 for v in diag["ttft_parts_measured"].values())
    steps = diag["steps_measured_vs_profile"]
    assert steps["prefill"]["steps"] >= 1 and steps["decode"]["steps"] >= 5 and steps["decode"]["max_tokens"] <= 6
    assert all(steps[k]["ratio_p50"] > 0 for k in ("prefill", "decode"))
    assert set(diag["with_server_step_times"]) == {n for n in METRICS}


def test_validate_refuses_a_profile_of_another_layout():
    from shifttune.bench.validate import ValidateConfig, simulated
    from shifttune.config import ConfigError
    from shifttune.engine.profile_schema import load_profile
    from shifttune.recommend.workload import Request

    cfg = ValidateConfig("http://127.0.0.1:1", load_profile(SHIPPED_DIR / "tiny_cpux2.json"), None, [1.0])
    settings = {"model": "tiny", "tp": 4, "sp": 1, "policy": "threshold", "threshold": 16}
    with pytest.raises(ConfigError, match="measured on 2 ranks"):
        simulated(cfg.profile, cfg.profile_path, settings, [Request(0.0, 8, 2)])
    assert (
        simulated(cfg.profile, cfg.profile_path, settings | {"tp": 1, "sp": 2}, [Request(0.0, 8, 2)])["requests"] == 1
    )


def test_validate_needs_a_server_and_rates(tmp_path: Path):
    port = free_port()
    r = CliRunner().invoke(app, ["recommend", "--validate", f"http://127.0.0.1:{port}", "--rate", "1"])
    assert r.exit_code != 0 and f"cannot reach the server at http://127.0.0.1:{port}" in r.output
    r = CliRunner().invoke(app, ["recommend", "--validate", "http://127.0.0.1:1"])
    assert r.exit_code != 0 and "--rate" in r.output


@pytest.fixture
def keyed_stub():
    """An HTTP server on 127.0.0.1 that wants `Bearer sekret` on /v1/*: lists a model, has no /v1/shifttune/live
    (404); records (path, authorization) of each request."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path.split("?")[0], self.headers.get("authorization")))
            ok = self.headers.get("authorization") == "Bearer sekret"
            status, body = (200, b'{"data": [{"id": "tiny"}]}') if self.path == "/v1/models" else (404, b"{}")
            self.send_response(status if ok else 401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_validate_says_what_the_api_key_did_and_takes_a_v1_url(keyed_stub, monkeypatch):
    url, seen = keyed_stub
    monkeypatch.delenv("SHIFTTUNE_API_KEY", raising=False)
    argv = ["recommend", "--validate", url + "/v1", "--rate", "1"]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and "answered 401: the server wants an API key (--api-key)" in r.output, r.output
    assert "HTTPStatusError" not in r.output and r.output.count("\n") == 1
    r = CliRunner().invoke(app, [*argv, "--api-key", "wrong"])
    assert r.exit_code == 2 and "answered 401: the server refused this --api-key" in r.output, r.output
    monkeypatch.setenv("SHIFTTUNE_API_KEY", "sekret")  # as `shifttune top` reads it
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and f"cannot read the server's settings from {url}/v1/shifttune/live:" in r.output
    assert seen[-2:] == [("/v1/models", "Bearer sekret"), ("/v1/shifttune/live", "Bearer sekret")]
    assert {path for path, _ in seen} == {"/v1/models", "/v1/shifttune/live"}  # never /v1/v1/...


def test_validate_explains_lengths_the_spread_made_too_long(tmp_path: Path, monkeypatch):
    """The server's context check sees the longest request --spread draws (3000 x 1.25 = 3750, 16 x 1.25 = 20)."""
    from shifttune.bench import validate as validate_module
    from shifttune.config import ConfigError

    def too_long(cfg):
        assert (cfg.input_len.hi, cfg.output_len.hi) == (3750, 20)
        raise ConfigError("3750 + 20 = 3770 tokens (prompt + max_tokens) is over the server's context of 2048 tokens",
                          "input_output_len")  # fmt: skip

    monkeypatch.setattr(validate_module, "validate", too_long)
    r = CliRunner().invoke(app, ["recommend", "--validate", "http://127.0.0.1:1", "--rate", "1", "--input-len", "3000",
                                 "--output-len", "16"])  # fmt: skip
    text = " ".join(r.output.split())
    assert r.exit_code == 2 and "--input-output-len" not in text, text
    assert text == (
        "error: --input-len 3000 + --output-len 16, spread by --spread 0.25 to at most 3750 + 20 tokens: "
        "3750 + 20 = 3770 tokens (prompt + max_tokens) is over the server's context of 2048 tokens"
    )


# ---- the simulation of the engine's loop (issue 12: what the profile's step times alone missed) ----------------


def test_graph_buckets_are_the_runners():
    """The simulation pads a step's tokens to the bucket whose CUDA graph the runner would replay."""
    from conftest import stand_in_step_graphs
    from shifttune.recommend.simulator import TOKEN_BUCKETS, GraphBuckets
    from shifttune.runner.cuda_graphs import TOKEN_BUCKETS as RUNNER_BUCKETS

    assert TOKEN_BUCKETS == RUNNER_BUCKETS
    for max_tokens, max_seqs, budget in [(2048, 256, 8192), (2048, 8, 8192), (1000, 256, 600)]:
        graphs = stand_in_step_graphs(4, 1, max_seqs, max_tokens=max_tokens, budget=budget)
        sim = GraphBuckets(max_tokens, max_seqs, budget)
        for t in [1, 3, 7, 8, 9, 200, 255, 256, 257, 600, 1000, 1024, 1025, 1038, 1500, 2048, 2049]:
            for n in {1, 2, min(t, 9), min(t, max_seqs), min(t, max_seqs + 1)}:
                runs = graphs.can_run(t, n, n, "tp")
                expected = next(b for b in graphs.buckets if b >= t) if runs else t
                assert sim.tokens(t, n, n) == expected, (t, n, max_tokens, max_seqs, budget)


def test_the_simulated_schedule_is_the_engines_with_and_without_async_scheduling():
    """The CPU engine and the simulator, the same requests added at the same loop iterations: the same steps
    (tokens per step) in the same order. With async scheduling the engine reads a step back in the next
    iteration, so a request that arrives while a step runs joins the step after the one already queued: its
    TTFT is two steps, one more than without."""
    from shifttune import LLM, SamplingParams
    from shifttune.engine.policy import FixedPolicy
    from shifttune.recommend.simulator import simulate
    from shifttune.recommend.workload import Request

    plan = [(1, 40, 8), (4, 25, 6), (5, 60, 5), (9, 10, 7)]  # (added before loop iteration j, prompt, output)
    for async_scheduling in (False, True):
        with LLM("tiny", async_scheduling=async_scheduling, max_num_batched_tokens=64,
                 enable_prefix_caching=False) as llm:  # fmt: skip
            engine, todo, calls, first = llm.llm_engine, list(plan), 0, {}
            while todo or engine.has_unfinished_requests():
                calls += 1
                while todo and todo[0][0] == calls:
                    j, n, o = todo.pop(0)
                    ids = [5 + (i * 7 + j) % 200 for i in range(n)]
                    engine.add_request(f"r{j}", ids, SamplingParams(temperature=0, max_tokens=o, ignore_eos=True))
                for out in engine.step():
                    if out.outputs[0].token_ids:
                        first.setdefault(int(out.request_id[1:]), calls)
            engine_steps = [s.shape.num_tokens for s in engine.stats.steps]
        # every step takes 1 ms; iteration i starts when step i - 1 ends (sync) or step i - 2 ends (async)
        lag = 2 if async_scheduling else 1
        sim_steps: list[int] = []
        res = simulate([Request(max(0, j - lag) * 1e-3, n, o) for j, n, o in plan], FixedPolicy("tp"),
                       lambda mode, t, c: sim_steps.append(t) or 1.0, kv_capacity_tokens=1 << 16,
                       max_num_batched_tokens=64, async_scheduling=async_scheduling)  # fmt: skip
        assert sim_steps == engine_steps
        assert first == {j: j + lag - 1 for j, _, _ in plan}  # the iteration that hands the first token over
        assert res.ttft_ms == pytest.approx([1.0, lag, lag, lag])  # the first found the engine idle


def test_async_scheduling_costs_a_request_that_arrives_while_busy_one_step():
    """10 ms steps; a second request arrives 5 ms into a decode step of the first. Synchronous: it joins the next
    step (TTFT 5 + 10). Async: the next step is already queued, it joins the one after (5 + 10 + 10)."""
    from shifttune.engine.policy import FixedPolicy
    from shifttune.recommend.simulator import simulate
    from shifttune.recommend.workload import Request

    reqs = [Request(0.0, 100, 50), Request(0.055, 100, 5)]
    ten = lambda mode, t, c: 10.0  # noqa: E731
    sync = simulate(reqs, FixedPolicy("tp"), ten, kv_capacity_tokens=1 << 16)
    asyn = simulate(reqs, FixedPolicy("tp"), ten, kv_capacity_tokens=1 << 16, async_scheduling=True)
    assert sorted(sync.ttft_ms) == pytest.approx([10.0, 15.0])
    assert sorted(asyn.ttft_ms) == pytest.approx([10.0, 25.0])
    assert sync.tpot_ms == pytest.approx(asyn.tpot_ms)  # the steady state is the same
    assert sorted(asyn.queue_ms) == pytest.approx([0.0, 5.0]) and sorted(asyn.engine_ms) == pytest.approx([10, 20])


def test_the_simulation_reads_a_prompts_last_step_back_before_an_eager_step():
    """The engine's rule (`LLMEngine.step`): a step in which a prompt ends is read back before an eager step is
    scheduled, so prompts that arrived while it ran share the next step (not one step each, queued behind it)."""
    from shifttune.engine.policy import FixedPolicy
    from shifttune.recommend.simulator import simulate
    from shifttune.recommend.workload import Request

    seen: list[int] = []
    step = lambda mode, t, c: seen.append(t) or (10.0 if t <= 2048 else 100.0)  # noqa: E731
    reqs = [Request(0.0, 10, 40), Request(0.05, 3000, 2), Request(0.06, 3000, 2), Request(0.1, 3000, 2)]
    res = simulate(reqs, FixedPolicy("tp"), step, kv_capacity_tokens=1 << 16, cuda_graph_max_tokens=2048,
                   async_scheduling=True)  # fmt: skip
    assert seen[:8] == [16, 1, 1, 1, 1, 1, 3001, 6002]  # decode + 3000; then 2 decodes + both later prompts
    assert sorted(res.ttft_ms) == pytest.approx([10.0, 110.0, 160.0, 200.0])
    # the step of the first request's second token ends no prompt: the 3000-token step is queued behind it at once
    seen.clear()
    reqs = [Request(0.0, 10, 40), Request(0.005, 3000, 2), Request(0.015, 3000, 2)]
    res = simulate(reqs, FixedPolicy("tp"), step, kv_capacity_tokens=1 << 16, cuda_graph_max_tokens=2048,
                   async_scheduling=True)  # fmt: skip
    assert seen[:4] == [16, 1, 3001, 3002] and sorted(res.ttft_ms) == pytest.approx([10.0, 115.0, 205.0])


def test_graph_padding_and_host_time_in_the_simulation():
    """A 1000-token prompt runs the 1024-token graph; with another request decoding, 1001 tokens run it too;
    the server's host time per request adds to TTFT and E2E, not to TPOT."""
    from shifttune.engine.policy import FixedPolicy
    from shifttune.recommend.simulator import simulate
    from shifttune.recommend.workload import Request

    seen: list[int] = []
    step = lambda mode, t, c: seen.append(t) or 1.0 + 0.01 * t  # noqa: E731
    lone = simulate([Request(0.0, 1000, 3)], FixedPolicy("tp"), step, kv_capacity_tokens=1 << 16,
                    cuda_graph_max_tokens=2048, async_scheduling=True, ingress_ms=2.0, egress_ms=3.0)  # fmt: skip
    assert seen == [1024, 1, 1] and lone.ttft_ms == pytest.approx([2.0 + 11.24 + 3.0])
    assert lone.tpot_ms == pytest.approx([1.01]) and lone.e2e_ms == pytest.approx([2.0 + 11.24 + 2 * 1.01 + 3.0])
    seen.clear()
    simulate([Request(0.0, 10, 20), Request(0.005, 1000, 2)], FixedPolicy("tp"), step, kv_capacity_tokens=1 << 16,
             cuda_graph_max_tokens=2048)  # fmt: skip
    assert seen[0] == 16 and 1024 in seen and 1001 not in seen  # the 10-token prompt ran the 16-token graph


def test_profile_steps_are_linear_between_measured_token_counts():
    from shifttune.engine.step_model import StepTimeModel
    from shifttune.recommend.simulator import profile_step_ms
    from test_recommend import synthetic_profile

    prof = synthetic_profile(lambda t, c: 1.0 + t, lambda t, c: 2.0 + t)
    m = StepTimeModel(prof, "tp", 1, 2)
    step = profile_step_ms({"tp": m})
    xs = sorted({t for xs, _ in m.curves.values() for t in xs})
    lo, hi = next((a, b) for a, b in zip(xs, xs[1:]) if b - a > 2)
    mid = (lo + hi) // 2
    assert step("tp", lo, 512) == pytest.approx(m.predict(lo, 512))
    assert step("tp", mid, 512) == pytest.approx(1.0 + mid)  # the profile's curve is affine: exact
    assert step("tp", xs[-1] * 2, 512) == pytest.approx(m.predict(xs[-1] * 2, 512))


def test_the_simulation_gives_each_request_its_ttft_in_the_order_given():
    """`SimResult.ttft_by_request` is keyed by the request's index in the list passed, whatever the arrival order."""
    from shifttune.engine.policy import FixedPolicy
    from shifttune.recommend.simulator import simulate
    from shifttune.recommend.workload import Request

    reqs = [Request(0.5, 100, 2), Request(0.0, 100, 2), Request(0.2, 100, 2)]  # listed out of arrival order
    res = simulate(reqs, FixedPolicy("tp"), lambda mode, t, c: 10.0, kv_capacity_tokens=1 << 16)
    assert set(res.ttft_by_request) == {0, 1, 2} and sorted(res.ttft_by_request.values()) == sorted(res.ttft_ms)
    assert res.ttft_by_request[1] == pytest.approx(10.0)  # the first to arrive found the engine idle
