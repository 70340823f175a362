"""Runs a benchmark: the server's model, the workload, one run per rate, results as vLLM-style records.

Requests leave at their arrival times (a task each); `concurrency` caps how many are in flight, the
rest wait for a slot, as in vLLM. Each rate of a sweep sends prompts of its own (the prompts' seed plus
the rate's index), so no run is served from the prefix cache an earlier one filled. Ctrl-C (SIGINT) or
SIGTERM stops sending, cancels what is in flight and keeps the results that completed; the run and the
sweep are then marked interrupted. Outside a run, `signals.sigterm_like_ctrl_c` makes SIGTERM raise as Ctrl-C
does (KeyboardInterrupt), so that the code that handles Ctrl-C handles both.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from shifttune.bench.client import CompletionsClient, RequestResult, ServerError, list_models
from shifttune.bench.config import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, BenchConfig
from shifttune.bench.datasets import BenchRequest, build_requests, with_arrivals
from shifttune.bench.metrics import compute_metrics, per_request
from shifttune.bench.tokenizer import BenchTokenizer, default_tokenizer_name, load_tokenizer
from shifttune.config import ConfigError
from shifttune.signals import STOP_SIGNALS

WARMUP_TOKENS = 16
TEST_SEED = 7919  # the test request's prompt: the run's seed plus this


def _test_request(first: BenchRequest, tok: BenchTokenizer, seed: int) -> BenchRequest:
    """The request sent before the run (the server answers, the first shapes are warm): as long as the first
    one, other tokens. NOTE: it used to be the first one itself, which then found its whole prompt in the
    server's prefix cache (a TTFT of 18.9 ms for 4096 tokens on an H100, session 15)."""
    if isinstance(first.prompt, list):
        prompt: str | list[int] = tok.random_ids(first.input_len, random.Random(seed + TEST_SEED))
    else:
        prompt = first.prompt[::-1]
    return replace(first, prompt=prompt, output_len=min(first.output_len, WARMUP_TOKENS))


class Reporter(Protocol):
    """Progress of the runs (the CLI's Rich progress bar)."""

    def start(self, label: str, total: int) -> None: ...

    def advance(self, ok: bool) -> None: ...


class _Silent:
    def start(self, label: str, total: int) -> None:
        pass

    def advance(self, ok: bool) -> None:
        pass


@dataclass
class BenchRun:
    """What `run_bench` returns: one record per rate (fewer when interrupted)."""

    model: str
    tokenizer: str
    records: list[dict] = field(default_factory=list)
    interrupted: bool = False
    stop_signal: int | None = None  # what interrupted it
    sent: list[list[BenchRequest]] = field(default_factory=list)  # per record: the requests, at their arrival times


def rate_label(rate: float | None) -> str:
    return "trace" if rate is None else ("inf" if math.isinf(rate) else f"{rate:g}")


async def run_requests(
    client: CompletionsClient,
    requests: list[BenchRequest],
    concurrency: int | None,
    reporter: Reporter,
    stop: asyncio.Event,
) -> tuple[list[RequestResult], float, bool]:
    """Sends every request at its arrival time; returns the finished results in request order, the
    duration (s) and whether `stop` cut the run short."""
    results: list[RequestResult | None] = [None] * len(requests)
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    start = time.perf_counter()

    async def one(i: int, req: BenchRequest) -> None:
        delay = req.arrival_s - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        async with slots if slots else contextlib.nullcontext():
            sent = time.perf_counter() - start
            result = await client.send(req)
        result.send_time = sent
        results[i] = result
        reporter.advance(result.success)

    tasks = [asyncio.create_task(one(i, r)) for i, r in enumerate(requests)]
    everything = asyncio.gather(*tasks)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([everything, stopped], return_when=asyncio.FIRST_COMPLETED)
    interrupted = not everything.done()
    if interrupted:
        everything.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(asyncio.CancelledError):
            everything.exception()  # retrieved: no "exception was never retrieved" at exit
    else:
        everything.result()  # a bug in one() surfaces here
    stopped.cancel()
    duration = time.perf_counter() - start
    return [r for r in results if r is not None], duration, interrupted


def record(
    cfg: BenchConfig,
    model: str,
    tokenizer: str,
    rate: float | None,
    results: list[RequestResult],
    duration: float,
    interrupted: bool,
    ignore_eos: bool,
) -> dict:
    """One run as `vllm bench serve --save-result` writes it (same keys where the meaning is the same)."""
    return {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai",
        "model_id": model,
        "tokenizer_id": tokenizer,
        "base_url": cfg.base_url,
        "endpoint": cfg.endpoint,
        "dataset": cfg.dataset,
        "num_prompts": cfg.num_prompts,
        "request_rate": rate_label(rate) if rate is None or math.isinf(rate) else rate,
        "time_scale": cfg.time_scale if rate is None else None,
        "burstiness": cfg.burstiness if rate is not None and math.isfinite(rate) else None,
        "max_concurrency": cfg.concurrency,
        "slo_ttft_ms": cfg.slo_ttft_ms,
        "slo_tpot_ms": cfg.slo_tpot_ms,
        "ignore_eos": ignore_eos,
        "interrupted": interrupted,
        **compute_metrics(results, duration, cfg.slo_ttft_ms, cfg.slo_tpot_ms),
        **per_request(results),
    }


async def _resolve_model(cfg: BenchConfig) -> tuple[str, int | None]:
    """The model to send to and its context length where the server lists one."""
    models = await list_models(cfg.base_url, cfg.api_key)  # also the "is the server up" check
    if cfg.model and models and cfg.model not in models:  # NOTE: its requests would all fail (404)
        raise ServerError(f"{cfg.base_url} serves {', '.join(map(repr, models))}, not --model {cfg.model!r}")
    if cfg.model:
        return cfg.model, models.get(cfg.model)
    if not models:
        raise ServerError(f"{cfg.base_url}/v1/models lists no model; name one with --model")
    return next(iter(models.items()))


def _check_fits(cfg: BenchConfig, model: str, max_model_len: int | None) -> None:
    """ConfigError where the random dataset's longest request (prompt + max_tokens) is over the server's context.
    NOTE: the test request alone does not tell: its max_tokens is capped (WARMUP_TOKENS), then every request fails."""
    if max_model_len is None or cfg.dataset != "random":
        return
    i = cfg.input_len.hi if cfg.input_len else DEFAULT_INPUT_LEN
    o = cfg.output_len.hi if cfg.output_len else DEFAULT_OUTPUT_LEN
    if i + o > max_model_len:
        raise ConfigError(f"{i} + {o} = {i + o} tokens (prompt + max_tokens) is over the server's context of "
                          f"{max_model_len} tokens (max_model_len of {model!r})", "input_output_len")  # fmt: skip


def _tokenizer(cfg: BenchConfig, model: str) -> BenchTokenizer:
    name = cfg.tokenizer or default_tokenizer_name(model)
    if name is None:
        raise ConfigError(
            f"the model {model!r} is not a local directory nor a bundled model, so its tokenizer is unknown; "
            "pass --tokenizer (an HF model directory) to make prompts of exact token lengths",
            "tokenizer",
        )
    return load_tokenizer(name)


async def _unless_stopped(coro: Coroutine[Any, Any, RequestResult], stop: asyncio.Event) -> RequestResult | None:
    """The coroutine's result, or None when `stop` is set first (the coroutine is then cancelled)."""
    task, stopped = asyncio.create_task(coro), asyncio.create_task(stop.wait())
    await asyncio.wait([task, stopped], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return None


async def _bench(cfg: BenchConfig, reporter: Reporter, label: str) -> BenchRun:
    model, max_model_len = await _resolve_model(cfg)
    _check_fits(cfg, model, max_model_len)
    tok = _tokenizer(cfg, model)
    requests = build_requests(cfg, tok)
    run = BenchRun(model, tok.name)
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        run.stop_signal = run.stop_signal or signum
        stop.set()

    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread / not Unix
            loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with CompletionsClient(cfg.url, model, cfg.api_key, cfg.request_timeout_s) as client:
            test = await _unless_stopped(client.send(_test_request(requests[0], tok, cfg.seed)), stop)
            if test is not None and not test.success:
                raise ServerError(f"the test request to {cfg.url} (model {model!r}) failed: {test.error}")
            for i, rate in enumerate(cfg.rate_list()):
                if stop.is_set():
                    run.interrupted = True
                    break
                reporter.start(f"{label}rate {rate_label(rate)}", len(requests))
                # NOTE: each rate of a sweep its own prompts (seed + its index): the same ones again would find
                # their KV in the server's prefix cache, which the earlier rate's run filled
                prompts = requests if i == 0 else build_requests(replace(cfg, seed=cfg.seed + i), tok)
                batch = with_arrivals(prompts, rate, cfg.seed, cfg.burstiness)
                run.sent.append(batch)
                results, duration, interrupted = await run_requests(client, batch, cfg.concurrency, reporter, stop)
                run.records.append(record(cfg, model, tok.name, rate, results, duration, interrupted,
                                          client.ignore_eos))  # fmt: skip
                if interrupted:
                    run.interrupted = True
                    break
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                # NOTE: asyncio then sets SIG_DFL (SIGTERM) / default_int_handler (SIGINT), not what was there before
                if loop.remove_signal_handler(sig) and handler is not None:
                    signal.signal(sig, handler)
    return run


def run_bench(cfg: BenchConfig, reporter: Reporter | None = None, label: str = "") -> BenchRun:
    """Validates `cfg`, runs every rate against the server and returns the records.

    Raises ConfigError (bad settings, files) and ServerError (server down, no model)."""
    cfg.validate()
    return asyncio.run(_bench(cfg, reporter or _Silent(), label))
