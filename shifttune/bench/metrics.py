"""Benchmark metrics, defined exactly as `vllm bench serve` defines them (vllm/benchmarks/serve.py).

Over the successful requests of one run of `duration` seconds:
  TTFT  send -> first token;  E2E (e2el)  send -> last token
  TPOT  (E2E - TTFT) / (output tokens - 1), per request with more than one output token
  ITL   every gap between consecutive tokens (chunks), pooled over all requests
  goodput  requests/s meeting every given SLO (TTFT <= slo_ttft, TPOT <= slo_tpot; a one-token
           request counts as TPOT 0)
  request / input / output / total token throughput = completed, their input, output, input + output
  tokens, / duration
Each latency as mean, median (p50), std (population), p90 and p99 in ms; an empty list reads 0, as
in vLLM (TPOT and ITL when every output is one token), but with no successful request at all every
latency is None (null in the JSON, n/a in the tables): there is nothing to measure. Percentiles
interpolate linearly (`shifttune.engine.stats.percentile`, like numpy).
"""

from __future__ import annotations

import math

from shifttune.bench.client import RequestResult
from shifttune.engine.stats import percentile

LATENCIES = ("ttft", "tpot", "itl", "e2el")
PERCENTILES = (90, 99)


def tpot(r: RequestResult) -> float | None:
    """Seconds per output token after the first; None for one-token (or failed) requests."""
    if not r.success or r.output_len <= 1:
        return None
    return (r.latency - r.ttft) / (r.output_len - 1)


def summarize(name: str, values_s: list[float]) -> dict[str, float]:
    """`mean_<name>_ms`, `median_`, `std_`, `p90_`, `p99_` of values in seconds."""
    xs = [v * 1000 for v in values_s] or [0.0]
    mean = sum(xs) / len(xs)
    out = {
        f"mean_{name}_ms": mean,
        f"median_{name}_ms": percentile(xs, 0.5),
        f"std_{name}_ms": math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs)),
    }
    return out | {f"p{p}_{name}_ms": percentile(xs, p / 100) for p in PERCENTILES}


def is_good(r: RequestResult, slo_ttft_ms: float | None, slo_tpot_ms: float | None) -> bool:
    if not r.success:
        return False
    if slo_ttft_ms is not None and r.ttft * 1000 > slo_ttft_ms:
        return False
    return slo_tpot_ms is None or (tpot(r) or 0.0) * 1000 <= slo_tpot_ms


def compute_metrics(
    results: list[RequestResult],
    duration_s: float,
    slo_ttft_ms: float | None = None,
    slo_tpot_ms: float | None = None,
) -> dict:
    """The scalar metrics of one run, under vLLM's `--save-result` key names (latencies None without a success)."""
    ok = [r for r in results if r.success]
    dur = max(duration_s, 1e-9)
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    tpots = [t for t in map(tpot, ok) if t is not None]
    has_slo = slo_ttft_ms is not None or slo_tpot_ms is not None
    good = sum(is_good(r, slo_ttft_ms, slo_tpot_ms) for r in ok)
    metrics = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / dur,
        "request_goodput": good / dur if has_slo else None,
        "input_throughput": total_in / dur,  # not in vLLM's file: the issue asks for it
        "output_throughput": total_out / dur,
        "total_token_throughput": (total_in + total_out) / dur,
    }
    for name, values in (
        ("ttft", [r.ttft for r in ok]),
        ("tpot", tpots),
        ("itl", [g for r in ok for g in r.itl]),
        ("e2el", [r.latency for r in ok]),
    ):
        stats = summarize(name, values)
        metrics |= stats if ok else dict.fromkeys(stats)
    return metrics


def per_request(results: list[RequestResult]) -> dict[str, list]:
    """vLLM's per-request lists (seconds); failed requests read 0 output tokens and 0 TTFT."""
    return {
        "input_lens": [r.prompt_len for r in results],
        "output_lens": [r.output_len if r.success else 0 for r in results],
        "ttfts": [r.ttft if r.success else 0.0 for r in results],
        "itls": [r.itl if r.success else [] for r in results],
        "errors": [r.error for r in results],
    }
