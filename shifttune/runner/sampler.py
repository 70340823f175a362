"""Token sampling for a whole step on the runner, in a fixed number of launches whatever the batch and its
mix of greedy, random and seeded requests: min_tokens masking, top-k (one bounded `topk`), temperature,
top-p (a sort-free cut), min-p and the draw in kernels that also move the rows' step counters on and write
each token where the next step's inputs take it (`kernels/sampling.py` on GPU, one launch for an all-greedy
batch; the torch reference on CPU), logprobs. Nothing here waits for the device.

Randomness is counter-based: the noise of a request at its n-th output token for vocabulary entry v is a
hash of (its seed, n, v), so a seeded request yields the same tokens alone or anywhere in any batch.
NOTE: every rank samples from the same logits (`compute_logits` returns them whole on every rank) and
the draw is deterministic, so every rank holds the step's tokens without a broadcast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shifttune.kernels.sampling_ref import sample_ref
from shifttune.kernels.upload import to_device


@dataclass(frozen=True)
class RequestSampling:
    """A request's sampling settings as the runner keeps them (the engine resolves them once)."""

    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = -1  # -1: off
    min_p: float = 0.0
    seed: int = 0
    min_tokens: int = 0
    banned_before_min: tuple[int, ...] = ()  # stop token ids (and EOS unless ignored) while under min_tokens
    logprobs: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Logprob(float):
    """A token's log probability, as vLLM's `Logprob` too: `.logprob` (the value), `.rank` (1: the likeliest token),
    `.decoded_token` (its text, set by `LLM`; None elsewhere). NOTE: a float, so code that reads logprobs as numbers
    (sums, comparisons, JSON) and code written for vLLM both work."""

    __slots__ = ("rank", "decoded_token")

    def __new__(cls, logprob: float, rank: int | None = None, decoded_token: str | None = None):
        self = super().__new__(cls, logprob)
        self.rank, self.decoded_token = rank, decoded_token
        return self

    @property
    def logprob(self) -> float:
        return float(self)

    def __reduce__(self):
        return Logprob, (float(self), self.rank, self.decoded_token)

    def __repr__(self) -> str:
        return f"Logprob(logprob={float(self)!r}, rank={self.rank!r}, decoded_token={self.decoded_token!r})"


@dataclass
class SamplerOutput:
    tokens: torch.Tensor  # [k] int64 on the device
    chosen_logprobs: torch.Tensor | None = None  # [k] logprob of each sampled token
    chosen_ranks: torch.Tensor | None = None  # [k] int64 its rank in the row (1: the likeliest)
    top_logprobs: torch.Tensor | None = None  # [k, max logprobs asked]
    top_ids: torch.Tensor | None = None
    errors: dict[int, str] | None = None  # row -> why that row could not be sampled (it got token 0)


class Sampler:
    """Per-row settings live in device tensors indexed by the persistent batch's rows (`set_row`)."""

    def __init__(self, max_rows: int, device: torch.device, kernels: bool | None = None):
        self.device = device
        self.kernels = device.type == "cuda" if kernels is None else kernels  # Triton kernels (tests: interpreted)
        self.settings: list[RequestSampling | None] = [None] * max_rows
        self.num_sampled = [0] * max_rows  # output tokens so far, host copy (min_tokens masking)
        f32, i64 = dict(dtype=torch.float32, device=device), dict(dtype=torch.int64, device=device)
        self.inv_temp, self.top_p, self.min_p = (torch.ones(max_rows, **f32), torch.ones(max_rows, **f32),
                                                 torch.zeros(max_rows, **f32))  # fmt: skip
        self.top_k, self.seed, self.step = (torch.zeros(max_rows, **i64) for _ in range(3))
        self.greedy = torch.ones(max_rows, dtype=torch.bool, device=device)

    def set_rows(self, rows: list[int], settings: list[RequestSampling], num_sampled: list[int]) -> None:
        """Takes in new requests (one upload for all of them)."""
        if not rows:
            return
        for r, s, n in zip(rows, settings, num_sampled):
            self.settings[r], self.num_sampled[r] = s, n
        inv_temp = [1.0 / s.temperature if s.temperature else 1.0 for s in settings]
        floats = to_device([inv_temp, [s.top_p for s in settings], [s.min_p for s in settings]], torch.float32,
                           self.device)  # fmt: skip
        ints = to_device([rows, [s.top_k for s in settings], [s.seed for s in settings], num_sampled,
                          [int(s.greedy) for s in settings]], torch.int64, self.device)  # fmt: skip
        index = ints[0]
        self.inv_temp[index], self.top_p[index], self.min_p[index] = floats
        self.top_k[index], self.seed[index], self.step[index] = ints[1], ints[2], ints[3]
        self.greedy[index] = ints[4].bool()

    def release(self, row: int) -> None:
        self.settings[row] = None

    @torch.inference_mode()
    def __call__(
        self, logits: torch.Tensor, rows: list[int], rows_dev: torch.Tensor, last_token: torch.Tensor | None = None
    ) -> SamplerOutput:
        """logits [k, V] of the sampling rows `rows` (host list; `rows_dev` the same on the device), in the
        model's dtype. `last_token`: each token is also written at its row there (the next step's input)."""
        try:
            return self._sample(logits, rows, rows_dev, last_token)
        except Exception:
            pass
        # NOTE: one request must not stop every other: sample row by row, and fail only the rows that fail.
        parts, errors = [], {}
        for i, r in enumerate(rows):
            try:
                parts.append(self._sample(logits[i : i + 1], [r], rows_dev[i : i + 1], last_token))
            except Exception as e:
                errors[i] = f"{type(e).__name__}: {e}"
                parts.append(SamplerOutput(torch.zeros(1, dtype=torch.int64, device=logits.device)))
        out = SamplerOutput(torch.cat([p.tokens for p in parts]), errors=errors)
        if last_token is not None:
            last_token[rows_dev] = out.tokens  # the failed rows' token 0 too
        k = max((p.top_ids.shape[1] for p in parts if p.top_ids is not None), default=0)
        if any(p.chosen_logprobs is not None for p in parts):
            nan = torch.full((1,), float("nan"), device=logits.device)
            out.chosen_logprobs = torch.cat([nan if p.chosen_logprobs is None else p.chosen_logprobs for p in parts])
            zero = torch.zeros(1, dtype=torch.int64, device=logits.device)
            out.chosen_ranks = torch.cat([zero if p.chosen_ranks is None else p.chosen_ranks for p in parts])
        if k:

            def pad(x, fill, dtype):
                full = torch.full((1, k), fill, dtype=dtype, device=logits.device)
                return full if x is None else torch.cat([x, full[:, x.shape[1] :]], dim=1)

            out.top_logprobs = torch.cat([pad(p.top_logprobs, float("-inf"), torch.float32) for p in parts])
            out.top_ids = torch.cat([pad(p.top_ids, 0, torch.int64) for p in parts])
        return out

    def _sample(
        self, logits: torch.Tensor, rows: list[int], rows_dev: torch.Tensor, last_token: torch.Tensor | None
    ) -> SamplerOutput:
        if not self.kernels:
            logits = logits.float()  # the torch reference runs in float32 (the kernels widen on load)
        settings = [self.settings[r] for r in rows]
        want = [s.logprobs for s in settings]
        raw = torch.log_softmax(logits, dim=-1, dtype=torch.float32) if any(w is not None for w in want) else None
        logits = self._mask_min_tokens(logits, rows, settings)
        k_top = max((w or 0 for w in want if w is not None), default=0)
        top = raw.topk(k_top, dim=-1) if raw is not None and k_top else None  # before the draw moves steps on
        if self.kernels:
            from shifttune.kernels.sampling import greedy_sample, sample  # NOTE: lazy: Triton is GPU-only here

            # the kernels read the settings at rows_dev themselves, move the steps on and write last_token
            if all(s.greedy for s in settings):
                tokens = greedy_sample(logits, rows_dev, self.step, advance=True, last_token=last_token)
            else:
                tokens = sample(logits, rows_dev, self.inv_temp, self._cut_k(logits, settings, rows_dev), self.top_p,
                                self.min_p, self.seed, self.step, self.greedy, advance=True,
                                last_token=last_token)  # fmt: skip
        else:
            if all(s.greedy for s in settings):
                tokens = logits.argmax(dim=-1)
            else:
                cut_k = self._cut_k(logits, settings, rows_dev)
                if cut_k is None:
                    cut_k = torch.full((len(rows),), -torch.inf, device=logits.device)
                tokens = sample_ref(logits, self.inv_temp[rows_dev], cut_k, self.top_p[rows_dev],
                                    self.min_p[rows_dev], self.seed[rows_dev], self.step[rows_dev],
                                    self.greedy[rows_dev])  # fmt: skip
            self.step[rows_dev] += 1
            if last_token is not None:
                last_token[rows_dev] = tokens
        out = SamplerOutput(tokens)
        if raw is not None:
            out.chosen_logprobs = raw.gather(1, tokens.unsqueeze(1)).squeeze(1)
            out.chosen_ranks = (raw > out.chosen_logprobs.unsqueeze(1)).sum(dim=1) + 1
        if top is not None:
            out.top_logprobs, out.top_ids = top.values, top.indices
        for r in rows:
            self.num_sampled[r] += 1
        return out

    def _cut_k(
        self, logits: torch.Tensor, settings: list[RequestSampling], rows_dev: torch.Tensor
    ) -> torch.Tensor | None:
        """[k] float32 the top-k cut of each row (-inf where the row has none), or None when no row has top-k:
        one bounded `topk` for the batch."""
        k_max = min(max((s.top_k for s in settings if s.top_k > 0), default=0), logits.shape[1])
        if not k_max:
            return None
        top_k = self.top_k[rows_dev]
        kth = logits.topk(k_max, dim=-1).values.float()
        kth = kth.gather(1, (top_k.clamp(1, k_max) - 1).unsqueeze(1)).squeeze(1)
        return torch.where(top_k > 0, kth, -torch.inf)

    def _mask_min_tokens(self, logits: torch.Tensor, rows: list[int], settings: list[RequestSampling]) -> torch.Tensor:
        """The logits, or a copy with the stop tokens of rows under their min_tokens at -inf."""
        index: list[list[int]] = [[], []]
        for i, (r, s) in enumerate(zip(rows, settings)):
            if self.num_sampled[r] < s.min_tokens:
                index[0] += [i] * len(s.banned_before_min)
                index[1] += s.banned_before_min
        if not index[0]:
            return logits
        at = to_device(index, torch.int64, logits.device)
        logits = logits.clone()
        logits[at[0], at[1]] = float("-inf")
        return logits


def logprobs_dicts(tokens: list[int], chosen: list[float] | None, ranks: list[int] | None, top_vals, top_ids,
                   want: list[int | None]) -> list[dict[int, Logprob] | None]:  # fmt: skip
    """{token: Logprob} per row (host lists): the sampled token first, then the row's top `logprobs` (ranks 1, 2,
    ...)."""
    out: list[dict[int, Logprob] | None] = [None] * len(want)
    if chosen is None:
        return out
    for i, w in enumerate(want):
        if w is not None:
            top = {t: Logprob(v, j + 1) for j, (t, v) in enumerate(zip(top_ids[i][:w], top_vals[i][:w]))} if w else {}
            out[i] = {tokens[i]: Logprob(chosen[i], ranks[i])} | top
    return out
