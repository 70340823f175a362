"""Benchmark settings: what to send, where and how fast (`BenchConfig`), length ranges, and their checks.

Bad values raise `ConfigError` naming the field; the CLI shows the field as its flag.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from shifttune.config import ConfigError

DATASETS = ("random", "sharegpt", "trace")
DEFAULT_INPUT_LEN = 1024  # vLLM's random dataset defaults
DEFAULT_OUTPUT_LEN = 128


def server_base_url(url: str) -> str:
    """A server's URL as the paths requested from it need it (they start with /v1): no trailing / and no trailing
    /v1, which the OpenAI client's base URL has (http://HOST:PORT/v1). bench, recommend --validate and top use it."""
    return url.rstrip("/").removesuffix("/v1").rstrip("/")


@dataclass(frozen=True)
class LengthRange:
    """A token length: fixed (lo == hi) or drawn uniformly from [lo, hi]."""

    lo: int
    hi: int

    @classmethod
    def parse(cls, text: str, field: str) -> LengthRange:
        """`128` or `100:200`."""
        parts = text.split(":")
        try:
            lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
        except ValueError:
            raise ConfigError(f"expected a token count (128) or a range (100:200), got {text!r}", field) from None
        if len(parts) > 2 or lo < 1 or hi < lo:
            raise ConfigError(f"expected a count >= 1 or a range lo:hi with 1 <= lo <= hi, got {text!r}", field)
        return cls(lo, hi)

    def draw(self, rng: random.Random) -> int:
        return self.lo if self.lo == self.hi else rng.randint(self.lo, self.hi)

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}:{self.hi}"


@dataclass
class BenchConfig:
    """One benchmark: a server, a workload, one or more arrival rates, objectives."""

    base_url: str
    model: str | None = None  # None: the server's first model (GET /v1/models)
    endpoint: str = "/v1/completions"
    api_key: str | None = None
    rates: list[float] | None = None  # requests/s, inf = all at once; None: inf, or the trace's own times
    concurrency: int | None = None  # max requests in flight; None = unbounded
    num_prompts: int = 200
    input_len: LengthRange | None = None  # None: the dataset's (random: DEFAULT_INPUT_LEN)
    output_len: LengthRange | None = None  # None: the dataset's (random: DEFAULT_OUTPUT_LEN)
    dataset: str = "random"
    dataset_path: Path | None = None
    time_scale: float = 1.0  # trace: multiplies the trace's arrival times (0.5 = twice as fast)
    burstiness: float = 1.0  # shape of the Gamma-distributed gaps between arrivals: 1 Poisson, < 1 bursty
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    seed: int = 0
    tokenizer: str | None = None  # HF directory or bundled name; None: the model's name if it resolves locally
    request_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        self.base_url = server_base_url(self.base_url)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + self.endpoint

    def rate_list(self) -> list[float | None]:
        """The runs to make: one per rate; None is the trace's own timing."""
        if self.dataset == "trace":
            return [None]
        return list(self.rates) if self.rates else [math.inf]

    def validate(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"expected an http:// or https:// URL, got {self.base_url!r}", "base_url")
        if not self.endpoint.startswith("/"):
            raise ConfigError(f"expected a path such as /v1/completions, got {self.endpoint!r}", "endpoint")
        if self.endpoint.rstrip("/").endswith("/chat/completions"):
            raise ConfigError(f"bench sends completions requests (a prompt), not chat ones (messages): give "
                              f"/v1/completions, not {self.endpoint!r}", "endpoint")  # fmt: skip
        if self.dataset not in DATASETS:
            raise ConfigError(f"must be one of {', '.join(DATASETS)}, got {self.dataset!r}", "dataset")
        if self.rates is not None:
            if not self.rates or any(math.isnan(r) or r <= 0 for r in self.rates):
                raise ConfigError("must be positive numbers (requests/s) or inf", "rates")
            if self.dataset == "trace":
                raise ConfigError("--dataset trace replays the trace's own timestamps; use --time-scale", "rates")
        if self.concurrency is not None and self.concurrency < 1:
            raise ConfigError("must be >= 1", "concurrency")
        if self.num_prompts < 1:
            raise ConfigError("must be >= 1", "num_prompts")
        if self.dataset == "random":
            if self.dataset_path is not None:
                raise ConfigError("only for --dataset sharegpt or trace", "dataset_path")
        elif self.dataset_path is None:
            raise ConfigError(f"--dataset {self.dataset} needs a file", "dataset_path")
        if self.dataset == "sharegpt" and self.input_len is not None:
            raise ConfigError(
                "ShareGPT prompts keep their own lengths; --input-len is for random or trace", "input_len"
            )
        if not (math.isfinite(self.time_scale) and self.time_scale > 0):
            raise ConfigError("must be a positive number", "time_scale")
        if self.time_scale != 1.0 and self.dataset != "trace":
            raise ConfigError("only for --dataset trace (use --rate for the others)", "time_scale")
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise ConfigError("must be a positive number (1: Poisson arrivals, below 1: burstier)", "burstiness")
        if self.burstiness != 1.0 and self.dataset == "trace":
            raise ConfigError("--dataset trace replays the trace's own arrival times", "burstiness")
        for name in ("slo_ttft_ms", "slo_tpot_ms"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError("must be > 0 (milliseconds)", name)
        if not self.request_timeout_s > 0:
            raise ConfigError("must be > 0 (seconds)", "request_timeout_s")
