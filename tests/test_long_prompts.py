"""The long-prompt benchmark (`python -m shifttune.profile.long_prompts`) in its tiny-model CPU mode: it runs
both prefill paths and writes the rows the issue asks for."""

from __future__ import annotations

import json

from shifttune.profile.long_prompts import main, prompt_flops, query_key_pairs, suggest_min_pairs


def test_cpu_mode_writes_ttft_rows_for_both_paths(tmp_path):
    out = tmp_path / "long_prompts_cpu.json"
    lengths = [40, 150]
    main(["--model", "tiny", "--device", "cpu", "--out", str(out), "--lengths", "40,150", "--chunk", "64",
          "--repeats", "2"])  # fmt: skip
    data = json.loads(out.read_text())
    assert (
        data["card"].startswith("cpu") and data["matmul"]["flops_per_s"] > 0 and "torch.matmul" in data["matmul"]["how"]
    )
    rows = {(r["path"], r["prompt_tokens"]): r for r in data["rows"]}
    assert set(rows) == {(p, n) for p in ("sdpa", "paged") for n in lengths} and not data["skipped"]
    for (path, n), r in rows.items():
        assert r["resolved_path"] == path and r["chunk_tokens"] == 64
        assert r["first_ttft_s"] > 0 and len(r["warm_ttft_s"]) == 2
        assert abs(r["ttft_s"] - sum(r["warm_ttft_s"]) / 2) < 1e-9  # the median of two
        assert 0 < r["floor_s"] < r["ttft_s"] and abs(r["floor_over_ttft"] - r["floor_s"] / r["ttft_s"]) < 1e-9
        assert r["first_token"] == rows[("paged", n)]["first_token"]  # both paths, the same greedy token
    assert rows[("sdpa", 150)]["floor_s"] > rows[("sdpa", 40)]["floor_s"]
    startup = data["startup"]
    assert startup["sdpa"]["sdpa_support"]["backend"] == "math" and startup["paged"]["sdpa_support"] is None
    layer = data["attention_layer"]
    for r in layer["whole_prompt"]:
        for name in ("engine_paged", "engine_sdpa", "torch_math"):
            assert r[name]["ms"] > 0 and r[name]["tflops"] > 0
        assert r["rel_diff_sdpa_vs_paged"] < 1e-5  # float32 on CPU
    assert layer["chunk"] and all(r["prefix"] > 0 for r in layer["chunk"])
    assert {r["tokens"] for r in layer["threshold"]} and "suggested_sdpa_min_pairs" in layer


def test_floor_and_threshold_arithmetic():
    from shifttune.config import EngineConfig

    cfg = EngineConfig(model="llama-3.1-8b", load_format="dummy").model_config
    # the 8k floor: 0.17 s at 801 TFLOP/s
    assert abs(prompt_flops(cfg, 8192) / 801e12 - 0.165) < 0.005
    rows = [
        {"tokens": n, "prefix": c, "engine_sdpa": {"ms": s}, "engine_paged": {"ms": p}}
        for n, c, s, p in [
            (256, 0, 2.0, 1.0),
            (256, 16384, 1.0, 1.5),
            (1024, 0, 1.0, 2.0),
            (2048, 0, 1.1, 1.0),
            (4096, 0, 1.0, 2.0),
        ]  # fmt: skip
    ]
    # 2048 tokens with no prefix (2.1M pairs) loses; every chunk with more pairs wins, 256 after 16k the first
    assert suggest_min_pairs(rows) == query_key_pairs(256, 16384) == 256 * (16384 + 128)
    assert suggest_min_pairs([dict(rows[0])]) is None
