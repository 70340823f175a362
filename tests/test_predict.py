"""The predictor (issue 12): op tables, the collective model, predicted profiles, --compare, and recommend on
GPUs the machine does not have. All on CPU; the op-table measurement runs the tiny model on CPU ranks."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner
from conftest import stand_in_step_graphs

from shifttune.cli import app
from shifttune.config import SP, TP, ConfigError, load_model_config, resolve_model_path
from shifttune.engine.profile_schema import Factorization, Point, Profile, load_profile
from shifttune.recommend.collectives import ASSUMED_EAGER_LAUNCH_MS, CollectiveModel, Curve, collective_model_for
from shifttune.recommend.compare import compare_profiles
from shifttune.recommend.gpus import gpu_slug, parse_gpus
from shifttune.recommend.op_table import OpEntry, OpTable, OpTableError, load_op_table, op_table_from_dict
from shifttune.recommend.predict import (
    PredictSettings,
    factorizations,
    op_table_label,
    predict_profile,
    step_collectives,
)
from shifttune.recommend.roofline import head_ms, layer_ms
from shifttune.recommend.shapes import memory_check, rank_shapes, weight_bytes_per_rank

ROOT = Path(__file__).resolve().parent.parent
SHARED = json.loads((ROOT / "shifttune" / "data" / "collectives" / "h200x4.json").read_text())
TINY_OPS = dict(tokens=[1, 8, 64], contexts=[64, 128], warmup=1, iters=2)


def cfg(name: str):
    return load_model_config(resolve_model_path(name))[0]


# ---- shapes and grid: the torch-free arithmetic says what the engine does -----------------------------
@pytest.mark.parametrize("model", ["llama-3.3-70b", "qwen3-8b", "tiny"])
def test_rank_shapes_match_the_engine_layouts(model):
    from shifttune.config import ParallelConfig
    from shifttune.model.layout import make_layout
    from shifttune.parallel.state import Group, ParallelState

    c = cfg(model)
    for p in (1, 2, 4, 8):
        for tp, sp in factorizations(p):
            par = ParallelConfig(tp, sp)
            try:
                par.validate(c)
            except ConfigError:
                continue
            groups = [Group(list(range(n)), 0, None) for n in (tp, sp, p)]
            state = ParallelState(0, par, *groups, None)
            for mode in (TP, SP) if sp > 1 else (TP,):
                layout, s = make_layout(mode, c, state), rank_shapes(c, mode, tp, sp)
                assert (s.q_heads, s.kv_heads, s.mlp_rows, s.vocab_rows) == (
                    len(layout.q_heads), len(layout.kv_heads), len(layout.mlp_rows), len(layout.vocab_rows)
                ), (model, mode, tp, sp)  # fmt: skip
                assert s.cache_kv_heads == len(layout.cache_kv_heads)
                per_dest = len(layout.kv_send_index) // layout.sp
                assert s.kv_heads_per_dest == per_dest and s.attn_q_heads == c.num_heads // p


def test_grid_and_factorizations_are_the_profilers():
    from shifttune.profile import profiler, step_sweep
    from shifttune.recommend import grid

    assert grid.GPU_TOKENS == step_sweep.DECODE + step_sweep.PREFILL and grid.GPU_CONTEXTS == profiler.GPU_CONTEXTS
    assert all(grid.step_shape(t, c) == step_sweep.step_shape(t, c, 256) for t in grid.GPU_TOKENS for c in (512, 32768))
    assert [factorizations(p) for p in (1, 4, 8)] == [profiler.factorizations(p) for p in (1, 4, 8)]
    from shifttune.kernels import prefill_attention

    assert (grid.SDPA_MIN_TOKENS, grid.SDPA_MIN_PAIRS) == (prefill_attention.SDPA_MIN_TOKENS,
                                                           prefill_attention.SDPA_MIN_PAIRS)  # fmt: skip


def test_memory_rule_is_the_profilers(monkeypatch):
    """The predictor refuses exactly the factorizations `shifttune profile` would refuse on that GPU."""
    import torch

    from shifttune.profile.profiler import ProfileSettings, check_factorization

    h200 = 150754820096
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=h200))
    c = cfg("llama-3.3-70b")
    for p in (4, 8):
        settings = ProfileSettings("llama-3.3-70b", p, "cuda")
        for tp, sp in factorizations(p):
            ours = memory_check(c, tp, sp, 2, h200, 0.9, max(settings.contexts))
            assert ours == check_factorization(settings, tp, sp), (tp, sp)
    assert memory_check(c, 1, 4, 2, h200, 0.9, 32768) and memory_check(c, 2, 2, 2, h200, 0.9, 32768) is None


def test_gpus_flag():
    assert (parse_gpus("4xH200").count, parse_gpus("4xH200").slug) == (4, "h200")
    assert parse_gpus("h100x8").slug == "h100" and parse_gpus("2").slug is None
    assert gpu_slug("NVIDIA H100 80GB HBM3") == "h100" and gpu_slug("NVIDIA H200") == "h200"
    for bad in ("x4", "four", "0xH200"):
        with pytest.raises(ConfigError):
            parse_gpus(bad)


# ---- the collective model ------------------------------------------------------------------------------
def test_curve_is_monotone_and_passes_through_its_points():
    points = {int(b): ms for b, ms in SHARED["nccl"]["all_reduce_ms"].items()}
    curve = Curve.fit(points)
    # 1 MiB (46 us) and 2 MiB (43.4 us) came from two runs: pooled to their mean, every other point exact
    assert curve.pooled == [1048576, 2097152]
    for b, ms in points.items():
        if b in curve.pooled:
            assert curve(b) == pytest.approx((0.046 + 0.0434) / 2) and curve(b) == pytest.approx(ms, rel=0.05)
        else:
            assert curve(b) == ms
    assert curve(1) == points[16384]  # latency-bound below the smallest message
    slope = (points[268435456] - points[16777216]) / (268435456 - 16777216)
    assert curve(2 * 268435456) == pytest.approx(points[268435456] + slope * 268435456)  # bandwidth-bound past it
    assert Curve.fit({1: 3.0, 2: 1.0, 3: 2.0}).ms == [2.0, 2.0, 2.0]


@pytest.mark.parametrize("backend,op", [("nccl", "all_reduce"), ("nccl", "all_gather"), ("nccl", "all_to_all"),
                                        ("symm_mem_one_shot", "all_reduce")])  # fmt: skip
def test_collective_times_grow_with_bytes_and_ranks(backend, op):
    model = CollectiveModel(SHARED, "shared")
    sizes = [int(2 ** (k / 4)) for k in range(40, 116)]  # 1 KiB .. 512 MiB
    for graph in (True, False):
        for p in (2, 4, 8):
            times = [model.time_ms(op, p, b, graph, backend) for b in sizes]
            assert all(b >= a for a, b in zip(times, times[1:])), (op, p, graph)
        for b in (16384, 1 << 20, 1 << 26):
            assert model.time_ms(op, 2, b, graph, backend) < model.time_ms(op, 4, b, graph, backend) < model.time_ms(
                op, 8, b, graph, backend
            )  # fmt: skip
    assert model.time_ms(op, 1, 1 << 20, True, backend) == 0.0


def test_collective_model_says_what_was_measured():
    model = CollectiveModel(SHARED, "shared")
    assert model.time_ms("all_reduce", 4, 2097152) == pytest.approx((0.046 + 0.0434) / 2)
    assert model.time_ms("all_to_all", 4, 268435456) == 0.688
    assert model.time_ms("all_reduce", 4, 16384, backend="symm_mem_one_shot") == 0.0072
    eager = model.time_ms("all_reduce", 4, 16384, in_graph=False)
    assert eager == pytest.approx(0.0249 + ASSUMED_EAGER_LAUNCH_MS)
    model.time_ms("all_reduce", 8, 16384)
    model.time_ms("all_gather", 4, 16384)
    used = model.describe()["used"]
    assert used["nccl all_reduce P=4 graph"] == "measured on 4 GPUs"
    assert "extrapolated" in used["nccl all_reduce P=8 graph"]
    assert "not measured" in used["nccl all_gather P=4 graph"] and "assumed" in used["nccl all_reduce P=4 eager"]
    # H100 has its own table (4 H100s, session 13); a GPU of the same fabric without one gets another's, said so
    assert collective_model_for("h100").source.endswith("h100x4.json") and not collective_model_for("h100").note
    with pytest.raises(ConfigError, match="no collective measurements"):
        collective_model_for("a100")


def test_gloo_collective_measurement_feeds_the_model():
    from shifttune.profile.collectives_bench import measure_collectives

    table = measure_collectives(2, "cpu", sizes=[4096, 1 << 16], iters=2)
    assert table["world_size"] == 2 and table["backend"] == "gloo"
    ops = table["eager"]["gloo"]
    assert set(ops) == {"all_reduce_ms", "all_gather_ms", "all_to_all_single_ms"}
    assert all(ms > 0 for curve in ops.values() for ms in curve.values())
    model = CollectiveModel(table, "gloo")
    assert model.time_ms("all_reduce", 2, 4096, in_graph=False) == pytest.approx(
        Curve.fit({int(b): v for b, v in ops["all_reduce_ms"].items()})(4096)
    )


# ---- op tables -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_ops(tmp_path_factory):
    from shifttune.profile.ops import OpsSettings, run_ops

    out = tmp_path_factory.mktemp("ops") / "tiny_cpu.json"
    messages = []
    table = run_ops(OpsSettings("tiny", [1, 2], "cpu", **TINY_OPS), out, "test", messages.append)
    return out, table, messages


def test_op_table_measured_on_cpu_ranks(tiny_ops):
    out, table, messages = tiny_ops
    layouts = {(e.mode, e.tp, e.sp) for e in table.entries}
    assert layouts == {(TP, 1, 1), (TP, 2, 1), (SP, 1, 2)}
    points = {(t, c) for t in TINY_OPS["tokens"] for c in TINY_OPS["contexts"]}
    for layout in layouts:
        assert {(e.tokens, e.context) for e in table.entries if (e.mode, e.tp, e.sp) == layout} == points
    assert all(e.layer_ms > 0 and e.head_ms >= 0 and e.num_seqs * e.tokens_per_seq == e.tokens for e in table.entries)
    assert table.method == "measured" and table.gpu["slug"] == "cpu" and table.engine["layers_timed"] == 2
    assert load_op_table(out).to_dict() == table.to_dict()
    again = []  # the same command again measures nothing
    from shifttune.profile.ops import OpsSettings, run_ops

    run_ops(OpsSettings("tiny", [1, 2], "cpu", **TINY_OPS), out, "test", again.append)
    assert not any("points" in m.message for m in again)


def test_op_table_format_refuses_bad_files():
    good = OpTable("measured", "x", {"name": "g", "slug": "g", "memory_bytes": 1}, {"name": "m"}, {}, {"tokens": [1]},
                   entries=[OpEntry(TP, 2, 1, 1, 64, 1, 1, 0.1, 0.01)]).to_dict()  # fmt: skip
    assert op_table_from_dict(good).get(TP, 1, 2, 1, 64).step_ms(10) == pytest.approx(0.2)  # TP mode: any (tp, sp)
    for change, message in [
        ({"schema": "x"}, "not a shifttune operator table"),
        ({"method": "guessed"}, "method must be one of"),
        ({"entries": [good["entries"][0] | {"mode": "dp"}]}, "mode must be"),
        ({"entries": [good["entries"][0] | {"sp": 2}]}, "TP-mode entries carry"),
        ({"entries": [good["entries"][0] | {"layer_ms": 0}]}, "layer_ms must be > 0"),
        ({"entries": good["entries"] * 2}, "repeats"),
    ]:
        with pytest.raises(OpTableError, match=message):
            op_table_from_dict(good | change)


def test_roofline_against_measured_tables_and_profiles(tmp_path):
    """The provisional table (roofline constants fitted by profiles/commands/roofline_fit.py to the H200 llama-3.1-8b
    and qwen3-8b op tables of session 20, the GQA group's exponent to the 70B's H200 table) reproduces the tables of
    those models measured again with split graphs, and predicts what it was not fitted to: mistral-7b-v0.3's table,
    qwen3-32b's (a GQA group of 8, as the 70B's) and the engine's measured one-GPU profiles on an H100 (another card).
    Bounds: the fit's report (profiles/runs/s24_roofline_fit.txt, run 1's "shipped") with a little room. Each
    table is predicted as its engine ran (`engine.chunk_split_graphs`)."""
    import statistics

    from shifttune.recommend.gpus import known_gpus
    from shifttune.recommend.roofline import RooflineConstants, roofline_table

    c, gpus = RooflineConstants.shipped(), known_gpus()
    tables = [("llama-3.1-8b", "h200", 0.045, 0.125), ("mistral-7b-v0.3", "h200", 0.047, 0.135),
              ("llama-3.3-70b", "h200", 0.033, 0.08), ("qwen3-32b", "h200", 0.05, 0.095)]  # fmt: skip
    for model, gpu, median, p90 in tables:
        m = cfg(model)
        errors, table = [], load_op_table(ROOT / "shifttune/data/op_tables" / f"{model}_{gpu}.json")
        split = table.engine.get("chunk_split_graphs", False)
        for e in table.entries:
            s = rank_shapes(m, e.mode, e.tp, e.sp)
            step = head_ms(m, s, e.tokens, e.context, 2, gpus[gpu], c)
            step += m.num_layers * layer_ms(m, s, e.tokens, e.context, 2, gpus[gpu], c, chunk_split=split)
            errors.append(abs(step / e.step_ms(m.num_layers) - 1))
        assert statistics.median(errors) < median and sorted(errors)[int(0.9 * len(errors))] < p90, (model, gpu)
    # NOTE: 5%, not the fit report's 3.4%: two H100 machines' P = 1 profiles of the same engine differ by up to 2.5%
    # at most points (s21_h100/a and s22_h100/d), which moved the roofline's median error from 3.4% to 4.6%; p90 12%:
    # mistral-7b-v0.3's profile measured again in s23_h100/c gives 11.3% (s23_roofline_fit.txt)
    for model, gpu, measured in [c for c in SHIPPED_CHECKS if c[1] == "h100"]:  # another card than the fit's
        table = roofline_table(model, cfg(model), gpus[gpu], [1])
        predicted = predict_profile(PredictSettings(model, 1, gpu, op_table=_saved(table, tmp_path)), command="test")
        o = compare_profiles(load_profile(ROOT / "profiles" / "runs" / measured), predicted)["overall"]
        assert o["median_abs_error"] < 0.05 and o["p90_abs_error"] < 0.12 and o["max_abs_error"] < 0.25, (model, o)


def test_roofline_mirrors_the_graphs_attention_launch(monkeypatch):
    """graph_attention_programs computes the graphed paged attention's launch as the engine does: the bucket a step
    replays, its sequence capacity and tile (StepGraphs), the split-KV ways (`choose_num_splits`, `launch_shape`),
    the chunk buckets' split graphs (StepGraphs.split_plan, use_split_graph), for decode batches and prefill chunks
    of one or more sequences, bucket sizes and others, at the GQA groups of the bundled models' ranks."""
    import itertools

    from shifttune.kernels.split_kv import choose_num_splits, launch_shape
    from shifttune.recommend import grid
    from shifttune.recommend.roofline import graph_attention_programs
    from shifttune.runner import cuda_graphs

    assert grid.GRAPH_TOKEN_BUCKETS == cuda_graphs.TOKEN_BUCKETS and grid.GRAPH_TOKEN_BUCKETS[-1] == 2048
    shapes = [(32, 8), (16, 4), (8, 2), (4, 1), (64, 8), (8, 1), (40, 8), (5, 1)]
    split_steps, several = 0, 0
    for (hq, hk), sms, max_seqs in itertools.product(shapes, (78, 132, 1028), (grid.MAX_DECODE, 20)):
        monkeypatch.setattr(cuda_graphs, "sm_count", lambda *_, n=sms: n)  # SM counts of other GPUs split differently
        graphs = stand_in_step_graphs(hq, hk, max_seqs)
        assert graphs.buckets[-1] == grid.CUDA_GRAPH_MAX_TOKENS
        for tokens in [*grid.GPU_TOKENS[:12], 3, 5, 12, 17, 100, 300, 700, 1500]:
            # grid steps at 8k and 512-1024 (several sequences a chunk step); one sequence's chunk, cached or not
            for context in (8192, 512, 1024, 2 * tokens, tokens):
                bucket = graphs.bucket_for(tokens)
                seqs, per = grid.step_shape(tokens, context, max_seqs)
                block_m = graphs.block_m_for(bucket)
                if graphs.use_split_graph("tp", bucket, seqs, seqs * per, seqs * context):
                    splits, split_steps = graphs.split_plan[("tp", bucket)][0], split_steps + 1
                    several += seqs > 1
                else:
                    splits = choose_num_splits(bucket, graphs.seqs_for(bucket), hq, hk, block_m, sms)
                _, block_q, _ = launch_shape(bucket, graphs.seqs_for(bucket), hq, hk, block_m)
                want = seqs * -(-per // block_q) * hk * splits
                got = graph_attention_programs(tokens, seqs, per, context, hq, hk, sms, max_seqs)
                assert got == want, (hq, hk, sms, max_seqs, tokens, context)
    assert split_steps > 20 and several > 5  # the split graphs' rule is exercised, with several sequences too


def test_the_roofline_follows_the_engines_split_graph_knob(monkeypatch):
    """The roofline reads CHUNK_SPLIT_GRAPHS from `kernels/split_kv.py` when it runs, as the engine does: a probe
    that turns it off (as chunk_split_probe.py does) gets predictions without split graphs too."""
    from shifttune.kernels import split_kv
    from shifttune.recommend.roofline import graph_attention_programs

    step = (512, 1, 512, 32768, 4, 1, 132)  # one sequence's 512-token chunk at 32k on a TP-8 rank of an 8B model
    on = graph_attention_programs(*step)
    assert on == graph_attention_programs(*step, chunk_split=True) > graph_attention_programs(*step, chunk_split=False)
    monkeypatch.setattr(split_kv, "CHUNK_SPLIT_GRAPHS", False)
    assert graph_attention_programs(*step) == graph_attention_programs(*step, chunk_split=False)


def _saved(table, folder: Path) -> Path:
    path = folder / f"roofline_{table.model['name']}.json"
    table.save(path)
    return path


# ---- predicted profiles --------------------------------------------------------------------------------
def test_predicted_profile_is_a_profile(tmp_path):
    prof = predict_profile(PredictSettings("llama-3.3-70b", 4, "h200"), command="test")
    path = tmp_path / "p.json"
    prof.save(path)
    loaded = load_profile(path)
    assert loaded.predicted is True and json.loads(path.read_text())["predicted"] is True
    # the shipped H200 table of the model (measured on one H200), the shipped 4 x H200 collectives
    assert loaded.sources["op_table"]["method"] == "measured"
    assert loaded.sources["op_table"]["file"].endswith("llama-3.3-70b_h200.json")
    assert "h200x4.json" in loaded.sources["collectives"]["table"]
    feasible = {(f.tp, f.sp): f.feasible for f in loaded.factorizations}
    assert feasible == {(4, 1): True, (2, 2): True, (1, 4): False}  # 4 x 176 GB of weights do not fit
    assert "exceed" in next(f.reason for f in loaded.factorizations if f.sp == 4)
    layouts = {(p.mode, p.tp, p.sp) for p in loaded.points}
    assert layouts == {(TP, 4, 1), (SP, 2, 2)}
    assert loaded.grid == {"tokens": [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384],
                           "contexts": [512, 2048, 8192, 32768]}  # fmt: skip
    f = next(f for f in loaded.factorizations if (f.tp, f.sp) == (2, 2))
    assert f.weight_bytes_per_rank == weight_bytes_per_rank(cfg("llama-3.3-70b"), 2, 2, 2)
    # a decode batch of 256 at 32k context needs 8M tokens of KV: left out, as the measured profile would
    assert not any(p.tokens == 256 and p.context == 32768 for p in loaded.points)


def test_a_table_without_the_asked_p_falls_back_to_the_roofline_and_says_why(tmp_path, monkeypatch):
    from shifttune.recommend import op_table

    table = json.loads((op_table.OP_TABLE_DIR / "llama-3.1-8b_h200.json").read_text())
    table["entries"] = [e for e in table["entries"] if e["tp"] * e["sp"] == 1]  # as a run cut short leaves it
    (tmp_path / "llama-3.1-8b_h200.json").write_text(json.dumps(table))
    monkeypatch.setattr(op_table, "OP_TABLE_DIR", tmp_path)
    source = predict_profile(PredictSettings("llama-3.1-8b", 4, "h200"), command="test").sources["op_table"]
    assert source["method"] == "roofline" and "covers P = [1], not 4" in source["file"]


def test_step_time_is_ops_plus_collectives(tmp_path):
    table = OpTable("roofline", "t", {"name": "NVIDIA H200", "slug": "h200", "memory_bytes": 150754820096},
                    {"name": "llama-3.3-70b"}, {}, {"tokens": [1, 4096], "contexts": [2048]},
                    entries=[OpEntry(TP, 4, 1, 1, 2048, 1, 1, 0.5, 0.1),
                             OpEntry(SP, 2, 2, 4096, 2048, 2, 2048, 2.0, 1.0)])  # fmt: skip
    table.save(tmp_path / "t.json")
    prof = predict_profile(PredictSettings("llama-3.3-70b", 4, "h200", op_table=tmp_path / "t.json"))
    model = CollectiveModel(SHARED, "shared")
    tp_point = next(p for p in prof.points if p.mode == TP)
    ar = model.time_ms("all_reduce", 4, 1 * 8192 * 2)
    ag = model.time_ms("all_gather", 4, 1 * 128256 // 4 * 2)  # the sampled row's bf16 logits, V / P of them
    assert tp_point.median_ms == pytest.approx(0.5 + 80 * 0.1 + 161 * ar + ag)
    sp_point = next(p for p in prof.points if p.mode == SP)  # 4096 tokens: eager, 2048 rows per rank
    expected = 2.0 + 80 * 1.0 + 161 * model.time_ms("all_reduce", 2, 2048 * 8192 * 2, False)
    expected += 80 * model.time_ms("all_to_all", 2, 2 * 2048 * (16 + 2 * 2) * 128 * 2, False)
    expected += 80 * model.time_ms("all_to_all", 2, 2 * 2048 * 16 * 128 * 2, False)
    expected += model.time_ms("all_reduce", 2, 2 * 8192 * 2, False) + model.time_ms(
        "all_gather", 2, 2 * 64128 * 2, False
    )  # the two sampled rows' bf16 logits, V / TP of them
    assert sp_point.median_ms == pytest.approx(expected)
    assert prof.sources["missing_from_op_table"] and len(prof.points) == 2  # the table held two points
    c = cfg("llama-3.1-8b")
    assert all(group == 1 for _, group, _, _ in step_collectives(c, rank_shapes(c, TP, 1, 1), 32, 32, 2))
    assert predict_profile(PredictSettings("llama-3.1-8b", 1, "h200")).sources["collectives"] is None


# (model, card, the engine's measured P = 1 profile on that card from the device run that measured the shipped table)
SHIPPED_CHECKS = [
    (c["model"], c["gpu"], c["measured"])
    for c in json.loads((ROOT / "profiles/runs/table_checks.json").read_text())["checks"]
]


@pytest.mark.parametrize("model,gpu,measured", SHIPPED_CHECKS)
def test_a_shipped_op_table_predicts_the_engine_it_timed(model, gpu, measured):
    """The shipped table of a card predicts the engine's measured one-GPU profile on that card: a stale or wrong
    table, or a predictor change that breaks the sum, shows here (the roofline was 16% off at the median on H100)."""
    prof = predict_profile(PredictSettings(model, 1, gpu), command="test")
    assert prof.sources["op_table"]["method"] != "roofline", prof.sources["op_table"]
    result = compare_profiles(load_profile(ROOT / "profiles" / "runs" / measured), prof)
    assert result["overall"]["points"] >= 45  # qwen3-32b on an H200: 48 (its weights leave fewer feasible points)
    assert result["overall"]["median_abs_error"] < 0.02 and result["overall"]["p90_abs_error"] < 0.05, result["overall"]


def test_predict_from_the_cpu_op_table_and_compare(tiny_ops, tmp_path):
    out, table, _ = tiny_ops
    assert table.engine["cuda_graphs"] is False and table.engine["chunk_split_graphs"] is False  # no CUDA graphs
    prof = predict_profile(PredictSettings("tiny", 1, "cpu", op_table=out))
    for p in prof.points:
        e = table.get(TP, 1, 1, p.tokens, p.context)
        assert p.median_ms == pytest.approx(e.head_ms + cfg("tiny").num_layers * e.layer_ms)
    prof.save(tmp_path / "pred.json")
    r = CliRunner().invoke(app, ["profile", "--compare", str(tmp_path / "pred.json"), str(tmp_path / "pred.json")])
    assert r.exit_code == 0 and "median 0.0%" in r.output and "expected a measured profile first" in r.output


def test_a_shipped_op_table_is_found_by_model_and_gpu(tiny_ops, tmp_path, monkeypatch):
    from shifttune.recommend import op_table

    out, table, _ = tiny_ops
    monkeypatch.setattr(op_table, "OP_TABLE_DIR", tmp_path)
    (tmp_path / "tiny_cpu.json").write_text(out.read_text())
    gloo = {"world_size": 2, "backend": "gloo", "eager": {"gloo": {"all_reduce_ms": {"1024": 0.5, "65536": 0.9}}}}
    (tmp_path / "gloo.json").write_text(json.dumps(gloo))
    prof = predict_profile(PredictSettings("tiny", 2, "cpu", collectives=tmp_path / "gloo.json"))
    assert prof.sources["op_table"]["file"] == str(tmp_path / "tiny_cpu.json")
    assert {(p.mode, p.tp, p.sp) for p in prof.points} == {(TP, 2, 1), (SP, 1, 2)}
    assert prof.sources["collectives"]["used"]["nccl all_reduce P=2 eager"] == "measured on 2 GPUs"
    # P = 4 is not in the table: the roofline, which has no CPU entry
    with pytest.raises(ConfigError, match="unknown GPU type CPU;"):
        predict_profile(PredictSettings("tiny", 4, "cpu", collectives=tmp_path / "gloo.json"))


def test_a_collective_table_of_another_device_is_refused(tmp_path):
    gloo = {"gpu": "cpu", "world_size": 2, "backend": "gloo", "gloo": {"all_reduce_ms": {"1024": 0.5, "65536": 0.9}}}
    (tmp_path / "gloo.json").write_text(json.dumps(gloo))
    argv = ["profile", "--predict", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--collective-table",
            str(tmp_path / "gloo.json"), "--out", str(tmp_path / "p.json")]  # fmt: skip
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2 and "--collective-table:" in r.output and "measured on cpu, not a H100" in r.output, (
        r.output
    )
    assert not (tmp_path / "p.json").exists()
    shipped = ROOT / "shifttune/data/collectives/h200x4.json"  # "NVIDIA H200": taken for an H200
    prof = predict_profile(PredictSettings("llama-3.1-8b", 4, "h200", collectives=shipped))
    assert prof.sources["collectives"]["table"] == str(shipped)


def _profile(times: dict, predicted: bool) -> Profile:
    points = [Point(mode, 2 if mode == TP else 1, 1 if mode == TP else 2, t, c, t, 1, ms, ms, ms)
              for (mode, t, c), ms in times.items()]  # fmt: skip
    facts = [Factorization(2, 1, True, None, {}, 10**6), Factorization(1, 2, True, None, {}, 10**6)]
    hw = {"device": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_count": 2}
    return Profile(hw, {}, {"name": "m"}, {"block_size": 16}, {}, factorizations=facts, points=points,
                   predicted=predicted)  # fmt: skip


def test_compare_scores_every_point_and_reads_the_crossovers(tmp_path):
    tokens = [1, 4, 16, 64, 256, 1024]
    meas = {(mode, t, 512): (5 + 0.02 * t if mode == TP else 7 + 0.01 * t) for mode in (TP, SP) for t in tokens}
    errors = [0.01, -0.02, 0.03, -0.04, 0.05, -0.06, 0.07, -0.08, 0.09, -0.10, 0.11, -0.12]
    pred = {k: v * (1 + e) for (k, v), e in zip(meas.items(), errors)}
    pred[(TP, 4096, 512)] = 5 + 0.02 * 4096  # only predicted: listed, not scored
    result = compare_profiles(_profile(meas, False), _profile(pred, True))
    assert result["overall"]["points"] == 12 and result["only_predicted"] == [[TP, 2, 1, 4096, 512]]
    assert result["overall"]["median_abs_error"] == pytest.approx(0.065)  # of 0.01 .. 0.12
    assert result["overall"]["p90_abs_error"] == pytest.approx(0.109)
    assert result["overall"]["max_abs_error"] == pytest.approx(0.12)
    x = result["crossovers"]["SP=2 x TP=1"]
    assert 150 <= x["measured"][512] <= 250 and x["predicted"][512] is not None and not result["notes"]
    a, b = tmp_path / "m.json", tmp_path / "p.json"
    _profile(meas, False).save(a)
    _profile(pred, True).save(b)
    r = CliRunner().invoke(app, ["profile", "--compare", str(a), str(b), "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    assert "median 6.5%" in r.output and "crossover SP=2 x TP=1: measured 512:" in r.output
    assert json.loads((tmp_path / "c.json").read_text())["overall"]["points"] == 12
    cpu = _profile(meas, False)
    cpu.hardware = {"device": "cpu", "gpu_name": None, "gpu_count": 0}
    result = compare_profiles(cpu, _profile(pred, True))
    assert result["measured"]["gpu"] == "no GPU (cpu)"
    assert "different GPUs: no GPU (cpu) and NVIDIA H100 80GB HBM3" in result["notes"]


def test_op_table_label_dates_the_table():
    from shifttune.recommend.predict import op_table_label

    ops = {"method": "measured", "file": "t.json", "created": "2026-11-27T04:04:48+00:00"}
    assert op_table_label(ops) == "measured on 2026-11-27, t.json"
    assert op_table_label({"method": "roofline", "file": "r.json"}) == "roofline, r.json"  # no date: none said
    assert op_table_label({}) == "?, ?"


# ---- recommend on GPUs this machine does not have ------------------------------------------------------
@pytest.mark.parametrize("gpus,layouts", [("4xH200", {(2, 2)}), ("8xH200", {(4, 2), (2, 4)})])
def test_recommend_predicts_for_gpus_it_does_not_have(gpus, layouts):
    start = time.time()
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", gpus, "--json"])
    assert r.exit_code == 0, r.output
    assert time.time() - start < 20
    data = json.loads(r.output)
    assert data["profile_kind"] == "predicted" and data["caveat"].startswith("predicted profile")
    made = data["profile_sources"]["op_table"]["created"][:10]  # the caveat dates the table: it times its engine
    assert len(made) == 10 and f"op table: measured on {made}, " in data["caveat"]
    assert data["world_size"] == int(gpus[0]) and (data["best_tp"], data["best_sp"]) in layouts
    assert isinstance(data["threshold"], int) and data["threshold"] > 0
    shift = next(p for p in data["predictions"] if p["label"].startswith("shift (threshold"))
    assert shift["ttft_p50_ms"] > 0 and shift["tpot_p50_ms"] > 0 and shift["output_tok_per_s"] > 0
    assert any("no --rate given" in n for n in data["notes"])
    text = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", gpus, "--rate", "1",
                                    "--num-requests", "30"])  # fmt: skip
    assert text.exit_code == 0 and "caveat: predicted profile" in text.output


def test_recommend_prefers_a_shipped_measured_profile(tmp_path, monkeypatch):
    from shifttune.recommend import shipped

    measured = _profile({(mode, t, 512): 5.0 + t * (0.02 if mode == TP else 0.01) for mode in (TP, SP)
                         for t in (1, 16, 256, 1024)}, False)  # fmt: skip
    measured.model = {"name": "llama-3.1-8b"}
    measured.save(tmp_path / "llama-3.1-8b_h100x2.json")
    monkeypatch.setattr(shipped, "SHIPPED_DIR", tmp_path)
    few = ["--num-requests", "30"]
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.1-8b", "--gpus", "2xH100", "--json", *few])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["profile_kind"] == "measured" and "caveat" not in data and data["profile"].endswith("h100x2.json")
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.1-8b", "--gpus", "2xH200", "--json", *few])
    other = json.loads(r.output)
    assert other["profile_kind"] == "predicted"  # measured on H100s, not H200s
    r = CliRunner().invoke(app, ["recommend", "--model", "llama-3.3-70b", "--gpus", "4"])
    assert r.exit_code == 2 and "no shipped profile" in r.output and "--gpus 4xH200" in r.output


def test_recommend_json_on_a_predicted_profile_loads_no_torch():
    code = ("import sys\nfrom shifttune.cli import app\nsys.argv = ['shifttune', 'recommend', '--model', "
            "'llama-3.3-70b', '--gpus', '8xH200', '--json']\ntry:\n    app()\nexcept SystemExit:\n    pass\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stderr.strip().endswith("NO-TORCH"), proc.stderr[-2000:]
    assert json.loads(proc.stdout)["profile_kind"] == "predicted"


def test_gpu_tools_say_so_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    for args in (["--ops", "--model", "llama-3.1-8b"], ["--collectives", "--gpus", "2"]):
        r = CliRunner().invoke(app, ["profile", *args, "--out", str(tmp_path / "x.json")])
        assert r.exit_code != 0 and r.output.count("\n") == 1 and "no" in r.output and "visible" in r.output
    r = CliRunner().invoke(app, ["profile", "--predict", "--gpus", "4", "--model", "llama-3.3-70b"])
    assert r.exit_code == 2 and "4xH200" in r.output


# (model, card, its table measured without split graphs): the tables the split graphs replaced, kept as the "before"
# of the calls that measured them again (the shipped ones); with the most |error| an adjusted entry may keep (each
# table's max in profiles/runs/s24_roofline_fit.txt, run 1, with a little room; qwen2.5-7b on H200, measured again in
# session 25: 36.6%; qwen3-32b on H200, session 26: 8.0%, s26_roofline_fit.txt) and, where not 7%, the median's bound
# (qwen2.5-7b: 7.1%).
TABLES_BEFORE_SPLIT_GRAPHS = [
    (c["model"], c["gpu"], c["before"])
    for c in json.loads((ROOT / "profiles/runs/table_checks.json").read_text())["before_split_graphs"]
]
WORST_ADJUSTED = {
    ("llama-3.1-8b", "h100"): 0.20, ("qwen3-8b", "h100"): 0.20, ("mistral-7b-v0.3", "h100"): 0.30,
    ("llama-3.1-8b", "h200"): 0.30, ("qwen3-8b", "h200"): 0.25, ("mistral-7b-v0.3", "h200"): 0.35,
    ("llama-3.3-70b", "h200"): 0.15, ("qwen2.5-7b", "h200"): 0.40, ("qwen3-32b", "h200"): 0.10,
}  # fmt: skip
WORST_ADJUSTED_MEDIAN = {("qwen2.5-7b", "h200"): 0.08}


@pytest.mark.parametrize(
    "model, gpu, before", TABLES_BEFORE_SPLIT_GRAPHS, ids=[f"{m}-{g}" for m, g, _ in TABLES_BEFORE_SPLIT_GRAPHS]
)
def test_a_table_from_before_split_graphs_is_adjusted_for_them(model, gpu, before):
    """with_split_graphs on a table measured without split graphs against the same card's table measured with them
    (shipped): the entries where a split graph now replays come within 7% at the median (8B tables of 4 query heads a
    KV head: from > 40%; s23_derived.txt section 2, s24_roofline_fit.txt), none further than WORST_ADJUSTED; the others
    stay as measured; the shipped table comes back unchanged."""
    import statistics

    from shifttune.recommend.gpus import known_gpus
    from shifttune.recommend.roofline import with_split_graphs

    m, card = cfg(model), known_gpus()[gpu]
    old = load_op_table(ROOT / "profiles/runs" / before)
    new = load_op_table(ROOT / f"shifttune/data/op_tables/{model}_{gpu}.json")
    assert "chunk_split_graphs" not in old.engine and new.engine["chunk_split_graphs"] is True
    assert with_split_graphs(new, m, card) is new
    adjusted = with_split_graphs(old, m, card)
    changed = adjusted.engine["split_graph_entries_adjusted"]
    # the 8B models of groups of 4; the 70B's ranks fill the GPU more often unsplit, and so do qwen2.5-7b's (28 heads)
    eight_b = m.num_layers <= 36 and m.num_heads // m.num_kv_heads == 4
    assert (40 if eight_b else 20) <= changed <= 80 and "adjusted by the roofline" in adjusted.source
    before, after = [], []
    for e in old.entries:
        a, n = adjusted.get(e.mode, e.tp, e.sp, e.tokens, e.context), new.get(e.mode, e.tp, e.sp, e.tokens, e.context)
        if a.layer_ms == e.layer_ms:
            continue
        assert a.layer_ms < e.layer_ms and e.tokens <= 2048 and e.context >= 2 * e.tokens_per_seq
        before.append(abs(e.layer_ms / n.layer_ms - 1))
        after.append(abs(a.layer_ms / n.layer_ms - 1))
    bound = WORST_ADJUSTED_MEDIAN.get((model, gpu), 0.07)
    assert len(after) == changed and statistics.median(after) < min(bound, statistics.median(before))
    assert max(after) < WORST_ADJUSTED[(model, gpu)], (statistics.median(after), max(after))
    if eight_b:  # most of their split entries had been far off
        assert statistics.median(before) > 0.4


def test_prediction_from_a_table_before_split_graphs_says_it_is_adjusted():
    """Every shipped table is measured with split graphs; a table from before them (here session 10's qwen3-32b H200
    table, kept where it was measured again) is adjusted, and the prediction says so."""
    before = ROOT / "profiles/runs/s26_gpu/c_op_table_qwen3_32b_resume/qwen3-32b/table_before.json"
    ops = predict_profile(PredictSettings("qwen3-32b", 4, "h200", op_table=before), command="test").sources["op_table"]
    assert ops["split_graph_entries_adjusted"] == 33 and "adjusted by the roofline" in op_table_label(ops)
    for model, gpu in [("qwen3-32b", "h200"), ("qwen3-8b", "h100")]:
        ops = predict_profile(PredictSettings(model, 4, gpu), command="test").sources["op_table"]
        assert ops["split_graph_entries_adjusted"] == 0 and "adjusted by the roofline" not in op_table_label(ops)
