"""`shifttune recommend --validate URL`: the simulator's own error, measured against a running server.

For each rate the same workload (the bench's random prompts of exact lengths, its Poisson arrivals) is
simulated on a profile with the server's layout and shift policy (read from `/v1/shifttune/live`) and
sent to the server by the load generator (`run_bench`); the table holds predicted vs measured TTFT and
TPOT at p50 and p99, the relative error and whether it is within 5% (p50) / 10% (p99). Each rate gets
its own prompts (seed + rate index), and a warm-up run its own too, so the server's prefix cache never
serves a measured prompt; the simulator assumes the server's default batch limits (256 seqs, 8192 tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from shifttune.bench.client import ServerError
from shifttune.bench.config import BenchConfig, LengthRange
from shifttune.bench.datasets import build_requests, with_arrivals
from shifttune.bench.runner import run_bench
from shifttune.bench.serve_vs_offline import PROMPT_TOKENIZER
from shifttune.bench.tokenizer import load_tokenizer
from shifttune.config import SP, TP, ConfigError
from shifttune.engine.policy import make_policy
from shifttune.engine.profile_schema import Profile
from shifttune.engine.step_model import StepTimeModel
from shifttune.recommend.simulator import simulate
from shifttune.recommend.workload import Request

# (metric, simulator's summary key, bench record key, tolerance on |pred - meas| / meas)
METRICS = [
    ("ttft_p50_ms", "ttft_p50_ms", "median_ttft_ms", 0.05),
    ("ttft_p99_ms", "ttft_p99_ms", "p99_ttft_ms", 0.10),
    ("tpot_p50_ms", "tpot_p50_ms", "median_tpot_ms", 0.05),
    ("tpot_p99_ms", "tpot_p99_ms", "p99_tpot_ms", 0.10),
]
SEED_STRIDE = 1000  # rate i uses seed + SEED_STRIDE * (i + 1); the warm-up uses seed


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
    warmup_prompts: int = 16  # sent at the highest rate before the measured runs, results dropped

    def bench_config(self, rate: float, seed: int, num_prompts: int) -> BenchConfig:
        return BenchConfig(base_url=self.base_url, api_key=self.api_key, rates=[rate], num_prompts=num_prompts,
                           input_len=self.input_len, output_len=self.output_len, tokenizer=PROMPT_TOKENIZER,
                           seed=seed)  # fmt: skip


def server_settings(base_url: str, api_key: str | None = None) -> dict:
    """The server's model, SP x TP layout, shift policy and threshold; ServerError when it cannot tell."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = base_url.rstrip("/") + "/v1/shifttune/live"
    try:
        r = httpx.get(url, params={"after": 1 << 62}, headers=headers, timeout=10, trust_env=False)
        r.raise_for_status()
        live = r.json()
    except (httpx.HTTPError, ValueError) as e:
        raise ServerError(f"cannot read the server's settings from {url}: {type(e).__name__}: {e}") from None
    return {k: live[k] for k in ("model", "tp", "sp", "policy", "threshold")}


def simulated(cfg: ValidateConfig, settings: dict, requests: list[Request]) -> dict:
    """The simulator's summary for these requests on the profile, with the server's layout and policy."""
    tp, sp, prof = settings["tp"], settings["sp"], cfg.profile
    if prof.world_size != tp * sp:
        raise ConfigError(f"the profile was measured on {prof.world_size} ranks; the server runs SP={sp} x TP={tp}",
                          "profile")  # fmt: skip
    models = {TP: StepTimeModel(prof, TP, tp * sp, 1)}
    if sp > 1:
        models[SP] = StepTimeModel(prof, SP, tp, sp)
    policy = make_policy(settings["policy"], settings["threshold"], tp, sp, cfg.profile_path)
    fact = next((f for f in prof.factorizations if (f.tp, f.sp) == (tp, sp)), None)
    kv_tokens = fact.kv_capacity_tokens if fact is not None and fact.kv_capacity_tokens else 1 << 30
    res = simulate(requests, policy, lambda mode, t, c: models[mode].predict(t, c), kv_capacity_tokens=kv_tokens,
                   block_size=int(prof.engine.get("block_size", 16)))  # fmt: skip
    return res.summary()


def compare_row(rate: float, predicted: dict, measured: dict) -> dict:
    row: dict = {"rate": rate, "requests": measured["completed"], "failed": measured["failed"]}
    for name, sim_key, bench_key, tol in METRICS:
        pred, meas = predicted[sim_key], measured[bench_key]
        err = (pred - meas) / meas if meas else math.nan
        row[name] = {"predicted": pred, "measured": meas, "rel_error": err, "tolerance": tol,
                     "within": bool(abs(err) <= tol)}  # fmt: skip
    return row


def validate(cfg: ValidateConfig) -> dict:
    """Per rate: predicted vs measured latencies (see the module docstring); raises ConfigError, ServerError."""
    if not cfg.rates:
        raise ConfigError("give the rates to validate at, e.g. --rate 1,4,8", "rate")
    settings = server_settings(cfg.base_url, cfg.api_key)
    if cfg.warmup_prompts:
        run_bench(cfg.bench_config(max(cfg.rates), cfg.seed, cfg.warmup_prompts))
    tok = load_tokenizer(PROMPT_TOKENIZER)
    rows = []
    for i, rate in enumerate(cfg.rates):
        bench = cfg.bench_config(rate, cfg.seed + SEED_STRIDE * (i + 1), cfg.num_prompts)
        sent = with_arrivals(build_requests(bench, tok), rate, bench.seed)  # what run_bench sends
        predicted = simulated(cfg, settings, [Request(r.arrival_s, r.input_len, r.output_len) for r in sent])
        record = run_bench(bench).records[0]
        if not record["completed"]:
            raise ServerError(f"no request completed at rate {rate:g}: {record['errors'][:1]}")
        rows.append(compare_row(rate, predicted, record))
    prof = cfg.profile
    return {
        "url": cfg.base_url,
        "server": settings,
        "profile_model": prof.model.get("name"),
        "profile_hardware": prof.hardware,
        "profile_kind": "predicted" if prof.predicted else "measured",
        "num_prompts": cfg.num_prompts,
        "input_len": str(cfg.input_len),
        "output_len": str(cfg.output_len),
        "seed": cfg.seed,
        "rows": rows,
    }


def with_spread(mean: int, spread: float) -> LengthRange:
    """`recommend`'s lengths (uniform within +-spread x mean) as the bench's length range."""
    return LengthRange(max(1, round(mean * (1 - spread))), max(1, round(mean * (1 + spread))))
