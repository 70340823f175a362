"""The predictor's tools of `shifttune profile`: --ops (this GPU's operator table), --collectives (a quick
collective measurement), --predict (a predicted profile, no GPU needed) and --compare (predicted against
measured). --predict and --compare never load torch."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from rich.table import Table

from shifttune.cli.common import check_writable, console, fail, fail_config, parse_list, write_output
from shifttune.config import ConfigError


def _command() -> str:
    return "shifttune " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if len(sys.argv) > 1 else ""


def _need_cuda(device: str, what: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            fail(f"{what} measures on local CUDA GPUs and none is visible here (--device cpu runs it on CPU ranks)")


def _ops(model: str, gpus: str | None, device: str, tokens, contexts, iters: int, warmup: int, out, layers,
         breakdown) -> None:  # fmt: skip
    _need_cuda(device, "--ops")
    from shifttune.profile.ops import OpsSettings, default_ops_path, run_ops  # NOTE: lazy: loads torch

    sizes = parse_list(gpus, "--gpus") or [1, 2, 4, 8]
    grid = {"tokens": parse_list(tokens, "--tokens"), "contexts": parse_list(contexts, "--contexts")}
    rounds = 1 if device == "cpu" else 2
    settings = OpsSettings(model, sizes, device, **grid, warmup=warmup, iters=iters, rounds=rounds, layers=layers,
                           breakdown=parse_list(breakdown, "--breakdown"))  # fmt: skip
    out = out or default_ops_path(settings)
    check_writable(out, "--out", make_folder=True)
    table = run_ops(settings, out, _command(), lambda e: console.print(f"[{e.done}/{e.total}] {e.message}"))
    console.print(f"wrote {out}: {len(table.entries)} entries, {len(table.skipped)} skipped", soft_wrap=True)


def _collectives(gpus: str | None, device: str, out) -> None:
    _need_cuda(device, "--collectives")
    import torch

    from shifttune.profile.collectives_bench import default_collectives_path, measure_collectives

    ranks = int(gpus) if gpus and gpus.isdigit() else (torch.cuda.device_count() if device == "cuda" else 2)
    if ranks < 2:
        fail("--collectives needs at least 2 ranks (--gpus 2 or more)")
    out = out or default_collectives_path(ranks, device)
    check_writable(out, "--out", make_folder=True)
    table = measure_collectives(ranks, device)
    write_output(out, "--out", json.dumps(table, indent=1))
    console.print(f"wrote {out}", soft_wrap=True)


def _predict(model: str, gpus: str | None, tokens, contexts, out, op_table, collective_table) -> None:
    from shifttune.recommend.gpus import parse_gpus
    from shifttune.recommend.predict import CAVEAT, PredictSettings, op_table_label, predict_profile

    request = parse_gpus(gpus) if gpus else None
    if request is None or request.slug is None:
        fail("--predict needs the GPU type with the count, e.g. --gpus 4xH200")
    out = out or Path("profiles") / f"{Path(model).name.lower()}_{request.slug}x{request.count}_predicted.json"
    check_writable(out, "--out", make_folder=True)
    settings = PredictSettings(model, request.count, request.slug, tokens=parse_list(tokens, "--tokens"),
                               contexts=parse_list(contexts, "--contexts"), op_table=op_table,
                               collectives=collective_table)  # fmt: skip
    prof = predict_profile(settings, _command())
    prof.save(out)
    ops = prof.sources["op_table"]
    console.print(f"caveat: {CAVEAT}", soft_wrap=True, highlight=False)
    console.print(f"op table: {op_table_label(ops)}", soft_wrap=True, highlight=False)
    if prof.sources.get("collectives"):
        console.print(f"collectives: {prof.sources['collectives']['table']}", soft_wrap=True, highlight=False)
    console.print(
        f"wrote {out}: {len(prof.points)} predicted points, "
        f"{sum(f.feasible for f in prof.factorizations)} feasible factorization(s)",
        soft_wrap=True,
    )


def _compare(paths: tuple[Path, Path], out) -> None:
    from shifttune.engine.profile_schema import load_profile
    from shifttune.recommend.compare import compare_profiles

    check_writable(out, "--out", make_folder=True)
    measured, predicted = load_profile(paths[0]), load_profile(paths[1])
    shape = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")  # not the name: a path
    if [measured.model.get(k) for k in shape] != [predicted.model.get(k) for k in shape]:
        names = f"{measured.model.get('name')} and {predicted.model.get('name')}"
        fail(f"--compare: the profiles are of different models ({names}); compare one model's")
    result = compare_profiles(measured, predicted)
    table = Table(title=f"predicted vs measured step time ({paths[1].name} vs {paths[0].name})")
    for col in ("mode", "TP x SP", "tokens", "context", "measured ms", "predicted ms", "error"):
        table.add_column(col, justify="right")
    for r in result["points"]:
        table.add_row(r["mode"], f"{r['tp']} x {r['sp']}", str(r["tokens"]), str(r["context"]),
                      f"{r['measured_ms']:.3f}", f"{r['predicted_ms']:.3f}", f"{100 * r['error']:+.1f}%")  # fmt: skip
    console.print(table)
    for note in result["notes"]:
        console.print(f"note: {note}", soft_wrap=True)
    for label, s in [("overall", result["overall"])] + [(f"{m} mode", s) for m, s in result["by_mode"].items()]:
        if s["points"]:
            console.print(f"{label}: {s['points']} points, |error| median {100 * s['median_abs_error']:.1f}%, "
                          f"p90 {100 * s['p90_abs_error']:.1f}%, max {100 * s['max_abs_error']:.1f}%")  # fmt: skip
    for layout, x in result["crossovers"].items():
        show = lambda d: ", ".join(f"{c}: {'never' if v is None else int(v)}" for c, v in (d or {}).items())  # noqa: E731
        console.print(f"crossover {layout}: measured {show(x['measured'])}; predicted {show(x['predicted'])}")
    if result["only_measured"] or result["only_predicted"]:
        console.print(f"not compared: {len(result['only_measured'])} points only measured, "
                      f"{len(result['only_predicted'])} only predicted")  # fmt: skip
    if out is not None:
        write_output(out, "--out", json.dumps(result, indent=1))
        console.print(f"wrote {out}")


def run_tool(tool: str, *, model, gpus, device, tokens, contexts, iters, warmup, out, compare, op_table,
             collective_table, layers, breakdown) -> None:  # fmt: skip
    try:
        if tool == "ops":
            _ops(model, gpus, device, tokens, contexts, iters, warmup, out, layers, breakdown)
        elif tool == "collectives":
            _collectives(gpus, device, out)
        elif tool == "predict":
            _predict(model, gpus, tokens, contexts, out, op_table, collective_table)
        else:
            _compare(compare, out)
    except ConfigError as e:
        fail_config(e, {"layers": "--layers", "op_table": "--op-table"})
