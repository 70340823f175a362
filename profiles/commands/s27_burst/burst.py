"""One burst of N streamed completions (1024-token prompts, OUTPUT_TOKENS out) from one bare httpx client, all at once:

    python burst.py PORT N [OUTPUT_TOKENS (default 64)]

Prints the failed requests by error, the burst's duration, and when request hooks fired and response headers came
back (s after the burst began). TRACE=1 (session 29) also follows each request through httpcore's trace hooks and the
kernel's TCP counters (/proc/net/netstat) and prints a second line: requests that opened their own connection, those
whose TCP connect started later than 0.5 s, those whose headers came back later than 2.5 s, and the counters' change
(listen-queue overflows and drops, SYN retransmits)."""

from __future__ import annotations

import asyncio
import collections
import os
import sys
import time

import httpx

COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans")


def tcp_counters() -> dict[str, int]:
    """This network namespace's COUNTERS (TcpExt lines of /proc/net/netstat)."""
    lines = [line.split() for line in open("/proc/net/netstat") if line.startswith("TcpExt:")]
    return {k: int(v) for k, v in zip(lines[0][1:], lines[1][1:]) if k in COUNTERS}


async def main(port: int, n: int, output_tokens: int) -> None:
    url = f"http://127.0.0.1:{port}/v1/completions"
    body = {"model": "tiny", "prompt": [5 + i % 250 for i in range(1024)], "max_tokens": output_tokens, "stream": True,
            "ignore_eos": True}  # fmt: skip
    hooks: list[float] = []
    headers: list[float] = []
    trace = os.environ.get("TRACE") == "1"
    stages: list[dict[str, float]] = []

    async def on_request(request: httpx.Request) -> None:
        hooks.append(time.monotonic())

    expiry = float(os.environ.get("KEEPALIVE_EXPIRY", "5"))  # httpx's default: 5 s, as uvicorn's timeout_keep_alive
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None, keepalive_expiry=expiry)
    async with httpx.AsyncClient(
        limits=limits, timeout=60, trust_env=False, event_hooks={"request": [on_request]}
    ) as c:
        await c.get(f"http://127.0.0.1:{port}/health")
        counters = tcp_counters()
        start = time.monotonic()

        async def one() -> None:
            seen: dict[str, float] = {}
            stages.append(seen)

            async def hook(name: str, info: dict) -> None:
                seen.setdefault(name, time.monotonic() - start)

            async with c.stream("POST", url, json=body, extensions={"trace": hook} if trace else {}) as r:
                headers.append(time.monotonic() - start)
                seen["headers"] = headers[-1]
                async for _ in r.aiter_lines():
                    pass

        results = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
        errors = collections.Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
        sent = sorted(t - start for t in hooks if t >= start)
        print(f"errors {dict(errors)} total {time.monotonic() - start:.3f} s; request hooks first {sent[0]:.3f} "
              f"median {sent[len(sent) // 2]:.3f} last {sent[-1]:.3f}; headers back first {min(headers):.3f} "
              f"last {max(headers):.3f}")  # fmt: skip
        if trace:
            connect = [s["connection.connect_tcp.started"] for s in stages if "connection.connect_tcp.started" in s]
            change = {k: v - counters[k] for k, v in tcp_counters().items()}
            print(f"trace: {len(connect)} of {n} opened their own connection, {sum(t > 0.5 for t in connect)} started "
                  f"connecting after 0.5 s (last {max(connect, default=0):.3f}), headers after 2.5 s: "
                  f"{sum(s.get('headers', 99) > 2.5 for s in stages)}; TCP counters' change {change}")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 64))
