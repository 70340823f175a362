"""A tokenizer for making prompts: exact token counts and random token ids, nothing more.

Reads a `tokenizer.json` with the light `tokenizers` library when the directory has one, else
falls back to transformers' AutoTokenizer (loaded lazily: it is slow to import).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shifttune.config import ConfigError, resolve_model_path


@dataclass
class BenchTokenizer:
    name: str
    vocab_size: int
    special_ids: frozenset[int]
    encode: Callable[[str], list[int]]  # without special tokens
    _pool: list[int] = field(default_factory=list, repr=False)  # ids random prompts draw from

    def count(self, text: str) -> int:
        return len(self.encode(text))

    def random_ids(self, n: int, rng: random.Random) -> list[int]:
        """n token ids drawn uniformly from the vocabulary, special tokens excluded."""
        if not self._pool:
            self._pool = [i for i in range(self.vocab_size) if i not in self.special_ids]
        return rng.choices(self._pool, k=n)


def default_tokenizer_name(model: str | None) -> str | None:
    """The model's own name when it resolves locally (a directory or a bundled model such as tiny)."""
    if model is None:
        return None
    try:
        resolve_model_path(model)
    except ConfigError:
        return None
    return model


def load_tokenizer(name: str) -> BenchTokenizer:
    try:
        path = resolve_model_path(name)
    except ConfigError as e:
        raise ConfigError(e.message, "tokenizer") from None
    if (path / "tokenizer.json").is_file():
        return _from_tokenizers(name, path / "tokenizer.json")
    return _from_transformers(name, path)


def _from_tokenizers(name: str, file: Path) -> BenchTokenizer:
    from tokenizers import Tokenizer  # NOTE: lazy: only commands that make prompts need it

    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # the library raises plain Exceptions for unreadable files
        raise ConfigError(f"cannot read {file}: {e}", "tokenizer") from None
    special = frozenset(i for i, t in tok.get_added_tokens_decoder().items() if t.special)
    return BenchTokenizer(
        name, tok.get_vocab_size(with_added_tokens=True), special,
        lambda text: tok.encode(text, add_special_tokens=False).ids,
    )  # fmt: skip


def _from_transformers(name: str, path: Path) -> BenchTokenizer:
    if not any((path / f).is_file() for f in ("tokenizer.model", "tokenizer_config.json", "vocab.json")):
        raise ConfigError(f"{path} has no tokenizer files (tokenizer.json, tokenizer.model, ...)", "tokenizer")
    from transformers import AutoTokenizer  # NOTE: lazy: slow to import, and only needed without tokenizer.json

    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # transformers raises many types for unusable directories
        raise ConfigError(f"cannot load the tokenizer in {path}: {e}", "tokenizer") from None
    return BenchTokenizer(
        name, len(tok), frozenset(tok.all_special_ids), lambda text: tok.encode(text, add_special_tokens=False)
    )
