"""One streamed completion over aiohttp: what it sends, how it reads the SSE stream, what it records.

Each request asks for `stream: true` with usage, `max_tokens`, `temperature: 0` and `ignore_eos: true`
(exact output lengths); a server that answers 400 naming ignore_eos gets every later request without
it. TTFT runs from sending to the first chunk with a choice, ITLs are the gaps between such chunks, E2E
latency ends at the last of them (as vLLM measures: a chunk counts whether its text is empty or not, so a
model served without a tokenizer is measured too). Output tokens come from the usage chunk when the
server sends one, else from the count of chunks.

NOTE: the load generator speaks HTTP through aiohttp, the rest of the project (one-off GETs, the TUI's polling, tests)
through httpx. On a 2-CPU host, the first of a burst of 512 streamed requests reached a stand-in server 0.39-0.42 s
after the run started through httpx (1.3-1.4 ms of client CPU a request), and 0.16-0.17 s through aiohttp (0.43-0.45
ms): through httpx that wait was in every TTFT of the burst (profiles/runs/s31_client_burst_cpu.txt).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from shifttune.bench.datasets import BenchRequest

DONE = object()  # the `data: [DONE]` event


class ServerError(RuntimeError):
    """The server cannot be used (down, wrong URL, no models): one line for the user."""


@dataclass
class RequestResult:
    success: bool = False
    error: str = ""
    prompt_len: int = 0  # the server's usage.prompt_tokens when sent, else the dataset's
    output_len: int = 0
    ttft: float = 0.0  # seconds
    itl: list[float] = field(default_factory=list)  # seconds
    latency: float = 0.0  # E2E seconds: send -> last chunk with a choice
    send_time: float = 0.0  # seconds after the run started


def parse_sse_line(line: str) -> dict | object | None:
    """`data: {...}` -> the dict, `data: [DONE]` -> DONE, anything else (comments, blank, event:) -> None."""
    line = line.strip()
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    if data == "[DONE]":
        return DONE
    return json.loads(data) if data else None


def error_message(status: int, body: bytes) -> str:
    """`HTTP 400: <message>` from an OpenAI ({"error": {"message"}}), FastAPI ({"detail"}) or plain body."""
    text = body.decode(errors="replace").strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("detail", obj.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            text = err if isinstance(err, str) else json.dumps(err)
    return f"HTTP {status}: {text[:500]}"


# NOTE: idle connections are reused for at most this long, well under the 5 s after which servers on uvicorn's defaults
# close them: reusing one just as the server closes it fails that request. With httpx's default of 5 s, 4 of 6 bursts of
# 512 streams on CPU lost 1-2 requests that way, with 2 s none did (profiles/runs/s29_burst_trace_cpu.txt).
KEEPALIVE_EXPIRY_S = 2.0
READ_BUFFER_BYTES = 1 << 20  # a stream's longest line (one SSE event) may be twice this


def _session(api_key: str | None, timeout_s: float) -> aiohttp.ClientSession:
    """An unlimited pool (the bench's concurrency is the only limit); call from a running event loop."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_EXPIRY_S)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(10.0, timeout_s), sock_read=timeout_s)
    # trust_env=False: traffic goes to the given URL only, never through an environment's proxy.
    return aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout, trust_env=False, read_bufsize=READ_BUFFER_BYTES
    )


async def list_models(base_url: str, api_key: str | None = None) -> dict[str, int | None]:
    """GET /v1/models: each model's id and its `max_model_len` where the server lists one (vLLM, `shifttune serve`),
    in the server's order. Raises ServerError when the server cannot be reached or refuses the API key (other
    failures: {})."""
    url = base_url.rstrip("/") + "/v1/models"
    async with _session(api_key, 10.0) as session:
        try:
            async with session.get(url) as resp:
                status, body = resp.status, await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as e:
            raise ServerError(f"cannot reach the server at {base_url}: {type(e).__name__}: {e}") from None
    if status in (401, 403):
        raise ServerError(
            f"{url} answered {status}: "
            + ("the server wants an API key (--api-key)" if api_key is None else "the server refused this --api-key")
        )
    if status != 200:
        return {}
    try:
        cards = [m for m in json.loads(body).get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return {}
    lengths = {m["id"]: m.get("max_model_len") for m in cards}
    return {name: n if isinstance(n, int) and n > 0 else None for name, n in lengths.items()}


class CompletionsClient:
    """Sends BenchRequests to one completions URL; use as `async with` (which opens its connection pool)."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 600.0):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.ignore_eos = True  # cleared for good when the server rejects it
        self.ignore_eos_rejections = 0
        self._api_key = api_key
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> CompletionsClient:
        self._http = _session(self._api_key, self.timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def payload(self, req: BenchRequest) -> dict:
        body = {
            "model": self.model,
            "prompt": req.prompt,
            "max_tokens": req.output_len,
            "temperature": 0.0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return body | ({"ignore_eos": True} if self.ignore_eos else {})

    async def send(self, req: BenchRequest) -> RequestResult:
        """Never raises for the server's or the network's faults: they become a failed result."""
        try:
            sent_with_ignore_eos = self.ignore_eos
            result = await asyncio.wait_for(self._send(req), self.timeout_s)
            if sent_with_ignore_eos and result.error.startswith("HTTP 400") and "ignore_eos" in result.error:
                if self.ignore_eos:  # the first rejection switches it off for every later request
                    self.ignore_eos = False
                    self.ignore_eos_rejections += 1
                result = await asyncio.wait_for(self._send(req), self.timeout_s)
            return result
        except asyncio.TimeoutError:
            return RequestResult(error=f"timed out after {self.timeout_s:g} s", prompt_len=req.input_len)
        except (aiohttp.ClientError, ValueError, KeyError, TypeError, AttributeError) as e:
            return RequestResult(error=f"{type(e).__name__}: {e}", prompt_len=req.input_len)

    async def _send(self, req: BenchRequest) -> RequestResult:
        assert self._http is not None, "use CompletionsClient as `async with`"
        out = RequestResult(prompt_len=req.input_len)
        start = time.perf_counter()
        last = start
        chunks = 0
        usage_tokens = None
        finish_reason = None
        async with self._http.post(self.url, json=self.payload(req)) as resp:
            if resp.status != 200:
                out.error = error_message(resp.status, await resp.read())
                return out
            async for line in resp.content:  # NOTE: lines end at b"\n" only; parse_sse_line strips a "\r" left over
                event = parse_sse_line(line.decode())
                if event is DONE:
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    out.error = error_message(resp.status, json.dumps(event).encode())
                    return out
                now = time.perf_counter()
                choices = event.get("choices") or []
                finish_reason = next((c["finish_reason"] for c in choices if c.get("finish_reason")), finish_reason)
                if choices:  # as vLLM: every chunk with a choice is an arrival, text or not (no tokenizer)
                    if chunks == 0:
                        out.ttft = now - start
                    else:
                        out.itl.append(now - last)
                    last = now
                    chunks += 1
                usage = event.get("usage")
                if usage:
                    usage_tokens = usage.get("completion_tokens", usage_tokens)
                    out.prompt_len = usage.get("prompt_tokens") or out.prompt_len
        if chunks == 0:
            out.error = "the stream carried no choices"
            return out
        if finish_reason == "abort":  # the server ended it (shutting down, or it dropped the request)
            out.error = f"aborted by the server after {usage_tokens if usage_tokens is not None else chunks} tokens"
            return out
        out.success = True
        out.latency = last - start
        out.output_len = usage_tokens if usage_tokens is not None else chunks
        return out
