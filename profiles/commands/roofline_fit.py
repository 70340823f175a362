"""Fits the roofline's efficiencies (`shifttune/data/gpus.json`, "roofline") to measured operator tables of today's
engine, and checks them on tables it was not fitted to: other models, another card (CPU, needs scipy):

    pip install -e '.[fit]'                                 # scipy
    python profiles/commands/roofline_fit.py                # fit and report, change nothing
    python profiles/commands/roofline_fit.py --write        # also write the constants into gpus.json
    python profiles/commands/roofline_fit.py --fit llama-3.1-8b:h100,qwen3-8b:h100   # fit other tables
    python profiles/commands/roofline_fit.py --fit llama-3.3-70b:h200 --only attn_group_exp   # one constant alone

Each table entry is one rank's work at one layout, step size and context (`profile --ops`); the roofline
(`recommend/roofline.py`) computes the same two numbers (head_ms, layer_ms) from shapes and the card's measured
ceilings. The fit minimizes the log-ratio of roofline to measured for the layer and for the whole step
(head + layers x layer) of every entry of the FIT tables (scipy's least_squares, soft-L1 loss); the report gives
|error| median / p90 / max of the step for every table, fitted and held out, with the shipped constants and the
new ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np
from derived import split_adjusted
from scipy.optimize import least_squares

from shifttune.config import load_model_config, resolve_model_path
from shifttune.engine.profile_schema import load_profile
from shifttune.recommend.compare import compare_profiles
from shifttune.recommend.gpus import GPUS_FILE, known_gpus
from shifttune.recommend.op_table import OP_TABLE_DIR, load_op_table
from shifttune.recommend.predict import PredictSettings, predict_profile
from shifttune.recommend.roofline import RooflineConstants, head_ms, layer_ms, roofline_table
from shifttune.recommend.shapes import DTYPE_BYTES, rank_shapes

# The shipped constants' fit: two models' H200 tables (session 20's), every other shipped table held out; `--fit` fits
# others (the report of session 24, s24_roofline_fit.txt: both cards' tables were not written, see RESULTS.md).
# llama-3.3-70b and qwen3-32b have GQA groups of 8 query heads a KV head, qwen2.5-7b 7, the others 4; tables that
# predate split graphs are predicted as their engine ran.
FIT = [("llama-3.1-8b", "h200"), ("qwen3-8b", "h200")]
TABLES = [tuple(path.stem.rsplit("_", 1)) for path in sorted(OP_TABLE_DIR.glob("*.json"))]  # (model, gpu) shipped
# NOTE: every FIT model has 4 query heads a KV head at every P: the data cannot tell the GQA group's exponent, which
# a fit of the 70B table alone sets (`--only attn_group_exp`)
FIXED = ("attn_group_exp",)
BOUNDS = {"attn_group_exp": (0.0, 2.0), "attn_us": (0.0, 50.0), "kernel_us": (0.0, 10.0), "head_us": (0.0, 200.0),
          "eager_sp_us": (0.0, 5000.0), "index_bw": (0.3, 1.2), "attn_fill": (1.0, 4.0)}  # fmt: skip
LOSS = "soft_l1"
START = {"eager_sp_us": 600.0}
EFFICIENCY = (0.02, 1.2)  # the ceilings are measured rates (a copy, one big matmul): kernels may beat them a little
RUNS = Path(__file__).resolve().parents[1] / "runs"
# the engine's measured one-GPU profiles (`shifttune profile`) of the same sessions: what a user compares with
CHECKS = json.loads((RUNS / "table_checks.json").read_text())
PROFILES = [(c["model"], c["gpu"], c["measured"]) for c in CHECKS["checks"]]
# tables measured without split graphs and again with them: how well the roofline's split saving adjusts the first
BEFORE_SPLIT_GRAPHS = [(c["model"], c["gpu"], c["before"]) for c in CHECKS["before_split_graphs"]]


def entries(model: str, gpu: str) -> list[tuple]:
    """(cfg, shapes, entry, elem, gpu spec, whether its engine ran CHUNK_SPLIT_GRAPHS) of every entry of a shipped
    table."""
    table = load_op_table(OP_TABLE_DIR / f"{model}_{gpu}.json")
    cfg, _ = load_model_config(resolve_model_path(model))
    elem, spec = DTYPE_BYTES[table.model["dtype"]], known_gpus()[gpu]
    split = table.engine.get("chunk_split_graphs", False)
    return [(cfg, rank_shapes(cfg, e.mode, e.tp, e.sp), e, elem, spec, split) for e in table.entries]


def errors(rows: list[tuple], c: RooflineConstants) -> tuple[np.ndarray, np.ndarray]:
    """log(roofline / measured) of each entry's layer and step."""
    layer, step = [], []
    for cfg, s, e, elem, gpu, split in rows:
        lay = layer_ms(cfg, s, e.tokens, e.context, elem, gpu, c, chunk_split=split)
        head = head_ms(cfg, s, e.tokens, e.context, elem, gpu, c)
        layer.append(np.log(lay / e.layer_ms))
        step.append(np.log((head + cfg.num_layers * lay) / e.step_ms(cfg.num_layers)))
    return np.array(layer), np.array(step)


def summary(rows: list[tuple], c: RooflineConstants) -> str:
    step = np.abs(np.expm1(errors(rows, c)[1]))
    return (f"{len(step)} entries, step |error| median {100 * statistics.median(step):.1f}%, "
            f"p90 {100 * np.quantile(step, 0.9):.1f}%, max {100 * step.max():.1f}%")  # fmt: skip


def profile_error(model: str, gpu: str, measured: str, c: RooflineConstants) -> str:
    """The roofline's predicted P = 1 profile (`profile --predict` with the roofline table) against a measured one."""
    cfg, _ = load_model_config(resolve_model_path(model))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "roofline.json"
        roofline_table(model, cfg, known_gpus()[gpu], [1], constants=c).save(path)
        predicted = predict_profile(PredictSettings(model, 1, gpu, op_table=path))
    o = compare_profiles(load_profile(RUNS / measured), predicted)["overall"]
    return (f"|error| median {100 * o['median_abs_error']:.1f}%, p90 {100 * o['p90_abs_error']:.1f}%, "
            f"max {100 * o['max_abs_error']:.1f}%")  # fmt: skip


def split_adjustment_error(model: str, gpu: str, before: str, c: RooflineConstants) -> str:
    """|error| of `with_split_graphs` on a table measured without split graphs, entry by adjusted entry, against the
    same card's shipped table measured with them."""
    rows, _ = split_adjusted(model, gpu, RUNS / before, c)
    err = [abs(a.layer_ms / n.layer_ms - 1) for e, a, n in rows if a.layer_ms != e.layer_ms]
    if not err:
        return "no entry adjusted"
    return f"{len(err)} entries, |error| median {100 * statistics.median(err):.1f}%, max {100 * max(err):.1f}%"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help="write the fitted constants into shifttune/data/gpus.json")
    p.add_argument("--fit", help="tables to fit, as model:gpu,...; the others of the report are held out "
                   "(default: " + ",".join(f"{m}:{g}" for m, g in FIT) + ")")  # fmt: skip
    p.add_argument("--only", help="constants to fit, as name,...; the others keep their shipped values")
    args = p.parse_args()
    fit = [tuple(t.split(":")) for t in args.fit.split(",")] if args.fit else FIT
    held_out = [t for t in TABLES if t not in fit]
    shipped = RooflineConstants.shipped()
    names = [f.name for f in fields(RooflineConstants) if f.name not in ("source", *FIXED)]
    if args.only:
        names = args.only.split(",")
    fit_rows = [r for m, g in fit for r in entries(m, g)]

    def constants(x: np.ndarray) -> RooflineConstants:
        return replace(shipped, **dict(zip(names, map(float, x))))

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.concatenate(errors(fit_rows, constants(x)))

    lo, hi = zip(*(BOUNDS.get(n, EFFICIENCY) for n in names))
    # NOTE: a floor at 0 has no gradient (max(gpu, floor)): the eager floors start inside the data's range
    x0 = np.clip([getattr(shipped, n) or START.get(n, 0.0) for n in names], lo, hi)
    result = least_squares(residuals, x0, bounds=(lo, hi), loss=LOSS, f_scale=0.05, x_scale="jac")
    fitted = constants(result.x)
    print("fitted on " + ", ".join(f"{m} {g.upper()}" for m, g in fit) + f" ({result.message})")
    for n in names:
        print(f"  {n:15s} {getattr(shipped, n):9.4g} -> {getattr(fitted, n):9.4g}")
    for label, tables in (("fitted", fit), ("held out", held_out)):
        for m, g in tables:
            rows = entries(m, g)
            print(f"{label:8s} {m} {g.upper()}: shipped {summary(rows, shipped)}; fitted {summary(rows, fitted)}")
    for m, g, measured in PROFILES:
        print(f"P = 1 profile {m} {g.upper()} against {measured}: shipped {profile_error(m, g, measured, shipped)}; "
              f"fitted {profile_error(m, g, measured, fitted)}")  # fmt: skip
    for m, g, before in BEFORE_SPLIT_GRAPHS:
        print(
            f"split graphs' saving on {m} {g.upper()} measured without them ({before}): shipped "
            f"{split_adjustment_error(m, g, before, shipped)}; fitted {split_adjustment_error(m, g, before, fitted)}"
        )
    if args.write:
        data = json.loads(GPUS_FILE.read_text())
        tables = ", ".join(f"{m}_{g}" for m, g in fit)
        source = ("efficiencies fitted by profiles/commands/roofline_fit.py (least squares on the log-ratio of layer "
                  f"and step, soft-L1) to every entry of the measured op tables {tables} (today's kernels, all layouts "
                  "of P = 1, 2, 4, 8); held out: " + ", ".join(f"{m}_{g}" for m, g in held_out))  # fmt: skip
        earlier = shipped.source.split("; then ")[0]
        if args.only:  # the others stay as they were fitted
            source = f"{earlier}; then {args.only} alone to {tables} (the others kept)"
        else:  # NOTE: FIXED constants keep their shipped values: say where those came from
            source += "; " + ", ".join(f"{n} = {getattr(shipped, n)} kept" for n in FIXED)
            source += f" (from: {shipped.source.split('; then ')[1]})" if "; then " in shipped.source else ""
        kept = {n: v for n, v in asdict(fitted).items() if n != "source"}
        data["roofline"] = {**{n: round(v, 4) for n, v in kept.items()}, "source": source}
        GPUS_FILE.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {GPUS_FILE}")


if __name__ == "__main__":
    main()
