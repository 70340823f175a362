"""`shifttune serve`'s live view in a terminal: while the server runs, the view (`shifttune top` in its
"serve" role) owns the terminal in a child process, and everything the server, its engine core and its
workers write goes to a log file that the view shows in its log pane.

Why a child process rather than the view on the server's event loop or in a thread of it: the HTTP
process is the one that must keep up with the engine (it parses requests, feeds the core, streams
every token), and a Textual refresh is milliseconds of Python that would hold that loop or the GIL
(numbers in docs/tui.md). As a separate process the view costs the server two small GETs per refresh
(`/metrics`, `/v1/shifttune/live`), and the same code serves `shifttune top` for any server.

The contract with the child: its exit code 0 (the user pressed q) asks the server to stop gracefully;
another code (it crashed) gives the terminal back to plain logs and the server keeps serving; when the
server stops for another reason it closes the pipe the child watches (`--attach-fd`), and the child ends.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from shifttune.tui.snapshot import REFRESH_S

logger = logging.getLogger("shifttune.server")


def local_url(host: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on host:port."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class TerminalView:
    """The launcher's `ServerView` for a terminal (see `shifttune.server.launcher`)."""

    def __init__(self, url: str, log_file: Path, api_key: str | None = None, interval_s: float = REFRESH_S):
        self.url, self.log_file, self.api_key, self.interval_s = url, log_file, api_key, interval_s
        self.proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._terminal: tuple[int, int] | None = None  # the saved stdout / stderr of the terminal
        self._pipe: int | None = None

    def start(self, request_stop: Callable[[], None]) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)  # checked by `serve`; made once the port is bound
        log = open(self.log_file, "w", buffering=1)
        log.write(f"shifttune serve: {' '.join(sys.argv)}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        self._terminal = (os.dup(1), os.dup(2))
        read, self._pipe = os.pipe()
        env = os.environ | ({"SHIFTTUNE_API_KEY": self.api_key} if self.api_key else {})
        cmd = [sys.executable, "-m", "shifttune.cli", "top", "--url", self.url, "--interval", str(self.interval_s),
               "--attach-fd", str(read), "--log-file", str(self.log_file)]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=self._terminal[0], stderr=self._terminal[1], pass_fds=(read,), env=env)
        os.close(read)
        os.dup2(log.fileno(), 1)  # NOTE: at the descriptor level, so the engine's processes inherit the file
        os.dup2(log.fileno(), 2)
        log.close()
        threading.Thread(target=self._watch, args=(request_stop,), name="live-view-watch", daemon=True).start()

    def _watch(self, request_stop: Callable[[], None]) -> None:
        code = self.proc.wait()
        with self._lock:
            if self._stopping:
                return
        if code == 0:
            logger.info("stopping (q in the live view)")  # into the log file, and below on the terminal
        self._restore()
        if code == 0:
            logger.info("stopping (q in the live view)")
            request_stop()
        else:
            logger.warning("the live view exited with code %s; plain logs from here (also in %s)", code, self.log_file)

    def _restore(self) -> None:
        """Gives stdout and stderr back to the terminal (once)."""
        with self._lock:
            if self._terminal is None:
                return
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, saved in zip((1, 2), self._terminal):
                os.dup2(saved, fd)
                os.close(saved)
            self._terminal = None

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
        if self._pipe is not None:
            os.close(self._pipe)  # the view sees EOF and ends
            self._pipe = None
        if self.proc is not None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                self.proc.wait(5)
        self._restore()
        print(f"the log of this session: {self.log_file}", file=sys.stderr)
