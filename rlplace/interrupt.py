"""SIGTERM and SIGHUP handled like SIGINT, and child processes that die with their parent.

`signals_as_exceptions` turns SIGTERM and SIGHUP into a `Terminated` exception raised in the
main thread, so that every ``finally`` and ``with`` block runs as it does for Ctrl-C (ranks
and keep-awake spinners killed and reaped, temporary folders removed); the ``rlplace``
command then exits 128 + the signal number (143 for SIGTERM, 129 for SIGHUP).

`die_with_parent` makes a child process (a measurement rank) exit when the process that
started it is gone, even when that one was killed with SIGKILL and could clean up nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

#: Signals that end a command like Ctrl-C does.
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
#: Seconds between checks of the parent process in the watchdog thread of `die_with_parent`.
PARENT_POLL_S = 0.5
_PR_SET_PDEATHSIG = 1


class Terminated(BaseException):
    """Raised in the main thread when the process receives SIGTERM or SIGHUP.

    A `BaseException`, like `KeyboardInterrupt`, so that ``except Exception`` blocks let it pass.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's convention for a process ended by a signal: 128 + the signal number."""
        return 128 + self.signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise `Terminated` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _raise_terminated) for signum in TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def die_with_parent(parent: int | None = None, poll_s: float = PARENT_POLL_S) -> None:
    """End this process when its parent (pid ``parent``, default the current parent) dies:
    SIGKILL from the kernel on Linux (``PR_SET_PDEATHSIG``), and everywhere a daemon thread
    that polls ``os.getppid()``. Pass the launcher's pid to catch a launcher that died even
    before this call."""
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the kernel was told to watch it
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="rlplace-parent-watchdog", daemon=True).start()
