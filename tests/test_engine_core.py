"""The engine core's step loop failing: the server hears why at once (one line), with the traceback in
the log, before the core shuts its engine down; pending requests and endpoint calls end with that error."""

from __future__ import annotations

import asyncio
import gc
import multiprocessing as mp
import os
import threading

import pytest

from shifttune import SamplingParams
from shifttune.config import EngineConfig
from shifttune.engine.llm_engine import LLMEngine
from shifttune.server import engine_core
from shifttune.server.async_engine import AsyncEngine, EngineDeadError


def test_a_failing_step_is_reported_before_the_shutdown(monkeypatch, capfd):
    def broken_step(self):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")

    shutdowns = []
    monkeypatch.setattr(LLMEngine, "step", broken_step)
    monkeypatch.setattr(LLMEngine, "shutdown", lambda self: shutdowns.append(True))
    inbox_r, to_core = mp.Pipe(duplex=False)
    from_core, outbox_w = mp.Pipe(duplex=False)
    core = threading.Thread(target=_run_core, args=(EngineConfig(model="tiny", device="cpu"), inbox_r, outbox_w))
    gc.unfreeze()
    core.start()
    assert from_core.poll(120) and from_core.recv()[0] == "ready"
    # the heap it started with is out of the collector's reach before it says ready (here: this process's)
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    to_core.send(("add", "r1", [1, 2, 3], SamplingParams(max_tokens=4), None))
    assert from_core.poll(60)
    msg = from_core.recv()
    core.join(30)
    assert msg == ("error", "RuntimeError: CUDA error: an illegal memory access was encountered")
    assert shutdowns == [True] and not core.is_alive()
    assert "Traceback" in capfd.readouterr().err


def _run_core(config, inbox, outbox_conn):
    """run_engine_core without its process-level parts (signal handler, parent watch): in a thread."""
    from shifttune.server.pipes import PipeWriter
    from shifttune.server.trace import CoreTrace

    trace = CoreTrace()
    outbox = PipeWriter(outbox_conn, "engine-core-sender", on_sent=trace.message_sent)
    try:
        engine_core._serve(config, inbox, outbox, trace)
    finally:
        outbox.close()


def test_the_server_side_fails_streams_and_calls_on_a_core_error():
    engine = AsyncEngine.__new__(AsyncEngine)
    engine._process, engine.error, engine.stopping = None, None, False
    fatal = []
    engine.on_fatal = lambda: fatal.append(True)

    async def scenario():
        loop = asyncio.get_running_loop()
        stream, call = asyncio.Queue(), loop.create_future()
        engine.streams, engine.calls = {"r1": stream}, {7: call}
        engine._dispatch(("error", "RuntimeError: CUDA error"))
        with pytest.raises(EngineDeadError, match=r"the engine failed \(RuntimeError: CUDA error\)"):
            await call
        return await stream.get()

    item = asyncio.run(scenario())
    assert isinstance(item, EngineDeadError) and fatal == [True] and engine.calls == {}


def test_a_message_longer_than_the_pipe_reads_whole_on_a_non_blocking_fd():
    """uvloop (uvicorn's loop when installed) makes a watched fd non-blocking; a message written in pieces
    must still arrive whole instead of ending the server with BlockingIOError."""
    engine = AsyncEngine.__new__(AsyncEngine)
    engine._process, engine.error, engine.stopping, engine.streams = None, None, False, {}
    engine.on_fatal = lambda: None
    engine._from_core, writer = mp.Pipe(duplex=False)
    value = list(range(200_000))  # ~1 MB pickled: the writer blocks until the reader drains it

    async def scenario():
        loop = asyncio.get_running_loop()
        engine.calls = {1: loop.create_future()}
        real_add_reader = loop.add_reader

        def add_reader(fd, callback):  # as uvloop does
            real_add_reader(fd, callback)
            os.set_blocking(fd, False)

        loop.add_reader = add_reader
        engine.start()
        sender = threading.Thread(target=writer.send, args=(("result", 1, value, None),))
        sender.start()
        result = await asyncio.wait_for(engine.calls[1], 30)
        sender.join(10)
        return result

    assert asyncio.run(scenario()) == value and engine.error is None
