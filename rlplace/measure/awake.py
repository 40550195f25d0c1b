"""Keep the host's cores awake while ranks are timed, at the lowest CPU priority there is.

On a virtual machine a core with nothing to run halts, and the hypervisor may then take the
physical core away: the next wake-up (a message arriving for a rank blocked in ``recv``)
costs hundreds of microseconds to milliseconds, at random. A placement with many
messages then measures 2-3x slower from one run to the next, and a message costs a step
far more than the link does. The simulator models devices that are never descheduled, so
while a measurement runs one spinner process per core fills every idle moment:

* under ``SCHED_IDLE`` (Linux; elsewhere nice 19), so a rank or anything else that becomes
  runnable preempts it at once, and in an autogroup of nice 19: with autogroup scheduling
  (``/proc/sys/kernel/sched_autogroup_enabled``) the kernel first shares a core between
  sessions, and ``SCHED_IDLE`` only ranks threads inside one, so a spinner in its own session
  at the default group nice took half of a busy rank's core (issue 11: a two-rank step
  measured 94 ms with spinners, 52 ms without);
* it exits by itself within ~10 ms once the process that started it is gone, so a killed
  launcher leaves no busy loop behind.

Whether it helps depends on the host: `rlplace calibrate` times it
(`rlplace.measure.calibrate.keep_awake_check`) and the profile records the answer, which
measurements then follow by default.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

#: What each spinner runs: lowest priority, then spin until the parent process is gone.
SPINNER_SOURCE = """
import os, sys
parent = int(sys.argv[1])
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    os.nice(19)
try:  # its own session is its own autogroup: without this, the group competes as an equal
    with open("/proc/self/autogroup", "w") as group:
        group.write("19")
except OSError:
    pass
while os.getppid() == parent:
    for _ in range(100_000):
        pass
"""


def spinner_count() -> int:
    """One spinner per core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def cores_kept_awake(enabled: bool = True, count: int | None = None) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Run one idle-priority spinner per core (``count`` overrides) inside the block.

    Yields the spinner processes (empty when not ``enabled``); they are killed and reaped
    when the block exits, however it exits.
    """
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        if enabled:
            command = [sys.executable, "-S", "-c", SPINNER_SOURCE, str(os.getpid())]
            quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            for _ in range(spinner_count() if count is None else count):
                spinners.append(subprocess.Popen(command, start_new_session=True, **quiet))
        yield spinners
    finally:
        for spinner in spinners:
            with contextlib.suppress(ProcessLookupError):
                os.kill(spinner.pid, signal.SIGKILL)
        for spinner in spinners:
            spinner.wait()
