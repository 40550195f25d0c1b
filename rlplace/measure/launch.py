"""Start the ranks of a measurement or calibration on this host, watch them, clean up.

`launch_job` starts ``python -m rlplace.measure.distributed`` once per rank as subprocesses
in their own process groups; a rank that dies or a job that runs past its timeout gets every
rank killed and reaped, and a clear `MeasureFailure`. Across hosts, start the same entry
point with torchrun on each host instead (see `rlplace.measure.distributed`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlplace.errors import RlplaceError
from rlplace.measure.awake import cores_kept_awake

if TYPE_CHECKING:
    from rlplace.measure.ranks import MeasureJob

RESULT_FILE = "result.json"
NICE_VARIABLE = "RLPLACE_RANK_NICE"
#: The launcher's pid, so that a rank exits when the launcher is gone (`rlplace.interrupt.die_with_parent`).
LAUNCHER_VARIABLE = "RLPLACE_LAUNCHER_PID"
#: glibc settings for the ranks: keep freed memory (up to 32 MB blocks) for reuse instead of
#: unmapping it, so an activation does not page-fault afresh every step; this is what
#: PyTorch's caching allocator does on GPUs. Variables already set are left alone.
CACHING_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_TOP_PAD_": str(64 << 20)}


class MeasureFailure(RlplaceError):
    """A measurement that crashed, hung or timed out; the message says which rank and why."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def launch_local(job: MeasureJob, *, nice: int | None = None, python: str | None = None, keep_awake: bool | None = None) -> dict[str, Any]:
    """Run a measurement with one local subprocess per rank; rank 0's result (`launch_job`)."""
    return launch_job(job.to_json(), job.num_devices, timeout_s=job.timeout_s, threads=job.threads, nice=nice, python=python, keep_awake=keep_awake)


def launch_job(
    job: Mapping[str, Any],
    num_ranks: int,
    *,
    timeout_s: float,
    threads: int = 1,
    nice: int | None = None,
    python: str | None = None,
    keep_awake: bool | None = None,
    module: str = "rlplace.measure.distributed",
) -> dict[str, Any]:
    """Run ``job`` (a JSON-able dict) with one local subprocess per rank; return rank 0's result.

    ``module`` is the rank entry point (``python -m MODULE --job JOB --out DIR``, with the
    ``main`` contract of `rlplace.measure.distributed`: rank 0 writes DIR/result.json, a
    failing rank DIR/error-<rank>.txt); `rlplace.runtime.worker` runs pipelines through it.

    ``nice`` sets the ranks' CPU priority (negative values need root; see
    `rlplace.measure.distributed._apply_priority`); None gives them this process's own nice
    value when it is not 0 (``nice -n -5 rlplace measure ...``), for their sessions too: each
    rank runs in a session of its own, and with autogroup scheduling a plain inherited nice
    value would not count against other sessions.
    ``keep_awake`` keeps the host's cores from halting while the ranks run
    (`rlplace.measure.awake`); None leaves it off (a calibration profile says whether it helps
    on this host, `rlplace.profile.Profile.keep_awake`; callers pass that).

    Raises:
        MeasureFailure: a rank exited with an error or a signal, or the job ran past
            ``timeout_s``. Every rank is killed (its whole process group) and reaped before
            this returns or raises.
    """
    if nice is None and hasattr(os, "getpriority"):
        nice = os.getpriority(os.PRIO_PROCESS, 0) or None
    with tempfile.TemporaryDirectory(prefix="rlplace-measure-") as folder, cores_kept_awake(bool(keep_awake)):
        job_file = Path(folder) / "job.json"
        job_file.write_text(json.dumps(dict(job)), encoding="utf-8")
        out = Path(folder) / "out"
        port = free_port()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            for rank in range(num_ranks):
                environment = {
                    **os.environ,
                    "RANK": str(rank),
                    "LOCAL_RANK": str(rank),
                    "WORLD_SIZE": str(num_ranks),
                    "MASTER_ADDR": "127.0.0.1",
                    "MASTER_PORT": str(port),
                    LAUNCHER_VARIABLE: str(os.getpid()),
                }
                if threads > 0:
                    environment["OMP_NUM_THREADS"] = str(threads)
                for variable, value in CACHING_MALLOC.items():
                    environment.setdefault(variable, value)
                if nice is not None:
                    environment[NICE_VARIABLE] = str(nice)
                command = [python or sys.executable, "-m", module, "--job", str(job_file), "--out", str(out)]
                with (Path(folder) / f"stderr-{rank}.txt").open("wb") as stderr:  # a file: a full pipe would block the rank
                    processes.append(subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True))
            _wait(processes, timeout_s, out)
        finally:
            stop_processes(processes)
        result_file = out / RESULT_FILE
        if not result_file.is_file():
            raise MeasureFailure("the ranks exited without a result from rank 0")
        return json.loads(result_file.read_text(encoding="utf-8"))


def _wait(processes: Sequence[subprocess.Popen[bytes]], timeout_s: float, out: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        codes = [process.poll() for process in processes]
        failed = [(rank, code) for rank, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            raise MeasureFailure(_failure_message(failed, out))
        if all(code == 0 for code in codes):
            return
        if time.monotonic() > deadline:
            running = [rank for rank, code in enumerate(codes) if code is None]
            raise MeasureFailure(f"timed out after {timeout_s:g} s (ranks {running} still running); raise --timeout or check the model and devices")
        time.sleep(0.02)


def _failure_message(failed: Sequence[tuple[int, int]], out: Path) -> str:
    """Name the rank that failed first: a rank that died without reporting (its peers then
    fail with connection errors), else the first rank's own error report."""
    silent, reported = [], []
    for rank, code in failed:
        error_file = out / f"error-{rank}.txt"
        if error_file.is_file():
            reported.append(f"rank {rank} failed: {error_file.read_text(encoding='utf-8').splitlines()[0]}")
        elif code < 0:
            silent.append(f"rank {rank} was killed by signal {signal.Signals(-code).name}{_stderr_tail(out, rank)}")
        else:
            silent.append(f"rank {rank} exited with status {code} without reporting an error{_stderr_tail(out, rank)}")
    reports = silent + reported
    return reports[0] + (f" (and {len(reports) - 1} more ranks failed)" if len(reports) > 1 else "")


def _stderr_tail(out: Path, rank: int) -> str:
    """The last non-empty line the rank wrote to stderr, as ``: <line>`` (or nothing)."""
    path = out.parent / f"stderr-{rank}.txt"
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f": {lines[-1][:300]}" if lines else ""


def stop_processes(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """Kill each process's group (the rank and anything it started) and reap it."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def report_rank_outcome(out: Path, work: Callable[[int], dict[str, Any] | None]) -> int:
    """The body of a rank's entry point: tie the rank to its launcher, run ``work(rank)``, and
    leave what the launcher reads in ``out``: ``result.json`` (written atomically, for the rank
    that returns a result) or ``error-<rank>.txt`` (the first line of the error, then the
    traceback). Returns the rank's exit status (0 or 1).
    """
    from rlplace.interrupt import die_with_parent

    launcher = os.environ.get(LAUNCHER_VARIABLE)
    die_with_parent(int(launcher) if launcher else None)  # a launcher killed by any signal leaves no orphaned rank
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = work(rank)
        if result is not None:
            out.mkdir(parents=True, exist_ok=True)
            temporary = out / f".{RESULT_FILE}.tmp"
            temporary.write_text(json.dumps(result), encoding="utf-8")
            temporary.replace(out / RESULT_FILE)
        return 0
    except BaseException as exc:  # report any failure of this rank to the launcher, then fail
        out.mkdir(parents=True, exist_ok=True)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        (out / f"error-{rank}.txt").write_text(f"{type(exc).__name__}: {message}\n{traceback.format_exc()}", encoding="utf-8")
        return 1
