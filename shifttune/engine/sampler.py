"""Token sampling for a whole batch in a fixed number of tensor ops, whatever its mix of greedy, random
and seeded requests: temperature, top-k, top-p (after top-k), min-p, min_tokens masking, logprobs.

Randomness is counter-based: the noise of request r at its n-th output token for vocabulary entry v
is a hash of (r's seed, n, v), so a seeded request yields the same tokens alone or anywhere in any
batch, and no per-request generator is kept. A token is drawn by the Gumbel-max trick
(argmax of logits / T + Gumbel noise) over the tokens the filters keep. Unseeded requests get a seed
drawn for them at their first step. Top-k and top-p work on a bounded candidate set (`torch.topk`);
only a row whose nucleus is larger than the candidates falls back to a full sort.
"""

from __future__ import annotations

import random

import torch

from shifttune.engine.sequence import Sequence
from shifttune.kernels.sampling_ref import gumbel_argmax_ref

TOP_P_CANDIDATES = 4096  # top-p looks at this many of the likeliest tokens; rows that need more sort fully


def filter_logits(
    logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor, k_max: int, use_p: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Masks (-inf) what top-k, then top-p on what top-k left, then min-p remove, per row (top_k = V: off;
    k_max: the largest top_k in use). Also returns, when top-p is in use, a per-row flag: the nucleus runs
    past the candidates, so the row needs `full_sort_top_p`."""
    vocab = logits.shape[1]
    k_cap = min(vocab, max(k_max, TOP_P_CANDIDATES if use_p else 1))
    cand = logits.topk(k_cap, dim=-1).values  # sorted, descending
    cut_k = torch.where(top_k < vocab, cand.gather(1, (top_k.clamp(max=k_cap) - 1).unsqueeze(1)).squeeze(1), -torch.inf)
    logits = logits.masked_fill(logits < cut_k.unsqueeze(1), -torch.inf)
    short = None
    if use_p:  # keep a token while the mass of the likelier ones is < top_p
        cand = cand.masked_fill(cand < cut_k.unsqueeze(1), -torch.inf)
        probs = (cand - logits.logsumexp(dim=-1, keepdim=True)).exp()
        keep = (probs.cumsum(dim=-1) - probs) < top_p.unsqueeze(1)
        cut_p = cand.masked_fill(~keep, torch.inf).min(dim=-1).values
        logits = logits.masked_fill((logits < cut_p.unsqueeze(1)) & (top_p < 1).unsqueeze(1), -torch.inf)
        short = keep[:, -1] & (probs.sum(dim=-1) < top_p) & (top_p < 1) if k_cap < vocab else None
    floor = logits.max(dim=-1, keepdim=True).values + torch.log(min_p.clamp(min=1e-30)).unsqueeze(1)
    return logits.masked_fill((logits < floor) & (min_p > 0).unsqueeze(1), -torch.inf), short


def full_sort_top_p(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Top-p over the whole vocabulary (the rare rows whose nucleus is larger than the candidates)."""
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    drop = (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
    return torch.empty_like(logits).scatter_(1, order, sorted_logits.masked_fill(drop, float("-inf")))


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...], seed: int = 0):
        self.eos_token_ids = list(eos_token_ids)
        self._rng = random.Random(seed)
        self.seeds: dict[str, int] = {}  # seeds drawn for requests that gave none

    def release(self, request_id: str) -> None:
        self.seeds.pop(request_id, None)

    def _seed(self, seq: Sequence) -> int:
        if seq.params.seed is not None:
            return seq.params.seed
        return self.seeds.setdefault(seq.request_id, self._rng.getrandbits(63))

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[dict[int, float] | None]]:
        """logits: [n, V] on the driver's device, one row per sequence. Returns tokens and per-row logprobs.
        Host syncs: reading those back, and with top-p whether any nucleus ran past the candidates."""
        vocab, dev = logits.shape[1], logits.device
        logits = logits.float()
        want = [s.params.logprobs for s in seqs]
        raw = torch.log_softmax(logits, dim=-1) if any(w is not None for w in want) else None
        self._mask_min_tokens(logits, seqs)
        greedy_tokens = logits.argmax(dim=-1)
        p = [s.params for s in seqs]
        tokens = greedy_tokens
        if not all(x.greedy for x in p):
            floats = torch.tensor([[x.temperature or 1.0 for x in p], [x.top_p for x in p], [x.min_p for x in p],
                                  [float(x.greedy) for x in p]], dtype=torch.float32)  # fmt: skip
            ints = torch.tensor([[x.top_k if x.top_k > 0 else vocab for x in p], [self._seed(s) for s in seqs],
                                 [s.num_output_tokens for s in seqs]], dtype=torch.int64)  # fmt: skip
            temps, top_p, min_p, is_greedy = floats.to(dev, non_blocking=True)
            top_k, seeds, steps = ints.to(dev, non_blocking=True)
            k_max = max((x.top_k for x in p if x.top_k > 0), default=1)
            scaled, short = filter_logits(logits / temps.unsqueeze(1), top_k, top_p, min_p, k_max,
                                          any(x.top_p < 1 for x in p))  # fmt: skip
            if short is not None and bool(short.any()):  # a host sync, only with top-p on a flat distribution
                rows = short.nonzero().squeeze(1)
                scaled[rows] = full_sort_top_p(scaled[rows], top_p[rows])
            tokens = torch.where(is_greedy.bool(), greedy_tokens, self._draw(scaled, seeds, steps))
        token_list = tokens.tolist()
        return token_list, self._logprobs(raw, tokens, token_list, want)

    @staticmethod
    def _draw(scaled: torch.Tensor, seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        if scaled.is_cuda:
            from shifttune.kernels.sampling import gumbel_argmax  # NOTE: lazy: Triton is GPU-only here

            return gumbel_argmax(scaled, seeds, steps)
        return gumbel_argmax_ref(scaled, seeds, steps)

    def _mask_min_tokens(self, logits: torch.Tensor, seqs: list[Sequence]) -> None:
        rows, cols = [], []
        for i, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens:
                banned = s.params.stop_token_ids + ([] if s.params.ignore_eos else self.eos_token_ids)
                rows += [i] * len(banned)
                cols += banned
        if rows:
            index = torch.tensor([rows, cols], dtype=torch.int64).to(logits.device, non_blocking=True)
            logits[index[0], index[1]] = float("-inf")

    @staticmethod
    def _logprobs(raw, tokens: torch.Tensor, token_list: list[int], want: list[int | None]):
        """{token: logprob} per row: the sampled token and the row's top `logprobs` (one topk for all rows)."""
        out: list[dict[int, float] | None] = [None] * len(want)
        if raw is None:
            return out
        k = max(w or 0 for w in want if w is not None)
        chosen = raw.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
        top = raw.topk(k, dim=-1) if k else None
        top_ids, top_vals = (top.indices.tolist(), top.values.tolist()) if top is not None else ([], [])
        for i, w in enumerate(want):
            if w is not None:
                out[i] = {token_list[i]: chosen[i]} | (dict(zip(top_ids[i][:w], top_vals[i][:w])) if w else {})
        return out
