"""`shifttune recommend --validate URL`: the simulator's own error, measured against a running server.

For each rate the same workload (the bench's random prompts of exact lengths, its Poisson arrivals) is
simulated on a profile and sent to the server by the load generator (`run_bench`); the table holds
predicted vs measured TTFT and TPOT at p50 and p99, the relative error and whether it is within 5% (p50)
/ 10% (p99). Each rate gets its own prompts (seed + rate index), and a warm-up run its own too, so the
server's prefix cache never serves a measured prompt (except the first prompt of each rate, which the load
generator's own test request sends once before the run).

What the simulation takes from the server (`/v1/shifttune/live`): its layout, shift policy, batch limits,
whether it schedules asynchronously and up to how many tokens its steps replay CUDA graphs (physics of
the engine's loop: `recommend/simulator.py`). What it takes from a measurement (calibration, said so in
the output): the server's time per request outside the engine (HTTP, pipes, streaming, the client), from
lone probe requests sent to the idle server before the runs and the server's own timestamps of them
(`/v1/shifttune/trace`). Servers without those endpoints (older ones) are simulated with the profile's
engine and no host time.

Diagnostics per rate, from the server's trace of the run (when it has one): the measured and predicted
p50 of TTFT's parts (host: outside the engine core; queue: the core has the request -> first scheduled;
engine: first scheduled -> first token read back), and the server's own step times against the profile's
(median measured / predicted, decode steps and steps with prefill apart).
"""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from dataclasses import dataclass, replace

import httpx

from shifttune.bench.client import CompletionsClient, ServerError, list_models
from shifttune.bench.config import BenchConfig, LengthRange, server_base_url
from shifttune.bench.datasets import build_requests, with_arrivals
from shifttune.bench.runner import run_bench
from shifttune.bench.serve_vs_offline import PROMPT_TOKENIZER
from shifttune.bench.tokenizer import load_tokenizer
from shifttune.config import SP, TP, ConfigError
from shifttune.engine.policy import make_policy
from shifttune.engine.profile_schema import Profile
from shifttune.engine.stats import percentile
from shifttune.engine.step_model import StepTimeModel
from shifttune.recommend.planner import kv_capacity
from shifttune.recommend.simulator import EngineLoop, StepFn, profile_step_ms, simulate
from shifttune.recommend.workload import Request

# (metric, simulator's summary key, bench record key, tolerance on |pred - meas| / meas)
METRICS = [
    ("ttft_p50_ms", "ttft_p50_ms", "median_ttft_ms", 0.05),
    ("ttft_p99_ms", "ttft_p99_ms", "p99_ttft_ms", 0.10),
    ("tpot_p50_ms", "tpot_p50_ms", "median_tpot_ms", 0.05),
    ("tpot_p99_ms", "tpot_p99_ms", "p99_tpot_ms", 0.10),
]
SEED_STRIDE = 1000  # rate i uses seed + SEED_STRIDE * (i + 1); the warm-up uses seed; the probe seed + 999
PROBE_SEED = 999
PROBE_OUTPUT_TOKENS = 2


@dataclass
class ValidateConfig:
    base_url: str
    profile: Profile
    profile_path: str | None  # for the server's profile policy
    rates: list[float]
    num_prompts: int = 300
    input_len: LengthRange = LengthRange(1024, 1024)
    output_len: LengthRange = LengthRange(128, 128)
    seed: int = 0
    api_key: str | None = None
    burstiness: float = 1.0  # of the arrivals (`Workload`)
    warmup_prompts: int = 16  # sent at the highest rate before the measured runs, results dropped
    probe_requests: int = 8  # lone requests to the idle server for its host time per request (0: none)

    def __post_init__(self) -> None:
        self.base_url = server_base_url(self.base_url)

    def bench_config(self, rate: float, seed: int, num_prompts: int) -> BenchConfig:
        return BenchConfig(base_url=self.base_url, api_key=self.api_key, rates=[rate], num_prompts=num_prompts,
                           input_len=self.input_len, output_len=self.output_len, tokenizer=PROMPT_TOKENIZER,
                           seed=seed, burstiness=self.burstiness)  # fmt: skip


def _headers(api_key: str | None) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def server_settings(base_url: str, api_key: str | None = None) -> dict:
    """The server's model, SP x TP layout, shift policy and threshold, and its engine loop's settings when it
    tells them (`engine`: None for an older server); ServerError when it cannot tell."""
    asyncio.run(list_models(base_url, api_key))  # NOTE: for its one-line errors: unreachable, API key wanted/refused
    url = base_url.rstrip("/") + "/v1/shifttune/live"
    try:
        r = httpx.get(url, params={"after": 1 << 62}, headers=_headers(api_key), timeout=10, trust_env=False)
        r.raise_for_status()
        live = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise ServerError(f"cannot read the server's settings from {url}: {type(e).__name__}: {e}") from None
    return {k: live[k] for k in ("model", "tp", "sp", "policy", "threshold")} | {"engine": live.get("engine")}


def fetch_trace(base_url: str, api_key: str | None, since: float) -> dict | None:
    """The server's timestamps since `since` (its clock), or None when it keeps none."""
    url = base_url.rstrip("/") + "/v1/shifttune/trace"
    try:
        r = httpx.get(url, params={"since": since}, headers=_headers(api_key), timeout=60, trust_env=False)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def server_now(base_url: str, api_key: str | None) -> float | None:
    """The server's clock now (for `fetch_trace`), or None when it keeps no trace."""
    data = fetch_trace(base_url, api_key, math.inf)
    return None if data is None else data["now"]


def engine_loop(settings: dict, profile: Profile, host: dict | None = None) -> EngineLoop:
    """The loop the simulation runs: the server's own settings when it tells them, else the profile's engine;
    plus the probe's host time per request."""
    eng = settings.get("engine")
    if eng:
        loop = EngineLoop(max_num_seqs=eng["max_num_seqs"], max_num_batched_tokens=eng["max_num_batched_tokens"],
                          async_scheduling=eng["async_scheduling"],
                          cuda_graph_max_tokens=eng["cuda_graph_max_tokens"])  # fmt: skip
    else:
        loop = EngineLoop.of_profile(profile)
    if host:
        loop = replace(loop, ingress_ms=host["ingress_ms"], egress_ms=host["egress_ms"])
    return loop


def step_models(prof: Profile, settings: dict) -> dict[str, StepTimeModel]:
    tp, sp = settings["tp"], settings["sp"]
    if prof.world_size != tp * sp:
        raise ConfigError(f"the profile was measured on {prof.world_size} ranks; the server runs SP={sp} x TP={tp}",
                          "profile")  # fmt: skip
    models = {TP: StepTimeModel(prof, TP, tp * sp, 1)}
    if sp > 1:
        models[SP] = StepTimeModel(prof, SP, tp, sp)
    return models


def simulated(
    prof: Profile, profile_path: str | None, settings: dict, requests: list[Request], loop: EngineLoop | None = None,
    step_ms: StepFn | None = None, per_request: bool = False,
) -> dict:  # fmt: skip
    """The simulator's summary for these requests on the profile (read from `profile_path` when the server's
    policy is the profile's), with the server's layout, policy and loop; `per_request`: with each request's
    TTFT too ("ttft_ms_per_request", in the order of `requests`)."""
    tp, sp = settings["tp"], settings["sp"]
    models = step_models(prof, settings)
    policy = make_policy(settings["policy"], settings["threshold"], tp, sp, profile_path)
    loop = loop or engine_loop(settings, prof)
    res = simulate(requests, policy, step_ms or profile_step_ms(models), kv_capacity_tokens=kv_capacity(prof, tp, sp),
                   block_size=int(prof.engine.get("block_size", 16)), **loop.kwargs())  # fmt: skip
    if per_request:
        return res.summary() | {"ttft_ms_per_request": [res.ttft_by_request.get(i) for i in range(len(requests))]}
    return res.summary()


def compare_row(rate: float, predicted: dict, measured: dict, metrics: list[tuple] = METRICS) -> dict:
    row: dict = {"rate": rate, "requests": measured["completed"], "failed": measured["failed"]}
    for name, sim_key, bench_key, tol in metrics:
        pred, meas = predicted[sim_key], measured[bench_key]
        err = (pred - meas) / meas if meas else math.nan
        row[name] = {"predicted": pred, "measured": meas, "rel_error": err, "tolerance": tol,
                     "within": bool(abs(err) <= tol)}  # fmt: skip
    return row


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def probe(cfg: ValidateConfig, models: dict[str, StepTimeModel], loop: EngineLoop) -> dict | None:
    """Lone requests, one at a time, to the idle server: its time per request that is not its prompt's step.

    Per request, from the client's TTFT and the server's trace: host = TTFT - the device time of the step
    that ran its prompt (what the simulation takes from the profile). When the server's clock is this
    machine's (same host), host splits into egress (token read back -> the client has it) and ingress (the
    rest: sent -> scheduled, and the step's launch before the device starts, which an idle loop does not
    hide); otherwise all of it counts as egress. None when the server keeps no trace."""
    if cfg.probe_requests < 1:
        return None
    before = time.monotonic()
    since = server_now(cfg.base_url, cfg.api_key)
    after = time.monotonic()
    if since is None:
        return None
    same_clock = before <= since <= after
    bench = replace(cfg.bench_config(1.0, cfg.seed + PROBE_SEED, cfg.probe_requests),
                    output_len=LengthRange(PROBE_OUTPUT_TOKENS, PROBE_OUTPUT_TOKENS))  # fmt: skip
    requests = build_requests(bench, load_tokenizer(PROMPT_TOKENIZER))

    async def send_all() -> list[tuple[float, float | None]]:
        names = await list_models(cfg.base_url, cfg.api_key)
        if not names:
            raise ServerError(f"{cfg.base_url}/v1/models lists no model")
        out = []
        async with CompletionsClient(bench.url, next(iter(names)), cfg.api_key) as client:
            for req in requests:
                await asyncio.sleep(0.05)  # the engine's loop is idle again
                sent = time.monotonic()
                res = await client.send(req)
                out.append((sent, res.ttft if res.success else None))
        return out

    sent = asyncio.run(send_all())
    trace = fetch_trace(cfg.base_url, cfg.api_key, since)
    if trace is None or len(trace["requests"]) != len(sent):
        return None
    steps = {v[0]: dict(zip(trace["step_fields"], v)) for v in trace["steps"]}  # by when scheduled
    step_ms, graphs = profile_step_ms(models), loop.graphs()
    ingress, egress, host, device, profile = [], [], [], [], []
    for (t_send, ttft), row in zip(sent, trace["requests"]):
        step = steps.get(row["scheduled"])
        if ttft is None or row["first_token"] is None or step is None or step["device_ms"] is None:
            continue
        dev = step["device_ms"] / 1e3
        device.append(1e3 * dev)
        tokens = step["tokens"] if graphs is None else graphs.tokens(step["tokens"], step["seqs"], step["seqs"])
        profile.append(step_ms(step["mode"], tokens, step["mean_context"]))
        host.append(1e3 * (ttft - dev))
        if same_clock:
            egress.append(1e3 * (t_send + ttft - row["first_token"]))
            ingress.append(host[-1] - egress[-1])
    if not host:
        return None
    return {
        "source": "calibrated: lone probe requests to the idle server; the client's TTFT less the device time "
        "of the prompt's step (the server's trace)",
        "requests": len(host),
        "input_len": str(cfg.input_len),
        "same_clock": same_clock,
        "host_ms": _median(host),
        "ingress_ms": _median(ingress) if same_clock else 0.0,
        "egress_ms": _median(egress) if same_clock else _median(host),
        "prefill_device_ms": _median(device),
        "prefill_profile_ms": _median(profile),
    }


def ttft_parts(trace: dict, ttfts: list[float]) -> dict | None:
    """Measured p50s (ms) of TTFT's parts for the run's requests: the last len(ttfts) in the trace (the load
    generator's test request comes first), matched by order of arrival."""
    rows = [r for r in trace["requests"] if r["core_in"] is not None][-len(ttfts) :] if ttfts else []
    if len(rows) != len(ttfts):
        return None
    host, queue, engine = [], [], []
    for row, ttft in zip(rows, ttfts):
        if not ttft or row["scheduled"] is None or row["first_token"] is None:
            continue
        queue.append(1e3 * (row["scheduled"] - row["core_in"]))
        engine.append(1e3 * (row["first_token"] - row["scheduled"]))
        host.append(1e3 * (ttft - (row["first_token"] - row["core_in"])))
    return {"host_p50_ms": _median(host), "queue_p50_ms": _median(queue), "engine_p50_ms": _median(engine)}


def step_check(trace: dict, models: dict[str, StepTimeModel], loop: EngineLoop) -> dict:
    """The server's step times (device) against what the simulation takes for the same steps: median of
    measured / predicted over decode steps and over steps with prefill tokens (a step's tokens padded to
    its CUDA graph's bucket as the simulation does)."""
    step_ms = profile_step_ms(models)
    graphs = loop.graphs()
    fields = trace["step_fields"]
    ratios: dict[str, list[float]] = {"decode": [], "prefill": []}
    measured: dict[str, list[float]] = {"decode": [], "prefill": []}
    largest = {"decode": 0, "prefill": 0}  # tokens (padded)
    for values in trace["steps"]:
        s = dict(zip(fields, values))
        if s["device_ms"] is None or s["mode"] not in models:
            continue
        tokens = s["tokens"]
        if graphs is not None:
            tokens = graphs.tokens(tokens, s["seqs"], s["seqs"])  # samples <= seqs: the bucket may be overstated
        kind = "prefill" if s["prefill_tokens"] else "decode"
        ratios[kind].append(s["device_ms"] / step_ms(s["mode"], tokens, s["mean_context"]))
        measured[kind].append(s["device_ms"])
        largest[kind] = max(largest[kind], tokens)
    out = {}
    for kind, rs in ratios.items():
        out[kind] = {"steps": len(rs), "max_tokens": largest[kind], "measured_p50_ms": _median(measured[kind]),
                     "ratio_p10": percentile(rs, 0.1) if rs else None, "ratio_p50": _median(rs),
                     "ratio_p90": percentile(rs, 0.9) if rs else None}  # fmt: skip
    return out


def validate(cfg: ValidateConfig) -> dict:
    """Per rate: predicted vs measured latencies (see the module docstring); raises ConfigError, ServerError."""
    if not cfg.rates:
        raise ConfigError("give the rates to validate at, e.g. --rate 1,4,8", "rate")
    settings = server_settings(cfg.base_url, cfg.api_key)
    models = step_models(cfg.profile, settings)
    if cfg.warmup_prompts:
        run_bench(cfg.bench_config(max(cfg.rates), cfg.seed, cfg.warmup_prompts))
    host = probe(cfg, models, engine_loop(settings, cfg.profile))
    loop = engine_loop(settings, cfg.profile, host)
    tok = load_tokenizer(PROMPT_TOKENIZER)
    rows = []
    for i, rate in enumerate(cfg.rates):
        bench = cfg.bench_config(rate, cfg.seed + SEED_STRIDE * (i + 1), cfg.num_prompts)
        sent = with_arrivals(build_requests(bench, tok), rate, bench.seed, bench.burstiness)  # what run_bench sends
        requests = [Request(r.arrival_s, r.input_len, r.output_len) for r in sent]
        predicted = simulated(cfg.profile, cfg.profile_path, settings, requests, loop)
        since = server_now(cfg.base_url, cfg.api_key)
        record = run_bench(bench).records[0]
        if not record["completed"]:
            raise ServerError(f"no request completed at rate {rate:g}: {record['errors'][:1]}")
        row = compare_row(rate, predicted, record)
        trace = fetch_trace(cfg.base_url, cfg.api_key, since) if since is not None else None
        if trace is not None:
            row["diagnostics"] = diagnostics(cfg, settings, requests, loop, models, predicted, record, trace)
        rows.append(row)
    prof = cfg.profile
    return {
        "url": cfg.base_url,
        "server": {k: v for k, v in settings.items() if k != "engine"},
        "profile_model": prof.model.get("name"),
        "profile_hardware": prof.hardware,
        "profile_kind": "predicted" if prof.predicted else "measured",
        "num_prompts": cfg.num_prompts,
        "input_len": str(cfg.input_len),
        "output_len": str(cfg.output_len),
        "seed": cfg.seed,
        "simulation": {
            "engine_loop": loop.kwargs(),
            "engine_loop_source": "the server's settings (/v1/shifttune/live)"
            if settings.get("engine")
            else "the profile's engine (the server does not tell its own)",
            "step_times": "the profile (physics: step time per tokens and context, graph buckets)",
            "host_time": host or "none: the server keeps no trace, so it was not measured (0 ms)",
        },  # fmt: skip
        "rows": rows,
    }


def diagnostics(cfg: ValidateConfig, settings: dict, requests: list[Request], loop: EngineLoop,
                models: dict[str, StepTimeModel], predicted: dict, record: dict, trace: dict) -> dict:  # fmt: skip
    """What the server's trace of one run says against the simulation (see the module docstring); and the
    simulation re-run with the profile's step times scaled by the server's measured / predicted medians
    (not a prediction: it says how much of the error is step times and how much the rest)."""
    steps = step_check(trace, models, loop)
    parts = ttft_parts(trace, [t for t in record.get("ttfts", [])])
    base = profile_step_ms(models)
    scale = {k: (v["ratio_p50"] or 1.0) for k, v in steps.items()}
    largest_decode = steps["decode"]["max_tokens"]

    def measured_steps(mode: str, tokens: int, context: float) -> float:
        # NOTE: a step function sees no prefill tokens: steps past the run's largest decode step count as prefill
        return base(mode, tokens, context) * scale["decode" if tokens <= largest_decode else "prefill"]

    rerun = simulated(cfg.profile, cfg.profile_path, settings, requests, loop, measured_steps)
    return {
        "ttft_parts_measured": parts,
        "ttft_parts_predicted": {
            "host_p50_ms": loop.ingress_ms + loop.egress_ms,
            "queue_p50_ms": predicted.get("queue_p50_ms"),
            "engine_p50_ms": predicted.get("engine_p50_ms"),
        },  # fmt: skip
        "steps_measured_vs_profile": steps,
        "with_server_step_times": {k: rerun[k] for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")},
    }


def with_spread(mean: int, spread: float) -> LengthRange:
    """`recommend`'s lengths (uniform within +-spread x mean) as the bench's length range."""
    return LengthRange(max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread))))
