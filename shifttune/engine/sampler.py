"""Token sampling on the driver: greedy, temperature, top-k, top-p, per-request seeds, min_tokens, logprobs."""

from __future__ import annotations

import torch

from shifttune.engine.sequence import Sequence


class Sampler:
    def __init__(self, eos_token_ids: tuple[int, ...]):
        self.eos_token_ids = list(eos_token_ids)
        self.generators: dict[str, torch.Generator] = {}

    def release(self, request_id: str) -> None:
        self.generators.pop(request_id, None)

    def _generator(self, seq: Sequence, device: torch.device) -> torch.Generator | None:
        if seq.params.seed is None:
            return None
        if seq.request_id not in self.generators:
            self.generators[seq.request_id] = torch.Generator(device=device).manual_seed(seq.params.seed)
        return self.generators[seq.request_id]

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> tuple[list[int], list[dict[int, float] | None]]:
        """logits: [n, V] on the driver's device, one row per sequence. Returns tokens and per-row logprobs;
        the only host sync is reading those back."""
        logits, dev = logits.float(), logits.device
        raw_logprobs = None
        if any(s.params.logprobs is not None for s in seqs):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        for i, s in enumerate(seqs):
            if s.num_output_tokens < s.params.min_tokens:
                banned = s.params.stop_token_ids + ([] if s.params.ignore_eos else self.eos_token_ids)
                logits[i, banned] = float("-inf")
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, s in enumerate(seqs) if not s.params.greedy]
        if random_rows:
            rows = torch.tensor(random_rows, device=dev)
            temps = torch.tensor([seqs[i].params.temperature for i in random_rows], device=dev).unsqueeze(1)
            probs = self._filter(logits[rows] / temps, [seqs[i] for i in random_rows]).softmax(dim=-1)
            for j, i in enumerate(random_rows):
                tokens[i] = torch.multinomial(probs[j], 1, generator=self._generator(seqs[i], dev))[0]
        token_list = tokens.tolist()
        logprobs: list[dict[int, float] | None] = [None] * len(seqs)
        for i, s in enumerate(seqs):
            if s.params.logprobs is not None:
                top = raw_logprobs[i].topk(s.params.logprobs) if s.params.logprobs else None
                entry = {token_list[i]: raw_logprobs[i, token_list[i]].item()}
                if top is not None:
                    entry |= dict(zip(top.indices.tolist(), top.values.tolist()))
                logprobs[i] = entry
        return token_list, logprobs

    @staticmethod
    def _filter(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        """Masks tokens outside each row's top-k and top-p (nucleus) sets."""
        if all(s.params.top_k <= 0 and s.params.top_p >= 1 for s in seqs):
            return logits
        dev = logits.device
        top_k = torch.tensor([s.params.top_k if s.params.top_k > 0 else logits.shape[1] for s in seqs], device=dev)
        top_p = torch.tensor([s.params.top_p for s in seqs], device=dev)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(logits.shape[1], device=dev).unsqueeze(0)
        sorted_logits = sorted_logits.masked_fill(ranks >= top_k.unsqueeze(1), float("-inf"))
        # top-p on the distribution left after top-k: keep a token while the mass before it is < top_p
        probs = sorted_logits.softmax(dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= top_p.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        return torch.empty_like(logits).scatter_(1, order, sorted_logits)
