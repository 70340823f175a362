"""What a newcomer's run of the CLI met: errors in the flags' own names, one message per mistake, the
profile policy reachable from `generate`, notes instead of silent choices, shareable files."""

from __future__ import annotations

import contextlib
import json
import shutil
import stat
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from shifttune.cli import app
from shifttune.config import resolve_model_path
from shifttune.profile.profiler import ProfileSettings, run_profile

from test_profile import SMALL, cpu_profile  # noqa: F401  (the module-scoped CPU profile fixture)


def run(*argv: str):
    return CliRunner().invoke(app, list(argv))


@pytest.mark.parametrize(
    "argv, flag_message",
    [
        (["profile", "--device", "cpu", "--gpus", "0"], "--gpus: must be >= 1"),
        (["profile", "--device", "cpu", "--contexts", "-5"], "--contexts: must be >= 2"),
        (["profile", "--device", "cpu", "--iters", "0"], "--iters: must be >= 1"),
        (["generate", "--max-tokens", "-5"], "--max-tokens: must be an integer >= 1"),
        (["generate", "--load-format", "x"], "--load-format: must be one of auto, dummy"),
        (["generate", "--device", "tpu"], "--device: must be one of cpu, cuda"),
        (["generate", "--policy", "fast"], "--policy: must be one of threshold, profile, tp, sp"),
        (["generate", "--sp", "2", "--policy", "profile"], "--profile: the profile policy needs a profile file"),
        (["generate", "x" * 3000], "error: the prompt: has 3001 tokens but the model context"),
        (["profile", "--device", "cpu", "--op-table", "t.json"], "--op-table does nothing for a measured profile"),
        (["profile", "--compare", "a.json", "b.json", "--tokens", "1,4"], "--tokens does nothing for --compare"),
        (["profile", "--collectives", "--layers", "2", "--breakdown", "1"], "--layers, --breakdown do nothing for"),
        (["recommend", "--input-len", "0"], "--input-len: must be >= 1"),
        (["recommend", "--rate", "-1"], "--rate: must be positive finite numbers"),
        (["recommend", "--rate", "inf"], "--rate: must be positive finite numbers"),
        (["recommend", "--trace", "/nonexist.csv"], "error: trace /nonexist.csv does not exist"),
        (["recommend", "-m", "tiny", "--gpus", "4xH200"], "--input-len 2048 (default) + --output-len 256 (default) "
         "exceed tiny's maximum context of 2048 tokens; pass smaller ones"),
        (["recommend", "-m", "tiny", "--gpus", "4xH200", "--input-len", "2000"],
         "--input-len 2000 + --output-len 256 (default) exceed"),
        (["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--contexts", "1000"],
         "--contexts: 1000 not in the op table"),
        (["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--tokens", "3,7"],
         "--tokens: 3, 7 not in the op table"),
        (["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--tokens", "0"],
         "--tokens: must be positive"),
        (["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--tokens", "-4"],
         "--tokens: must be positive"),
        (["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--contexts", "0"],
         "--contexts: must be >= 2"),
        (["serve", "tiny", "--device", "cpu", "--no-tui", "--profile", "/nonexist.json"],
         "--profile: profile /nonexist.json does not exist"),
        (["generate", "--profile", "/nonexist.json"], "--profile: profile /nonexist.json does not exist"),
    ],
)  # fmt: skip
def test_errors_name_the_flag_once(argv, flag_message):
    result = run(*argv)
    assert result.exit_code == 2, result.output
    assert flag_message in result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert "load_format=" not in result.output and "shift_policy" not in result.output


def test_generate_runs_the_profile_policy_from_a_profile_file(cpu_profile, tmp_path):  # noqa: F811
    out, _, _ = cpu_profile
    report = tmp_path / "gen.json"
    result = run("generate", "--sp", "2", "--policy", "profile", "--profile", str(out), "--max-tokens", "4",
                 "--output", str(report), "hello")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["policy"] == "profile" and len(data["outputs"][0]["token_ids"]) == 4
    assert sum(data["steps_per_mode"].values()) == len(data["steps"]) > 0


def test_the_profile_policy_refuses_a_profile_of_another_model_or_a_broken_file(tmp_path):
    other = tmp_path / "llama.json"
    assert (
        run("profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--out", str(other)).exit_code == 0
    )
    for sp in ("2", "1"):  # also at SP = 1, where the policy never runs: the flags are wrong all the same
        result = run("generate", "--sp", sp, "--tp", str(3 - int(sp)), "--policy", "profile", "--profile", str(other),
                     "hello")  # fmt: skip
        assert result.exit_code == 2 and "--profile:" in result.output and "'llama-3.1-8b'" in result.output, (
            result.output
        )
    (tmp_path / "broken.json").write_text("{not json")
    result = run("generate", "--policy", "profile", "--profile", str(tmp_path / "broken.json"), "hello")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output


def test_predict_out_of_the_op_table_lists_what_it_covers():
    r = run("profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--contexts", "1000,2048")
    assert r.exit_code == 2 and "has no entries" not in r.output, r.output
    assert "1000 not in the op table" in r.output and "whose contexts for 2 GPUs are 512, 2048, 8192, 32768" in r.output


def test_serve_and_generate_check_a_profile_given_with_any_policy(tmp_path):
    """A bad --profile fails at start-up (before the engine) whatever the policy: a server can be switched to the
    profile policy later; generate says a good one is unused."""
    other = tmp_path / "llama.json"
    predicted = run("profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--out", str(other))
    assert predicted.exit_code == 0, predicted.output
    (tmp_path / "notaprofile.json").write_text('{"a": 1}')
    for profile, message in ((other, "is a profile of 'llama-3.1-8b'"), (tmp_path / "notaprofile.json",
                             "is not a shifttune profile")):  # fmt: skip
        for argv in (["serve", "tiny", "--device", "cpu", "--no-tui"], ["generate"]):
            r = run(*argv, "--profile", str(profile))
            assert r.exit_code == 2 and f"error: --profile: {profile} {message}" in r.output, r.output
            assert r.output.count("error:") == 1 and "Traceback" not in r.output
    from shifttune.recommend.shipped import SHIPPED_DIR

    shipped = SHIPPED_DIR / "tiny_cpux2.json"
    r = run("generate", "--sp", "2", "--profile", str(shipped), "--load-format", "x")  # fails in the engine's config
    assert "note: --profile is unused: --policy is threshold (--policy profile runs on it)" in r.output, r.output
    assert "--load-format: must be one of" in r.output


def test_a_profile_of_other_hardware_is_a_note(tmp_path, capsys):
    from shifttune.cli.common import check_profile, hardware_note
    from shifttune.config import load_model_config

    h100 = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "predicted": True}
    assert hardware_note(h100, "cpu") == ("predicted on NVIDIA H100 80GB HBM3 GPUs, but this engine runs on cpu; its "
                                          "step times may not hold here")  # fmt: skip
    assert hardware_note(h100, "cuda", "NVIDIA H100 PCIe") is None  # the same GPU type
    assert hardware_note(h100, "cuda", None) is None  # no NVML: unknown, not different
    assert hardware_note(h100 | {"predicted": False}, "cuda", "NVIDIA H200").startswith("measured on NVIDIA H100")
    assert "but this GPU is a NVIDIA H200" in hardware_note(h100, "cuda", "NVIDIA H200")
    assert hardware_note({"device": "cpu"}, "cpu") is None
    assert hardware_note({"device": "cpu"}, "cuda", "NVIDIA H200") == (
        "measured on cpu, but this engine runs on cuda; its step times may not hold here"
    )
    out = tmp_path / "tiny_h100.json"
    assert run("profile", "--predict", "--model", "tiny", "--gpus", "2xH100", "--out", str(out)).exit_code == 0
    capsys.readouterr()
    check_profile(str(out), load_model_config(resolve_model_path("tiny"))[0], 1, 2, "cpu")
    err = " ".join(capsys.readouterr().err.split())
    assert f"note: --profile {out}: predicted on NVIDIA H100 80GB HBM3 GPUs, but this engine runs on cpu" in err


def test_a_tokenizer_that_cannot_load_is_one_line(tmp_path):
    model = tmp_path / "no-tokenizer-json"
    shutil.copytree(resolve_model_path("tiny"), model)
    (model / "tokenizer.json").unlink()  # tokenizer_config.json alone: transformers cannot build it
    result = run("generate", "--model", str(model), "hello")
    assert result.exit_code == 2 and "--model: cannot load the tokenizer in" in result.output, result.output
    assert "Traceback" not in result.output and result.output.count("error:") == 1


def test_profile_interrupted_before_its_first_point_says_nothing_was_written(monkeypatch, tmp_path):
    import shifttune.cli.profile as cli_profile

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_profile, "_progress_bar_run", interrupted)
    out = tmp_path / "p.json"
    result = run("profile", "--device", "cpu", "--no-tui", "--out", str(out))
    assert result.exit_code == 130 and "nothing was written" in result.output and not out.exists(), result.output


def test_generate_takes_serve_s_names_for_the_layout_and_policy(tmp_path):
    report = tmp_path / "gen.json"
    result = run("generate", "--tensor-parallel-size", "1", "--sequence-parallel-size", "2", "--shift-policy", "sp",
                 "--shift-threshold", "8", "--max-tokens", "2", "--output", str(report), "hi")  # fmt: skip
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert (data["sp"], data["policy"], data["threshold"]) == (2, "sp", 8) and not data["steps_per_mode"].get("tp")


def test_generate_refuses_a_model_given_as_a_prompt_and_takes_servings_length_flags(tmp_path):
    """`generate MODEL_DIR` (as `serve MODEL`) ran the built-in tiny model on the path as a prompt, exit 0."""
    from shifttune.config import BUNDLED_CONFIG_DIR

    for arg in (str(BUNDLED_CONFIG_DIR / "tiny"), "llama-3.1-8b"):
        result = run("generate", arg)
        assert result.exit_code == 2 and f"generate --model {arg}" in " ".join(result.output.split()), result.output
    result = run("generate", "--max-model-len", "64", "hi", "x " * 300)
    assert result.exit_code == 2 and "prompt 2: has 601 tokens but the model context (max_model_len) is 64" in " ".join(
        result.output.split()
    ), result.output
    report = tmp_path / "gen.json"
    result = run("generate", "--max-tokens", "40", "--ignore-eos", "--min-tokens", "3", "--stop", "e", "--stop", "o",
                 "--output", str(report), "hi")  # fmt: skip
    assert result.exit_code == 0, result.output
    (out,) = json.loads(report.read_text())["outputs"]
    stopped = out["finish_reason"] == "stop"
    assert len(out["token_ids"]) >= 3 and ("e" not in out["text"] and "o" not in out["text"])
    assert stopped or len(out["token_ids"]) == 40


def test_python_dash_m_shifttune_is_the_command_and_recommend_makes_its_out_folder(tmp_path):
    out = subprocess.run([sys.executable, "-m", "shifttune", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Usage: shifttune" in out.stdout and "recommend" in out.stdout, out.stderr
    nested = tmp_path / "plans" / "today" / "plan.json"  # as profile --out and generate --output do
    result = run("recommend", "--out", str(nested))
    assert result.exit_code == 0 and json.loads(nested.read_text())["profile_kind"] == "measured", result.output


def test_help_lists_every_policy_and_shows_no_bool_placeholder():
    result = CliRunner().invoke(app, ["generate", "--help"], env={"COLUMNS": "200"})
    assert "threshold | profile | tp | sp" in result.output
    assert "<bool>" not in result.output


def test_recommend_says_when_the_context_is_outside_the_profile():
    data = json.loads(run("recommend", "--json", "--context", "100000").output)
    assert data["context_for_threshold"] == 1024  # the shipped CPU profile's largest context
    assert any("100000 is past the largest" in n and "1024" in n for n in data["notes"])


def test_rerunning_a_finished_profile_says_nothing_is_left(cpu_profile):  # noqa: F811
    out, prof, _ = cpu_profile
    events = []
    run_profile(ProfileSettings(**SMALL), out, "test", events.append)
    assert any(e.message and "nothing left to measure" in e.message for e in events)
    assert all(e.point is None for e in events)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # a profile is made to be shared


def test_version_prints_the_installed_version():
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"shifttune {version('shifttune')}", result.output


# ---- defects from a user review of the CLI -----------------------------------------------------------------------
ONE_RANK = ("profile", "--device", "cpu", "--gpus", "1", "--contexts", "64", "--iters", "1", "--warmup", "0")


def test_a_profile_that_measures_no_point_writes_nothing_and_says_what_to_change(tmp_path):
    """Every point too big for the KV cache: it wrote a 0-point profile and exited 0, and `recommend` failed on it."""
    out = tmp_path / "new" / "f5.json"
    result = run(*ONE_RANK, "--tokens", "4096", "--out", str(out))
    assert result.exit_code == 2 and not (tmp_path / "new").exists(), result.output  # no file, and no folder for it
    assert "no point was measured: the KV cache holds 1024 tokens (TP=1 SP=1)" in result.output
    assert "4096 tokens at context 64, needs 4096); ask for --tokens of at most 1024" in result.output
    # a point that fits is written, and a rerun whose remaining points are all skipped keeps it
    for _ in range(2):
        result = run(*ONE_RANK, "--tokens", "16,4096", "--out", str(out))
        assert result.exit_code == 0 and "wrote" in result.output, result.output
        assert [(p["tokens"], p["context"]) for p in json.loads(out.read_text())["points"]] == [(16, 64)]


@pytest.mark.parametrize("flag, value, message", [
    ("--device", "bogus", "--device: must be one of cpu, cuda, not 'bogus'"),
    ("--load-format", "safetensors", "--load-format: must be one of auto, dummy, not 'safetensors'"),
])  # fmt: skip
def test_profile_checks_device_and_load_format_first(cpu_profile, tmp_path, flag, value, message):  # noqa: F811
    """They were checked only after --out's resume check (which blamed "other settings") and an engine's start."""
    out = tmp_path / "p.json"
    shutil.copy(cpu_profile[0], out)
    before = out.read_bytes()
    result = run("profile", "--device", "cpu", flag, value, "--out", str(out))
    assert result.exit_code == 2 and message in result.output, result.output
    assert "other settings" not in result.output and "starting" not in result.output
    assert out.read_bytes() == before


def test_profile_errors_name_its_own_flags():
    """The grid sets the engine's max_model_len and max_num_batched_tokens: errors name --contexts and --tokens."""
    result = run("profile", "--device", "cpu", "--contexts", "5000", "--out", "unused.json")
    assert result.exit_code == 2 and "error: --contexts: 5000 exceeds the model's limit of 2048" in result.output
    assert "--max-model-len" not in result.output


@pytest.mark.parametrize("argv, message", [
    (ONE_RANK + ("--tokens", "1,,4"), "--tokens takes comma-separated integers, e.g. 1 or 1,4,16; got '1,,4'"),
    (("recommend", "--rate", "1,,2"), "--rate takes comma-separated numbers, e.g. 2 or 1,2,4; got '1,,2'"),
])  # fmt: skip
def test_list_options_refuse_empty_elements_alike(argv, message, tmp_path):
    result = run(*argv, "--out", str(tmp_path / "x.json"))
    assert result.exit_code == 2 and message in result.output, result.output
    assert result.output.count("error:") == 1 and not (tmp_path / "x.json").exists()


def test_output_folders_are_made_when_the_command_writes_and_only_then(tmp_path):
    """profile, generate and recommend made a missing folder while checking their arguments, so a run that failed
    later left it behind; recommend --plot refused a missing folder that --out made."""
    for argv in (["generate", "--device", "tpu", "-o", "{d}/g.json"], ["recommend", "--input-len", "0", "--out",
                 "{d}/r.json"], ["recommend", "--context", "0", "--plot", "{d}/plan.png"]):  # fmt: skip
        result = run(*[a.format(d=tmp_path / "a" / "b") for a in argv])
        assert result.exit_code == 2 and not (tmp_path / "a").exists(), (argv, result.output)
    plot, out = tmp_path / "p" / "q" / "plan.png", tmp_path / "o" / "r.json"
    result = run("recommend", "--plot", str(plot), "--out", str(out))
    assert result.exit_code == 0 and plot.stat().st_size > 1000 and "tiny" in out.read_text(), result.output


def test_check_writable_checks_a_missing_folder_without_making_it(tmp_path):
    from typer import Exit

    from shifttune.cli.common import check_writable, make_parent

    path = tmp_path / "x" / "y" / "p.json"
    check_writable(path, "--out", make_folder=True)
    assert list(tmp_path.iterdir()) == []  # nothing made, no probe file left
    with pytest.raises(Exit):  # bench's call: a missing folder is refused
        check_writable(path, "--out")
    make_parent(path, "--out")
    assert path.parent.is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(Exit):
        check_writable(tmp_path / "file" / "x" / "p.json", "--out", make_folder=True)
    assert not (tmp_path / "file").is_dir()


def test_serve_makes_the_log_folder_only_when_it_opens_the_log(tmp_path, monkeypatch):
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    log = tmp_path / "x" / "d" / "l.log"
    try:
        for extra in ([], ["--no-tui"]):
            result = run("serve", "tiny", "--device", "cpu", "--port", str(taken.getsockname()[1]), "--log-file",
                         str(log), *extra)  # fmt: skip
            assert result.exit_code == 2 and "--port: cannot listen" in result.output, result.output
            assert not (tmp_path / "x").exists()
    finally:
        taken.close()
    from shifttune.tui import attach

    def stop(fd):  # the view's next step after opening its log
        raise RuntimeError("stop here")

    monkeypatch.setattr(attach.os, "dup", stop)
    view = attach.TerminalView("http://127.0.0.1:1", log, None)
    assert not (tmp_path / "x").exists()
    with pytest.raises(RuntimeError, match="stop here"):
        view.start(lambda: None)
    assert log.is_file()


def test_generate_shows_only_tp_mode_weights_without_an_sp_layout(capsys):
    from shifttune.cli.generate import render_generation

    report = {"outputs": [], "steps_per_mode": {"tp": 3, "sp": 0}, "tokens_per_mode": {"tp": 9, "sp": 0},
              "weight_bytes_per_rank": {"tp": 1363148, "sp": 0}, "kv_cache_bytes_per_rank": 2**20}  # fmt: skip
    render_generation(report, 1.0, 0.5)
    text = " ".join(capsys.readouterr().out.split())
    assert "per rank: weights 1.3 MiB (TP mode), KV cache 1.0 MiB;" in text and "SP x TP mode" not in text
    report["weight_bytes_per_rank"]["sp"] = 2 * 1363148
    render_generation(report, 1.0, 0.5)
    assert "weights 2.6 MiB (SP x TP mode) + 1.3 MiB (TP mode)," in " ".join(capsys.readouterr().out.split())


def test_sigterm_stops_generate_as_ctrl_c_does():
    """SIGTERM (a `timeout`, a CI's cancel) ended generate at once: its worker rank printed gloo's traceback of the
    broken collective. Now the step finishes, the workers are stopped, and the exit status says which signal."""
    import os
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "shifttune.cli", "generate", "--sp", "2", "--max-tokens", "20000",
                             "--ignore-eos", "hi"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        deadline = time.time() + 120
        while not (children := subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout):
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        time.sleep(6)  # the worker started and steps are running
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and "interrupted; workers stopped" in output and "Traceback" not in output, output
    time.sleep(1)
    alive = []
    for pid in map(int, children.split()):  # a zombie (dead, not yet reaped by this container's init) is gone too
        with contextlib.suppress(FileNotFoundError):
            if open(f"/proc/{pid}/stat").read().split()[2] != "Z":
                alive.append(pid)
    assert not alive
