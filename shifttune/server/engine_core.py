"""The engine core process: it owns the LLMEngine and runs its step loop; the server process sends it
requests and reads back, after every step, the step's outputs and a report for the metrics (and a report without a
step when requests aborted between two steps leave the engine idle).

Why a process: host work of a step (scheduling, sampling, detokenizing) and the HTTP event loop
(parsing, streaming hundreds of chunks a step) fight for one GIL in one process; measured on one H100
(`profiles/runs/serve_vs_offline_*_thread_*.json`) an engine thread lost 8-42% of offline throughput.
vLLM V1 splits them the same way.

The loop stamps each request and step for `GET /v1/shifttune/trace` (`trace.py`), and writes to the server
itself while the pipe has room (`pipes.py`: a hop to a writer thread waits for the GIL while the loop runs).

Messages are plain tuples over two one-way pipes (pickling a step's 256 outputs as tuples takes ~50 us;
as dataclasses holding their prompts, milliseconds):
    to the core:   ("add", id, token_ids, params, prompt_text) | ("abort", id) | ("call", n, method, args)
                   | ("trace", n, since) | ("stop",)
    from the core: ("ready", info) | ("failed", kind, message, field) | ("step", outputs, report)
                   | ("refused", id, message, field) | ("result", n, value, error) | ("error", message)
"""

from __future__ import annotations

import faulthandler
import gc
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sequence import RequestOutput
from shifttune.runner.executor import WorkerError
from shifttune.server.pipes import PipeWriter
from shifttune.server.trace import CoreTrace

# what one output carries over the pipe (the delta of one step of one request)
WIRE_FIELDS = ("request_id", "token_ids", "text", "finish_reason", "stop_reason", "logprobs", "finished", "error")


@dataclass(frozen=True)
class StepReport:
    """The engine's state after one step, for the server's metrics; `mode` None: no step ran (requests left between
    two steps and the engine went idle), only the state is new."""

    running: int
    waiting: int
    kv_blocks_used: int
    kv_blocks_total: int
    num_preemptions: int
    mode: str | None
    num_tokens: int
    num_prefill_tokens: int
    duration_s: float


def to_wire(out: RequestOutput) -> tuple:
    c = out.outputs[0]
    return (out.request_id, c.token_ids, c.text, c.finish_reason, c.stop_reason, c.logprobs, out.finished, out.error)


def _report(engine: LLMEngine, stepped: bool = True) -> StepReport:
    stats, bm = engine.stats, engine.block_manager
    load = (len(engine.scheduler.running), len(engine.scheduler.waiting), bm.num_blocks - bm.num_free_blocks,
            bm.num_blocks, stats.num_preemptions)  # fmt: skip
    if not stepped:
        return StepReport(*load, None, 0, 0, 0.0)
    step = stats.steps[-1]
    return StepReport(*load, step.mode, step.shape.num_tokens, step.shape.num_prefill_tokens, step.duration_s)


def _load(report: StepReport) -> tuple[int, int, int]:
    """What the server's gauges show of a report."""
    return report.running, report.waiting, report.kv_blocks_used


def _first_line(e: BaseException) -> str:
    text = str(e)
    return text.splitlines()[0] if text else ""


def freeze_heap() -> None:
    """Moves every object alive now out of the garbage collector's reach: what the core holds from its start (torch,
    the model's modules) is never garbage, and each full collection between two steps walked all of it.
    NOTE: the core only. In the HTTP process, under bursts of 512 new connections (2 CPUs, a stand-in core), it made
    1-3 connections reset and some clients wait 7 s for their headers in 8 bursts of 8; none of 8 without it had a
    reset (profiles/runs/s27_burst_cpu.txt). Why was not found."""
    gc.collect()
    gc.freeze()


def _watch_parent(parent: int) -> None:
    """The server process went away without telling us: leave (the workers follow)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def run_engine_core(config: EngineConfig, inbox: Connection, outbox_conn: Connection) -> None:
    """The core process's main: build the engine, say ready (or why not), then step until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops us through the pipe, after its streams
    faulthandler.enable()  # a crash in native code (CUDA, NCCL, a kernel) leaves its Python stack in the log
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    trace = CoreTrace()
    # NOTE: a server slow to read must not stall the step loop on a full pipe: PipeWriter falls back to a thread
    outbox = PipeWriter(outbox_conn, "engine-core-sender", on_sent=trace.message_sent)
    try:
        _serve(config, inbox, outbox, trace)
    finally:
        outbox.close()


def _serve(config: EngineConfig, inbox: Connection, outbox: PipeWriter, trace: CoreTrace) -> None:
    try:
        engine = LLMEngine(config)
    except ConfigError as e:
        outbox.send(("failed", "config", e.message, e.field))
        return
    except BaseException as e:  # a worker that could not start, a GPU that is full: one line for the user
        outbox.send(("failed", type(e).__name__, _first_line(e) or repr(e), None))
        return
    freeze_heap()
    outbox.send(("ready", {"max_model_len": config.max_model_len, "kv_blocks": engine.block_manager.num_blocks}))
    engine.scheduler.on_schedule = trace.on_schedule
    shown = (0, 0, 0)  # the load the server's gauges show (from the last report sent)
    try:
        while _handle(engine, inbox, outbox, trace, block=not engine.has_unfinished_requests()):
            if engine.has_unfinished_requests():
                before = engine.stats.num_steps
                outputs = engine.step()
                completed = engine.stats.num_steps > before
                if completed:
                    last = engine.stats.steps[-1]
                    trace.completed(time.monotonic(), last.mode, last.duration_s)
                if completed or outputs:
                    report = _report(engine)
                    shown = _load(report)
                    msg = ("step", [to_wire(o) for o in outputs], report)
                    outbox.send(msg, trace.handed(outputs, time.monotonic()))
            elif _load(report := _report(engine, stepped=False)) != shown:
                # NOTE: requests aborted between two steps leave no step to report them: without this the gauges
                # showed them running (and their KV blocks held) until the next request ran
                shown = _load(report)
                outbox.send(("step", [], report))
        aborted = []
        for request_id in list(engine.requests):
            seq = engine.requests[request_id]
            engine.abort_request(request_id)
            aborted.append(to_wire(RequestOutput.from_seq(seq)))
        if aborted:
            outbox.send(("step", aborted, None))
    except Exception as e:
        # NOTE: before the shutdown (which may take long or hang on a broken GPU): the log shows why at once
        if not isinstance(e, WorkerError):  # a dead rank is said in one line by the executor
            traceback.print_exc()
            sys.stderr.flush()
        line = _first_line(e)
        outbox.send(("error", f"{type(e).__name__}: {line}" if line else type(e).__name__))
    finally:
        engine.shutdown()


def _handle(engine: LLMEngine, inbox: Connection, outbox: PipeWriter, trace: CoreTrace, block: bool) -> bool:
    """Applies every message waiting in the pipe (waits for one when idle); False once told to stop."""
    if not inbox.poll(None if block else 0):
        return True
    while True:
        msg = inbox.recv()
        kind = msg[0]
        if kind == "add":
            _, request_id, ids, params, text = msg
            trace.added(request_id)
            try:
                engine.add_request(request_id, ids, params, prompt_text=text)
            except ConfigError as e:  # the front end checked it already; a race (e.g. a reused id) lands here
                trace.finished(request_id)
                outbox.send(("refused", request_id, e.message, e.field))
        elif kind == "abort":
            trace.finished(msg[1])
            if msg[1] in engine.requests:
                engine.abort_request(msg[1])
        elif kind == "trace":
            outbox.send(("result", msg[1], trace.to_json(msg[2]), None))
        elif kind == "call":
            _, n, method, args = msg
            try:
                outbox.send(("result", n, getattr(engine, method)(*args), None))
            except Exception as e:  # the call failed, or its result does not pickle
                try:
                    outbox.send(("result", n, None, e))
                except Exception:
                    outbox.send(("result", n, None, RuntimeError(f"{type(e).__name__}: {e}")))
        elif kind == "stop":
            return False
        if not inbox.poll(0):
            return True
