"""SamplingParams with vLLM's field names, validated on construction and again when a request is added (a field
may have been changed since): a request that passes here never breaks the sampler (NaN or overflowing temperatures,
seeds a generator refuses, wrong types)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from shifttune.config import ConfigError, is_int, is_number

GREEDY_BELOW = 1e-5  # as vLLM: smaller temperatures overflow the logits; they mean greedy
SEED_RANGE = (0, 2**63 - 1)
CUMULATIVE, DELTA = "cumulative", "delta"  # what each step's output holds: everything so far, or what is new


UNSUPPORTED = {"presence_penalty": 0.0, "frequency_penalty": 0.0, "repetition_penalty": 1.0,
               "include_stop_str_in_output": False, "skip_special_tokens": True, "spaces_between_special_tokens": True,
               "detokenize": True, "prompt_logprobs": None}  # fmt: skip


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) means all tokens
    min_p: float = 0.0  # drop tokens less likely than min_p x the likeliest
    seed: int | None = None
    max_tokens: int | None = 16  # None: up to the model's context length
    min_tokens: int = 0
    stop: list[str] | str | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top logprobs to return per token (plus the sampled one)
    output_kind: str = CUMULATIVE  # DELTA: each step's output holds only the new tokens and text (streaming)
    n: int = 1  # vLLM's completions per prompt; only 1
    # vLLM's fields this engine does not implement: accepted at the value that changes nothing (UNSUPPORTED), so ported
    # code runs; any other value is refused, never silently ignored
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    detokenize: bool = True
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ConfigError naming the first wrong field; normalizes the rest (stop lists, top_k 0, tiny temperatures)."""
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.stop is not None and not isinstance(self.stop, (list, tuple)):
            raise ConfigError("must be a string or a list of strings", field="stop")
        self.stop = list(self.stop or [])
        if self.stop_token_ids is not None and not isinstance(self.stop_token_ids, (list, tuple)):
            raise ConfigError("must be a list of token ids", field="stop_token_ids")
        self.stop_token_ids = list(self.stop_token_ids or [])
        for name, value, rule in self._problems():
            if value:
                raise ConfigError(rule, field=name)
        if self.top_k == 0:
            self.top_k = -1
        self.temperature = float(self.temperature)
        if self.temperature < GREEDY_BELOW:
            self.temperature = 0.0

    def _problems(self):
        """(field, is it wrong, what it must be), checked in order; types first."""
        t, mx, mn = self.temperature, self.max_tokens, self.min_tokens
        yield (
            "temperature",
            not is_number(t) or not math.isfinite(t) or t < 0,
            f"must be a finite number >= 0, got {t!r}",
        )
        yield "top_p", not is_number(self.top_p) or not 0 < self.top_p <= 1, f"must be in (0, 1], got {self.top_p!r}"
        yield "min_p", not is_number(self.min_p) or not 0 <= self.min_p <= 1, f"must be in [0, 1], got {self.min_p!r}"
        yield (
            "top_k",
            not is_int(self.top_k) or self.top_k < -1,
            f"must be -1 (off) or an integer >= 1, got {self.top_k!r}",
        )
        yield "max_tokens", mx is not None and (not is_int(mx) or mx < 1), f"must be an integer >= 1, got {mx!r}"
        yield "min_tokens", not is_int(mn) or mn < 0, f"must be an integer >= 0, got {mn!r}"
        yield "min_tokens", is_int(mx) and mn > mx, f"must be at most max_tokens ({mx}), got {mn!r}"
        seed_ok = self.seed is None or (is_int(self.seed) and SEED_RANGE[0] <= self.seed <= SEED_RANGE[1])
        yield "seed", not seed_ok, f"must be an integer in [0, 2**63 - 1], got {self.seed!r}"
        lp = self.logprobs
        yield "logprobs", lp is not None and (not is_int(lp) or lp < 0), f"must be an integer >= 0, got {lp!r}"
        yield "stop", any(not isinstance(s, str) or not s for s in self.stop), "stop strings must be non-empty strings"
        yield "stop_token_ids", any(not is_int(t) for t in self.stop_token_ids), "must be integers"
        yield "ignore_eos", not isinstance(self.ignore_eos, bool), f"must be true or false, got {self.ignore_eos!r}"
        yield "output_kind", self.output_kind not in (CUMULATIVE, DELTA), f"must be {CUMULATIVE} or {DELTA}"
        yield "n", self.n != 1 or not is_int(self.n), f"must be 1 (one completion per prompt), got {self.n!r}"
        for name, neutral in UNSUPPORTED.items():
            value = getattr(self, name)
            yield (
                name,
                value != neutral or type(value) is not type(neutral) and not (is_number(value) and is_number(neutral)),
                f"is not supported by this engine: only {neutral!r}, got {value!r}",
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
