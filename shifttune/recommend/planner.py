"""From a profile to a plan: SP x TP degrees, the switching rule, memory, predictions and launch commands.

The TP-mode curve is the same for every factorization of P (the shift layout always shards P ways),
so factorizations differ in their SP x TP curve and their memory. The best one is the one whose
SP x TP mode gives the most throughput on the largest measured steps; its switching threshold is the
token count where its curve crosses the TP curve, read per context length.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from shifttune.engine.policy import SP, TP, FixedPolicy, ProfilePolicy, ThresholdPolicy
from shifttune.profile.schema import Profile, ProfileError
from shifttune.profile.step_model import StepTimeModel, crossover
from shifttune.recommend.simulator import Workload, simulate

ARCTIC_DEFAULT_THRESHOLD = 512  # Arctic Inference's code default (its docs say 256)


@dataclass
class FactorizationPlan:
    tp: int
    sp: int
    feasible: bool
    reason: str | None
    weights_gib_per_rank: dict[str, float]  # {"base": SP x TP layout, "shift": TP layout}
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
    return sorted(((f.tp, f.sp) for f in profile.factorizations if f.feasible and f.sp > 1 and (f.tp, f.sp) in measured),
                  key=lambda x: -x[0])


def plan(profile: Profile, context: int | None = None, workloads: list[Workload] = (),
         profile_path: str | None = None) -> Plan:
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
            [tp_model.predict(max_tokens, c) / sp_model.predict(max_tokens, c) for c in contexts])
        if fp.sp_speedup_at_max_tokens > best_speedup:
            best, best_speedup = (tp, sp), fp.sp_speedup_at_max_tokens
    notes = []
    if best is None or best_speedup <= 1.0:
        best_tp, best_sp, threshold, depends = p, 1, None, False
        notes.append("SP x TP mode is never faster than TP mode on the measured grid: run plain TP "
                     f"(TP={p}); shift parallelism would only cost memory here.")
    else:
        best_tp, best_sp = best
        fp = next(x for x in facts if (x.tp, x.sp) == best)
        cross = fp.crossovers
        at = min(contexts, key=lambda c: abs(c - ctx))
        threshold = None if cross[at] is None else int(cross[at])
        finite = [v for v in cross.values() if v is not None and v > 0]
        depends = len(finite) > 1 and max(finite) / min(finite) > 2 or (None in cross.values() and bool(finite))
        if depends:
            notes.append("the crossover moves with context length (" + ", ".join(
                f"{c}: {'never' if v is None else int(v)}" for c, v in cross.items())
                + "): a single threshold is a compromise; shift_policy='profile' picks per step.")
        if threshold is not None and (threshold < ARCTIC_DEFAULT_THRESHOLD / 2 or threshold > ARCTIC_DEFAULT_THRESHOLD * 2):
            notes.append(f"Arctic Inference's default threshold ({ARCTIC_DEFAULT_THRESHOLD}; docs: 256) is far "
                         f"from the measured crossover ({threshold}) on this machine.")
    hw = profile.hardware
    hardware = (f"{hw.get('gpu_count', p)} x {hw.get('gpu_name')}" if hw.get("device") == "cuda"
                else f"{p} CPU ranks ({hw.get('cpu', 'cpu')})")
    result = Plan(
        model=profile.model.get("name", "?"), hardware=hardware,
        world_size=p, best_tp=best_tp, best_sp=best_sp, threshold=threshold, context_for_threshold=ctx,
        threshold_depends_on_context=bool(depends), factorizations=facts, notes=notes,
    )
    result.launch = launch_commands(result, profile, profile_path)
    for workload in workloads:
        rate = None if workload.trace is not None else workload.rate
        result.predictions += [{"rate": rate} | r for r in predict(profile, result, workload)]
    return result


def predict(profile: Profile, plan_: Plan, workload: Workload) -> list[dict]:
    """TP-only, SP-only (the best SP x TP layout, every step) and shift, under the same arrivals."""
    p, tp, sp = plan_.world_size, plan_.best_tp, plan_.best_sp
    tp_model = StepTimeModel(profile, TP, p, 1)
    models = {TP: tp_model}
    if sp > 1:
        models[SP] = StepTimeModel(profile, SP, tp, sp)
    fact = next((f for f in profile.factorizations if (f.tp, f.sp) == (tp, sp)), None)
    capacity = (fact.kv_capacity_tokens if fact and fact.kv_capacity_tokens else 1 << 30)
    requests = workload.requests()
    policies = [FixedPolicy(TP)]
    if sp > 1:
        policies += [FixedPolicy(SP), ThresholdPolicy(plan_.threshold if plan_.threshold is not None else 1 << 30),
                     ProfilePolicy(models[TP], models[SP])]
    out = []
    for policy in policies:
        label = {"tp": "TP only", "sp": f"SP={sp} x TP={tp} only", "threshold": f"shift (threshold {plan_.threshold})",
                 "profile": "shift (profile policy)"}[policy.name]
        res = simulate(requests, policy, lambda mode, t, c: models[mode].predict(t, c), kv_capacity_tokens=capacity,
                       block_size=int(profile.engine.get("block_size", 16)))
        out.append({"label": label} | res.summary())
    return out


def launch_commands(plan_: Plan, profile: Profile, profile_path: str | None) -> dict[str, str]:
    model, tp, sp, th = plan_.model, plan_.best_tp, plan_.best_sp, plan_.threshold
    cmds = {}
    if sp > 1 and th is not None:
        max_seqs = 256 - 256 % sp
        problems = validate_arctic(tp, sp, plan_.world_size, int(profile.model.get("num_heads", tp * sp)), max_seqs)
        if problems:
            raise ProfileError("no valid Arctic Inference launch: " + "; ".join(problems))
        cmds["vllm_arctic"] = (
            f"python -m vllm.entrypoints.openai.api_server --model {model} --tensor-parallel-size {tp} "
            f"--ulysses-sequence-parallel-size {sp} --enable-shift-parallel --shift-parallel-threshold {th} "
            f"--max-num-seqs {max_seqs}")
        cmds["shifttune_python"] = (
            f"LLM(model={model!r}, tensor_parallel_size={tp}, sequence_parallel_size={sp}, device='cuda', "
            + (f"shift_policy='profile', shift_profile={profile_path!r})" if profile_path and plan_.threshold_depends_on_context
               else f"shift_policy='threshold', shift_threshold={th})"))
        cmds["shifttune_generate"] = f"shifttune generate --model {model} --tp {tp} --sp {sp} --threshold {th} --device cuda"
    else:
        cmds["vllm"] = f"python -m vllm.entrypoints.openai.api_server --model {model} --tensor-parallel-size {plan_.world_size}"
        cmds["shifttune_generate"] = f"shifttune generate --model {model} --tp {plan_.world_size} --device cuda"
    if profile.hardware.get("device") == "cpu":
        cmds = {k: v.replace("--device cuda", "--device cpu").replace("device='cuda'", "device='cpu'")
                for k, v in cmds.items() if not k.startswith("vllm")}
    return cmds


def validate_arctic(tp: int, sp: int, world: int, num_heads: int, max_num_seqs: int) -> list[str]:
    """Arctic Inference's own constraints for a shift-parallel launch; empty when all hold."""
    problems = []
    if tp * sp != world:
        problems.append(f"TP x SP = {tp * sp} must equal the {world} GPUs")
    if num_heads % (tp * sp):
        problems.append(f"{num_heads} heads must divide by TP x SP = {tp * sp}")
    if max_num_seqs % sp:
        problems.append(f"--max-num-seqs {max_num_seqs} must divide by SP = {sp}")
    return problems

