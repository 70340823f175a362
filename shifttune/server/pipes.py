"""Writing messages to a one-way pipe in order, without a thread hop when the pipe has room and without ever
blocking the caller on a reader that stalls.

Both server processes write from a thread that must not block (the engine core's step loop, the HTTP event
loop). Handing every message to a writer thread costs a GIL hand-off: the writer wakes, then waits for the
GIL while the caller runs Python, up to the interpreter's switch interval (5 ms) per message, and every
token's trip to its client pays it. So the caller writes a message itself when nothing is queued before it
and the pipe is nearly empty (Linux tells how full it is: FIONREAD, F_GETPIPE_SZ); otherwise (a busy or
stalled reader, or no way to tell) the writer thread does.
"""

from __future__ import annotations

import array
import fcntl
import queue
import termios
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler

HEADER_BYTES = 16  # Connection's length prefix (4 bytes, or 4 + 8 past 2 GiB), rounded up
PIPE_BYTES = 1 << 20  # asked for at start (Linux's default limit for a user, /proc/sys/fs/pipe-max-size)


def grow_pipe(fd: int, size: int = PIPE_BYTES) -> None:
    """Asks Linux for a pipe of `size` bytes (64 KiB by default); keeps what it has where that is refused."""
    op = getattr(fcntl, "F_SETPIPE_SZ", None)
    if op is not None:
        try:
            fcntl.fcntl(fd, op, size)
        except OSError:  # above the system's limit for this user, or not a pipe
            pass


def pipe_capacity(fd: int) -> int | None:
    """Bytes the pipe holds (Linux), or None when the platform cannot tell."""
    op = getattr(fcntl, "F_GETPIPE_SZ", None)
    if op is None:
        return None
    try:
        return fcntl.fcntl(fd, op)
    except OSError:
        return None


def pipe_unread(fd: int) -> int | None:
    """Bytes written to the pipe and not read yet, or None when the platform cannot tell."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, buf, True)
    except OSError:
        return None
    return buf[0]


class PipeWriter:
    """`send(msg)` pickles `msg` and writes it now if that cannot block, else queues it for the writer thread.

    NOTE: a write may go ahead only while unread + message fits in half the pipe: Linux pipes hold pages,
    not bytes, and a write into a pipe with fewer bytes free than its size, or with every page slot taken
    by small leftovers, would block. Half the capacity leaves slots for any leftovers of earlier writes.
    """

    def __init__(self, conn: Connection, name: str, on_sent: Callable[[object], None] | None = None):
        self.conn, self.on_sent = conn, on_sent
        self.fd = conn.fileno()
        # NOTE: a 64 KiB pipe holds ~6 adds of 1k-token prompts: a burst of them then queued for the thread, which
        # waited for the GIL behind the event loop's streams (512 prompts at once reached the core over 0.6 s)
        grow_pipe(self.fd)
        cap = pipe_capacity(self.fd)
        self.direct_limit = cap // 2 if cap else 0  # 0: always through the thread
        self.broken = False  # the reader is gone: messages are dropped (the caller learns it elsewhere)
        self._lock = threading.Lock()
        self._backlog = 0  # counted messages queued for the thread and not written yet
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send(self, msg: tuple, tag: object = None) -> None:
        """Writes `msg` in order after every earlier message; `on_sent(tag)` once it is in the pipe. Not from a
        signal handler (use `send_queued`)."""
        buf = ForkingPickler.dumps(msg)
        with self._lock:
            if not self._backlog and self._has_room(len(buf)):
                self._write(buf)
                wrote = True
            else:
                self._backlog += 1
                wrote = False
        if wrote:
            self._sent(tag)
        else:
            self._queue.put((buf, tag, True))

    def send_queued(self, msg: tuple) -> None:
        """Through the thread only, taking no lock: safe in a signal handler. Only for a last message (stop):
        it may be overtaken by a later `send`."""
        self._queue.put((ForkingPickler.dumps(msg), None, False))

    def close(self, timeout_s: float = 10.0) -> None:
        """Ends the thread once what it holds is written."""
        self._queue.put(None)
        self._thread.join(timeout_s)

    def _has_room(self, size: int) -> bool:
        if self.broken:
            return True  # dropped at once
        unread = pipe_unread(self.fd) if self.direct_limit else None
        return unread is not None and unread + size + HEADER_BYTES <= self.direct_limit

    def _write(self, buf: bytes) -> None:
        if self.broken:
            return
        try:
            self.conn.send_bytes(buf)
        except OSError:  # the reader is gone; its own checks (a parent watcher, EOF on the other pipe) act on it
            self.broken = True

    def _sent(self, tag: object) -> None:
        if self.on_sent is not None and tag is not None and not self.broken:
            self.on_sent(tag)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            buf, tag, counted = item
            if counted:  # nothing else writes while the backlog is not empty
                self._write(buf)
                with self._lock:
                    self._backlog -= 1
            else:  # a direct write may be under way
                with self._lock:
                    self._write(buf)
            self._sent(tag)
