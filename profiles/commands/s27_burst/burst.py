"""One burst of N streamed completions (1024-token prompts, OUTPUT_TOKENS out) from one bare httpx client, all at once:

    python burst.py PORT N [OUTPUT_TOKENS (default 64)]

Prints the failed requests by error, the burst's duration, and when request hooks fired and response headers came
back (s after the burst began)."""

from __future__ import annotations

import asyncio
import collections
import sys
import time

import httpx


async def main(port: int, n: int, output_tokens: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": "tiny", "prompt": [5 + i % 250 for i in range(1024)], "max_tokens": output_tokens, "stream": True,
            "ignore_eos": True}  # fmt: skip
    hooks: list[float] = []
    headers: list[float] = []

    async def on_request(request: httpx.Request) -> None:
        hooks.append(time.monotonic())

    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(
        limits=limits, timeout=60, trust_env=False, event_hooks={"request": [on_request]}
    ) as c:
        await c.get(f"http://127.0.0.1:{port}/health")
        start = time.monotonic()

        async def one() -> None:
            async with c.stream("POST", url, json=body) as r:
                headers.append(time.monotonic() - start)
                async for _ in r.aiter_lines():
                    pass

        results = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
        errors = collections.Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
        sent = sorted(t - start for t in hooks if t >= start)
        print(f"errors {dict(errors)} total {time.monotonic() - start:.3f} s; request hooks first {sent[0]:.3f} "
              f"median {sent[len(sent) // 2]:.3f} last {sent[-1]:.3f}; headers back first {min(headers):.3f} "
              f"last {max(headers):.3f}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 64))
