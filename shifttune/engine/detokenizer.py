"""Incremental detokenization: new text per generated token without re-decoding the whole output.

Decodes a short window of recent tokens twice (with and without the new ones) and emits the
difference; while the tail is an incomplete UTF-8 sequence it waits for more tokens.
"""

from __future__ import annotations

from shifttune.engine.sequence import Sequence

WINDOW = 6


class Detokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.offsets: dict[str, tuple[int, int]] = {}  # request id -> (prefix offset, read offset)

    def update(self, seq: Sequence) -> str:
        """Appends the text of newly generated tokens to seq.output_text and returns it."""
        if self.tokenizer is None:
            return ""
        out = seq.output_token_ids
        prefix, read = self.offsets.get(seq.request_id, (0, 0))
        decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        old_text = decode(out[prefix:read])
        new_text = decode(out[prefix:])
        if new_text.endswith("\ufffd") or len(new_text) <= len(old_text):
            return ""
        delta = new_text[len(old_text) :]
        self.offsets[seq.request_id] = (max(read, len(out) - WINDOW), len(out))
        seq.output_text += delta
        return delta

    def finalize(self, seq: Sequence) -> None:
        """At the end, the full decode, including any tail that was held back as incomplete UTF-8."""
        if self.tokenizer is not None:
            seq.output_text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=True)

    def release(self, request_id: str) -> None:
        self.offsets.pop(request_id, None)
