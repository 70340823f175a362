"""`shifttune profile`: the CPU end to end run, resume, the schema round trip and refusal of bad files."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from shifttune.cli import app
from shifttune.engine.profile_schema import ProfileError, load_profile, profile_from_dict
from shifttune.profile.profiler import ProfileSettings, factorizations, run_profile

SMALL = dict(model="tiny", ranks=2, device="cpu", tokens=[1, 8, 64], contexts=[64, 128], warmup=0, iters=2)


@pytest.fixture(scope="module")
def cpu_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("prof") / "tiny.json"
    events = []
    prof = run_profile(ProfileSettings(**SMALL), out, "test", events.append)
    return out, prof, events


def test_profile_measures_every_factorization_and_mode(cpu_profile):
    out, prof, events = cpu_profile
    assert [(f.tp, f.sp, f.feasible) for f in prof.factorizations] == [(2, 1, True), (1, 2, True)]
    tp_points = {(p.tokens, p.context) for p in prof.points if p.mode == "tp"}
    sp_points = {(p.tokens, p.context) for p in prof.points if p.mode == "sp"}
    grid = {(t, c) for t in SMALL["tokens"] for c in SMALL["contexts"]}
    assert tp_points == sp_points == grid
    assert all(p.tp * p.sp == 2 and p.median_ms > 0 and p.p10_ms <= p.median_ms <= p.p90_ms for p in prof.points)
    assert all((p.tp, p.sp) == (2, 1) for p in prof.points if p.mode == "tp")
    assert events[-1].done == events[-1].total == len(prof.points)
    f = prof.factorizations[1]
    assert f.weight_bytes_per_rank["sp"] > f.weight_bytes_per_rank["tp"] > 0 and f.kv_capacity_tokens > 0
    assert load_profile(out).to_dict() == prof.to_dict()  # what was saved is what was returned


def test_rerun_resumes_without_measuring_again(cpu_profile, tmp_path):
    out, prof, _ = cpu_profile
    partial = tmp_path / "partial.json"
    data = prof.to_dict()
    data["points"] = data["points"][:5]  # as if Ctrl-C came after five points
    partial.write_text(json.dumps(data))
    events = []
    again = run_profile(ProfileSettings(**SMALL), partial, "test", events.append)
    assert len(again.points) == len(prof.points)
    assert again.points[:5] == load_profile(out).points[:5]  # kept, not re-measured
    assert sum(e.point is not None for e in events) == len(prof.points) - 5
    with pytest.raises(ProfileError, match="other settings"):
        run_profile(ProfileSettings(**(SMALL | {"contexts": [64]})), partial, "test")


def test_floors_on_gpus_only_and_for_every_point_of_a_resumed_profile(cpu_profile, tmp_path, monkeypatch):
    """A CPU profile has no ceilings and no floors; resuming a profile that has none where ceilings are known (as
    on a GPU) gives the points measured before the floors too."""
    import shifttune.profile.profiler as profiler
    from shifttune.profile.step_timing import Ceilings

    _, prof, _ = cpu_profile
    assert prof.ceilings == {} and all(p.floor_ms is None for p in prof.points)
    partial = tmp_path / "partial.json"
    data = prof.to_dict()
    data["points"] = data["points"][:5]
    partial.write_text(json.dumps(data))
    monkeypatch.setattr(profiler, "_ceilings", lambda settings, profile: Ceilings(1e12, 1e14))
    again = run_profile(ProfileSettings(**SMALL), partial, "test")
    assert again.ceilings["hbm_bytes_per_s"] == 1e12 and len(again.points) == len(prof.points)
    assert all(p.bandwidth_floor_ms > 0 and p.matmul_floor_ms > 0 for p in again.points)
    assert load_profile(partial).points[0].floor_ms == again.points[0].floor_ms


def test_factorizations_and_infeasible_ones_are_listed(tmp_path):
    assert factorizations(4) == [(4, 1), (2, 2), (1, 4)]
    # the tiny model has 8 heads and 2 KV heads: P = 8 works, with each KV head replicated 4 ways
    from shifttune.profile.profiler import check_factorization

    assert check_factorization(ProfileSettings(**(SMALL | {"ranks": 8})), 4, 2) is None
    assert "do not divide" in check_factorization(ProfileSettings(**(SMALL | {"ranks": 3})), 3, 1)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("schema"), "not a shifttune profile"),
        (lambda d: d.update(version=99), "version 99"),
        (lambda d: d.pop("hardware"), "lacks 'hardware'"),
        (lambda d: d["points"][0].update(mode="dp"), "mode must be"),
        (lambda d: d["points"][0].update(median_ms=-1.0), "positive number"),
        (lambda d: d["points"][0].update(tokens="8"), "should be int"),
        (lambda d: d["points"].append(dict(d["points"][0])), "repeats the point"),
    ],
)
def test_bad_profiles_are_refused_with_one_message(cpu_profile, mutate, message):
    data = cpu_profile[1].to_dict()
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(data)


def test_not_json_is_refused(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "missing.json")
    with pytest.raises(ProfileError, match="is a folder; give the JSON file"):  # it said "does not exist"
        load_profile(tmp_path)


def test_cli_profile_on_cpu(tmp_path):
    out = tmp_path / "cli.json"
    result = CliRunner().invoke(
        app,
        [
            "profile",
            "--device",
            "cpu",
            "--gpus",
            "2",
            "--tokens",
            "1,16",
            "--contexts",
            "64",
            "--iters",
            "2",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(load_profile(out).points) == 4
    # the runs asked for are the runs made, also where they equal the GPU defaults (CPU used to cut 10 to 3)
    ten = ["--iters", "10", "--warmup", "3", "--out", str(tmp_path / "ten.json")]
    asked = CliRunner().invoke(
        app, ["profile", "--device", "cpu", "--gpus", "1", "--tokens", "1", "--contexts", "64", *ten]
    )
    assert asked.exit_code == 0, asked.output
    settings = json.loads((tmp_path / "ten.json").read_text())["engine"]
    assert (settings["iters"], settings["warmup"]) == (10, 3), settings
    bad = CliRunner().invoke(app, ["profile", "--device", "cpu", "--gpus", "3", "--out", str(tmp_path / "x.json")])
    assert bad.exit_code == 2 and "no SP x TP factorization of 3 can run" in bad.output


def test_ctrl_c_keeps_points_and_the_same_command_resumes(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "p.json"
    cmd = [
        sys.executable,
        "-m",
        "shifttune.cli",
        "profile",
        "--device",
        "cpu",
        "--gpus",
        "2",
        "--tokens",
        "1,4,16,64",
        "--contexts",
        "64,128",
        "--iters",
        "40",
        "--out",
        str(out),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if len(load_profile(out).points) >= 2:
                break
        except ProfileError:
            pass
        time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, output
    assert "run the same command to resume" in output and "Traceback" not in output
    kept = load_profile(out).points
    assert 2 <= len(kept) < 16
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    final = load_profile(out).points
    assert len(final) == 16 and final[: len(kept)] == kept


def test_textual_view_fills_the_grid_and_stops_on_ctrl_c(tmp_path):
    import asyncio

    from textual.widgets import DataTable

    from shifttune.tui.profile_view import ProfileApp

    async def run(out, press_stop):
        app = ProfileApp(ProfileSettings(**(SMALL | {"contexts": [64], "iters": 3})), out, "test")
        async with app.run_test(size=(120, 40)) as pilot:
            for _ in range(600):
                await pilot.pause(0.05)
                if press_stop and len(app._points) >= 1:
                    await pilot.press("ctrl+c")
                    press_stop = False
                if app.result is not None or app.interrupted:
                    break
            grid = app.query_one("#grid", DataTable)
            return app, grid.row_count, len(grid.columns)

    app, rows, cols = asyncio.run(run(tmp_path / "full.json", False))
    assert app.result is not None and app.error is None
    assert rows == len(SMALL["tokens"]) and cols == 1 + 2  # tokens + TP and SP2xTP1 at one context
    assert len(load_profile(tmp_path / "full.json").points) == 6
    app, _, _ = asyncio.run(run(tmp_path / "cut.json", True))
    assert app.interrupted and 1 <= len(load_profile(tmp_path / "cut.json").points) < 6


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d["factorizations"][0].pop("feasible"), "lacks 'feasible'"),
        (lambda d: d["factorizations"][0].update(feasible="no"), "should be bool"),
        (lambda d: d["factorizations"][0].update(kv_capacity_tokens="lots"), "should be int"),
        (lambda d: d["factorizations"][0].update(weight_bytes_per_rank=[1, 2]), "must map the modes tp and sp"),
        (lambda d: d["engine"].update(block_size=0), "block_size must be a positive integer"),
    ],
)
def test_bad_factorizations_and_engine_fields_are_refused(cpu_profile, mutate, message):
    data = cpu_profile[1].to_dict()
    mutate(data)
    with pytest.raises(ProfileError, match=message):
        profile_from_dict(data)


def test_resume_refuses_another_rank_count(cpu_profile, tmp_path):
    import shutil

    copy = tmp_path / "p.json"
    shutil.copy(cpu_profile[0], copy)
    with pytest.raises(ProfileError, match="ranks"):
        run_profile(ProfileSettings(**(SMALL | {"ranks": 1})), copy, "t")


def test_grid_points_must_be_whole_chunks():
    from shifttune.config import ConfigError

    with pytest.raises(ConfigError, match="not a whole number"):
        ProfileSettings(model="tiny", ranks=1, device="cpu", tokens=[100], contexts=[64])


def test_graph_buffers_hold_a_full_batch_plus_padding():
    """Structure of the padded graph inputs (no GPU needed): a full batch leaves a row for the padding
    sequence, and that sequence's block-table row can cover the largest bucket."""
    from shifttune import LLM
    from shifttune.runner.cuda_graphs import StepGraphs

    with LLM(
        "tiny",
        attention_backend="triton",
        max_model_len=64,
        max_num_seqs=4,
        max_num_batched_tokens=2048,
        cuda_graph_max_tokens=2048,
    ) as llm:
        runner = llm.llm_engine.executor.runner
        g = StepGraphs(runner, capture=False)
        assert g.width * runner.config.block_size >= g.buckets[-1] == 2048
        assert all(g.seqs_for(b) == min(b, 5) for b in g.buckets)


def test_version_1_profiles_still_load_with_weights_keyed_by_mode(cpu_profile):
    data = cpu_profile[1].to_dict()
    data["version"] = 1
    for f in data["factorizations"]:  # version 1 named the weight layouts, not the modes
        w = f["weight_bytes_per_rank"]
        f["weight_bytes_per_rank"] = {"base": w["sp"], "shift": w["tp"]}
    old = profile_from_dict(data)
    assert [f.weight_bytes_per_rank for f in old.factorizations] == [
        f.weight_bytes_per_rank for f in cpu_profile[1].factorizations
    ]
    data["version"] = 3
    with pytest.raises(ProfileError, match="reads 1 and 2"):
        profile_from_dict(data)


@pytest.mark.parametrize(
    "device, rounds, calls, median",
    [
        ("cuda", [[10.0] * 8 + [20.0, 25.0], [10.0] * 10], 2, 10.0),  # a second round settles it
        ("cuda", [[10.0, 30.0] * 5] * 6, 4, 20.0),  # never settles: MAX_ROUNDS rounds, then the pooled summary
        ("cuda", [[10.0] * 10], 1, 10.0),  # tight at once
        ("cpu", [[10.0, 30.0] * 5], 1, 20.0),  # on CPU the spread is the host's: one round
    ],
)
def test_measure_point_runs_a_wide_gpu_point_again(monkeypatch, device, rounds, calls, median):
    """A GPU point whose runs spread wider than NOISY_SPREAD is run again (up to MAX_ROUNDS rounds) and
    summarized over every run; a tight one and any CPU point take one round."""
    from types import SimpleNamespace

    from shifttune.profile import step_sweep

    assert step_sweep.MAX_ROUNDS == 4
    monkeypatch.setattr(step_sweep, "synthetic_step", lambda *a: "step")
    monkeypatch.setattr(step_sweep, "step_floors", lambda *a: (1.0, 1.0, 1.0, 1.0))
    supply, seen = iter(rounds), []

    def collective_rpc(fn, step, warmup, iters):
        seen.append((warmup, iters))
        return next(supply), 7 + len(seen)  # (run times, peak memory)

    engine = SimpleNamespace(
        executor=SimpleNamespace(
            runner=SimpleNamespace(num_kv_blocks=1000, weight_bytes={}), collective_rpc=collective_rpc
        ),
        config=SimpleNamespace(device=device, block_size=16),
    )
    timing, peak = step_sweep.measure_point(engine, "tp", 1, 64, 256, 3, 10, None)
    assert len(seen) == calls and seen[0] == (3, 10) and all(s == (1, 10) for s in seen[1:])
    assert timing.median_ms == median and peak == 7 + calls
