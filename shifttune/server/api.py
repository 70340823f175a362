"""The HTTP surface: FastAPI routes of the OpenAI API (`/v1/completions`, `/v1/chat/completions`,
`/v1/models`) and `/health`, `/metrics`, `/version`; shifttune's own `/v1/shifttune/policy` and
`/v1/shifttune/live` (recent steps and requests, for the live views) and `/v1/shifttune/trace` (per-request and
per-step timestamps, `trace.py`); OpenAI-style error bodies for every refusal; the API key; cancelling a request
whose client went away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException

import shifttune
from shifttune.config import ConfigError
from shifttune.server.async_engine import AsyncEngine, EngineDeadError, QueueFullError
from shifttune.server.metrics import CONTENT_TYPE, ServerMetrics
from shifttune.server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    PolicyState,
    PolicyUpdate,
)
from shifttune.server.serving import APIError, Serving, error_body


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorInfo(**error_body(status, message, param)))
    return JSONResponse(body.model_dump(), status_code=status)


class APIKeyMiddleware:
    """With an API key, every /v1/* request without `Authorization: Bearer KEY` gets 401 before anything else
    (its body is not read). Plain ASGI: the endpoints watch `receive` for the client going away."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            if Headers(scope=scope).get("authorization") != self.expected:
                response = error_response(401, "a valid API key is required (Authorization: Bearer <key>)")
                return await response(scope, receive, send)
        await self.app(scope, receive, send)


def _validation_message(exc: RequestValidationError, body: type[BaseModel] | None = None) -> tuple[str, str | None]:
    """(message, param) of a request that does not validate; `body`: the route's request model."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}", None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    if not loc and first.get("type") == "missing":  # no body at all: name the field it needs, as for {}
        required = [name for name, f in (body.model_fields if body else {}).items() if f.is_required()]
        if not required:
            return "the request has no body; send a JSON object", None
        return f"{required[0]}: Field required (the request has no body)", required[0]
    msg = first.get("msg", "invalid request")
    if loc and len({tuple(e.get("loc", ())[:2]) for e in exc.errors()}) == 1 < len(exc.errors()):
        loc, msg = loc[:1], "matches none of the accepted types"  # a union: pydantic tried each member
    param = ".".join(loc) or None
    return (f"{param}: {msg}" if param else msg), param


class EngineStream(StreamingResponse):
    """Server-sent events of requests the engine runs already: `on_end()` once the response is over, however it
    ended (a client that leaves before the first byte never starts the body, whose own cleanup then never runs)."""

    def __init__(self, content, on_end: Callable[[], None]):
        super().__init__(content, media_type="text/event-stream")
        self.on_end = on_end

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_end()


async def _until_disconnected(request: Request, work) -> bool:
    """Runs `work` to its end (True); if the client goes away first, cancels it, which aborts its engine requests
    (False)."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        await task
        return True
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():  # the client left: nothing to answer, nothing to log
            return False
        raise  # this handler itself was cancelled (the server stops)
    finally:
        watcher.cancel()


def engine_settings(c) -> dict:
    """What a simulation of this engine needs to know of its loop (`recommend --validate` reads it)."""
    graphs = c.device == "cuda" and not c.enforce_eager
    return {"async_scheduling": bool(c.async_scheduling), "max_num_seqs": c.max_num_seqs,
            "max_num_batched_tokens": c.max_num_batched_tokens, "block_size": c.block_size,
            "cuda_graph_max_tokens": c.cuda_graph_max_tokens if graphs else 0}  # fmt: skip


def build_app(engine: AsyncEngine, metrics: ServerMetrics, model_name: str, max_model_len: int,
              api_key: str | None = None) -> FastAPI:  # fmt: skip
    serving = Serving(engine, model_name, engine.tokenizer, max_model_len)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="shifttune", version=shifttune.__version__, lifespan=lifespan)

    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)

    @app.exception_handler(APIError)
    async def api_error(_, exc: APIError):
        return error_response(exc.status, exc.message, exc.param)

    bodies = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        message, param = _validation_message(exc, bodies.get(request.url.path))
        return error_response(400, message, param)

    @app.exception_handler(HTTPException)
    async def http_error(_, exc: HTTPException):  # unknown paths (404), wrong methods (405): OpenAI-shaped too
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(QueueFullError)
    async def queue_full(_, exc: QueueFullError):
        return error_response(503, f"the server is busy: {exc}")

    @app.exception_handler(EngineDeadError)
    async def engine_dead(_, exc: EngineDeadError):
        return error_response(503, str(exc))

    @app.get("/health")
    async def health() -> Response:
        ok = engine.error is None and not engine.stopping
        return Response(status_code=200 if ok else 503)

    @app.get("/version")
    async def version() -> dict:
        return {"version": shifttune.__version__}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/v1/shifttune/policy")
    async def get_policy() -> PolicyState:
        return PolicyState(policy=engine.config.shift_policy, threshold=engine.config.shift_threshold)

    @app.post("/v1/shifttune/policy")
    async def set_policy(update: PolicyUpdate) -> PolicyState:
        """Changes the shift policy and/or threshold between two steps (the serving view's keys use it)."""
        policy = update.policy or engine.config.shift_policy
        threshold = engine.config.shift_threshold if update.threshold is None else update.threshold
        try:
            await engine.call("set_policy", policy, threshold)
        except ConfigError as e:
            raise APIError(400, str(e), e.field) from None
        engine.config.shift_policy, engine.config.shift_threshold = policy, threshold
        metrics.observe_policy(policy, threshold)
        return PolicyState(policy=policy, threshold=threshold)

    @app.get("/v1/shifttune/live")
    async def live(after: int = 0) -> JSONResponse:
        """The steps numbered above `after` (at most the last 1024), the last requests, and what the server runs."""
        c = engine.config
        info = {"model": model_name, "tp": c.parallel.tp, "sp": c.parallel.sp, "device": c.device,
                "policy": c.shift_policy, "threshold": c.shift_threshold, "max_model_len": max_model_len,
                "version": shifttune.__version__, "engine": engine_settings(c)}  # fmt: skip
        return JSONResponse(info | metrics.live.to_json(after))  # NOTE: not a dict: FastAPI's encoder is slow

    @app.get("/v1/shifttune/trace")
    async def trace(since: float = 0.0) -> JSONResponse:
        """Timestamps (the server host's time.monotonic()) of the requests that arrived at or after `since`, of
        each in both processes, and of the engine loop's steps since then; `now` is the clock when answered."""
        return JSONResponse(await engine.trace_json(since))

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, root=model_name, max_model_len=max_model_len)])

    async def respond(request: Request, stream: bool, stream_options, choices, params, events, response):
        """The response of choices already sent to the engine (`Serving.start`): they end with it."""
        if stream:
            usage = bool(stream_options and stream_options.include_usage)
            return EngineStream(events(choices, params, usage), lambda: serving.release(choices))
        try:
            if not await _until_disconnected(request, serving.run_to_end(choices, params)):
                return Response(status_code=499)  # nginx's "client closed request": nobody reads it
            return response(choices, params)
        finally:
            serving.release(choices)

    @app.post("/v1/completions", response_model=CompletionResponse)
    async def completions(req: CompletionRequest, request: Request):
        choices, params = serving.completion_choices(req)
        return await respond(request, req.stream, req.stream_options, choices, params, serving.completion_events,
                             serving.completion_response)  # fmt: skip

    @app.post("/v1/chat/completions", response_model=ChatCompletionResponse)
    async def chat_completions(req: ChatCompletionRequest, request: Request):
        choices, params = serving.chat_choices(req)
        return await respond(request, req.stream, req.stream_options, choices, params, serving.chat_events,
                             serving.chat_response)  # fmt: skip

    return app
