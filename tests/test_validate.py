"""`shifttune recommend --validate URL` on CPU: a tiny `shifttune serve` subprocess, the shipped CPU profile,
one low rate; the table's rows and fields and the saved JSON (not the error's size: CPU timing is noise)."""

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


def test_validate_refuses_a_profile_of_another_layout():
    from shifttune.bench.validate import ValidateConfig, simulated
    from shifttune.config import ConfigError
    from shifttune.engine.profile_schema import load_profile
    from shifttune.recommend.workload import Request

    cfg = ValidateConfig("http://127.0.0.1:1", load_profile(SHIPPED_DIR / "tiny_cpux2.json"), None, [1.0])
    settings = {"model": "tiny", "tp": 4, "sp": 1, "policy": "threshold", "threshold": 16}
    with pytest.raises(ConfigError, match="measured on 2 ranks"):
        simulated(cfg, settings, [Request(0.0, 8, 2)])
    assert simulated(cfg, settings | {"tp": 1, "sp": 2}, [Request(0.0, 8, 2)])["requests"] == 1


def test_validate_needs_a_server_and_rates(tmp_path: Path):
    r = CliRunner().invoke(app, ["recommend", "--validate", f"http://127.0.0.1:{free_port()}", "--rate", "1"])
    assert r.exit_code != 0 and "cannot read the server's settings" in r.output
    r = CliRunner().invoke(app, ["recommend", "--validate", "http://127.0.0.1:1"])
    assert r.exit_code != 0 and "--rate" in r.output
