"""When a burst's first response headers come back, with the bench's own client (`CompletionsClient`), after a
streamed test request (what `shifttune bench` sends before a run) or after a GET /health instead:

    python after_test.py PORT N OUTPUT_TOKENS test|health   # against front.py
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from shifttune.bench.client import CompletionsClient
from shifttune.bench.datasets import BenchRequest

sent: list[float] = []
answered: list[float] = []
_send = httpx.AsyncClient.send


async def _timed_send(self, request, **kw):
    sent.append(time.monotonic())
    response = await _send(self, request, **kw)
    answered.append(time.monotonic())
    return response


async def main(port: int, n: int, output_tokens: int, before: str) -> None:
    httpx.AsyncClient.send = _timed_send
    ids = [5 + i % 250 for i in range(1024)]
    async with CompletionsClient(f"http://127.0.0.1:{port}/v1/completions", "tiny") as client:
        if before == "test":
            await client.send(BenchRequest(ids, 1024, 4))
        else:
            await client._http.get(f"http://127.0.0.1:{port}/health")
        start = time.monotonic()
        results = await asyncio.gather(*[client.send(BenchRequest(ids, 1024, output_tokens)) for _ in range(n)])
        s = sorted(t - start for t in sent if t >= start)
        a = sorted(t - start for t in answered if t >= start)
        print(
            f"after {before}: {sum(r.success for r in results)} of {n} ok, {time.monotonic() - start:.3f} s; sent "
            f"{s[0]:.3f}-{s[-1]:.3f}; headers back first {a[0]:.3f} median {a[len(a) // 2]:.3f} last {a[-1]:.3f}"
        )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
