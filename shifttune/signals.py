"""Stop signals as every command treats them: SIGTERM (a `timeout`, a kill, a CI's cancel) stops a command as Ctrl-C
does, so the code that handles Ctrl-C (stop the workers or servers, keep the results so far) handles both; the exit
status is then the shell's 128 + the signal.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """SIGTERM raised as Ctrl-C raises KeyboardInterrupt (see `sigterm_like_ctrl_c`); `signum` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def sigterm_like_ctrl_c() -> Iterator[None]:
    """While inside: SIGTERM raises `Stopped`, a KeyboardInterrupt, instead of ending the process at once (which leaves
    workers and servers behind and writes no results). Not the main thread: no change."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def stop_signal(e: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: SIGTERM for `Stopped`, else SIGINT."""
    return getattr(e, "signum", signal.SIGINT)


def exit_status(signum: int | None) -> int:
    """The shell's convention for a command a signal stopped: 128 + the signal (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (signum or signal.SIGINT)
