"""Workloads: request arrivals (Poisson at a rate, or a trace's own timestamps) with input/output lengths.

One module for both sides of a prediction: the simulator (`recommend`) replays them against measured
step times, the load generator (`bench`) sends them to a live server.
"""

from __future__ import annotations

import csv
import math
import random
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shifttune.config import ConfigError


@dataclass(frozen=True)
class Request:
    arrival_s: float
    input_len: int
    output_len: int


@dataclass
class Workload:
    """Arrivals at `rate` requests/s with lengths drawn uniformly within +-`spread` of the means, or the
    requests of a trace. Gaps between arrivals are Gamma-distributed with shape `burstiness` and mean
    1 / rate, as vLLM's benchmark draws them: 1 is Poisson, below 1 burstier (their coefficient of variation
    is 1 / sqrt(burstiness)), above 1 more even."""

    rate: float = 1.0
    num_requests: int = 200
    input_len: int = 2048
    output_len: int = 256
    spread: float = 0.0  # 0.25: lengths uniform in [0.75, 1.25] x mean
    seed: int = 0
    trace: list[Request] | None = None
    burstiness: float = 1.0

    def requests(self) -> list[Request]:
        if self.trace is not None:
            return self.trace
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ConfigError(f"arrival rate must be a positive number, got {self.rate}")
        if self.num_requests < 1 or self.input_len < 1 or self.output_len < 1 or not 0 <= self.spread < 1:
            raise ConfigError("num_requests, input_len and output_len must be >= 1 and spread in [0, 1)")
        if not (math.isfinite(self.burstiness) and self.burstiness > 0):
            raise ConfigError(f"burstiness must be a positive number, got {self.burstiness}")
        rng = random.Random(self.seed)
        t, out = 0.0, []

        def draw(mean: int) -> int:
            return max(1, round(mean * rng.uniform(1 - self.spread, 1 + self.spread)))

        k = self.burstiness
        for _ in range(self.num_requests):
            t += rng.expovariate(self.rate) if k == 1 else rng.gammavariate(k, 1 / (self.rate * k))
            out.append(Request(t, draw(self.input_len), draw(self.output_len)))
        return out


def load_azure_trace(path: Path, limit: int | None = None) -> list[Request]:
    """Azure LLM inference trace CSV: TIMESTAMP, ContextTokens, GeneratedTokens (times from the first)."""
    if not Path(path).is_file():
        why = "is a folder; give the CSV file" if Path(path).is_dir() else "does not exist"
        raise ConfigError(f"trace {path} {why}")
    rows = []
    try:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                stamp = row["TIMESTAMP"].strip()
                when = datetime.fromisoformat(stamp[:26] if "." in stamp else stamp).timestamp()
                rows.append((when, int(row["ContextTokens"]), int(row["GeneratedTokens"])))
                if limit and len(rows) >= limit:
                    break
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(
            f"{path} is not an Azure LLM inference trace (TIMESTAMP, ContextTokens, GeneratedTokens): {e}"
        ) from None
    if not rows:
        raise ConfigError(f"trace {path} has no requests")
    t0 = min(r[0] for r in rows)
    return sorted((Request(w - t0, max(1, c), max(1, g)) for w, c, g in rows), key=lambda r: r.arrival_s)
