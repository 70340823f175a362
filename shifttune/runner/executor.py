"""Starts and drives the ranks: rank 0 (this process) drives, ranks 1..P-1 run `worker_loop`.

Two launch styles share this code. Default: the engine spawns its workers itself and rendezvous over
TCP on 127.0.0.1. Under `torchrun` (env:// rendezvous, WORLD_SIZE/RANK set), every process builds the
engine; ranks > 0 serve the driver from inside the engine's constructor and exit when it shuts down.
Every rank reports load errors through one `all_gather_object`, so a bad checkpoint on any rank
becomes one clear error on the driver instead of a hang.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist

from shifttune.config import ConfigError, EngineConfig
from shifttune.parallel.state import (
    ParallelState,
    destroy_parallel_state,
    init_parallel_state,
    symm_mem_used_in_this_process,
)
from shifttune.runner.model_runner import ModelRunner
from shifttune.signals import STOP_SIGNALS


class WorkerError(RuntimeError):
    """A rank failed to start or to run a step."""


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the rendezvous of spawned ranks, test servers)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agree(state, world_size: int, error: str | None, value: int = 0) -> list[int]:
    """Every rank's (error, value): the first error is raised on every rank, else the values come back."""
    reports = [(error, value)]
    if state.cpu_group is not None:
        reports = [None] * world_size
        dist.all_gather_object(reports, (error, value), group=state.cpu_group)
    errors = [e for e, _ in reports if e]
    if errors:
        raise WorkerError(errors[0])
    return [v for _, v in reports]


def _error(rank: int, e: Exception) -> str:
    return f"rank {rank}: {type(e).__name__}: {e}\n{traceback.format_exc()}"


def _start_rank(config: EngineConfig, rank: int, init_method: str | None) -> tuple[ModelRunner | None, ParallelState]:
    """Joins the groups, builds the runner, agrees on the KV cache size, allocates it (and captures the
    graphs). A failure on any rank at either stage is raised on every rank. Returns (runner, state)."""
    state = init_parallel_state(config.parallel, rank, config.device, init_method, config.all_reduce,
                                config.torch_dtype)  # fmt: skip
    world = config.parallel.world_size
    runner, error = None, None
    try:
        runner = ModelRunner(config, state)
    except Exception as e:  # reported to every rank below, not raised here
        error = _error(rank, e)
    try:
        runner_blocks = _agree(state, world, error, runner.num_kv_blocks if runner else 0)
        runner.num_kv_blocks = min(runner_blocks)
        for stage in (lambda: runner.allocate_kv_cache(runner.num_kv_blocks), runner.capture_graphs):
            try:
                stage()
            except Exception as e:
                error = _error(rank, e)
            _agree(state, world, error)
    except BaseException:  # another rank's error (WorkerError), Ctrl-C, a broken collective
        leave(runner, state)
        raise
    return runner, state


def leave(runner: ModelRunner | None, state: ParallelState | None, timeout: float | None = None) -> None:
    """A rank's last act: drops its runner's graphs, weights and cache, then leaves the process group (waiting at
    most `timeout` seconds: a rank that died leaves the others' NCCL teardown waiting; the driver then goes on).
    NOTE: in this order: NCCL waits for the graphs that captured its collectives to die (StepGraphs.release)."""
    if runner is not None:
        runner.release()
    if timeout is None:
        destroy_parallel_state(state)
        return
    leaving = threading.Thread(target=destroy_parallel_state, args=(state,), daemon=True)
    leaving.start()
    leaving.join(timeout)
    if leaving.is_alive():  # NOTE: the group stays open: a new multi-rank engine cannot start in this process
        print(f"shifttune: the process group did not close within {timeout:.0f} s; going on", file=sys.stderr)


def worker_loop(runner: ModelRunner, state) -> None:
    while True:
        msg = [None]
        dist.broadcast_object_list(msg, src=0, group=state.cpu_group)
        method, args = pickle.loads(msg[0])
        if method == "shutdown":
            return
        _run(runner, method, args)


def _run(runner: ModelRunner, method: str | Callable, args: tuple):
    return getattr(runner, method)(*args) if isinstance(method, str) else method(runner, *args)


def _spawned_worker(config: EngineConfig, rank: int, init_method: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the driver, which shuts us down
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked from birth (`_start_worker`) until now
    parent = os.getppid()

    def watch_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        runner, state = _start_rank(config, rank, init_method)
    except WorkerError:
        return  # _start_rank has left the group; the driver reports it
    try:
        worker_loop(runner, state)
    finally:
        leave(runner, state)


def _start_worker(proc: mp.process.BaseProcess) -> mp.process.BaseProcess:
    """Starts a spawned worker with SIGINT blocked, which it inherits.
    NOTE: a Ctrl-C while the new interpreter imports torch (seconds) would otherwise kill it with a traceback before
    `_spawned_worker` can ignore SIGINT; blocked, the signal waits and is then ignored."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return proc


@contextmanager
def _stop_signals_after_call():
    """Ctrl-C or SIGTERM during a call is delivered after it, to the handler that was in place: leaving mid-step would
    strand the other ranks in a collective, and the clean shutdown that follows could not reach them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda sig, _: received.append(sig)) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if received:
            signal.raise_signal(received[0])


class Executor:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.procs: list[mp.process.BaseProcess] = []
        self._closed = False
        self.last_message_bytes = 0
        p = config.parallel.world_size
        if launched_by_torchrun():
            rank, init_method = int(os.environ["RANK"]), "env://"
        else:
            rank, init_method = 0, None
            if p > 1 and config.all_reduce == "symm_mem" and symm_mem_used_in_this_process():
                raise ConfigError(
                    "symm_mem: an earlier engine of this process set up symmetric memory, and torch cannot set it "
                    "up again with new workers; start this engine in a new process, or use nccl",
                    field="all_reduce",
                )
            if p > 1:
                init_method = f"tcp://127.0.0.1:{config.master_port or free_port()}"
                ctx = mp.get_context("spawn")
                for r in range(1, p):
                    self.procs.append(_start_worker(ctx.Process(target=_spawned_worker, args=(config, r, init_method),
                                                                daemon=True)))  # fmt: skip
                threading.Thread(target=self._watch_workers, daemon=True).start()
        self.rank = rank
        try:
            self.runner, self.state = _start_rank(config, rank, init_method)
        except BaseException:
            self.shutdown()
            raise
        if rank != 0:  # torchrun worker: serve the driver until it shuts down, then leave
            try:
                worker_loop(self.runner, self.state)
            finally:
                leave(self.runner, self.state)
            sys.exit(0)

    def _watch_workers(self) -> None:
        """A dead worker leaves the other ranks waiting in a collective forever (NCCL, or the TCP
        rendezvous): say which rank died and end the process unless a clean shutdown is under way."""
        from multiprocessing.connection import wait

        ready = wait([p.sentinel for p in self.procs])
        if self._closed:
            return
        rank, proc = next((i + 1, p) for i, p in enumerate(self.procs) if p.sentinel in ready)
        proc.join()  # the sentinel fires before the process is reaped: join to read its exit code
        print(
            f"shifttune: worker rank {rank} exited with code {proc.exitcode}; the engine cannot continue",
            file=sys.stderr,
        )
        time.sleep(3.0)  # a gloo error may surface in the driver and shut down cleanly meanwhile
        if not self._closed:
            os._exit(1)

    def collective_rpc(self, method: str | Callable, *args):
        """Runs `runner.method(*args)`, or `method(runner, *args)` for a module-level function (sent by
        reference), on every rank; returns rank 0's result."""
        if self.state.cpu_group is None:
            return _run(self.runner, method, args)
        self._check_workers()
        payload = pickle.dumps((method, args), protocol=pickle.HIGHEST_PROTOCOL)
        self.last_message_bytes = len(payload)  # what a step costs to send grows with the batch only
        with _stop_signals_after_call():
            try:
                dist.broadcast_object_list([payload], src=0, group=self.state.cpu_group)
                return _run(self.runner, method, args)
            except RuntimeError:  # a rank that died mid-call breaks the collective (gloo: "Connection reset")
                self._check_workers(wait_s=1.0)  # says which one, instead of the transport's error
                raise

    def _check_workers(self, wait_s: float = 0.0) -> None:
        """WorkerError if a spawned rank has exited; `wait_s`: how long to give one that is dying to be reaped."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = [(i + 1, p.exitcode) for i, p in enumerate(self.procs) if not p.is_alive()]
            if dead:
                raise WorkerError(f"worker rank {dead[0][0]} exited (code {dead[0][1]}); the engine cannot continue")
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        state = getattr(self, "state", None)
        if state is not None and state.cpu_group is not None and all(p.is_alive() for p in self.procs):
            # In a thread: if a rank is stuck in a collective, the broadcast would wait forever.
            def tell() -> None:
                try:
                    dist.broadcast_object_list([pickle.dumps(("shutdown", ()))], src=0, group=state.cpu_group)
                except Exception:
                    pass

            sender = threading.Thread(target=tell, daemon=True)
            sender.start()
            sender.join(timeout=5)
        # drop weights, cache and graphs now (even where a caller still holds the runner): a tool that builds
        # several engines in turn needs the memory. NOTE: before the workers are waited for: NCCL's communicator
        # teardown waits for the other ranks' (a worker left alone in it stayed there until it was terminated).
        leave(getattr(self, "runner", None), state, timeout=30)
        self.runner = None
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        gc.collect()
        if self.config.device == "cuda":
            torch.cuda.empty_cache()
