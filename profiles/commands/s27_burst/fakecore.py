"""A stand-in for the engine core process (the same pipe messages as `shifttune.server.engine_core`): every
FAKE_STEP_S seconds (default 0.015) each running request, at most FAKE_MAX_SEQS (256), gets one token. With it the
server's HTTP process is measured alone, on CPUs."""

from __future__ import annotations

import os
import signal
import time

from shifttune.server.engine_core import StepReport
from shifttune.server.pipes import PipeWriter

STEP_S = float(os.environ.get("FAKE_STEP_S", "0.015"))
MAX_SEQS = int(os.environ.get("FAKE_MAX_SEQS", "256"))


def run(config, inbox, outbox_conn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = PipeWriter(outbox_conn, "fake-core-sender")
    out.send(("ready", {"max_model_len": config.max_model_len, "kv_blocks": 1000}))
    waiting: list[tuple[str, int]] = []
    running: dict[str, list[int]] = {}
    while True:
        if inbox.poll(None if not waiting and not running else 0):
            while True:
                msg = inbox.recv()
                if msg[0] == "add":
                    waiting.append((msg[1], msg[3].max_tokens))
                elif msg[0] == "abort":
                    running.pop(msg[1], None)
                elif msg[0] == "stop":
                    out.close()
                    return
                elif msg[0] in ("call", "trace"):
                    out.send(("result", msg[1], None, None))
                if not inbox.poll(0):
                    break
        if not waiting and not running:
            continue
        start = time.monotonic()
        while waiting and len(running) < MAX_SEQS:
            rid, max_tokens = waiting.pop(0)
            running[rid] = [0, max_tokens]
        outputs = []
        for rid, state in list(running.items()):
            state[0] += 1
            done = state[0] >= state[1]
            outputs.append((rid, [1000 + state[0] % 100], " tok", "length" if done else None, None, None, done, None))
            if done:
                del running[rid]
        time.sleep(max(0.0, STEP_S - (time.monotonic() - start)))
        out.send(("step", outputs, StepReport(len(running), len(waiting), 10, 1000, 0, "tp", len(outputs), 0, STEP_S)))
