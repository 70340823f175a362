"""The launch lines `shifttune recommend` prints: one test per rule of shifttune/recommend/launch.py
(vLLM 0.26.0 + Arctic Inference 0.3.0), on synthetic profiles of known hardware and models."""

from __future__ import annotations

import pytest

from shifttune.config import BUNDLED_CONFIG_DIR
from shifttune.engine.profile_schema import Factorization, Point, Profile
from shifttune.recommend.launch import (
    HF_IDS,
    Deployment,
    launch_lines,
    memory_fit,
    validate_arctic,
    vllm_default_max_num_seqs,
    vllm_model_id,
    weights_per_gpu,
)
from shifttune.recommend.planner import plan

H100 = {"name": "NVIDIA H100 80GB HBM3", "memory_bytes": 85_520_809_984}
A100_80 = {"name": "NVIDIA A100-SXM4-80GB", "memory_bytes": 85_899_345_920}
LLAMA_70B = {
    "name": "llama-3.3-70b",
    "num_params": 70_553_706_496,
    "num_layers": 80,
    "num_heads": 64,
    "num_kv_heads": 8,
    "head_dim": 128,
    "dtype": "bfloat16",
}
LLAMA_8B = {
    "name": "llama-3.1-8b",
    "num_params": 8_030_261_248,
    "num_layers": 32,
    "num_heads": 32,
    "num_kv_heads": 8,
    "head_dim": 128,
    "dtype": "bfloat16",
}


def gpu_profile(model=LLAMA_8B, gpus=8, gpu=H100, device="cuda", **model_overrides) -> Profile:
    hardware = {"device": device, "gpu_name": gpu["name"], "gpu_count": gpus, "gpus": [gpu] * gpus}
    if device == "cpu":
        hardware = {"device": "cpu", "cpu": "x86_64", "cpu_count": gpus}
    return Profile(
        hardware=hardware,
        software={},
        model=model | model_overrides,
        engine={"block_size": 16},
        grid={"tokens": [1, 4096], "contexts": [512, 8192]},
    )


def lines(profile: Profile, tp: int, sp: int, threshold: int | None, **kw):
    p = int(profile.hardware.get("gpu_count") or profile.hardware.get("cpu_count"))
    out = launch_lines(Deployment(profile.model["name"], p, tp, sp, threshold, **kw), profile)
    return out.commands, out.notes


def test_rule1_arctic_lines_enable_the_plugin():
    cmds, _ = lines(gpu_profile(), 4, 2, 300)
    assert cmds["vllm_arctic"].startswith("ARCTIC_INFERENCE_ENABLED=1 vllm serve ")
    cmds, _ = lines(gpu_profile(), 4, 2, 0)
    assert cmds["vllm_arctic"].startswith("ARCTIC_INFERENCE_ENABLED=1 vllm serve ")


def test_rule2_vllm_serve_with_the_model_positional():
    cmds, _ = lines(gpu_profile(), 4, 2, 300)
    assert cmds["vllm_arctic"].split()[1:4] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert "--model" not in cmds["vllm_arctic"] and "api_server" not in cmds["vllm_arctic"]


def test_rule3_model_is_a_hugging_face_id_or_a_path():
    assert vllm_model_id("llama-3.3-70b") == "meta-llama/Llama-3.3-70B-Instruct"
    assert vllm_model_id("Qwen3-8B") == "Qwen/Qwen3-8B"  # bundled names are case-insensitive
    assert vllm_model_id("/models/my-llama") == "/models/my-llama"
    assert vllm_model_id("tiny") is None
    bundled = {p.name for p in BUNDLED_CONFIG_DIR.iterdir() if p.is_dir()} - {"tiny"}
    assert bundled <= set(HF_IDS), "every bundled config but tiny needs an HF id"
    cmds, _ = lines(gpu_profile(LLAMA_70B), 4, 2, 300)
    assert " meta-llama/Llama-3.3-70B-Instruct " in cmds["vllm_arctic"]
    assert "--model llama-3.3-70b " in cmds["shifttune_generate"]  # shifttune keeps the user's name
    assert "model='llama-3.3-70b'" in cmds["shifttune_python"]
    cmds, notes = lines(gpu_profile(LLAMA_8B, gpus=2, name="tiny"), 1, 2, 300)
    assert not [k for k in cmds if k.startswith("vllm")] and any("'tiny'" in n for n in notes)
    cmds, _ = lines(gpu_profile(LLAMA_8B, name="/models/my-llama"), 4, 2, 300)
    assert " /models/my-llama " in cmds["vllm_arctic"] and "--load-format" not in cmds["shifttune_generate"]


def test_rule4_arctic_line_names_its_vllm_version():
    cmds, notes = lines(gpu_profile(), 4, 2, 300)
    assert cmds["vllm_arctic_install"] == "pip install arctic-inference==0.3.0 vllm==0.26.0"
    assert any("Arctic Inference 0.3.0 with vLLM 0.26.0" in n for n in notes)
    cmds, notes = lines(gpu_profile(), 8, 1, None)  # no Arctic line, no pin
    assert "vllm_arctic_install" not in cmds and not any("0.26.0" in n for n in notes)


def test_rule5_max_num_seqs_only_when_the_default_does_not_divide_by_sp():
    assert vllm_default_max_num_seqs({"gpus": [H100]}) == 1024
    assert vllm_default_max_num_seqs({"gpus": [A100_80]}) == 256  # vLLM excludes A100 from the large default
    assert vllm_default_max_num_seqs({"gpus": [{"name": "L40S", "memory_bytes": 48 * 2**30}]}) == 256
    cmds, notes = lines(gpu_profile(), 4, 2, 300)
    assert "--max-num-seqs" not in cmds["vllm_arctic"] and not any("max-num-seqs" in n for n in notes)
    cmds, notes = lines(gpu_profile(gpus=6, num_heads=48), 2, 3, 300)
    assert cmds["vllm_arctic"].endswith("--max-num-seqs 1023")
    assert any("--max-num-seqs 1023" in n and "divisible by SP=3" in n for n in notes)
    cmds, _ = lines(gpu_profile(gpus=6, gpu=A100_80, num_heads=48), 2, 3, 300)
    assert "--max-num-seqs 255" in cmds["vllm_arctic"]


def test_rule6_cudagraph_capture_size_covers_a_threshold_above_512():
    cmds, notes = lines(gpu_profile(), 4, 2, 1500)
    assert "--max-cudagraph-capture-size 1500" in cmds["vllm_arctic"]
    assert any("--max-cudagraph-capture-size 1500" in n for n in notes)
    cmds, _ = lines(gpu_profile(), 4, 2, 512)
    assert "--max-cudagraph-capture-size" not in cmds["vllm_arctic"]


def test_rule7_memory_fits_in_bf16_or_fp8_or_no_arctic_line():
    assert weights_per_gpu(160, tp=4, sp=2, shift=True) == pytest.approx(60)  # W/TP x (1 + 1/SP)
    assert weights_per_gpu(160, tp=4, sp=2, shift=False) == pytest.approx(40)
    prof = gpu_profile(LLAMA_70B)
    fit = memory_fit(prof, 4, 2, shift=True)
    assert fit.budget == pytest.approx(0.9 * H100["memory_bytes"])
    kv = 2 * 80 * 1 * 128 * 2 * 8192  # one 8192-token sequence, one KV head per GPU
    assert fit.need == pytest.approx(70_553_706_496 * 2 / 4 * 1.5 + kv)
    cmds, notes = lines(prof, 4, 2, 300)  # 52.9 GB per GPU: bf16 fits
    assert "--quantization" not in cmds["vllm_arctic"] and not any("FP8" in n for n in notes)
    cmds, notes = lines(prof, 2, 4, 300)  # 88 GB in bf16, 44 GB in FP8
    assert cmds["vllm_arctic"].endswith("--quantization fp8") and any("FP8" in n for n in notes)
    cmds, notes = lines(prof, 1, 8, 300)  # 79 GB even in FP8
    assert "vllm_arctic" not in cmds
    assert cmds["vllm"] == "vllm serve meta-llama/Llama-3.3-70B-Instruct --tensor-parallel-size 8"  # TP fallback
    assert any("no Arctic Inference line" in n and "even in FP8" in n for n in notes)
    cmds, _ = lines(prof, 1, 8, 0)  # without shifting there is no TP=P copy: 70.6 GB in FP8 fits
    assert cmds["vllm_arctic"].endswith("--quantization fp8")
    cmds, notes = lines(gpu_profile(LLAMA_70B, num_params=None), 4, 2, 300)
    assert "vllm_arctic" in cmds and any("memory not checked" in n for n in notes)


def test_rule8_plain_tp_line_when_shift_never_pays():
    for tp, sp, threshold in [(8, 1, None), (4, 2, None)]:
        cmds, _ = lines(gpu_profile(), tp, sp, threshold)
        assert cmds["vllm"] == "vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 8"
        assert "vllm_arctic" not in cmds


def test_rule9_arctic_constraints():
    assert validate_arctic(4, 2, 8, 64, 1024) == []
    assert "must equal the 4 GPUs" in validate_arctic(4, 2, 4, 64, 1024)[0]
    assert "must divide by SP = 4" in validate_arctic(2, 4, 8, 64, 1022)[0]
    assert "6 heads must divide by TP x SP = 4" in validate_arctic(2, 2, 4, 6, 1024)[0]
    cmds, notes = lines(gpu_profile(gpus=6, num_heads=32), 2, 3, 300)  # 32 heads over 6 GPUs
    assert "vllm_arctic" not in cmds and "--tensor-parallel-size 6" in cmds["vllm"]
    assert any("32 heads must divide by TP x SP = 6" in n for n in notes)


def test_rule10_threshold_zero_is_sp_x_tp_without_shifting():
    cmds, _ = lines(gpu_profile(), 4, 2, 0)
    assert cmds["vllm_arctic"] == (
        "ARCTIC_INFERENCE_ENABLED=1 vllm serve meta-llama/Llama-3.1-8B-Instruct "
        "--tensor-parallel-size 4 --ulysses-sequence-parallel-size 2"
    )
    assert "shift_policy='sp'" in cmds["shifttune_python"] and "--policy sp" in cmds["shifttune_generate"]


def test_rule11_cpu_profiles_have_no_vllm_lines():
    cmds, notes = lines(gpu_profile(device="cpu", gpus=2), 1, 2, 16)  # a model vLLM could serve on GPUs
    assert not [k for k in cmds if k.startswith("vllm")]
    assert any("GPUs only" in n for n in notes)
    assert cmds["shifttune_generate"] == (
        "shifttune generate --model llama-3.1-8b --tp 1 --sp 2 --threshold 16 --device cpu --load-format dummy"
    )
    cmds, _ = lines(gpu_profile(device="cpu", gpus=2, name="tiny"), 1, 2, 16)
    assert cmds["shifttune_generate"] == "shifttune generate --model tiny --tp 1 --sp 2 --threshold 16 --device cpu"


def test_shifttune_lines_use_the_mode_vocabulary_and_run_bundled_configs():
    cmds, _ = lines(gpu_profile(), 4, 2, 300, profile_path="p.json", profile_policy=True)
    assert cmds["shifttune_python"] == (
        "LLM(model='llama-3.1-8b', tensor_parallel_size=4, sequence_parallel_size=2, device='cuda', "
        "load_format='dummy', shift_policy='threshold', shift_threshold=300)"
    )
    assert cmds["shifttune_generate"] == (
        "shifttune generate --model llama-3.1-8b --tp 4 --sp 2 --threshold 300 --device cuda --load-format dummy"
    )
    assert "shift_policy='profile', shift_profile='p.json'" in cmds["shifttune_python_profile_policy"]
    cmds, _ = lines(gpu_profile(), 8, 1, None)
    assert cmds["shifttune_generate"] == (
        "shifttune generate --model llama-3.1-8b --tp 8 --device cuda --load-format dummy"
    )


def test_planner_prints_the_launch_lines_and_their_notes():
    prof = gpu_profile(gpus=2, num_heads=32)
    prof.factorizations = [Factorization(2, 1, True), Factorization(1, 2, True)]
    for c in (512, 8192):  # TP: 5 + 0.02 T ms, SP x TP: 7 + 0.01 T ms: they cross near T = 200
        for t in [2**k for k in range(13)]:
            tp_ms, sp_ms = 5 + 0.02 * t, 7 + 0.01 * t
            prof.points += [Point("tp", 2, 1, t, c, t, 1, tp_ms, tp_ms, tp_ms)]
            prof.points += [Point("sp", 1, 2, t, c, t, 1, sp_ms, sp_ms, sp_ms)]
    result = plan(prof)
    assert (result.best_tp, result.best_sp) == (1, 2) and 150 <= result.threshold <= 250
    assert result.launch["vllm_arctic"] == (
        "ARCTIC_INFERENCE_ENABLED=1 vllm serve meta-llama/Llama-3.1-8B-Instruct --tensor-parallel-size 1 "
        f"--ulysses-sequence-parallel-size 2 --enable-shift-parallel --shift-parallel-threshold {result.threshold}"
    )
    assert any("vLLM 0.26.0" in n for n in result.notes)


@pytest.mark.parametrize(
    "tp, sp, threshold, kw",
    [(8, 1, None, {}), (4, 2, 0, {}), (4, 2, 300, {}), (4, 2, None, {}),
     (4, 2, 300, {"profile_path": "p.json", "profile_policy": True})],
)  # fmt: skip
def test_serve_lines_parse_as_shifttune_serve_and_say_the_plan(tp, sp, threshold, kw):
    """Every `shifttune serve` line recommend prints is one the serve command accepts, with the plan's layout and
    policy (parsed by the CLI itself, without starting anything)."""
    import shlex

    from typer.main import get_command

    from shifttune.cli.app import app

    cmds, _ = lines(gpu_profile(), tp, sp, threshold, **kw)
    serve = get_command(app).commands["serve"]
    for key in ("shifttune_serve", "shifttune_serve_profile_policy"):
        if key not in cmds:
            continue
        argv = shlex.split(cmds[key])
        assert argv[:3] == ["shifttune", "serve", "llama-3.1-8b"]
        params = serve.make_context("serve", argv[2:]).params
        want_tp, want_sp = (tp, sp) if threshold is not None or key.endswith("profile_policy") else (tp * sp, 1)
        assert (params["tensor_parallel_size"], params["sequence_parallel_size"]) == (want_tp, want_sp)
        assert params["device"] == "cuda" and params["load_format"] == "dummy"
        if key.endswith("profile_policy"):
            assert (params["shift_policy"], str(params["profile"])) == ("profile", "p.json")
        elif threshold == 0:
            assert params["shift_policy"] == "sp"
        elif threshold is not None and sp > 1:
            assert (params["shift_policy"], params["shift_threshold"]) == ("threshold", threshold)
