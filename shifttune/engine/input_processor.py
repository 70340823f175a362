"""Requests in: the model's tokenizer, and turning a prompt + SamplingParams into token ids the engine
can run to the end, or one ConfigError naming the field at fault.

The engine runs it in `add_request`; a server's front end runs its own copy before anything is queued,
so a bad request is refused while the client still waits for the response's status.
"""

from __future__ import annotations

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.sampling_params import SamplingParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def load_tokenizer(config: EngineConfig):
    """The model directory's HF tokenizer, or None when it has none (token-id prompts only)."""
    path = config.model_path
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer  # NOTE: lazy: transformers takes seconds to import

    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # e.g. only tokenizer.model, and no sentencepiece installed
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load the tokenizer in {path}: {first}", field="model") from None


def check_text(text: str, field: str) -> None:
    """ConfigError if `text` cannot be UTF-8 encoded (a lone surrogate, as JSON's "\\ud800" gives)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ConfigError(f"is not valid Unicode text ({e.reason} at character {e.start})", field=field) from None


def chat_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                template_kwargs: dict | None = None) -> tuple[str, list[int]]:  # fmt: skip
    """(text, token ids) of a conversation through the tokenizer's chat template ({"role", "content"} dicts, content
    a string or OpenAI's text parts); ConfigError where the model has no template, a message holds other content, or
    the template refuses the messages. `template_kwargs`: more variables for the template (vLLM's
    chat_template_kwargs, e.g. Qwen3's enable_thinking)."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ConfigError("this model has no chat template; send plain prompts (LLM.generate, /v1/completions)",
                          "messages")  # fmt: skip
    messages = [m | {"content": _message_text(m, i)} if isinstance(m, dict) else m for i, m in enumerate(messages)]
    try:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False,
                                             **(template_kwargs or {}))  # fmt: skip
    except Exception as e:  # a template that raises on these messages (e.g. roles out of order)
        raise ConfigError(f"the chat template refused these messages: {e}", field="messages") from None
    check_text(text, "messages")
    return text, tokenizer.encode(text, add_special_tokens=False)  # NOTE: the template wrote any BOS itself


def _message_text(message: dict, index: int) -> str:
    """A message's content as text: a string, or OpenAI's text parts joined (a template would print the list)."""
    content, where = message.get("content"), f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if content is None:
        raise ConfigError(f"{where} is missing: only text messages are served (no tool calls)", "messages")
    if not isinstance(content, (list, tuple)):
        raise ConfigError(f"{where} must be a string or a list of text parts, got {type(content).__name__}",
                          "messages")  # fmt: skip
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a {kind!r} part" if kind != "text" else "a text part with no text"
            raise ConfigError(f"{where}[{j}] is {what}: only text parts are served", "messages")
    return "".join(part["text"] for part in content)


class InputProcessor:
    def __init__(self, config: EngineConfig, tokenizer):
        self.config, self.tokenizer = config, tokenizer
        self.vocab_size = config.model_config.vocab_size
        self.eos_token_ids = set(config.model_config.eos_token_ids)

    def __call__(self, prompt: str | list[int], params: SamplingParams) -> tuple[str | None, list[int]]:
        """(prompt text or None, token ids)."""
        if not isinstance(params, SamplingParams):
            raise ConfigError(f"must be a SamplingParams, got {type(params).__name__}", field="sampling_params")
        params.validate()  # again: a field may have been set to a wrong value since it was built
        text, ids = self._tokenize(prompt)
        self._check_fits(ids, params)
        return text, ids

    def _tokenize(self, prompt) -> tuple[str | None, list[int]]:
        vocab = self.vocab_size
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ConfigError(f"model {self.config.model!r} has no tokenizer; pass token ids", field="prompt")
            check_text(prompt, "prompt")
            text, ids = prompt, self.tokenizer.encode(prompt)
        elif isinstance(prompt, (list, tuple)):
            text, ids = None, list(prompt)
            if any(isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in ids):
                raise ConfigError(f"token ids must be integers in [0, {vocab})", field="prompt")
        else:
            raise ConfigError(f"must be a string or a list of token ids, not {type(prompt).__name__}", field="prompt")
        if not ids:
            raise ConfigError("is empty", field="prompt")
        return text, ids

    def _check_fits(self, ids: list[int], params: SamplingParams) -> None:
        """What SamplingParams cannot check alone: the vocabulary and the context length."""
        vocab, max_len = self.vocab_size, self.config.max_model_len
        if params.stop and self.tokenizer is None:
            raise ConfigError("stop strings are matched on text, and this model has no tokenizer; use stop_token_ids",
                              field="stop")  # fmt: skip
        if any(not 0 <= t < vocab for t in params.stop_token_ids):
            raise ConfigError(f"must be in [0, {vocab})", field="stop_token_ids")
        if params.logprobs is not None and params.logprobs > vocab:
            raise ConfigError(f"must be at most the vocabulary size {vocab}", field="logprobs")
        banned = set(params.stop_token_ids) | (set() if params.ignore_eos else self.eos_token_ids)
        if params.min_tokens and len(banned) >= vocab:
            raise ConfigError("with stop_token_ids and EOS masking every token, nothing can be sampled", "min_tokens")
        if len(ids) >= max_len:
            raise ConfigError(
                f"has {len(ids)} tokens but the model context (max_model_len) is {max_len}; "
                "it must leave room for at least one generated token",
                field="prompt",
            )
