"""How long the bench's client takes to put a burst of requests on the wire (CPU; closed issue 9's c = inf gap).

    python profiles/commands/client_burst_probe.py --requests 512 --input-len 1024 --rounds 3 --out client_burst.json

Session 27 found that in `serve_vs_offline` at c = inf the burst's first request reaches the server's handler 0.6-1.1 s
after the bench's test request, and did not split that time between the bench's client and the server. Here a
stand-in server in another process (plain asyncio, no HTTP framework: it reads each request's headers and body and
answers with one SSE chunk and [DONE]) records when each request has fully arrived, and the bench's own
`run_requests` sends the burst through its `CompletionsClient`, as `shifttune bench` does. Times are on the host's
monotonic clock, from just before `run_requests` starts: the first, median and last arrival, and when the client had
every answer, and the CPU time the client's process spent. `--chunks N` makes each answer carry N streamed choice
chunks (one per output token; the client reads and times each), so the run also shows what reading a stream costs the
client. `--client raw` sends the same bodies from a bare asyncio client instead (a connection, one write, read
to [DONE]): how soon a client with little work a request can put the burst on the wire on this host.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import socket
import statistics
import sys
import time
from pathlib import Path

from shifttune.bench.client import CompletionsClient
from shifttune.bench.datasets import BenchRequest
from shifttune.bench.runner import run_requests

CHUNK = b'data: {"choices": [{"index": 0, "text": "x", "finish_reason": %s}], "usage": null}\n\n'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": %d}}\n\ndata: [DONE]\n\n'


def answer(chunks: int) -> bytes:
    """An HTTP response streaming `chunks` choice chunks (the last with finish_reason "length"), usage and [DONE]."""
    body = b"".join(CHUNK % (b'"length"' if i == chunks - 1 else b"null") for i in range(chunks)) + USAGE % chunks
    return b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: %d\r\n\r\n" % len(body) + body


def serve(sock: socket.socket, expected: int, conn, chunks: int = 1) -> None:
    """The stand-in server: answers requests on `sock` and sends the arrival times of `expected` of them to `conn`."""
    reply = answer(chunks)

    async def main() -> None:
        arrivals: list[float] = []
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                    break  # the client closed the connection, or the run is over (an idle keep-alive connection)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                await reader.readexactly(length)
                arrivals.append(time.monotonic())
                writer.write(reply)
                await writer.drain()
                if len(arrivals) == expected:
                    done.set()
            writer.close()

        server = await asyncio.start_server(handle, sock=sock, backlog=4096)
        async with server:
            await done.wait()
            conn.send(arrivals)

    asyncio.run(main())


class _Quiet:
    def start(self, label: str, total: int) -> None: ...

    def advance(self, ok: bool) -> None: ...


async def burst(url: str, requests: list[BenchRequest]) -> tuple[float, float]:
    """(monotonic time just before run_requests, seconds until every answer was in); exits when a request failed or
    came back with another count of output tokens than it asked for."""
    async with CompletionsClient(url, "m") as client:
        t0 = time.monotonic()
        results, duration, _ = await run_requests(client, requests, None, _Quiet(), asyncio.Event())
    failed = [r.error for r in results if not r.success]
    failed += [
        f"{r.output_len} tokens, not {q.output_len}" for r, q in zip(results, requests) if r.output_len != q.output_len
    ]
    if failed:
        sys.exit(f"{len(failed)} requests failed, e.g. {failed[0]}")
    return t0, duration


async def raw_burst(port: int, requests: list[BenchRequest]) -> tuple[float, float]:
    """`burst` from a bare asyncio client: the same bodies, no HTTP library."""
    client = CompletionsClient("http://x", "m")
    bodies = [json.dumps(client.payload(r)).encode() for r in requests]
    await client.__aexit__()
    head = b"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    head += b"content-length: %d\r\n\r\n"

    async def one(body: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head % len(body) + body)
        await writer.drain()
        await reader.readuntil(b"[DONE]\n\n")
        writer.close()

    t0 = time.monotonic()
    await asyncio.gather(*(one(b) for b in bodies))
    return t0, time.monotonic() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--input-len", type=int, default=1024, help="prompt token ids a request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunks", type=int, default=1, help="streamed choice chunks (output tokens) an answer")
    ap.add_argument("--client", choices=("bench", "raw"), default="bench", help="the bench's client, or a bare one")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    rng = random.Random(0)
    rounds = []
    for r in range(args.rounds):
        reqs = [BenchRequest([rng.randrange(1000, 100000) for _ in range(args.input_len)], args.input_len, args.chunks)
                for _ in range(args.requests)]  # fmt: skip
        sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        parent, child = mp.Pipe()
        server = mp.Process(target=serve, args=(sock, args.requests, child, args.chunks), daemon=True)
        server.start()
        try:
            port = sock.getsockname()[1]
            cpu0 = time.process_time()
            if args.client == "raw":
                t0, duration = asyncio.run(raw_burst(port, reqs))
            else:
                t0, duration = asyncio.run(burst(f"http://127.0.0.1:{port}/v1/completions", reqs))
            cpu = time.process_time() - cpu0
            arrivals = sorted(a - t0 for a in parent.recv())
        finally:
            server.join(10)
            server.kill()
            sock.close()
        row = dict(
            first_s=arrivals[0],
            median_s=statistics.median(arrivals),
            last_s=arrivals[-1],
            answers_s=duration,
            client_cpu_s=cpu,
        )
        rounds.append(row)
        print(f"round {r}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()), flush=True)
    result = dict(command="python profiles/commands/client_burst_probe.py " + " ".join(argv or sys.argv[1:]),
                  cpus=len(__import__("os").sched_getaffinity(0)), python=sys.version.split()[0],
                  client=args.client, requests=args.requests, input_len=args.input_len, chunks=args.chunks,
                  rounds=rounds)  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
