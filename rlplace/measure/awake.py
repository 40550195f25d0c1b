"""Keep the host's cores awake while ranks are timed, at the lowest CPU priority there is.

On a virtual machine a core with nothing to run halts, and the hypervisor may then take the
physical core away: the next wake-up (a message arriving for a rank blocked in ``recv``)
costs hundreds of microseconds to milliseconds, at random. A placement with many
messages then measures 2-3x slower from one run to the next, and a message costs a step
far more than the link does. The simulator models devices that are never descheduled, so
while a measurement runs one spinner process per core fills every idle moment:

* under ``SCHED_IDLE`` (Linux; elsewhere nice 19), so a rank or anything else that becomes
  runnable preempts it at once, and it takes no measurable time from them;
* it exits by itself within ~10 ms once the process that started it is gone, so a killed
  launcher leaves no busy loop behind.

Measured here (2-core VM, 12-layer chain split layer by layer, 22 messages per step, three
runs of 20 steps): median step 19.6-59.8 ms with the cores left to halt, 16.1-20.0 ms with
them kept awake; the unsplit chain 8.1-8.8 ms either way.
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
