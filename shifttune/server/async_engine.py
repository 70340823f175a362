"""AsyncEngine: the server's handle on the engine core process (`engine_core.py`).

HTTP handlers check a request here first (`prepare`: tokenizer and limits, in this process; `admit`: the
engine is up and the queue has room), then `add` it (sent to the core at once) and read its per-step deltas
from an asyncio queue (`outputs`) while the response streams; `release` ends it however the response ends.
The core's messages are read on the event loop (`add_reader` on the pipe); what goes to the core is written by
the event loop itself while the pipe has room, else by a sender thread (`pipes.PipeWriter`), so a burst of
long prompts never blocks the event loop on a full pipe. Aborts (clients gone), policy changes and
shutdown go the same way and take effect between steps.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing as mp
import os
from collections.abc import AsyncIterator

from shifttune.config import ConfigError, EngineConfig
from shifttune.engine.input_processor import InputProcessor, load_tokenizer
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.sequence import CompletionOutput, RequestOutput
from shifttune.server.engine_core import StepReport, run_engine_core
from shifttune.server.metrics import ServerMetrics
from shifttune.server.pipes import PipeWriter
from shifttune.server.trace import HttpTrace

logger = logging.getLogger("shifttune.server")


class EngineDeadError(RuntimeError):
    """The engine core stopped (a worker died, a step failed): the server must exit."""


class QueueFullError(RuntimeError):
    """More requests wait than --max-queue-len allows."""


def from_wire(item: tuple) -> RequestOutput:
    rid, token_ids, text, finish_reason, stop_reason, logprobs, finished, error = item
    return RequestOutput(rid, None, [], [CompletionOutput(0, text, token_ids, finish_reason, stop_reason, logprobs)],
                         finished, error=error)  # fmt: skip


class AsyncEngine:
    def __init__(self, config: EngineConfig, metrics: ServerMetrics, max_queue_len: int | None = None):
        self.config, self.metrics, self.max_queue_len = config, metrics, max_queue_len
        self.tokenizer = load_tokenizer(config)
        self.input_processor = InputProcessor(config, self.tokenizer)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.streams: dict[str, asyncio.Queue] = {}
        self.calls: dict[int, asyncio.Future] = {}
        self.error: BaseException | None = None
        self.on_fatal = lambda: None  # the server's way to stop itself
        self.stopping = False
        self.num_waiting = 0  # requests the core holds and has not scheduled yet (from its last report)
        self.num_running = 0  # ... and runs (from its last report)
        self.num_admitted = 0  # requests admitted since that report
        self.trace = HttpTrace()
        self._call_ids = itertools.count()
        self._outgoing: PipeWriter | None = None  # to the core, from start_core on
        self._process: mp.Process | None = None

    # ---- lifecycle ---------------------------------------------------------------------------------
    def start_core(self, timeout_s: float = 3600.0) -> dict:
        """Starts the core process and waits until its engine is up; ConfigError / RuntimeError if not."""
        ctx = mp.get_context("spawn")
        inbox_r, to_core = ctx.Pipe(duplex=False)
        self._outgoing = PipeWriter(to_core, "engine-core-sender", on_sent=lambda rid: self.trace.mark(rid, 2))
        self._from_core, outbox_w = ctx.Pipe(duplex=False)
        # NOTE: not a daemon: the core spawns the other ranks' workers itself, which daemons may not do.
        self._process = ctx.Process(target=run_engine_core, args=(self.config, inbox_r, outbox_w), name="engine-core")
        self._process.start()
        inbox_r.close()
        outbox_w.close()
        if not self._from_core.poll(timeout_s):
            self._kill()
            raise RuntimeError(f"the engine did not start within {timeout_s:.0f} s")
        try:
            msg = self._from_core.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the engine process exited with code {self._process.exitcode} while starting") from None
        if msg[0] == "failed":
            self._process.join(10)
            _, kind, message, field = msg
            raise ConfigError(message, field) if kind == "config" else RuntimeError(f"{kind}: {message}")
        info = msg[1]
        self.config.max_model_len = info["max_model_len"]  # the core may have lowered it to fit the cache
        return info

    def start(self) -> None:
        """On the event loop: read the core's messages as they come."""
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self._from_core.fileno(), self._on_readable)
        # NOTE: uvloop (uvicorn's loop when it is installed) makes a watched fd non-blocking, and a message the
        # core writes in pieces (past the pipe's 64 KiB) then reads as EAGAIN halfway: the server stopped on an
        # H200 with BlockingIOError. The core writes whole messages, so a blocking read waits only for the rest.
        os.set_blocking(self._from_core.fileno(), True)

    def request_stop(self) -> None:
        """Asks the core to end every request (finish reason "abort") and stop; returns at once (signal-safe)."""
        if not self.stopping and self._process is not None:
            self.stopping = True
            self._outgoing.send_queued(("stop",))

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stops the core and its workers and waits for that."""
        self.request_stop()
        if self._process is not None:
            self._process.join(timeout_s)
            if self._process.is_alive():
                self._kill()

    def _kill(self) -> None:
        self._process.terminate()
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()

    # ---- requests ----------------------------------------------------------------------------------
    def prepare(self, prompt: str | list[int], params: SamplingParams) -> tuple[str | None, list[int]]:
        """Tokenizes and checks a request before anything is queued: bad input is the caller's 400."""
        return self.input_processor(prompt, params)

    def admit(self, num_requests: int) -> None:
        """Takes `num_requests` new requests (one HTTP request's prompts) into the queue, or refuses them all:
        EngineDeadError if the engine is not running, QueueFullError if they would pass --max-queue-len.
        NOTE: called before a response starts (a stream's first byte), so a refusal is always a 503."""
        if self.error is not None or self.stopping:
            raise EngineDeadError("the engine is not running")
        if self.max_queue_len is not None:
            # NOTE: requests admitted since the core's last report wait only for want of free sequence slots: a
            # burst into an idle engine runs at once, it was not 1 + --max-queue-len requests and 503s
            free = max(0, self.config.max_num_seqs - self.num_running)

            def waiting(admitted: int) -> int:
                return self.num_waiting + max(0, admitted - free)

            if waiting(self.num_admitted + num_requests) > self.max_queue_len:
                raise QueueFullError(
                    f"{waiting(self.num_admitted)} requests are waiting (--max-queue-len {self.max_queue_len})"
                )
        self.num_admitted += num_requests  # until the core's next report says otherwise

    def add(self, request_id: str, prompt_text: str | None, prompt_ids: list[int], params: SamplingParams) -> None:
        """Sends a request `admit` took (which checked that the engine runs) to the core now; read its outputs with
        `outputs`, and `release` it in any case.
        NOTE: at once, not when its response starts streaming: a response's body starts a trip through the event
        loop's queue later, behind every other request of a burst (512 at once waited 0.1-0.2 s on an H200)."""
        self.streams[request_id] = asyncio.Queue()
        self.metrics.arrived(request_id, len(prompt_ids))
        self.trace.mark(request_id, 1)
        self._outgoing.send(("add", request_id, prompt_ids, params, prompt_text), request_id)

    async def outputs(self, request_id: str) -> AsyncIterator[RequestOutput]:
        """Per-step outputs of an added request until it finishes; leaving early (client gone) aborts it."""
        out = self.streams.get(request_id)
        if out is None:  # released already (the engine stopped, or its client left)
            raise EngineDeadError("the engine is not running")
        finished = False
        try:
            while True:
                item = await out.get()
                if isinstance(item, BaseException):
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            self.release(request_id, finished)

    def release(self, request_id: str, finished: bool = False) -> None:
        """Forgets an added request; one not finished is aborted (its client is gone). Idempotent."""
        if self.streams.pop(request_id, None) is None:
            return
        self.trace.finished(request_id)
        if not finished:
            self.metrics.aborted(request_id)
            if not self.stopping:
                self._outgoing.send(("abort", request_id))

    async def call(self, method: str, *args):
        """Runs engine.method(*args) in the core between two steps and returns its result."""
        return await self._ask("call", method, args)

    async def trace_json(self, since: float = 0.0) -> dict:
        """Both processes' timestamps of the requests that arrived at or after `since` (see `trace.py`)."""
        return self.trace.merged(await self._ask("trace", since), since)

    async def _ask(self, kind: str, *args):
        """Sends (kind, n, *args) to the core and waits for its ("result", n, ...) answer."""
        n, future = next(self._call_ids), self.loop.create_future()
        self.calls[n] = future
        self._outgoing.send((kind, n, *args))
        return await future

    # ---- pipes -------------------------------------------------------------------------------------
    def _on_readable(self) -> None:
        try:
            while self._from_core.poll(0):
                self._dispatch(self._from_core.recv())
        except (EOFError, OSError) as e:  # the core is gone
            self.loop.remove_reader(self._from_core.fileno())
            if not self.stopping and self.error is None:
                self._die(
                    f"the engine process exited ({type(e).__name__}: {e})" if str(e) else "the engine process exited"
                )
            for stream in self.streams.values():  # a clean stop: streams still open end now
                stream.put_nowait(EngineDeadError("the server is shutting down"))

    def _dispatch(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "step":
            outputs, report = [from_wire(o) for o in msg[1]], msg[2]
            if report is not None:
                self._observe(report, outputs)
            for out in outputs:
                stream = self.streams.get(out.request_id)
                if stream is not None:
                    if out.outputs[0].token_ids:
                        self.trace.mark(out.request_id, 3)
                    stream.put_nowait(out)
        elif kind == "refused":
            _, request_id, message, field = msg
            stream = self.streams.get(request_id)
            if stream is not None:
                stream.put_nowait(ConfigError(message, field))
        elif kind == "error":  # the core's step loop raised; its traceback is in the log
            self._die(f"the engine failed ({msg[1]})", exit_code=False)
        elif kind == "result":
            _, n, value, error = msg
            future = self.calls.pop(n, None)
            if future is not None and not future.done():
                future.set_exception(error) if error is not None else future.set_result(value)

    def _observe(self, report: StepReport, outputs: list[RequestOutput]) -> None:
        self.num_waiting, self.num_running, self.num_admitted = report.waiting, report.running, 0
        self.metrics.observe_step(report, outputs)

    def _die(self, why: str, exit_code: bool = True) -> None:
        """Fails every request and call and stops the server; `exit_code`: say the core's (it died unasked)."""
        code = None
        if exit_code and self._process is not None:
            self._process.join(2.0)  # its pipe closes a moment before it can be reaped
            code = self._process.exitcode
        if code is not None:
            why = f"{why} (exit code {code})"
        logger.error("%s; the server stops", why)
        self.error = EngineDeadError(why)
        for stream in self.streams.values():
            stream.put_nowait(self.error)
        for future in self.calls.values():  # an endpoint waiting for the core's answer gets none
            if not future.done():
                future.set_exception(self.error)
        self.calls.clear()
        self.on_fatal()
