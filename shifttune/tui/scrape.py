"""A Prometheus `/metrics` text (ours or vLLM's) as numbers a live view shows: a series summed over its
labels, split by one label, histogram buckets; and, over a sliding window of scrapes, counter rates and
quantiles of what was observed inside the window (interpolated within buckets as Prometheus'
`histogram_quantile` does).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass

# `name{label="value",...} value [timestamp]`, the text exposition format (a regex: prometheus_client's own
# parser took ~6 ms for our /metrics, a tenth of a refresh)
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?[ \t]+(\S+)(?:[ \t]+\S+)?[ \t]*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
Series = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class Scrape:
    time: float  # when it was taken (the viewer's monotonic clock)
    series: Series  # sample name -> [(labels, value)]

    def has(self, name: str) -> bool:
        return name in self.series

    def value(self, name: str, **labels: str) -> float | None:
        """Sum over every sample of `name` whose labels include `labels`; None if the server has no such series."""
        samples = self.series.get(name)
        if samples is None:
            return None
        return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for lab, v in self.series.get(name, ()):
            if label in lab:
                out[lab[label]] = out.get(lab[label], 0.0) + v
        return out

    def buckets(self, name: str) -> list[tuple[float, float]]:
        """(upper bound, cumulative count) of histogram `name` (without `_bucket`), summed over other labels."""
        return sorted((float(le), n) for le, n in self.by_label(f"{name}_bucket", "le").items())


def _unescape(value: str) -> str:
    return re.sub(r"\\[\\\"n]", lambda m: _ESCAPES[m.group(0)], value) if "\\" in value else value


def parse(text: str, time: float) -> Scrape:
    """Samples of a Prometheus text exposition; comments and lines that are not samples are skipped."""
    series: Series = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        name, labels, value = m.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        parsed = {k: _unescape(v) for k, v in _LABEL.findall(labels)} if labels else {}
        series.setdefault(name, []).append((parsed, number))
    return Scrape(time, series)


def bucket_delta(new: list[tuple[float, float]], old: list[tuple[float, float]] | None) -> list[tuple[float, float]]:
    """Cumulative counts observed between two scrapes (all of `new` if the server restarted or `old` is None)."""
    if not old:
        return new
    before = dict(old)
    delta = [(le, n - before.get(le, 0.0)) for le, n in new]
    return new if any(d < 0 for _, d in delta) else delta


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative buckets sorted by bound, +Inf last; None with no observations."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, cum in buckets:
        if cum >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bound: that bound is all that is known
            if cum == below:
                return le
            return lower + (le - lower) * (rank - below) / (cum - below)
        lower, below = le, cum
    return lower


class Window:
    """The scrapes of the last `span_s` seconds; rates over the last `rate_s` of them."""

    def __init__(self, span_s: float = 60.0, rate_s: float = 5.0):
        self.span_s, self.rate_s = span_s, rate_s
        self.scrapes: deque[Scrape] = deque()

    def add(self, scrape: Scrape) -> None:
        self.scrapes.append(scrape)
        while len(self.scrapes) > 2 and scrape.time - self.scrapes[1].time >= self.span_s:
            self.scrapes.popleft()

    @property
    def latest(self) -> Scrape | None:
        return self.scrapes[-1] if self.scrapes else None

    def _since(self, seconds: float) -> Scrape | None:
        """The oldest scrape at most `seconds` older than the latest (None with fewer than two)."""
        if len(self.scrapes) < 2:
            return None
        now = self.scrapes[-1].time
        for s in self.scrapes:
            if now - s.time <= seconds and s is not self.scrapes[-1]:
                return s
        return self.scrapes[-2]

    def rate(self, name: str) -> float | None:
        """Per second over the last `rate_s` (None until two scrapes; 0 when the counter went back)."""
        old, new = self._since(self.rate_s), self.latest
        if old is None or new.value(name) is None or new.time <= old.time:
            return None
        return max(0.0, (new.value(name) - (old.value(name) or 0.0)) / (new.time - old.time))

    def delta(self, name: str, label: str) -> dict[str, float]:
        """Growth of a counter per label value over the window (since the server started, with one scrape)."""
        new = self.latest.by_label(name, label) if self.latest else {}
        old = self.scrapes[0].by_label(name, label) if len(self.scrapes) > 1 else {}
        out = {k: v - old.get(k, 0.0) for k, v in new.items()}
        return new if any(v < 0 for v in out.values()) else out

    def histogram(self, name: str) -> list[tuple[float, float]]:
        """Cumulative buckets of what was observed in the window."""
        if self.latest is None:
            return []
        old = self.scrapes[0].buckets(name) if len(self.scrapes) > 1 else None
        return bucket_delta(self.latest.buckets(name), old)
