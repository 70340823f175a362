"""The OpenAI API's request and response bodies (pydantic, OpenAI's field names), as `/openapi.json` shows them.

Requests take OpenAI's fields plus the vLLM extensions benchmarks rely on (`ignore_eos`, `min_tokens`,
`top_k`, `stop_token_ids`). Fields this engine does not implement (penalties, structured outputs, tools, vLLM's
other sampling and chat-template extensions) are accepted only at their neutral value, so a request never silently
gets something other than what it asked for; fields neither OpenAI nor vLLM has are ignored. `null` for a field
that has a default means that default, as OpenAI's nullable fields do.
"""

from __future__ import annotations

import json
import time
import types
import uuid
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shifttune.config import MAX_SHIFT_THRESHOLD


class OpenAIModel(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _unsupported(*neutral: object) -> Any:
    """A field this server refuses (400) unless it is null or one of `neutral` (`refused_unless_neutral`)."""
    allowed = " or ".join(["null", *(json.dumps(v) for v in neutral)])
    return Field(default=None, description=f"Not supported: refused (400) unless {allowed}.",
                 json_schema_extra={"neutral": list(neutral)})  # fmt: skip


def refused_unless_neutral(model: type[BaseModel]) -> tuple[tuple[str, tuple], ...]:
    """(field, its neutral values) of each `_unsupported` field of `model`."""
    return tuple((name, tuple(f.json_schema_extra["neutral"])) for name, f in model.model_fields.items()
                 if isinstance(f.json_schema_extra, dict) and "neutral" in f.json_schema_extra)  # fmt: skip


def _refuses_null(f) -> bool:
    return f.annotation is not Any and types.NoneType not in get_args(f.annotation) and f.annotation is not None


class StreamOptions(OpenAIModel):
    include_usage: bool = False


class SamplingFields(OpenAIModel):
    """What completions and chat completions share."""

    @model_validator(mode="before")
    @classmethod
    def null_is_default(cls, data: Any) -> Any:
        """A field sent as null that does not take null (OpenAI's nullable `temperature`, `n`, `stream`, ...) gets
        its default."""
        if isinstance(data, dict):
            fields = cls.model_fields
            data = {k: v for k, v in data.items() if not (v is None and k in fields and _refuses_null(fields[k]))}
        return data

    model: str | None = None
    max_tokens: int | None = Field(default=None, description="Tokens to generate; default: up to the context.")
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    # vLLM extensions
    top_k: int = -1
    min_p: float = 0.0
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] | None = None
    # refused unless neutral (serving.UNSUPPORTED): a client asking for these must not get plain text silently
    response_format: Any = _unsupported({"type": "text"})
    tools: Any = _unsupported([])
    tool_choice: Any = _unsupported("none")
    functions: Any = _unsupported([])
    function_call: Any = _unsupported("none")
    structured_outputs: Any = _unsupported()
    guided_json: Any = _unsupported()
    guided_regex: Any = _unsupported()
    guided_choice: Any = _unsupported()
    guided_grammar: Any = _unsupported()
    repetition_penalty: Any = _unsupported(1.0)
    length_penalty: Any = _unsupported(1.0)
    use_beam_search: Any = _unsupported(False)
    allowed_token_ids: Any = _unsupported()
    bad_words: Any = _unsupported([])
    logits_processors: Any = _unsupported()
    include_stop_str_in_output: Any = _unsupported(False)
    skip_special_tokens: Any = _unsupported(True)
    spaces_between_special_tokens: Any = _unsupported(True)
    truncate_prompt_tokens: Any = _unsupported()
    prompt_logprobs: Any = _unsupported()
    priority: Any = _unsupported(0)


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = 16  # OpenAI's default for completions
    logprobs: int | None = Field(default=None, description="Top logprobs per token (0: the sampled one only).")
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ContentPart(OpenAIModel):
    type: str  # only "text" is served (`input_processor.chat_prompt` refuses the others by name)
    text: str | None = None


class ChatMessage(OpenAIModel):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[ContentPart] | None = None  # None: refused by name (an assistant's tool calls carry none)
    name: str | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    add_generation_prompt: bool = True
    echo: Any = _unsupported(False)
    continue_final_message: Any = _unsupported(False)
    chat_template: Any = _unsupported()
    chat_template_kwargs: dict[str, Any] | None = None  # more variables for the template (Qwen3's enable_thinking)
    documents: Any = _unsupported()


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top_logprobs: list[dict[str, float]] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = []


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] = []


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: _id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: UsageInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "shifttune"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class PolicyUpdate(OpenAIModel):
    """Body of POST /v1/shifttune/policy: the shift policy and/or threshold, applied between two steps."""

    policy: Literal["threshold", "profile", "tp", "sp"] | None = None
    threshold: int | None = Field(default=None, ge=0, le=MAX_SHIFT_THRESHOLD)


class PolicyState(BaseModel):
    policy: str
    threshold: int


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class ErrorResponse(BaseModel):
    error: ErrorInfo
