"""The engine core process: it owns the LLMEngine and runs its step loop; the server process sends it
requests and reads back, after every step, the step's outputs and a report for the metrics.

Why a process: host work of a step (scheduling, sampling, detokenizing) and the HTTP event loop
(parsing, streaming hundreds of chunks a step) fight for one GIL in one process; measured on one H100
(`profiles/runs/serve_vs_offline_*_thread_*.json`) an engine thread lost 8-42% of offline throughput.
vLLM V1 splits them the same way.

Messages are plain tuples over two one-way pipes (pickling a step's 256 outputs as tuples takes ~50 us;
as dataclasses holding their prompts, milliseconds):
    to the core:   ("add", id, token_ids, params, prompt_text) | ("abort", id) | ("call", n, method, args) | ("stop",)
    from the core: ("ready", info) | ("failed", kind, message, field) | ("step", outputs, report)
                   | ("refused", id, message, field) | ("result", n, value, error)
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sequence import RequestOutput

# what one output carries over the pipe (the delta of one step of one request)
WIRE_FIELDS = ("request_id", "token_ids", "text", "finish_reason", "stop_reason", "logprobs", "finished", "error")


@dataclass(frozen=True)
class StepReport:
    """The engine's state after one step, for the server's metrics."""

    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    num_preemptions: int
    mode: str
    num_tokens: int
    num_prefill_tokens: int
    duration_s: float


def to_wire(out: RequestOutput) -> tuple:
    c = out.outputs[0]
    return (out.request_id, c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs, out.finished, out.error)


def _report(engine: LLMEngine) -> StepReport:
    stats, bm = engine.stats, engine.block_manager
    step = stats.steps[-1]
    return StepReport(len(engine.scheduler.running), len(engine.scheduler.waiting), bm.num_blocks - bm.num_free_blocks,
                      bm.num_blocks, stats.num_preemptions, step.mode, step.shape.num_tokens,
                      step.shape.num_prefill_tokens, step.duration_s)  # fmt: skip


def _watch_parent(parent: int) -> None:
    """The server process went away without telling us: leave (the workers follow)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


class _Sender:
    """Writes to the server from a thread: a server slow to read must not stall the step loop on a full pipe."""

    def __init__(self, conn: Connection):
        self.conn, self.queue = conn, queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="engine-core-sender", daemon=True)
        self.thread.start()

    def send(self, msg: tuple) -> None:
        self.queue.put(msg)

    def _run(self) -> None:
        while (msg := self.queue.get()) is not None:
            try:
                self.conn.send(msg)
            except OSError:  # the server is gone; the parent watcher ends this process
                return

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(10)


def run_engine_core(config: EngineConfig, inbox: Connection, outbox_conn: Connection) -> None:
    """The core process's main: build the engine, say ready (or why not), then step until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us through the pipe, after its streams
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    outbox = _Sender(outbox_conn)
    try:
        _serve(config, inbox, outbox)
    finally:
        outbox.close()


def _serve(config: EngineConfig, inbox: Connection, outbox: _Sender) -> None:
    try:
        engine = LLMEngine(config)
    except ConfigError as e:
        outbox.send(("failed", "config", e.message, e.field))
        return
    except BaseException as e:  # a worker that could not start, a GPU that is full: one line for the user
        outbox.send(("failed", type(e).__name__, str(e).splitlines()[0] if str(e) else repr(e), None))
        return
    outbox.send(("ready", {"max_model_len": config.max_model_len, "kv_blocks": engine.block_manager.num_blocks}))
    try:
        while _handle(engine, inbox, outbox, block=not engine.has_unfinished_requests()):
            if engine.has_unfinished_requests():
                before = engine.stats.num_steps
                outputs = engine.step()
                if engine.stats.num_steps > before or outputs:
                    outbox.send(("step", [to_wire(o) for o in outputs], _report(engine)))
        aborted = []
        for request_id in list(engine.requests):
            seq = engine.requests[request_id]
            engine.abort_request(request_id)
            aborted.append(to_wire(RequestOutput.from_seq(seq)))
        if aborted:
            outbox.send(("step", aborted, None))
    finally:
        engine.shutdown()


def _handle(engine: LLMEngine, inbox: Connection, outbox: _Sender, block: bool) -> bool:
    """Applies every message waiting in the pipe (waits for one when idle); False once told to stop."""
    if not inbox.poll(None if block else 0):
        return True
    while True:
        msg = inbox.recv()
        kind = msg[0]
        if kind == "add":
            _, request_id, ids, params, text = msg
            try:
                engine.add_request(request_id, ids, params, prompt_text=text)
            except ConfigError as e:  # the front end checked it already; a race (e.g. a reused id) lands here
                outbox.send(("refused", request_id, e.message, e.field))
        elif kind == "abort":
            if msg[1] in engine.requests:
                engine.abort_request(msg[1])
        elif kind == "call":
            _, n, method, args = msg
            try:
                outbox.send(("result", n, getattr(engine, method)(*args), None))
            except Exception as e:
                outbox.send(("result", n, None, e))
        elif kind == "stop":
            return False
        if not inbox.poll(0):
            return True
