"""`shifttune recommend` as a library: profile + workload + objectives in, the whole plan as data out.

`recommend()` returns what `shifttune recommend --json` prints; the CLI only renders it. The profile is
the one given, else the shipped measured profile of the model on those GPUs, else (when the GPU type is
named, `--gpus 4xH200`) one predicted from an operator table and the collective model
(`predict.py`); `profile_kind` says which, and a predicted one carries a caveat and its sources.
With no --rate or --trace, a GPU profile is simulated at one default rate (about half of what TP mode
alone sustains on it), so every plan comes with predicted latencies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from shifttune.config import TP, ConfigError, context_limit, load_model_config, resolve_model_path
from shifttune.engine.block_manager import blocks_for
from shifttune.engine.profile_schema import Profile, load_profile
from shifttune.engine.step_model import StepTimeModel
from shifttune.recommend.gpus import GpuRequest
from shifttune.recommend.planner import Plan, kv_capacity, plan
from shifttune.recommend.predict import CAVEAT, PredictSettings, op_table_label, predict_profile
from shifttune.recommend.shipped import pick_shipped_profile
from shifttune.recommend.workload import Workload, load_azure_trace


@dataclass
class RecommendRequest:
    profile: Path | None = None  # None: the shipped profile of `model` on `gpus`
    model: str | None = None
    gpus: GpuRequest | int | None = None  # a count, and optionally the GPU type ("4xH200")
    context: int | None = None  # where the threshold is read; default: the input length, else the median
    rates: list[float] | None = None  # arrival rates to predict at (Poisson, or bursty: `burstiness`)
    trace: Path | None = None  # or an Azure trace CSV
    input_len: int = 2048
    output_len: int = 256
    spread: float = 0.25
    num_requests: int = 300
    slo_ttft_ms: float | None = None  # p99 objectives
    slo_tpot_ms: float | None = None
    burstiness: float = 1.0  # Gamma shape of the gaps between arrivals (`Workload`): 1 Poisson, < 1 bursty
    defaulted: tuple[str, ...] = ()  # of input_len, output_len: those the user did not set (messages say so)

    def validate(self) -> None:
        for name, bad, rule in (
            ("context", self.context is not None and self.context < 1, "must be >= 1"),
            ("input_len", self.input_len < 1, "must be >= 1"),
            ("output_len", self.output_len < 1, "must be >= 1"),
            ("num_requests", self.num_requests < 1, "must be >= 1"),
            ("spread", not 0 <= self.spread < 1, "must be in [0, 1)"),
            ("burstiness", not (math.isfinite(self.burstiness) and self.burstiness > 0), "must be a positive number"),
            ("rate", self.rates is not None and not all(math.isfinite(r) and r > 0 for r in self.rates),
             "must be positive finite numbers"),
            ("slo_ttft", self.slo_ttft_ms is not None and not self.slo_ttft_ms > 0, "must be > 0 (ms)"),
            ("slo_tpot", self.slo_tpot_ms is not None and not self.slo_tpot_ms > 0, "must be > 0 (ms)"),
        ):  # fmt: skip
            if bad:
                raise ConfigError(rule, field=name)

    def workloads(self) -> list[Workload]:
        if self.trace is not None:
            return [Workload(trace=load_azure_trace(self.trace, limit=self.num_requests))]
        return [
            Workload(rate=r, num_requests=self.num_requests, input_len=self.input_len, output_len=self.output_len,
                     spread=self.spread, burstiness=self.burstiness)
            for r in self.rates or []
        ]  # fmt: skip


def meets_slo(prediction: dict, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    """Whether the p99s meet the objectives; an overloaded prediction misses any TTFT objective (its TTFTs grow
    without bound)."""
    ttft_ok = slo_ttft_ms is None or (not prediction.get("overloaded") and prediction["ttft_p99_ms"] <= slo_ttft_ms)
    return ttft_ok and (slo_tpot_ms is None or prediction["tpot_p99_ms"] <= slo_tpot_ms)


def resolve_profile(req: RecommendRequest) -> tuple[Profile, str | None, str]:
    """(profile, its file or None, a label for it): given, shipped measured, or predicted."""
    if req.profile is not None:
        if req.model is not None or req.gpus is not None:  # NOTE: they were ignored, silently
            raise ConfigError("the profile names its model and GPUs; give --model and --gpus only without --profile",
                              field="profile")  # fmt: skip
        return load_profile(req.profile), str(req.profile), str(req.profile)
    gpus = GpuRequest(req.gpus) if isinstance(req.gpus, int) else req.gpus
    count, slug = (gpus.count, gpus.slug) if gpus is not None else (None, None)
    try:
        path = pick_shipped_profile(req.model, count, slug)
        return load_profile(path), str(path), str(path)
    except ConfigError:
        if slug is None:
            raise
    model = req.model or "tiny"
    settings = PredictSettings(model=model, gpus=count, gpu=slug)
    prof = predict_profile(settings, command=f"shifttune recommend --model {model} --gpus {gpus}")
    return prof, None, f"predicted for {model} on {gpus}"


def max_context(model: str | None) -> int | None:
    """The model's maximum context in tokens, as the engine caps it (`config.context_limit`: its config's
    `max_position_embeddings`, or a shorter sliding window); None where the model's config cannot be found (a
    profile measured on a model directory elsewhere)."""
    if not model:
        return None
    try:
        return context_limit(*load_model_config(resolve_model_path(model)))
    except ConfigError:
        return None


def check_context(req: RecommendRequest, model: str | None, workloads: list[Workload]) -> None:
    """Refuses requests longer (input + output) than the model's maximum context, as `serve` does."""
    limit = max_context(model)
    requests = [r for w in workloads for r in w.requests()]
    if limit is None or not requests:
        return
    too_long = [r for r in requests if r.input_len + r.output_len > limit]
    if not too_long:
        return
    longest = max(too_long, key=lambda r: r.input_len + r.output_len)
    past = f"{model}'s maximum context of {limit} tokens"
    if req.trace is not None:
        raise ConfigError(f"{len(too_long)} of its {len(requests)} requests exceed {past} (input + output); the "
                          f"longest has {longest.input_len} + {longest.output_len}", field="trace")  # fmt: skip
    i, o = (f"--{n.replace('_', '-')} {getattr(req, n)}" + (" (default)" if n in req.defaulted else "")
            for n in ("input_len", "output_len"))  # fmt: skip
    if req.input_len + req.output_len > limit:
        raise ConfigError(f"{i} + {o} exceed {past}; pass smaller ones")
    raise ConfigError(f"{i} + {o} with --spread {req.spread:g}: requests reach {longest.input_len} + "
                      f"{longest.output_len} tokens, past {past}; lower --input-len, --output-len or "
                      "--spread")  # fmt: skip


def decode_batch(prof: Profile, input_len: int, output_len: int) -> int:
    """The largest decode batch TP mode sustains: `max_decode_batch` sequences, or fewer where its KV cache holds
    fewer sequences of input + output tokens (the capacity the simulation runs with)."""
    block = int(prof.engine.get("block_size", 16))
    fits = kv_capacity(prof, prof.world_size, 1) // block // blocks_for(input_len + output_len, block)
    return max(1, min(prof.max_decode_batch, fits))


def default_rate(prof: Profile, input_len: int, output_len: int, batch: int) -> float:
    """About half the request rate TP mode alone sustains by this profile: a request costs its prefill
    plus its output tokens' share of the fullest decode batches it sustains (`batch`, from `decode_batch`)."""
    tp = StepTimeModel(prof, TP, prof.world_size, 1)
    per_request_ms = (
        tp.predict(input_len, input_len) + output_len * tp.predict(batch, input_len + output_len / 2) / batch
    )
    rate = 0.5 * 1e3 / per_request_ms
    return float(f"{rate:.2g}")


def recommend(req: RecommendRequest) -> tuple[Profile, Plan, dict]:
    """The profile, the plan, and the plan as data (with the SLO verdicts when objectives are given)."""
    req.validate()
    prof, path, label = resolve_profile(req)
    notes = []
    model = req.model or prof.model.get("name")
    if not req.rates and req.trace is None and prof.hardware.get("device") == "cuda":
        batch = decode_batch(prof, req.input_len, req.output_len)
        req.rates = [default_rate(prof, req.input_len, req.output_len, batch)]
        kv_bound = batch < prof.max_decode_batch
        notes.append(
            f"no --rate given: latencies predicted at {req.rates[0]:g} req/s ({req.input_len} in / {req.output_len} "
            "out), about half of what TP mode alone sustains here"
            + (f" (its KV cache holds {batch} such sequences at once)" if kv_bound else "")
            + "; --rate 1,2,4 for a sweep"
        )
    workloads = req.workloads()
    check_context(req, model, workloads)
    context = req.context or (req.input_len if req.rates else None)
    result = plan(prof, context, workloads, path)
    result.notes = notes + result.notes
    data = result.to_dict() | {"profile": label, "profile_kind": "predicted" if prof.predicted else "measured"}
    if prof.predicted:
        ops = prof.sources.get("op_table") or {}
        coll = prof.sources.get("collectives") or {}
        data["caveat"] = (
            f"{CAVEAT}; op table: {op_table_label(ops)}; collectives: "
            f"{coll.get('table', 'none (one GPU)')}"
            + (f" ({coll['note']})" if coll.get("note") else "")
            + ("; write it with `shifttune profile --predict` to use shift_policy='profile'" if path is None else "")
        )
        data["profile_sources"] = prof.sources
    if req.slo_ttft_ms is not None or req.slo_tpot_ms is not None:
        data["slo"] = {"ttft_p99_ms": req.slo_ttft_ms, "tpot_p99_ms": req.slo_tpot_ms}
        for p in data["predictions"]:
            p["meets_slo"] = meets_slo(p, req.slo_ttft_ms, req.slo_tpot_ms)
        rated = [p for p in data["predictions"] if p["rate"] is not None]
        data["max_rate_meeting_slo"] = {
            label: max((p["rate"] for p in rated if p["label"] == label and p["meets_slo"]), default=None)
            for label in dict.fromkeys(p["label"] for p in rated)
        }
    return prof, result, data
