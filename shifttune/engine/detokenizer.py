"""Incremental detokenization: new text per generated token without re-decoding the whole output.

Decodes a short window of recent tokens twice (with and without the new ones) and emits the
difference; while the tail is an incomplete UTF-8 sequence it waits for more tokens. The window
starts inside the prompt: SentencePiece tokenizers (Llama 2, Mistral) drop the leading space of the
first token of a decode, so the first output token is decoded after a few prompt tokens.
"""

from __future__ import annotations

from shifttune.engine.sequence import Sequence

WINDOW = 6


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.offsets: dict[str, tuple[int, int]] = {}  # request id -> (prefix offset, read offset) in token_ids

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _start(self, seq: Sequence) -> tuple[int, int]:
        return max(0, seq.num_prompt_tokens - WINDOW), seq.num_prompt_tokens

    def update(self, seq: Sequence) -> str:
        """Appends the text of newly generated tokens to seq.output_text and returns it."""
        if self.tokenizer is None:
            return ""
        ids = seq.token_ids
        prefix, read = self.offsets.get(seq.request_id) or self._start(seq)
        old_text = self._decode(ids[prefix:read])
        new_text = self._decode(ids[prefix:])
        if new_text.endswith("\ufffd") or len(new_text) <= len(old_text):
            return ""
        delta = new_text[len(old_text) :]
        self.offsets[seq.request_id] = (max(read, len(ids) - WINDOW), len(ids))
        seq.output_text += delta
        return delta

    def finalize(self, seq: Sequence, without_last: bool = False) -> None:
        """At the end, the full decode (after the same prompt context), including any tail that was held
        back as incomplete UTF-8; `without_last`: not the last token's text (the stop token that ended it, as vLLM
        leaves it out)."""
        if self.tokenizer is not None:
            prefix, read = self._start(seq)
            context = self._decode(seq.token_ids[prefix:read])
            end = len(seq.token_ids) - 1 if without_last else len(seq.token_ids)
            seq.output_text = self._decode(seq.token_ids[prefix:end])[len(context) :]

    def release(self, request_id: str) -> None:
        self.offsets.pop(request_id, None)
