"""Completions and chat completions: an OpenAI request in, engine requests out, OpenAI responses (whole,
or as server-sent events of per-step deltas) back.

Every check that can refuse a request runs before the first byte is sent, so a bad request is always a
4xx with an OpenAI error body and never a broken stream.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from shifttune.config import ConfigError
from shifttune.engine.input_processor import chat_prompt
from shifttune.engine.sampling_params import DELTA, SamplingParams
from shifttune.engine.sequence import RequestOutput
from shifttune.server.async_engine import AsyncEngine, EngineDeadError
from shifttune.server.logprobs import chat_logprobs, completion_logprobs
from shifttune.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    DeltaMessage,
    SamplingFields,
    UsageInfo,
    refused_unless_neutral,
)
from shifttune.server.streams import merge, tagged


# an error body's `type` by HTTP status, as vLLM names them
ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 405: "MethodNotAllowedError",
               500: "InternalServerError", 503: "ServiceUnavailableError"}  # fmt: skip


def error_body(status: int, message: str, param: str | None = None) -> dict:
    """The `error` object of an OpenAI error body."""
    return {"message": message, "type": ERROR_TYPES.get(status, "Error"), "param": param, "code": status}


class APIError(Exception):
    """Refused with an OpenAI error body."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


MAX_TOP_LOGPROBS = 20  # chat's top_logprobs as OpenAI's API bounds it, completions' logprobs as vLLM's max_logprobs
UNSUPPORTED = (  # (field, neutral values besides null): anything else is refused rather than silently ignored
    ("presence_penalty", (0.0,)),
    ("frequency_penalty", (0.0,)),
    ("logit_bias", ()),
    ("echo", (False,)),
    ("suffix", ()),
)  # and each request model's own `_unsupported` fields (structured outputs, tools, vLLM extensions)


def check_top_logprobs(value: int | None, name: str) -> None:
    if value is not None and not 0 <= value <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}]", name)


def sampling_params(req: SamplingFields, max_tokens: int | None, logprobs: int | None,
                    max_tokens_field: str = "max_tokens") -> SamplingParams:  # fmt: skip
    """The request's SamplingParams; `max_tokens_field`: the field `max_tokens` came from, named when refused."""
    if req.n != 1:
        raise APIError(400, "n must be 1: this server returns one choice per prompt", "n")
    if getattr(req, "best_of", None) not in (None, 1):
        raise APIError(400, "best_of must be 1", "best_of")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed with stream: true", "stream_options")
    for name, neutral in (*UNSUPPORTED, *refused_unless_neutral(type(req))):
        if getattr(req, name, None) not in (None, *neutral):
            raise APIError(400, f"{name} is not supported by this server", name)
    try:
        return SamplingParams(
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            min_p=req.min_p,
            seed=req.seed,
            max_tokens=max_tokens,
            min_tokens=req.min_tokens,
            stop=req.stop,
            stop_token_ids=req.stop_token_ids,
            ignore_eos=req.ignore_eos,
            logprobs=logprobs,
            output_kind=DELTA,
        )
    except ConfigError as e:
        if e.field == "max_tokens":
            e.field = max_tokens_field
        raise APIError(400, str(e), e.field) from None


@dataclass
class Choice:
    """One prompt's request as it runs: what has been generated so far."""

    index: int
    request_id: str
    text_ids: tuple[str | None, list[int]]
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, float]] = field(default_factory=list)
    text_offsets: list[int] = field(default_factory=list)  # per token: the length of the text returned before it
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.text_ids[1])

    def add(self, out: RequestOutput) -> None:
        if out.error is not None:
            raise APIError(500, out.error)
        c = out.outputs[0]
        # NOTE: one token a step, starting where the text returned so far ends (a special token adds no text; a piece
        # of a character, or of what may start a stop string, comes with a later step's text)
        self.text_offsets += [len(self.text)] * len(c.token_ids)
        self.text += c.text
        self.token_ids += c.token_ids
        self.logprobs += c.logprobs or []
        self.finish_reason, self.stop_reason = c.finish_reason, c.stop_reason


class Serving:
    def __init__(self, engine: AsyncEngine, model_name: str, tokenizer, max_model_len: int):
        self.engine, self.model_name, self.tokenizer = engine, model_name, tokenizer
        self.max_model_len = max_model_len

    # ---- preparation (may refuse) -------------------------------------------------------------------
    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise APIError(404, f"model {model!r} does not exist; this server serves {self.model_name!r}", "model")

    def prepare(self, prompts: list, params: SamplingParams, prefix: str, prompt_field: str = "prompt") -> list[Choice]:
        """Every prompt checked, then all of them admitted to the engine's queue (or the request refused);
        `prompt_field`: the request's field the prompts came from (chat's: "messages")."""
        base = f"{prefix}-{uuid.uuid4().hex}"
        choices = []
        for i, prompt in enumerate(prompts):
            try:
                text, ids = self.engine.prepare(prompt, params)
            except ConfigError as e:
                if e.field == "prompt":
                    e.field = prompt_field
                raise APIError(400, str(e), e.field) from None
            if params.max_tokens is not None and len(ids) + params.max_tokens > self.max_model_len:  # as vLLM answers
                raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {len(ids) + params.max_tokens} tokens ({len(ids)} in the prompt, "
                               f"{params.max_tokens} in the completion). Please reduce the length of the prompt or "
                               "completion.", "max_tokens")  # fmt: skip
            choices.append(Choice(i, f"{base}-{i}", (text, ids)))
        self.engine.admit(len(choices))
        for c in choices:
            self.engine.trace.received(c.request_id, c.num_prompt_tokens)
        return choices

    def completion_choices(self, req: CompletionRequest) -> tuple[list[Choice], SamplingParams]:
        self.check_model(req.model)
        check_top_logprobs(req.logprobs, "logprobs")
        params = sampling_params(req, req.max_tokens, req.logprobs)
        prompts = req.prompt
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise APIError(400, "prompt is empty", "prompt")
        choices = self.prepare(prompts, params, "cmpl")
        self.start(choices, params)
        return choices, params

    def chat_choices(self, req: ChatCompletionRequest) -> tuple[list[Choice], SamplingParams]:
        self.check_model(req.model)
        if req.top_logprobs is not None and not req.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        check_top_logprobs(req.top_logprobs, "top_logprobs")
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        if req.max_completion_tokens is not None:  # NOTE: OpenAI's name for max_tokens; 0 is a bound, not "unset"
            params = sampling_params(req, req.max_completion_tokens, logprobs, "max_completion_tokens")
        else:
            params = sampling_params(req, req.max_tokens, logprobs)
        messages = [m.model_dump(include={"role", "content"}) for m in req.messages]
        try:
            text, ids = chat_prompt(self.tokenizer, messages, req.add_generation_prompt, req.chat_template_kwargs)
        except ConfigError as e:
            raise APIError(400, str(e), e.field) from None
        (choice,) = self.prepare([ids], params, "chatcmpl", "messages")
        choice.text_ids = (text, ids)
        self.start([choice], params)
        return [choice], params

    # ---- running ----------------------------------------------------------------------------------
    def start(self, choices: list[Choice], params: SamplingParams) -> None:
        """Sends the admitted choices to the engine; whatever follows must end with `release(choices)`."""
        try:
            for c in choices:
                self.engine.add(c.request_id, *c.text_ids, params)
        except BaseException:
            self.release(choices)
            raise

    def release(self, choices: list[Choice]) -> None:
        """Aborts the choices that have not finished (their response ended early, or never started)."""
        for c in choices:
            self.engine.release(c.request_id)

    def stream(self, choices: list[Choice], params: SamplingParams) -> AsyncIterator[tuple[Choice, RequestOutput]]:
        """Every choice's per-step outputs as they come, interleaved."""
        gens = [self.engine.outputs(c.request_id) for c in choices]
        if len(gens) == 1:
            return tagged(choices[0], gens[0])
        return merge([tagged(c, g) for c, g in zip(choices, gens)])

    async def events(self, choices: list[Choice], params: SamplingParams, to_chunk):
        """The stream's SSE lines; an error once streaming has begun is sent as an error event."""
        try:
            async for choice, out in self.stream(choices, params):
                before = len(choice.token_ids)
                choice.add(out)
                yield to_chunk(choice, out.outputs[0], before)
                if not before and choice.token_ids:  # the chunk with its first token is with the transport now
                    self.engine.trace.mark(choice.request_id, 4)
        except (APIError, EngineDeadError) as e:
            status, message = (e.status, e.message) if isinstance(e, APIError) else (503, str(e))
            yield f"data: {json.dumps({'error': error_body(status, message)})}\n\n"

    async def run_to_end(self, choices: list[Choice], params: SamplingParams) -> None:
        async for choice, out in self.stream(choices, params):
            choice.add(out)

    # ---- responses --------------------------------------------------------------------------------
    def usage(self, choices: list[Choice]) -> UsageInfo:
        prompt = sum(c.num_prompt_tokens for c in choices)
        completion = sum(len(c.token_ids) for c in choices)
        return UsageInfo(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    def completion_response(self, choices: list[Choice], params: SamplingParams) -> CompletionResponse:
        return CompletionResponse(
            model=self.model_name,
            choices=[
                CompletionChoice(
                    index=c.index,
                    text=c.text,
                    logprobs=None
                    if params.logprobs is None
                    else completion_logprobs(self.tokenizer, c.token_ids, c.logprobs, c.text_offsets),
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
                for c in choices
            ],
            usage=self.usage(choices),
        )

    def chat_response(self, choices: list[Choice], params: SamplingParams) -> ChatCompletionResponse:
        return ChatCompletionResponse(
            model=self.model_name,
            choices=[
                ChatChoice(
                    index=c.index,
                    message=AssistantMessage(content=c.text),
                    logprobs=None
                    if params.logprobs is None
                    else chat_logprobs(self.tokenizer, c.token_ids, c.logprobs, params.logprobs),
                    finish_reason=c.finish_reason,
                    stop_reason=c.stop_reason,
                )
                for c in choices
            ],
            usage=self.usage(choices),
        )

    async def completion_events(self, choices: list[Choice], params: SamplingParams, usage: bool):
        """SSE lines: one chunk per step per choice, then the usage chunk if asked, then [DONE]."""
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def to_chunk(choice: Choice, delta, before: int) -> str:
            # NOTE: plain dicts, not pydantic models: this runs for every request at every step
            lp = None
            if params.logprobs is not None:
                ids, lps = choice.token_ids[before:], choice.logprobs[before:]
                lp = completion_logprobs(self.tokenizer, ids, lps, choice.text_offsets[before:]).model_dump()
            choice_dict = {"index": choice.index, "text": delta.text, "logprobs": lp,
                           "finish_reason": delta.finish_reason, "stop_reason": delta.stop_reason}  # fmt: skip
            return _sse({"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                         "choices": [choice_dict], "usage": None})  # fmt: skip

        async for line in self.events(choices, params, to_chunk):
            yield line
        if usage:
            yield _sse(CompletionResponse(id=rid, created=created, model=self.model_name, choices=[],
                                          usage=self.usage(choices)))  # fmt: skip
        yield "data: [DONE]\n\n"

    async def chat_events(self, choices: list[Choice], params: SamplingParams, usage: bool):
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choice_list: list[ChatChunkChoice], usage_info: UsageInfo | None = None) -> str:
            return _sse(ChatCompletionChunk(id=rid, created=created, model=self.model_name, choices=choice_list,
                                            usage=usage_info))  # fmt: skip

        def to_chunk(choice: Choice, delta, before: int) -> str:
            lp = None
            if params.logprobs is not None:
                ids, lps = choice.token_ids[before:], choice.logprobs[before:]
                lp = chat_logprobs(self.tokenizer, ids, lps, params.logprobs).model_dump()
            choice_dict = {"index": choice.index, "delta": {"content": delta.text}, "logprobs": lp,
                           "finish_reason": delta.finish_reason}  # fmt: skip
            return _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name,
                         "choices": [choice_dict], "usage": None})  # fmt: skip

        yield chunk([ChatChunkChoice(index=c.index, delta=DeltaMessage(role="assistant", content="")) for c in choices])
        async for line in self.events(choices, params, to_chunk):
            yield line
        if usage:
            yield chunk([], self.usage(choices))
        yield "data: [DONE]\n\n"


def _sse(chunk) -> str:
    body = chunk if isinstance(chunk, dict) else chunk.model_dump()
    return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"
