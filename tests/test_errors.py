"""Bad input gives one clear ConfigError before anything is allocated, and the CLI prints it, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from shifttune import LLM, SamplingParams
from shifttune.cli import app
from shifttune.config import ConfigError, EngineConfig


def _copy(src, dst, **config_changes):
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.update(config_changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_layout_must_match_devices():
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        EngineConfig(model="llama-3.1-8b", load_format="dummy", device="cuda", tensor_parallel_size=2)
    with pytest.raises(ConfigError, match="tensor_parallel_size: must be an integer >= 1, got 0"):
        EngineConfig(model="tiny", tensor_parallel_size=0)


def test_heads_must_divide(hf_models, tmp_path):
    with pytest.raises(ConfigError, match="4 attention heads do not divide by SP x TP = 8"):
        EngineConfig(model=str(hf_models["llama"]), tensor_parallel_size=4, sequence_parallel_size=2)
    odd = _copy(hf_models["llama"], tmp_path / "m", num_attention_heads=12, num_key_value_heads=3, head_dim=16)
    with pytest.raises(ConfigError, match="3 KV heads and SP x TP = 2"):
        EngineConfig(model=str(odd), tensor_parallel_size=2)


def test_unsupported_architecture(hf_models, tmp_path):
    gpt = _copy(hf_models["llama"], tmp_path / "m", architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConfigError, match="unsupported architecture"):
        EngineConfig(model=str(gpt))
    with pytest.raises(ConfigError, match="not a local directory nor a bundled model"):
        EngineConfig(model="no-such-model")
    with pytest.raises(ConfigError, match="not a local directory nor a bundled model"):  # was AttributeError: .lower
        EngineConfig(model=tmp_path / "nope")
    # no "architectures" list: the model type names it, as in HF and vLLM (was "unsupported architecture 'llama'")
    plain = _copy(hf_models["llama"], tmp_path / "plain", architectures=None, model_type="llama")
    assert EngineConfig(model=str(plain)).model_config.architecture == "LlamaForCausalLM"
    with pytest.raises(ConfigError, match="unsupported architecture 'gpt2'"):
        EngineConfig(model=str(_copy(hf_models["llama"], tmp_path / "g", architectures=None, model_type="gpt2")))


@pytest.mark.parametrize("alias, dtype", [("half", "float16"), ("float", "float32"), ("bf16", "bfloat16")])
def test_vllms_dtype_spellings(alias, dtype):
    if dtype == "float16":  # not on CPU: the alias is read, then refused for the device
        with pytest.raises(ConfigError, match="float16 is not supported on CPU"):
            EngineConfig(model="tiny", dtype=alias)
    else:
        assert EngineConfig(model="tiny", dtype=alias).dtype == dtype


def test_missing_and_corrupt_weights(hf_models, tmp_path):
    missing = _copy(hf_models["llama"], tmp_path / "missing")
    next(missing.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ConfigError, match="weight file .* is missing"):
        LLM(str(missing))
    corrupt = _copy(hf_models["llama"], tmp_path / "corrupt")
    shard = next(corrupt.glob("model-00001-*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ConfigError, match="corrupt or unreadable"):
        LLM(str(corrupt))
    empty = _copy(hf_models["llama"], tmp_path / "empty")
    for f in empty.glob("*.safetensors*"):
        f.unlink()
    with pytest.raises(ConfigError, match="no \\*.safetensors weights"):
        LLM(str(empty))


def test_prompt_longer_than_context():
    with LLM("tiny", max_model_len=16) as llm:
        with pytest.raises(ConfigError, match="prompt: has 16 tokens but the model context"):
            llm.generate([list(range(2, 18))])
        with pytest.raises(ConfigError, match="prompt: token ids must be integers"):
            llm.generate([[5, 100000]])
        assert llm.generate([[0, 5, 6]], SamplingParams(max_tokens=3))[0].outputs[0].token_ids


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -1}, "temperature: must be a finite number >= 0"),
        ({"top_p": 0}, "top_p: must be in"),
        ({"top_k": -5}, "top_k: must be"),
        ({"max_tokens": 0}, "max_tokens: must be an integer >= 1"),
        ({"min_tokens": 5, "max_tokens": 2}, "min_tokens: must be at most max_tokens"),
        ({"logprobs": -1}, "logprobs: must be an integer >= 0"),
        ({"stop": [""]}, "stop: stop strings must be non-empty"),
    ],
)
def test_bad_sampling_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        SamplingParams(**kwargs)


def test_cli_prints_one_line_not_a_traceback():
    result = CliRunner().invoke(app, ["generate", "--tp", "3"])
    assert result.exit_code == 2
    assert "8 attention heads do not divide by SP x TP = 3" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(app, ["generate", "--temperature", "-2"])
    assert result.exit_code == 2 and "--temperature: must be a finite number >= 0" in result.output


def test_unsupported_biases_are_refused(hf_models, tmp_path):
    biased = _copy(hf_models["llama"], tmp_path / "m", attention_bias=True)
    with pytest.raises(ConfigError, match="attention_bias / mlp_bias"):
        EngineConfig(model=str(biased))


def test_eos_ids_come_from_the_generation_config_too(hf_models, tmp_path):
    m = _copy(hf_models["llama"], tmp_path / "m", eos_token_id=2)
    (m / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert EngineConfig(model=str(m)).model_config.eos_token_ids == (2, 7)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks what a machine without a GPU prints")
@pytest.mark.parametrize("module", ["loop_overhead", "sampler_bench", "attention_bench"])
def test_gpu_benchmarks_say_in_one_line_that_they_need_a_gpu(module, tmp_path):
    """The GPU benchmarks, started where no CUDA GPU is visible: a non-zero exit and one line, not a traceback."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", f"shifttune.profile.{module}", "--out", str(tmp_path / "x.json")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode != 0 and len(lines) == 1 and "Traceback" not in res.stderr, res.stdout + res.stderr
    assert "GPU" in lines[0], lines


@pytest.mark.parametrize(
    "code, says",
    [
        # a CPU build of torch has no Triton: the import of the module was the traceback
        ("import sys; sys.modules['triton'] = None; sys.argv[1:] = ['--out', 'x.json']; import runpy; "
         "runpy.run_module('shifttune.profile.attention_bench', run_name='__main__')", "attention_bench: "),
        # the e2e prompt of a 64-token context was empty: the whole grid ran, then a traceback and no file
        ("import sys; sys.argv[1:] = '--model tiny --device cpu --tokens 1 --contexts 64 --out x.json'.split(); "
         "import runpy; runpy.run_module('shifttune.profile.step_sweep', run_name='__main__')", "--e2e"),
    ],
)  # fmt: skip
def test_gpu_tools_refuse_in_one_line_before_they_run(code, says, tmp_path):
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    lines = [line for line in (res.stdout + res.stderr).splitlines() if line.strip()]
    assert res.returncode == 1 and len(lines) == 1 and says in lines[0], res.stdout + res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["profile", "--device", "cpu", "--out", "{blocked}/p.json"],
        ["profile", "--device", "cpu", "--out", "{folder}"],
        ["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "4xH200", "--out", "{blocked}/p.json"],
        ["generate", "-o", "{blocked}/g.json"],
        ["serve", "tiny", "--device", "cpu", "--log-file", "{blocked}/s.log"],
        ["recommend", "--plot", "{blocked}/plan.png"],
        ["bench", "--base-url", "http://127.0.0.1:9", "--out", "{blocked}/b.json"],
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(args, tmp_path):
    """One line and exit 2, before an engine starts (generate used to lose its results at the end, profile to
    print a worker's traceback): a file where the folder should be, or a folder given as the file."""
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")
    args = [a.format(blocked=blocked, folder=tmp_path) for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "cannot write" in result.output or "is a folder" in result.output, result.output


@pytest.mark.parametrize(
    "value, message",
    [("gloo", "--all-reduce: must be one of nccl, symm_mem"), ("symm_mem", "--all-reduce: symm_mem needs CUDA GPUs")],
)
def test_serve_refuses_an_all_reduce_it_cannot_run(value, message):
    """An unknown --all-reduce, and symm_mem off CUDA, are one line naming the flag before anything starts."""
    result = CliRunner().invoke(app, ["serve", "tiny", "--device", "cpu", "--all-reduce", value])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output, result.output


def test_serve_refuses_a_port_out_of_range():
    result = CliRunner().invoke(app, ["serve", "tiny", "--device", "cpu", "--port", "70000"])
    assert result.exit_code == 2 and "--port: must be 0-65535" in result.output, result.output


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_model_len=-5), "max_model_len: must be >= 1"),
        (dict(max_model_len=0), "max_model_len: must be >= 1"),
        (dict(gpu_memory_utilization=0), "gpu_memory_utilization: must be in"),
        (dict(gpu_memory_utilization=2), "gpu_memory_utilization: must be in"),
        (dict(all_reduce="symm_mem"), "all_reduce: symm_mem needs CUDA GPUs"),
        (dict(all_reduce="ring"), "all_reduce: must be one of nccl, symm_mem"),
        (dict(shift_threshold=-1), r"shift_threshold: must be in \[0, 2147483647\]"),
        (dict(shift_threshold=10**400), r"shift_threshold: must be in \[0, 2147483647\]"),  # the gauge's float
    ],
)
def test_engine_sizes_out_of_range_are_refused(kwargs, message):
    """Before: a negative max_model_len surfaced as a worker's RuntimeError about range steps, 0 as "no memory
    left for the KV cache", and any gpu_memory_utilization was taken."""
    with pytest.raises(ConfigError, match=message):
        EngineConfig(model="tiny", **kwargs)


def test_profile_predict_and_compare_say_what_is_missing_or_mismatched(tmp_path):
    from shifttune.recommend.shipped import pick_shipped_profile

    r = CliRunner().invoke(app, ["profile", "--predict", "--model", "llama-3.1-8b"])
    assert r.exit_code == 2 and "--predict needs the GPU type with the count" in r.output, r.output
    pred = tmp_path / "pred.json"
    r = CliRunner().invoke(
        app, ["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "1xH100", "--out", str(pred)]
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["profile", "--compare", str(pick_shipped_profile(None, None, None)), str(pred)])
    assert r.exit_code == 2 and "different models (tiny and llama-3.1-8b)" in r.output, r.output  # was: an empty table


def test_a_model_bigger_than_host_memory_is_refused_before_ranks_start(monkeypatch):
    """On CPU ranks llama-3.1-8b in float32 (30 GiB) on a 24 GiB machine ended in the OOM killer; now one line."""
    from shifttune.engine import llm_engine

    monkeypatch.setattr(llm_engine, "host_memory_available", lambda: 100_000)  # tiny's weights: ~1.4 MB in fp32
    with pytest.raises(ConfigError, match=r"tiny in float32 needs at least 0\.0 GiB of host memory"):
        LLM("tiny", device="cpu")
    monkeypatch.setattr(llm_engine, "host_memory_available", lambda: None)  # not Linux: no check
    with LLM("tiny", device="cpu") as llm:
        assert llm.generate(["hi"], SamplingParams(max_tokens=2))[0].outputs[0].token_ids
