"""Prompts to send: random token ids of exact lengths, ShareGPT conversations, or an Azure trace replayed.

Random and trace prompts are lists of token ids (the OpenAI completions API takes them as the prompt),
so the server sees exactly the lengths asked for. ShareGPT prompts are sent as text; their output
length is the token count of the conversation's reply unless --output-len is given. Arrival times come
from `shifttune.recommend.workload` (Poisson at a rate; a trace's own timestamps).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

from shifttune.bench.config import DEFAULT_INPUT_LEN, DEFAULT_OUTPUT_LEN, BenchConfig, LengthRange
from shifttune.bench.tokenizer import BenchTokenizer
from shifttune.config import ConfigError
from shifttune.recommend.workload import Workload, load_azure_trace

# vLLM's ShareGPT filter (benchmarks/datasets.py, is_valid_sequence), so the samples match its own.
SHAREGPT_MIN_LEN, SHAREGPT_MAX_PROMPT, SHAREGPT_MAX_TOTAL = 4, 1024, 2048


@dataclass(frozen=True)
class BenchRequest:
    prompt: str | list[int]  # text, or token ids
    input_len: int
    output_len: int  # max_tokens
    arrival_s: float = 0.0  # seconds after the run starts


def random_requests(
    tok: BenchTokenizer, n: int, input_len: LengthRange, output_len: LengthRange, seed: int
) -> list[BenchRequest]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        i, o = input_len.draw(rng), output_len.draw(rng)
        out.append(BenchRequest(tok.random_ids(i, rng), i, o))
    return out


def sharegpt_requests(
    path: Path, tok: BenchTokenizer, n: int, output_len: LengthRange | None, seed: int
) -> list[BenchRequest]:
    """The first human turn as the prompt, the reply's token count as max_tokens (unless output_len).

    Conversations are shuffled with the seed; pairs with a prompt or reply under 4 tokens, a prompt over
    1024 or a total over 2048 tokens are skipped, as vLLM does (the reply checks only without output_len)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read ShareGPT JSON from {path}: {e}", "dataset_path") from None
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a JSON list of {{'conversations': [...]}}", "dataset_path")
    pairs = []
    for item in data:
        conv = item.get("conversations") if isinstance(item, dict) else None
        if isinstance(conv, list) and len(conv) >= 2 and all(isinstance(t, dict) for t in conv[:2]):
            prompt, reply = conv[0].get("value"), conv[1].get("value")
            if isinstance(prompt, str) and isinstance(reply, str):
                pairs.append((prompt, reply))
    rng = random.Random(seed)
    rng.shuffle(pairs)
    out = []
    for prompt, reply in pairs:
        p = tok.count(prompt)
        o = output_len.draw(rng) if output_len else tok.count(reply)
        if p < SHAREGPT_MIN_LEN or (output_len is None and o < SHAREGPT_MIN_LEN):
            continue
        if output_len is None and (p > SHAREGPT_MAX_PROMPT or p + o > SHAREGPT_MAX_TOTAL):
            continue
        out.append(BenchRequest(prompt, p, o))
        if len(out) == n:
            break
    if not out:
        raise ConfigError(f"{path} has no usable conversations (a human turn and a reply)", "dataset_path")
    return out


def trace_requests(
    path: Path,
    tok: BenchTokenizer,
    n: int,
    time_scale: float,
    seed: int,
    input_len: LengthRange | None = None,
    output_len: LengthRange | None = None,
) -> list[BenchRequest]:
    """The first n requests of an Azure LLM inference trace at their own times x time_scale, with random
    token-id prompts of the trace's context lengths (or input_len / output_len when given)."""
    rng = random.Random(seed)
    out = []
    for r in load_azure_trace(Path(path), limit=n):
        i = input_len.draw(rng) if input_len else r.input_len
        o = output_len.draw(rng) if output_len else r.output_len
        out.append(BenchRequest(tok.random_ids(i, rng), i, o, r.arrival_s * time_scale))
    return out


def build_requests(cfg: BenchConfig, tok: BenchTokenizer) -> list[BenchRequest]:
    """The workload of `cfg` (arrival times still 0 except for a trace: see `with_arrivals`)."""
    if cfg.dataset == "sharegpt":
        assert cfg.dataset_path is not None
        return sharegpt_requests(cfg.dataset_path, tok, cfg.num_prompts, cfg.output_len, cfg.seed)
    if cfg.dataset == "trace":
        assert cfg.dataset_path is not None
        return trace_requests(
            cfg.dataset_path, tok, cfg.num_prompts, cfg.time_scale, cfg.seed, cfg.input_len, cfg.output_len
        )
    return random_requests(
        tok,
        cfg.num_prompts,
        cfg.input_len or LengthRange(DEFAULT_INPUT_LEN, DEFAULT_INPUT_LEN),
        cfg.output_len or LengthRange(DEFAULT_OUTPUT_LEN, DEFAULT_OUTPUT_LEN),
        cfg.seed,
    )


def with_arrivals(
    requests: list[BenchRequest], rate: float | None, seed: int, burstiness: float = 1.0
) -> list[BenchRequest]:
    """Arrival times for one run: None keeps the requests' own (a trace), inf sends all at once, a rate
    gives Poisson arrivals, or Gamma-distributed gaps of shape `burstiness` (`Workload`; the first at 0,
    as vLLM sends it)."""
    if rate is None:
        return requests
    if math.isinf(rate):
        return [replace(r, arrival_s=0.0) for r in requests]
    work = Workload(rate=rate, num_requests=len(requests), seed=seed, burstiness=burstiness)
    times = [w.arrival_s for w in work.requests()]
    return [replace(r, arrival_s=t - times[0]) for r, t in zip(requests, times)]
