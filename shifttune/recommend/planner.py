"""From a profile to a plan: SP x TP degrees, the switching rule, memory, predictions and launch commands
(the launch lines and their rules live in `shifttune.recommend.launch`).

The TP-mode curve is the same for every factorization of P (TP mode always shards the weights P ways),
so factorizations differ in their SP x TP curve and their memory. The best one is the one whose
SP x TP mode gives the most throughput on the largest measured steps; its switching threshold is the
token count where its curve crosses the TP curve, read per context length.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from shifttune.config import SP, TP
from shifttune.engine.policy import FixedPolicy, ProfilePolicy, ThresholdPolicy
from shifttune.engine.profile_schema import Profile, ProfileError
from shifttune.engine.step_model import StepTimeModel, crossover
from shifttune.recommend.launch import Deployment, launch_lines
from shifttune.recommend.simulator import EngineLoop, SimResult, profile_step_ms, simulate
from shifttune.recommend.workload import Request, Workload

ARCTIC_DEFAULT_THRESHOLD = 512  # Arctic Inference's code default (its docs say 256)
OVERLOAD_DRIFT = 0.05  # TTFT growth over a run, as a fraction of its arrival span, that marks a growing queue


@dataclass
class FactorizationPlan:
    tp: int
    sp: int
    feasible: bool
    reason: str | None
    weights_gib_per_rank: dict[str, float]  # per mode: {"sp": SP x TP mode's weights, "tp": TP mode's}
    kv_capacity_tokens: int | None
    sp_speedup_at_max_tokens: float | None  # TP-mode time / SP x TP-mode time on the largest steps
    crossovers: dict[int, float | None] = field(default_factory=dict)  # context -> tokens (None: never)


@dataclass
class Plan:
    model: str
    hardware: str
    world_size: int
    best_tp: int
    best_sp: int
    threshold: int | None  # None: SP x TP never faster, run plain TP
    context_for_threshold: int
    threshold_depends_on_context: bool
    factorizations: list[FactorizationPlan]
    predictions: list[dict] = field(default_factory=list)
    launch: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _feasible_sp_factorizations(profile: Profile) -> list[tuple[int, int]]:
    measured = {(p.tp, p.sp) for p in profile.points if p.mode == SP}
    return sorted(
        ((f.tp, f.sp) for f in profile.factorizations if f.feasible and f.sp > 1 and (f.tp, f.sp) in measured),
        key=lambda x: -x[0],
    )


def plan(
    profile: Profile, context: int | None = None, workloads: list[Workload] = (), profile_path: str | None = None
) -> Plan:
    p = profile.world_size
    if not any(pt.mode == TP for pt in profile.points):
        raise ProfileError("the profile has no TP-mode points")
    tp_model = StepTimeModel(profile, TP, p, 1)
    contexts = tp_model.contexts
    ctx = context or int(statistics.median(contexts))
    max_tokens = max(pt.tokens for pt in profile.points)
    facts = []
    for f in profile.factorizations:
        weights = {k: v / 2**30 for k, v in (f.weight_bytes_per_rank or {}).items()}
        facts.append(FactorizationPlan(f.tp, f.sp, f.feasible, f.reason, weights, f.kv_capacity_tokens, None))
    best, best_speedup = None, 0.0
    for tp, sp in _feasible_sp_factorizations(profile):
        sp_model = StepTimeModel(profile, SP, tp, sp)
        fp = next(x for x in facts if (x.tp, x.sp) == (tp, sp))
        fp.crossovers = {c: crossover(tp_model, sp_model, c, max_tokens) for c in contexts}
        fp.sp_speedup_at_max_tokens = statistics.geometric_mean(
            [tp_model.predict(max_tokens, c) / sp_model.predict(max_tokens, c) for c in contexts]
        )
        if fp.sp_speedup_at_max_tokens > best_speedup:
            best, best_speedup = (tp, sp), fp.sp_speedup_at_max_tokens
    notes = []
    at = min(contexts, key=lambda c: abs(c - ctx))  # the profiled context the threshold is read at
    if context is not None and context != at:
        where = (
            "past the largest" if context > contexts[-1] else "below the smallest" if context < contexts[0] else "not a"
        )
        notes.append(
            f"context {context} is {where} profiled context; the threshold is read at {at}, the nearest profiled"
        )
    depends = False
    if best is None or best_speedup <= 1.0:
        best_tp, best_sp, threshold = p, 1, None
        notes.append(
            "SP x TP mode is never faster than TP mode on the measured grid: run plain TP "
            f"(TP={p}); shift parallelism would only cost memory here."
        )
    else:
        best_tp, best_sp = best
        cross = next(x for x in facts if (x.tp, x.sp) == best).crossovers
        threshold = None if cross[at] is None else int(cross[at])
        # 0 (SP x TP wins at every size) counts as 1 token; None (never) differs from any number
        sizes = [max(v, 1.0) for v in cross.values() if v is not None]
        depends = (None in cross.values() and bool(sizes)) or (len(sizes) > 1 and max(sizes) / min(sizes) > 2)
        if depends:
            notes.append(
                "the crossover moves with context length ("
                + ", ".join(f"{c}: {'never' if v is None else int(v)}" for c, v in cross.items())
                + "): a single threshold is a compromise; shift_policy='profile' picks per step."
            )
        if threshold is None:
            notes.append(
                f"at context {at} SP x TP never beats TP: with a scalar threshold run plain TP (TP={p}) "
                "there; shift pays only with shift_policy='profile' across contexts."
            )
        elif threshold == 0:
            notes.append(
                f"SP x TP wins at every step size at context {at}: run SP={best_sp} x TP={best_tp} "
                "at every step (no shifting); vLLM with Arctic Inference then loads only that layout's weights, "
                "but shifttune's engine still loads both (SP x TP mode's and TP mode's copy)."
            )
        elif threshold < ARCTIC_DEFAULT_THRESHOLD / 2 or threshold > ARCTIC_DEFAULT_THRESHOLD * 2:
            notes.append(
                f"Arctic Inference's default threshold ({ARCTIC_DEFAULT_THRESHOLD}; docs: 256) is far "
                f"from the measured crossover ({threshold}) on this machine."
            )
    hw = profile.hardware
    hardware = (
        f"{hw.get('gpu_count', p)} x {hw.get('gpu_name')}"
        if hw.get("device") == "cuda"
        else f"{p} CPU ranks ({hw.get('cpu', 'cpu')})"
    )
    result = Plan(
        model=profile.model.get("name", "?"),
        hardware=hardware,
        world_size=p,
        best_tp=best_tp,
        best_sp=best_sp,
        threshold=threshold,
        context_for_threshold=at,
        threshold_depends_on_context=bool(depends),
        factorizations=facts,
        notes=notes,
    )
    deployment = Deployment(
        result.model, p, best_tp, best_sp, threshold, profile_path, profile_policy=bool(depends) or threshold is None
    )
    launch = launch_lines(deployment, profile)
    result.launch = launch.commands
    result.notes += launch.notes
    steps: set[int] = set()  # token counts of the simulated steps
    for workload in workloads:
        rate = None if workload.trace is not None else workload.rate
        shape = {} if workload.trace is not None or workload.burstiness == 1 else {"burstiness": workload.burstiness}
        rows, tokens = predict(profile, result, workload)
        result.predictions += [{"rate": rate} | shape | r for r in rows]
        steps |= tokens
    result.notes += step_range_notes(profile, steps)
    result.notes += [overload_note(r) for r in result.predictions if r["overloaded"]]
    return result


def step_range_notes(profile: Profile, steps: set[int]) -> list[str]:
    """Notes where the simulated steps are larger or smaller than every profiled step, whose times the step model then
    extrapolates (`StepTimeModel`), as `plan` notes a context outside the profile."""
    profiled = sorted({pt.tokens for pt in profile.points})
    notes = []
    if steps and max(steps) > profiled[-1]:
        notes.append(
            f"the simulated steps reach {max(steps)} tokens, past the largest profiled step ({profiled[-1]} tokens); "
            "their times are extrapolated in proportion to tokens, so the predicted latencies are rough (profile "
            "larger --tokens)"
        )
    if steps and min(steps) < profiled[0]:
        notes.append(
            f"the simulated steps go down to {min(steps)} tokens, below the smallest profiled step ({profiled[0]} "
            "tokens); their times are held at its time (profile smaller --tokens)"
        )
    return notes


def overload_note(prediction: dict) -> str:
    """What an overloaded prediction's latencies mean (`overloaded`)."""
    at = "on the trace" if prediction["rate"] is None else f"at {prediction['rate']:g} req/s"
    return (
        f"{prediction['label']} {at} is overloaded: its queue grows through the run (it completes "
        f"{prediction['output_tok_per_s']:.0f} output tok/s), so its TTFTs (p50 {prediction['ttft_p50_ms'] / 1e3:.1f} "
        "s) grow with --num-requests instead of settling; lower the rate."
    )


def kv_capacity(profile: Profile, tp: int, sp: int, drop_shift_copy: bool = False) -> int:
    """KV tokens a deployment of this layout would hold (the profile's factorization; 1 << 30 where it does not
    say); `drop_shift_copy`: SP-only, with no second (TP-layout) copy of the weights."""
    f = next((f for f in profile.factorizations if (f.tp, f.sp) == (tp, sp)), None)
    if f is None or not f.kv_capacity_tokens:
        return 1 << 30
    extra = 0
    if drop_shift_copy and f.kv_bytes_per_token_per_rank:
        extra = f.weight_bytes_per_rank.get(TP, 0) // f.kv_bytes_per_token_per_rank
    return f.kv_capacity_tokens + extra


def overloaded(requests: list[Request], res: SimResult) -> bool:
    """Whether the queue grew through the run: the last fifth of arrivals waited for their first token longer than the
    first fifth by more than `OVERLOAD_DRIFT` of the arrival span (near 0 when the engine keeps up; about
    (offered / sustained rate - 1) x the span when it cannot), so the latencies depend on how many requests ran."""
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_s)
    k = max(1, len(order) // 5)
    first, last = (statistics.mean(res.ttft_by_request[i] for i in part) for part in (order[:k], order[-k:]))
    span_ms = 1e3 * (requests[order[-1]].arrival_s - requests[order[0]].arrival_s)
    return last - first > OVERLOAD_DRIFT * span_ms


def predict(profile: Profile, plan_: Plan, workload: Workload) -> tuple[list[dict], set[int]]:
    """TP-only, SP-only (the best SP x TP layout, every step) and shift, under the same arrivals, on the engine's
    loop as `serve` runs it on the profile's device (`EngineLoop.of_profile`; no HTTP time per request); and the
    token counts of the simulated steps."""
    p, tp, sp = plan_.world_size, plan_.best_tp, plan_.best_sp
    tp_model = StepTimeModel(profile, TP, p, 1)
    models = {TP: tp_model}
    if sp > 1:
        models[SP] = StepTimeModel(profile, SP, tp, sp)
    requests = workload.requests()
    profile_ms, loop, steps = profile_step_ms(models), EngineLoop.of_profile(profile), set()

    def step_ms(mode: str, tokens: int, context: float) -> float:
        steps.add(tokens)
        return profile_ms(mode, tokens, context)

    policies = [(FixedPolicy(TP), kv_capacity(profile, p, 1))]
    if sp > 1:
        policies += [
            (FixedPolicy(SP), kv_capacity(profile, tp, sp, drop_shift_copy=True)),
            (ThresholdPolicy(1 << 30 if plan_.threshold is None else plan_.threshold), kv_capacity(profile, tp, sp)),
            (ProfilePolicy(models[TP], models[SP]), kv_capacity(profile, tp, sp)),
        ]
    out = []
    for policy, kv_tokens in policies:
        th = "never" if plan_.threshold is None else plan_.threshold
        label = {
            "tp": "TP only",
            "sp": f"SP={sp} x TP={tp} only",
            "threshold": f"shift (threshold {th})",
            "profile": "shift (profile policy)",
        }[policy.name]
        res = simulate(
            requests,
            policy,
            step_ms,
            kv_capacity_tokens=kv_tokens,
            block_size=int(profile.engine.get("block_size", 16)),
            **loop.kwargs(),
        )
        out.append({"label": label} | res.summary() | {"overloaded": overloaded(requests, res)})
    return out, steps
