"""`shifttune profile --compare measured.json predicted.json`: how far a predicted profile is from a measured
one of the same model and machine, point by point and overall, and the crossover (threshold) each gives.

Error of a point = (predicted - measured) / measured on the median step time; overall: the median and
p90 of |error| over the points both profiles hold (and per mode). Points only one of them holds are
listed, not scored. Crossovers are read per context for every SP x TP factorization both measured,
the way `recommend` reads them (`engine/step_model.py`).
"""

from __future__ import annotations

from shifttune.config import SP, TP
from shifttune.engine.profile_schema import Profile
from shifttune.engine.stats import percentile
from shifttune.engine.step_model import StepTimeModel, crossover


def _summary(errors: list[float]) -> dict:
    a = [abs(e) for e in errors]
    return {
        "points": len(a),
        "median_abs_error": percentile(a, 0.5) if a else None,
        "p90_abs_error": percentile(a, 0.9) if a else None,
        "max_abs_error": max(a, default=None),
        "mean_error": sum(errors) / len(errors) if errors else None,
    }


def _crossovers(profile: Profile) -> dict[str, dict[int, float | None]]:
    if not any(p.mode == TP for p in profile.points):
        return {}
    tp_model = StepTimeModel(profile, TP, profile.world_size, 1)
    max_tokens = max(p.tokens for p in profile.points)
    out = {}
    for tp, sp in sorted({(p.tp, p.sp) for p in profile.points if p.mode == SP}, key=lambda x: -x[0]):
        sp_model = StepTimeModel(profile, SP, tp, sp)
        out[f"SP={sp} x TP={tp}"] = {c: crossover(tp_model, sp_model, c, max_tokens) for c in tp_model.contexts}
    return out


def _gpu_name(prof: Profile) -> str:
    """The profile's GPU as NVML named it, or what it ran on instead ("no GPU (cpu)")."""
    return prof.hardware.get("gpu_name") or f"no GPU ({prof.hardware.get('device', 'unknown device')})"


def compare_profiles(measured: Profile, predicted: Profile) -> dict:
    meas = {p.key: p for p in measured.points}
    pred = {p.key: p for p in predicted.points}
    rows = []
    for key in sorted(meas.keys() & pred.keys()):
        m, p = meas[key].median_ms, pred[key].median_ms
        mode, tp, sp, tokens, context = key
        rows.append({"mode": mode, "tp": tp, "sp": sp, "tokens": tokens, "context": context,
                     "measured_ms": m, "predicted_ms": p, "error": (p - m) / m})  # fmt: skip
    notes = []
    if measured.model.get("name") != predicted.model.get("name"):
        notes.append(f"different models: {measured.model.get('name')} and {predicted.model.get('name')}")
    if measured.world_size != predicted.world_size:
        notes.append(f"different GPU counts: {measured.world_size} and {predicted.world_size}")
    names = (_gpu_name(measured), _gpu_name(predicted))
    if names[0] != names[1]:
        notes.append(f"different GPUs: {names[0]} and {names[1]}")
    if measured.predicted or not predicted.predicted:
        notes.append("expected a measured profile first and a predicted one second")
    by_mode = {mode: _summary([r["error"] for r in rows if r["mode"] == mode]) for mode in (TP, SP)}
    meas_x, pred_x = _crossovers(measured), _crossovers(predicted)
    return {
        "measured": {"model": measured.model.get("name"), "gpu": names[0], "gpus": measured.world_size},
        "predicted_sources": predicted.sources,
        "overall": _summary([r["error"] for r in rows]),
        "by_mode": {m: s for m, s in by_mode.items() if s["points"]},
        "crossovers": {layout: {"measured": meas_x[layout], "predicted": pred_x.get(layout)} for layout in meas_x},
        "only_measured": [list(k) for k in sorted(meas.keys() - pred.keys())],
        "only_predicted": [list(k) for k in sorted(pred.keys() - meas.keys())],
        "notes": notes,
        "points": rows,
    }
