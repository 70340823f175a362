"""`shifttune recommend`: planner on synthetic profiles with known crossovers, the simulator against
closed forms, the profile-driven policy in the engine, and the CLI (Typer runner) end to end."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shifttune import LLM, SamplingParams
from shifttune.cli import app
from shifttune.engine.policy import FixedPolicy
from shifttune.engine.profile_schema import Factorization, Point, Profile, load_profile
from shifttune.engine.step_model import StepTimeModel
from shifttune.recommend.launch import validate_arctic
from shifttune.recommend.planner import plan
from shifttune.recommend.simulator import simulate
from shifttune.recommend.workload import Request, Workload

TOKENS = [2**k for k in range(13)]  # 1 .. 4096


def synthetic_profile(tp_ms, sp_ms, contexts=(512, 2048), world=(2, 1, 1, 2), name="tiny") -> Profile:
    """TP mode at (P, 1) and SP x TP mode at (tp, sp) with step times from the given functions of (T, C)."""
    p, _, tp, sp = world
    points = []
    for c in contexts:
        for t in TOKENS:
            points.append(Point("tp", p, 1, t, c, t, 1, tp_ms(t, c), tp_ms(t, c), tp_ms(t, c)))
            points.append(Point("sp", tp, sp, t, c, t, 1, sp_ms(t, c), sp_ms(t, c), sp_ms(t, c)))
    facts = [
        Factorization(p, 1, True, None, {"tp": 100, "sp": 0}, 10**6, 10),
        Factorization(tp, sp, True, None, {"tp": 100, "sp": 200}, 10**6, 10),
    ]
    return Profile(
        hardware={"device": "cuda", "gpu_name": "test GPU", "gpu_count": p},
        software={},
        engine={"block_size": 16},
        model={"name": name, "num_heads": 8},
        grid={"tokens": TOKENS, "contexts": list(contexts)},
        factorizations=facts,
        points=points,
    )


def test_planner_finds_the_known_crossover():
    # TP: 5 + 0.02 T ms, SP x TP: 7 + 0.01 T ms -> they cross at T = 200
    prof = synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 7 + 0.01 * t, name="llama-3.1-8b")
    result = plan(prof)
    assert (result.best_tp, result.best_sp) == (1, 2)
    assert 180 <= result.threshold <= 210  # log-interpolated curves put it at ~189
    assert not result.threshold_depends_on_context
    assert "--shift-parallel-threshold %d" % result.threshold in result.launch["vllm_arctic"]
    assert "--max-num-seqs" not in result.launch["vllm_arctic"]  # vLLM's default 1024 divides by SP = 2


def test_planner_reports_context_dependence_and_never():
    # SP's fixed cost grows with context: crossover 200 at C=512, 1100 at C=2048
    prof = synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: (7 if c == 512 else 16) + 0.01 * t)
    result = plan(prof)
    assert result.threshold_depends_on_context
    assert any("moves with context" in n for n in result.notes)
    never = plan(synthetic_profile(lambda t, c: 1 + 0.01 * t, lambda t, c: 2 + 0.02 * t))
    assert (never.best_tp, never.best_sp, never.threshold) == (2, 1, None)
    assert any("never faster" in n for n in never.notes)


def test_arctic_constraints():
    assert validate_arctic(4, 2, 8, 64, 256) == []
    assert validate_arctic(4, 2, 4, 64, 256) and validate_arctic(2, 4, 8, 64, 254) and validate_arctic(2, 2, 4, 6, 256)


def test_simulator_matches_m_d_1():
    """One request at a time, deterministic service D, Poisson arrivals: mean wait = rho D / (2 (1 - rho))."""
    d_ms, rho = 10.0, 0.5
    reqs = Workload(rate=rho / (d_ms / 1e3), num_requests=20000, input_len=16, output_len=1, seed=1).requests()
    res = simulate(reqs, FixedPolicy("tp"), lambda mode, t, c: d_ms, kv_capacity_tokens=1 << 20, max_num_seqs=1)
    expected = d_ms + rho * d_ms / (2 * (1 - rho))
    assert statistics.mean(res.ttft_ms) == pytest.approx(expected, rel=0.04)
    assert res.steps_per_mode == {"tp": 20000, "sp": 0}


def test_simulator_single_request_is_prefill_then_decode_steps():
    step = lambda mode, t, c: 1.0 + 0.01 * t  # noqa: E731
    res = simulate([Request(0.0, 1000, 5)], FixedPolicy("tp"), step, kv_capacity_tokens=4096)
    assert res.ttft_ms == [pytest.approx(11.0)]  # one 1000-token prefill step
    assert res.tpot_ms == [pytest.approx(1.01)]  # then 1-token decode steps
    assert res.e2e_ms == [pytest.approx(11.0 + 4 * 1.01)]


def test_simulator_on_a_huge_kv_cache_is_quick_and_unchanged():
    """A tiny model on a big card has millions of KV blocks; the simulator used to build a free list of all of them
    (minutes, gigabytes): `recommend --gpus 4xH200` on the default model hung. Past what the running sequences can
    hold the cache never binds, so the schedule is the same as with a merely large cache."""
    import time

    step = lambda mode, t, c: 1.0 + 0.01 * t  # noqa: E731
    reqs = Workload(rate=50.0, num_requests=300, input_len=200, output_len=20, seed=3).requests()
    t0 = time.perf_counter()
    huge = simulate(reqs, FixedPolicy("tp"), step, kv_capacity_tokens=1 << 34, max_num_seqs=64)
    assert time.perf_counter() - t0 < 20
    large = simulate(reqs, FixedPolicy("tp"), step, kv_capacity_tokens=1 << 20, max_num_seqs=64)
    assert huge.ttft_ms == large.ttft_ms and huge.e2e_ms == large.e2e_ms


def test_step_model_interpolates_and_extrapolates():
    prof = synthetic_profile(lambda t, c: 1.0 + t, lambda t, c: 2.0 + t)
    m = StepTimeModel(prof, "tp", 1, 2)
    assert m.predict(64, 512) == pytest.approx(65)
    assert m.predict(8192, 512) == pytest.approx(4097 * 2)  # proportional past the grid
    # linear in tokens between 64 and 128; contexts are equal here, so C=1000 changes nothing
    assert m.predict(96, 1000) == pytest.approx(97)
    assert m.predict(0.5, 512) == pytest.approx(2.0)  # flat below the grid


def test_profile_policy_in_the_engine(tmp_path):
    from shifttune.config import load_model_config, resolve_model_path
    from shifttune.engine.profile_schema import model_summary

    path = tmp_path / "p.json"
    prof = synthetic_profile(lambda t, c: 1 + 0.1 * t, lambda t, c: 2 + 0.01 * t)  # SP faster above ~11 tokens
    prof.model = model_summary("tiny", load_model_config(resolve_model_path("tiny"))[0], "float32")  # the engine checks
    prof.save(path)
    with LLM("tiny", sequence_parallel_size=2, shift_policy="profile", shift_profile=str(path)) as llm:
        llm.generate(
            [[0] + list(range(5, 40)), [0, 7, 8]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        )
        for s in llm.llm_engine.stats.steps:
            assert s.mode == ("sp" if s.shape.num_tokens > 11 else "tp")
        assert {s.mode for s in llm.llm_engine.stats.steps} == {"tp", "sp"}


def test_cli_recommend_json_plot_and_prediction(tmp_path):
    path = tmp_path / "p.json"
    synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 7 + 0.01 * t, name="llama-3.1-8b").save(path)
    png = tmp_path / "plot.png"
    result = CliRunner().invoke(
        app,
        [
            "recommend",
            "--profile",
            str(path),
            "--json",
            "--plot",
            str(png),
            "--rate",
            "20",
            "--input-len",
            "512",
            "--output-len",
            "16",
            "--num-requests",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["best_sp"] == 2 and 180 <= data["threshold"] <= 210
    labels = [p["label"] for p in data["predictions"]]
    assert labels[0] == "TP only" and any(label.startswith("shift") for label in labels)
    assert all(p["requests"] == 50 for p in data["predictions"])
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    text = CliRunner().invoke(app, ["recommend", "--profile", str(path)])
    assert text.exit_code == 0 and "SP=2 x TP=1" in text.output and "vllm" in text.output


def test_cli_recommend_refuses_bad_input(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    r = CliRunner().invoke(app, ["recommend", "--profile", str(bad)])
    assert r.exit_code == 2 and "not a shifttune profile" in r.output
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "4"])
    assert r.exit_code == 2 and "no shipped profile" in r.output


def test_shipped_cpu_profile_is_the_embedded_default():
    from shifttune.recommend.shipped import SHIPPED_DIR

    prof = load_profile(SHIPPED_DIR / "tiny_cpux2.json")
    assert prof.model["name"] == "tiny" and prof.world_size == 2
    r = CliRunner().invoke(app, ["recommend"])
    assert r.exit_code == 0 and "tiny" in r.output


def test_cli_rate_sweep_and_trace(tmp_path):
    path = tmp_path / "p.json"
    synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 7 + 0.01 * t).save(path)
    r = CliRunner().invoke(
        app,
        [
            "recommend",
            "--profile",
            str(path),
            "--json",
            "--rate",
            "5,50",
            "--input-len",
            "512",
            "--output-len",
            "8",
            "--num-requests",
            "40",
        ],
    )
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)["predictions"]
    assert sorted({p["rate"] for p in preds}) == [5.0, 50.0]
    # more load, longer queues: TP-only TTFT grows with the rate
    ttft = {p["rate"]: p["ttft_p50_ms"] for p in preds if p["label"] == "TP only"}
    assert ttft[50.0] > ttft[5.0]
    trace = tmp_path / "trace.csv"
    trace.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,396,109\n"
        "2023-11-16 18:15:51.2000000,879,7\n"
    )
    r = CliRunner().invoke(app, ["recommend", "--profile", str(path), "--json", "--trace", str(trace)])
    assert r.exit_code == 0, r.output
    preds = json.loads(r.output)["predictions"]
    assert all(p["requests"] == 3 and p["rate"] is None for p in preds)
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    r = CliRunner().invoke(app, ["recommend", "--profile", str(path), "--trace", str(bad)])
    assert r.exit_code == 2 and "not an Azure LLM inference trace" in r.output


def test_simulator_against_the_cpu_engine(tmp_path):
    """The simulator, fed the step times the CPU engine itself reports, predicts that engine's own
    request timeline: same steps, same modes, and TTFTs within the CPU's timing noise."""
    from shifttune.engine.policy import ThresholdPolicy

    prompts = [[0] + [5 + i % 50] * n for i, n in enumerate([40, 12, 70, 25, 9, 33])]
    with LLM(
        "tiny", sequence_parallel_size=2, shift_threshold=16, max_num_batched_tokens=64, enable_prefix_caching=False
    ) as llm:
        engine = llm.llm_engine
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6, ignore_eos=True))
        steps = list(engine.stats.steps)
    durations = iter(s.duration_s * 1e3 for s in steps)
    reqs = [Request(0.0, len(p), 6) for p in prompts]
    res = simulate(
        reqs,
        ThresholdPolicy(16),
        lambda mode, t, c: next(durations),
        kv_capacity_tokens=1 << 16,
        max_num_seqs=256,
        max_num_batched_tokens=64,
    )
    assert sum(res.steps_per_mode.values()) == len(steps)
    assert res.steps_per_mode == {m: sum(s.mode == m for s in steps) for m in ("tp", "sp")}
    measured_ttft = sorted(1e3 * (o.metrics["first_token_time"] - o.metrics["arrival_time"]) for o in outs)
    for sim, real in zip(sorted(res.ttft_ms), measured_ttft):
        assert sim == pytest.approx(real, rel=0.35, abs=15)  # host work between steps is not simulated


def test_cpu_end_to_end_profile_then_recommend(tmp_path):
    out = tmp_path / "p.json"
    r = CliRunner().invoke(
        app,
        [
            "profile",
            "--device",
            "cpu",
            "--gpus",
            "2",
            "--tokens",
            "1,8,64,256",
            "--contexts",
            "64,256",
            "--iters",
            "3",
            "--out",
            str(out),
            "--no-tui",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        app,
        [
            "recommend",
            "--profile",
            str(out),
            "--json",
            "--rate",
            "2,20",
            "--input-len",
            "100",
            "--output-len",
            "8",
            "--num-requests",
            "30",
        ],
    )
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["world_size"] == 2 and {(f["tp"], f["sp"]) for f in data["factorizations"]} == {(2, 1), (1, 2)}
    assert len(data["predictions"]) == 2 * (4 if data["best_sp"] == 2 else 1)
    text = CliRunner().invoke(
        app,
        [
            "recommend",
            "--profile",
            str(out),
            "--rate",
            "2,20",
            "--input-len",
            "100",
            "--output-len",
            "8",
            "--num-requests",
            "30",
            "--slo-ttft",
            "100000",
        ],
    )
    assert text.exit_code == 0 and "meets the SLO up to 20 req/s" in text.output


def test_planner_when_sp_never_wins_at_the_context_or_wins_everywhere(tmp_path):
    # SP wins at 512 above ~131 tokens but never at 2048
    mixed = synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: (7 + 0.005 * t) if c == 512 else (6 + 0.03 * t))
    path = tmp_path / "m.json"
    mixed.save(path)
    r = plan(mixed, context=2048, profile_path=str(path))
    assert r.threshold is None and r.threshold_depends_on_context
    assert any("never beats TP" in n for n in r.notes)
    assert "vllm_arctic" not in r.launch and "shift_policy='profile'" in r.launch["shifttune_python_profile_policy"]
    everywhere = plan(synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 1 + 0.01 * t, name="llama-3.1-8b"))
    assert everywhere.threshold == 0 and "--enable-shift-parallel" not in everywhere.launch["vllm_arctic"]
    assert "shift_policy='sp'" in everywhere.launch["shifttune_python"]


def test_simulator_refuses_what_it_cannot_run():
    from shifttune.config import ConfigError

    step = lambda mode, t, c: 1.0  # noqa: E731
    with pytest.raises(ConfigError, match="exceeds the KV cache"):  # 1000 tokens fit, 63 blocks of 16 do not
        simulate([Request(0.0, 990, 10)], FixedPolicy("tp"), step, kv_capacity_tokens=1000)
    with pytest.raises(ConfigError, match="positive number"):
        Workload(rate=float("nan")).requests()


def test_cli_refuses_bad_recommend_arguments():
    for args, message in [
        (["--rate", "nan"], "--rate: must be positive finite numbers"),
        (["--plot", "x.txt"], "must end in"),
        (["--context", "0"], "--context: must be >= 1"),
        (["--spread", "2", "--rate", "1"], "--spread: must be in [0, 1)"),
    ]:
        r = CliRunner().invoke(app, ["recommend", *args])
        assert r.exit_code == 2 and message in r.output, (args, r.output)


def test_recommend_refuses_a_model_or_gpus_beside_a_profile(tmp_path):
    """The profile says which model and GPUs it measured; --model / --gpus beside it were silently ignored."""
    from shifttune.recommend.shipped import pick_shipped_profile

    shipped = str(pick_shipped_profile(None, None, None))
    for extra in (["--model", "llama-3.1-8b"], ["--gpus", "8xH100"]):
        r = CliRunner().invoke(app, ["recommend", "--profile", shipped, *extra])
        assert r.exit_code == 2 and "only without --profile" in r.output, r.output


def test_recommend_out_saves_what_json_prints(tmp_path):
    """--out used to write only with --validate; without it, it silently wrote nothing."""
    out = tmp_path / "rec.json"
    r = CliRunner().invoke(app, ["recommend", "--out", str(out)])
    assert r.exit_code == 0, r.output
    printed = CliRunner().invoke(app, ["recommend", "--json"])
    assert json.loads(out.read_text()) == json.loads(printed.output)


def test_floors_of_a_profile_measured_without_them():
    """`fill_floors`: a TP decode step reads this rank's weights and its sequences' K/V; the matmul floor grows with
    the step's tokens; a saved profile keeps the floors and the loader refuses a bad one."""
    from shifttune.engine.profile_schema import ProfileError, profile_from_dict
    from shifttune.profile.step_timing import Ceilings, fill_floors

    prof = synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 7 + 0.01 * t, name="llama-3.1-8b")
    prof.factorizations[0].weight_bytes_per_rank = {"tp": 8 * 10**9, "sp": 0}
    prof.factorizations[1].weight_bytes_per_rank = {"tp": 8 * 10**9, "sp": 16 * 10**9}
    assert fill_floors(prof, Ceilings(1e12, 1e14)) == len(prof.points)
    decode = next(p for p in prof.points if (p.mode, p.tokens, p.context) == ("tp", 1, 2048))
    kv = 2 * 32 * (8 // 2) * 128 * 2 * 2048  # K and V, 32 layers, 4 of the 8 KV heads on each of 2 ranks, bf16
    assert decode.bandwidth_floor_ms == pytest.approx(1e3 * (8e9 + kv) / 1e12)
    assert decode.floor_ms == decode.bandwidth_floor_ms
    sp = {p.tokens: p for p in prof.points if p.mode == "sp" and p.context == 2048}
    assert 3.5 < sp[1024].matmul_floor_ms / sp[256].matmul_floor_ms <= 4.0
    assert sp[1].bandwidth_floor_ms == pytest.approx(1e3 * (16e9 + kv) / 1e12)  # the SP layout's weights (TP 1)
    data = prof.to_dict()
    assert profile_from_dict(data, "x").points[0].matmul_floor_ms == prof.points[0].matmul_floor_ms
    data["points"][0]["matmul_floor_ms"] = -1.0
    with pytest.raises(ProfileError, match="matmul_floor_ms must be a positive number"):
        profile_from_dict(data, "x")
    data["points"][0]["matmul_floor_ms"] = 1.0
    data["ceilings"] = {"source": "hand-written"}
    with pytest.raises(ProfileError, match="ceilings lacks 'hbm_bytes_per_s'"):
        profile_from_dict(data, "x")


# ---- defects from a review of `recommend` ------------------------------------------------------------------------
TRACE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def _one_line_error(r, message: str) -> None:
    assert r.exit_code == 2 and message in r.output, r.output
    assert r.output.strip().count("\n") == 0 and "Traceback" not in r.output, r.output


def test_default_rate_fits_the_kv_cache_and_overload_is_said():
    """llama-3.3-70b on 2xH100 holds ~32.6k KV tokens (14 sequences of 2048 + 256), not 256 full decode batches: the
    default rate was 1.6 req/s, past what TP mode sustains there (325 of 410 output tok/s), with TTFTs of 25 s / 54 s
    printed as if they were a steady state."""
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "2xH100", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    [pred] = data["predictions"]
    assert pred["rate"] < 1.0 and not pred["overloaded"] and pred["ttft_p50_ms"] < 2000
    assert any("its KV cache holds 14 such sequences" in n for n in data["notes"])
    assert not any("overloaded" in n for n in data["notes"])
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "2xH100", "--rate", "1.6",
                                 "--slo-ttft", "1000000", "--json"])  # fmt: skip
    data = json.loads(r.output)
    [pred] = data["predictions"]
    assert pred["overloaded"] and not pred["meets_slo"]  # its p99 TTFT (~54 s) is under 1000 s only for 300 requests
    assert any(n.startswith("TP only at 1.6 req/s is overloaded: its queue grows") for n in data["notes"])
    text = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "2xH100", "--rate", "1.6"])
    assert "│ TP only │ overloaded " in text.output and "25410.1" not in text.output  # no TTFTs in the table


def test_overloaded_says_whether_the_queue_grows():
    from shifttune.recommend.planner import overloaded

    step = lambda mode, t, c: 10.0  # noqa: E731  one request at a time, 10 ms each: it serves 100 req/s
    for rate, expected in ((50.0, False), (90.0, False), (150.0, True)):
        reqs = Workload(rate=rate, num_requests=2000, input_len=16, output_len=1, seed=1).requests()
        res = simulate(reqs, FixedPolicy("tp"), step, kv_capacity_tokens=1 << 20, max_num_seqs=1)
        assert overloaded(reqs, res) is expected, rate


def test_recommend_refuses_requests_past_the_models_context(tmp_path):
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "4xH200", "--input-len", "200000",
                                 "--rate", "1"])  # fmt: skip
    _one_line_error(
        r,
        "--input-len 200000 + --output-len 256 (default) exceed llama-3.3-70b's maximum context of "
        "131072 tokens; pass smaller ones",
    )
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "4xH200", "--input-len", "130000",
                                 "--rate", "1"])  # fmt: skip
    _one_line_error(r, "--input-len 130000 + --output-len 256 (default) with --spread 0.25: requests reach")
    trace = tmp_path / "trace.csv"  # the shipped CPU profile's tiny model: 2048 positions
    trace.write_text(TRACE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n2023-11-16 18:15:50.9951690,2000,100\n")
    r = CliRunner().invoke(app, ["recommend", "--trace", str(trace)])
    _one_line_error(r, "--trace: 1 of its 2 requests exceed tiny's maximum context of 2048 tokens")


def test_recommend_caps_a_sliding_window_models_context_as_the_engine_does(tmp_path):
    """A Mistral v0.1-style config (a 4096-token window, 32768 positions): the engine caps max_model_len at the window,
    so recommend's context check does too; a window flag that is off leaves the positions."""
    from shifttune.config import EngineConfig
    from shifttune.recommend.report import max_context

    src = Path(__file__).resolve().parents[1] / "shifttune/model/configs/mistral-7b-v0.3/config.json"
    model = tmp_path / "mistral-window"
    model.mkdir()
    model.joinpath("config.json").write_text(json.dumps(json.loads(src.read_text()) | {"sliding_window": 4096}))
    assert max_context(str(model)) == 4096 == EngineConfig(model=str(model), device="cpu").max_model_len
    assert max_context("qwen2.5-7b") == 32768  # use_sliding_window false: its 131072 window does not apply


def test_no_shift_advice_says_shifttune_keeps_both_copies():
    """`shifttune generate --tp 1 --sp 2 --policy sp` still loads TP mode's weights (`ModelRunner` builds both layouts
    whenever SP > 1): only vLLM with Arctic Inference, without shifting, drops the second copy."""
    data = json.loads(CliRunner().invoke(app, ["recommend", "--json"]).output)
    [note] = [n for n in data["notes"] if n.startswith("SP x TP wins at every step size")]
    assert "no second copy of the weights needed" not in note and "shifttune's engine still loads both" in note


def test_recommend_refuses_flags_it_would_drop(tmp_path, monkeypatch):
    trace = tmp_path / "trace.csv"
    trace.write_text(TRACE_HEADER + "2023-11-16 18:15:46.6805900,374,44\n")
    r = CliRunner().invoke(app, ["recommend", "--trace", str(trace), "--rate", "3,4"])
    _one_line_error(r, "--rate: not with --trace")
    r = CliRunner().invoke(app, ["recommend", "--trace", str(trace), "--input-len", "100", "--burstiness", "0.5"])
    _one_line_error(r, "--input-len, --burstiness: not with --trace")
    r = CliRunner().invoke(app, ["recommend", "--trace", str(trace), "--num-requests", "1", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["predictions"][0]["requests"] == 1
    for bad in ("1,,2", "1,2,", ""):
        _one_line_error(CliRunner().invoke(app, ["recommend", "--rate", bad]), "--rate takes comma-separated numbers")
    url = "http://127.0.0.1:1"
    r = CliRunner().invoke(app, ["recommend", "--validate", url, "--rate", "1", "--plot", str(tmp_path / "v.png")])
    _one_line_error(r, "--plot: not with --validate")
    r = CliRunner().invoke(app, ["recommend", "--validate", url, "--rate", "1", "--context", "4096", "--slo-ttft", "9"])
    _one_line_error(r, "--context, --slo-ttft: not with --validate")
    monkeypatch.setattr("shifttune.bench.validate.validate", lambda cfg: {"url": cfg.base_url, "rows": []})
    r = CliRunner().invoke(app, ["recommend", "--validate", url, "--rate", "1", "--input-len", "40", "--json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)  # JSON only: no table
    assert data["rows"] == [] and data["command"].startswith(f"shifttune recommend --validate {url} --rate 1 ")


def test_recommend_says_when_the_simulated_steps_are_past_the_profiled_step_sizes():
    """The shipped CPU profile measures steps of up to 1024 tokens; a 1500-token prompt is one step of ~1500 tokens,
    whose time is the 1024-token step's scaled up: said like a context outside the profile."""
    long = json.loads(CliRunner().invoke(app, ["recommend", "--json", "--rate", "1", "--input-len", "1500",
                                               "--output-len", "8", "--num-requests", "20"]).output)  # fmt: skip
    [note] = [n for n in long["notes"] if "profiled step" in n]
    assert "past the largest profiled step (1024 tokens)" in note and "extrapolated in proportion to tokens" in note
    short = json.loads(CliRunner().invoke(app, ["recommend", "--json", "--rate", "1", "--input-len", "200",
                                                "--output-len", "8", "--num-requests", "20"]).output)  # fmt: skip
    assert not any("profiled step" in n for n in short["notes"])
    # measured at 1 token a step only: every prefill is a scaled decode step
    prof = synthetic_profile(lambda t, c: 5 + 0.02 * t, lambda t, c: 7 + 0.01 * t)
    prof.points = [p for p in prof.points if p.tokens == 1]
    result = plan(prof, workloads=[Workload(rate=1, num_requests=10, input_len=50, output_len=4, spread=0)])
    assert any("the simulated steps reach 50 tokens, past the largest profiled step (1 tokens)" in n
               for n in result.notes), result.notes  # fmt: skip
    assert plan(prof).notes == [n for n in result.notes if "profiled step" not in n]  # no simulation, no note
