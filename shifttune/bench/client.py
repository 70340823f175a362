"""One streamed completion over httpx: what it sends, how it reads the SSE stream, what it records.

Each request asks for `stream: true` with usage, `max_tokens`, `temperature: 0` and `ignore_eos: true`
(exact output lengths); a server that answers 400 naming ignore_eos gets every later request without
it. TTFT runs from sending to the first chunk with a choice, ITLs are the gaps between such chunks, E2E
latency ends at the last of them (as vLLM measures: a chunk counts whether its text is empty or not, so a
model served without a tokenizer is measured too). Output tokens come from the usage chunk when the
server sends one, else from the count of chunks.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import httpx

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
# close them: reusing one just as the server closes it fails that request (a ReadError). httpx's own default is 5 s;
# with it, 4 of 6 bursts of 512 streams on CPU lost 1-2 requests that way, with 2 s none did
# (profiles/runs/s29_burst_trace_cpu.txt).
KEEPALIVE_EXPIRY_S = 2.0


def _client(api_key: str | None, timeout_s: float) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # trust_env=False: traffic goes to the given URL only, never through an environment's proxy.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=KEEPALIVE_EXPIRY_S)
    timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
    return httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits, trust_env=False)


async def list_models(base_url: str, api_key: str | None = None) -> list[str]:
    """GET /v1/models; raises ServerError when the server cannot be reached or refuses the API key (other
    failures: [])."""
    url = base_url.rstrip("/") + "/v1/models"
    async with _client(api_key, 10.0) as client:
        try:
            resp = await client.get(url)
        except httpx.HTTPError as e:
            raise ServerError(f"cannot reach the server at {base_url}: {type(e).__name__}: {e}") from None
    if resp.status_code in (401, 403):
        raise ServerError(
            f"{url} answered {resp.status_code}: "
            + ("the server wants an API key (--api-key)" if api_key is None else "the server refused this --api-key")
        )
    if resp.status_code != 200:
        return []
    try:
        return [m["id"] for m in resp.json().get("data", []) if isinstance(m, dict) and "id" in m]
    except (ValueError, AttributeError):
        return []


class CompletionsClient:
    """Sends BenchRequests to one completions URL; use as `async with`."""

    def __init__(self, url: str, model: str, api_key: str | None = None, timeout_s: float = 600.0):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.ignore_eos = True  # cleared for good when the server rejects it
        self.ignore_eos_rejections = 0
        self._http = _client(api_key, timeout_s)

    async def __aenter__(self) -> CompletionsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

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
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
            return RequestResult(error=f"{type(e).__name__}: {e}", prompt_len=req.input_len)

    async def _send(self, req: BenchRequest) -> RequestResult:
        out = RequestResult(prompt_len=req.input_len)
        start = time.perf_counter()
        last = start
        chunks = 0
        usage_tokens = None
        finish_reason = None
        async with self._http.stream("POST", self.url, json=self.payload(req)) as resp:
            if resp.status_code != 200:
                out.error = error_message(resp.status_code, await resp.aread())
                return out
            async for line in resp.aiter_lines():
                event = parse_sse_line(line)
                if event is DONE:
                    break
                if not isinstance(event, dict):
                    continue
                if "error" in event:
                    out.error = error_message(resp.status_code, json.dumps(event).encode())
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
