"""AsyncEngine: one thread owns the LLMEngine and runs its step loop; the event loop talks to it by messages.

HTTP handlers `generate()` a request and read its per-step deltas from an asyncio queue; aborts,
policy changes and shutdown go through the same inbox and take effect between steps, so the engine
is only ever touched by its own thread. After every step the thread hands that step's outputs to the
event loop in one call and updates the Prometheus metrics.

NOTE: the engine runs in a thread of the server process, not in a process of its own (vLLM V1 splits
them). Host work of a step holds the GIL against the event loop; `profiles/` records what that costs
against offline generation on one GPU.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from shifttune.config import ConfigError
from shifttune.engine.llm_engine import LLMEngine
from shifttune.engine.sampling_params import SamplingParams
from shifttune.engine.sequence import RequestOutput
from shifttune.server.metrics import ServerMetrics

logger = logging.getLogger("shifttune.server")


class EngineDeadError(RuntimeError):
    """The engine loop stopped on an error (a worker died, a step failed): the server must exit."""


class QueueFullError(RuntimeError):
    """More requests wait than --max-queue-len allows."""


@dataclass
class _Add:
    request_id: str
    prompt_text: str | None
    prompt_ids: list[int]
    params: SamplingParams
    out: asyncio.Queue


class AsyncEngine:
    def __init__(self, engine: LLMEngine, metrics: ServerMetrics, max_queue_len: int | None = None):
        self.engine, self.metrics, self.max_queue_len = engine, metrics, max_queue_len
        self.loop: asyncio.AbstractEventLoop | None = None
        self.inbox: queue.SimpleQueue = queue.SimpleQueue()
        self.streams: dict[str, asyncio.Queue] = {}  # owned by the event loop
        self.error: BaseException | None = None
        self.on_fatal: Callable[[], None] = lambda: None  # the server's way to stop itself
        self._stopping = False
        self._pending_adds = 0
        self._thread = threading.Thread(target=self._run, name="engine-loop", daemon=True)

    # ---- event-loop side ---------------------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._thread.start()

    def prepare(self, prompt: str | list[int], params: SamplingParams) -> tuple[str | None, list[int]]:
        """Tokenizes and checks a request before anything is queued: bad input is the caller's 400."""
        return self.engine.prepare_request(prompt, params)

    @property
    def num_waiting(self) -> int:
        return len(self.engine.scheduler.waiting) + self._pending_adds

    async def generate(
        self, request_id: str, prompt_text: str | None, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncIterator[RequestOutput]:
        """Per-step outputs of one request until it finishes; leaving early (client gone) aborts it."""
        if self.error is not None or self._stopping:
            raise EngineDeadError("the engine is not running")
        if self.max_queue_len is not None and self.num_waiting >= self.max_queue_len:
            raise QueueFullError(f"{self.num_waiting} requests are waiting (--max-queue-len {self.max_queue_len})")
        out: asyncio.Queue = asyncio.Queue()
        self.streams[request_id] = out
        self._pending_adds += 1
        self.inbox.put(_Add(request_id, prompt_text, prompt_ids, params, out))
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
            self.streams.pop(request_id, None)
            if not finished:
                self.inbox.put(("abort", request_id))

    async def call(self, fn: Callable[[LLMEngine], object]):
        """Runs fn(engine) on the engine thread between two steps and returns its result."""
        done: asyncio.Future = self.loop.create_future()
        self.inbox.put(("call", fn, done))
        return await done

    def request_stop(self) -> None:
        """Asks the loop to end every stream (finish reason "abort") and stop; returns at once (signal-safe)."""
        if not self._stopping:
            self._stopping = True
            self.inbox.put(("stop",))

    def stop(self, timeout: float = 30.0) -> None:
        """Stops the loop and the engine's workers, and waits for that."""
        self.request_stop()
        if self._thread.ident is None:  # never started: nobody else will shut the engine down
            self.engine.shutdown()
        elif self._thread.is_alive():
            self._thread.join(timeout)

    def _deliver(self, items: list[tuple[str, object]]) -> None:
        for request_id, item in items:
            stream = self.streams.get(request_id)
            if stream is not None:
                stream.put_nowait(item)

    def _resolve(self, future: asyncio.Future, result, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error is not None else future.set_result(result)

    # ---- engine thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        engine = self.engine
        try:
            while True:
                if not self._drain(block=not engine.has_unfinished_requests()):
                    break
                if engine.has_unfinished_requests():
                    outputs = engine.step()
                    self.metrics.observe_step(engine, outputs)
                    if outputs:
                        self.loop.call_soon_threadsafe(self._deliver, [(o.request_id, o) for o in outputs])
        except BaseException as e:  # a dead worker, a failed step: every stream ends, the server exits
            logger.error("the engine stopped: %s: %s", type(e).__name__, e)
            self.error = e
            self._fail_all(EngineDeadError(f"the engine stopped: {e}"))
            self.loop.call_soon_threadsafe(self.on_fatal)
        finally:
            self._abort_all()
            engine.shutdown()

    def _drain(self, block: bool) -> bool:
        """Applies what the event loop sent; False once told to stop."""
        while True:
            try:
                msg = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            except queue.Empty:
                return True
            block = False
            if isinstance(msg, _Add):
                self._pending_adds -= 1
                try:
                    self.engine.add_request(msg.request_id, msg.prompt_ids, msg.params, prompt_text=msg.prompt_text)
                except ConfigError as e:
                    self.loop.call_soon_threadsafe(self._deliver, [(msg.request_id, e)])
            elif msg[0] == "abort":
                if msg[1] in self.engine.requests:
                    self.engine.abort_request(msg[1])
                    self.metrics.aborted(msg[1])
            elif msg[0] == "call":
                _, fn, future = msg
                try:
                    result, error = fn(self.engine), None
                except Exception as e:
                    result, error = None, e
                self.loop.call_soon_threadsafe(self._resolve, future, result, error)
            elif msg[0] == "stop":
                return False

    def _abort_all(self) -> None:
        """Ends the requests still in flight with finish reason "abort" (shutdown)."""
        engine, ended = self.engine, []
        for request_id in list(engine.requests):
            seq = engine.requests[request_id]
            engine.abort_request(request_id)
            ended.append((request_id, RequestOutput.from_seq(seq)))
        if ended and self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, ended)

    def _fail_all(self, error: BaseException) -> None:
        self.loop.call_soon_threadsafe(self._deliver, [(rid, error) for rid in list(self.engine.requests)])
        self.engine.requests.clear()

    def wait_idle(self, timeout: float) -> bool:
        """For tests and benchmarks: True once no request is queued or running."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.engine.has_unfinished_requests() and self.inbox.empty():
                return True
            time.sleep(0.01)
        return False
