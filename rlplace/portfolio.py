"""A portfolio of independent searches run at once, one per CPU core, in forked processes.

A search of a fixed wall-time budget (``policy``, ``local-search`` with ``budget_s``) ends at
a different placement for every seed; on pipelined and mixed-cluster problems single runs
differ by several per cent. With spare cores, running ``workers`` searches of different
seeds side by side and keeping the best costs no wall time and removes much of that spread.

`run_forked` runs the first task in this process and every other one in a child made with
``os.fork``: a child inherits everything already built (the graph, the simulator's compiled
kernels, a loaded checkpoint), so nothing is pickled on the way in, and only the child's
result comes back (pickled through a pipe between two processes of this one program). Fork
exists on Linux; elsewhere (and where it is unsafe, macOS) `default_workers` is 1 and more
workers is an error. A program that embeds rlplace and runs threads of its own holding locks
the search needs should pass ``workers=1``: a lock held at the fork stays held in the child.
(Python threads are not a usable signal for that: importing transformers alone starts tqdm's
monitor thread, which is harmless.)
"""

from __future__ import annotations

import math
import os
import pickle
import select
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rlplace.errors import RlplaceError
from rlplace.interrupt import die_with_parent

T = TypeVar("T")

#: Default number of searches side by side: past a few, the best of n runs gains little more.
MAX_DEFAULT_WORKERS = 4
#: Upper limit of ``workers`` a caller may ask for.
MAX_WORKERS = 64


def fork_available() -> bool:
    """Whether `run_forked` can run tasks in child processes here (Linux)."""
    return hasattr(os, "fork") and sys.platform.startswith("linux")


def available_cores(cgroup_root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> int:
    """CPU cores this process may run on: its affinity mask where the platform has one, at
    most the CPU quota of its cgroup under ``cgroup_root`` rounded up (`cgroup_cpu_quota`; in a container,
    its own: a container given 2 CPUs of a 64-core host sees 64 cores in its mask, and 4
    searches on 2 CPUs' worth of time would each get half a core)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root, membership)
    return max(1, min(cores, math.ceil(quota)) if quota is not None else cores)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")) -> float | None:
    """CPUs' worth of time per second this process's cgroup allows, None without a limit or a
    readable file: cgroup v2 ``cpu.max``, else v1 ``cpu/cpu.cfs_quota_us`` over
    ``cpu.cfs_period_us``. The process's own cgroup is read from ``membership`` (its path under
    ``root``, e.g. ``0::/system.slice/job.scope``); a limit on any cgroup between it and the
    root applies, so the smallest one found on that path counts."""
    v2_path, v1_path = _cgroup_paths(membership)
    quotas = [quota for directory in _up_to(root, v2_path) if (quota := _v2_quota(directory)) is not None]
    if not quotas:
        quotas = [quota for directory in _up_to(root / "cpu", v1_path) if (quota := _v1_quota(directory)) is not None]
    return min(quotas) if quotas else None


def _cgroup_paths(membership: Path) -> tuple[str, str]:
    """(v2 path, v1 ``cpu`` controller path) of this process's cgroups, ``/`` where unknown."""
    v2, v1 = "/", "/"
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return v2, v1
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            v2 = path or "/"
        elif "cpu" in controllers.split(","):
            v1 = path or "/"
    return v2, v1


def _up_to(root: Path, path: str) -> list[Path]:
    """``root``/``path`` and each folder above it up to ``root`` itself."""
    parts = [part for part in path.split("/") if part and part != ".."]
    return [root.joinpath(*parts[:depth]) for depth in range(len(parts), -1, -1)]


def _v2_quota(directory: Path) -> float | None:
    try:
        quota, period = (directory / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def default_workers() -> int:
    """Searches side by side when the caller does not say: one per available core, at most
    `MAX_DEFAULT_WORKERS`; 1 where fork is unavailable."""
    return min(MAX_DEFAULT_WORKERS, available_cores()) if fork_available() else 1


def resolve_workers(workers: int | None) -> int:
    """``workers``, or `default_workers` for None; `RlplaceError` unless it is in
    [1, `MAX_WORKERS`] and, above 1, fork is available."""
    if workers is None:
        return default_workers()
    if not 1 <= workers <= MAX_WORKERS:
        raise RlplaceError(f"workers must be between 1 and {MAX_WORKERS}, got {workers}")
    if workers > 1 and not fork_available():
        raise RlplaceError(f"workers={workers} needs os.fork (Linux); on {sys.platform} pass workers=1")
    return workers


def worker_seed(seed: int, worker: int) -> int:
    """Seed of portfolio member ``worker`` (0-based): member 0 keeps ``seed``, so one worker is
    the plain search, and the others draw streams no nearby seed's member 0 uses."""
    return seed + 1_000_003 * worker


def run_seeds(search: Callable[[int], T], seed: int, workers: int) -> list[T]:
    """``search(seed')`` for each of ``workers`` members at once (`run_forked`), member k with
    seed' = `worker_seed` (``seed``, k); results in member order."""
    return run_forked([lambda k=k: search(worker_seed(seed, k)) for k in range(workers)])


def run_forked(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``tasks`` concurrently: ``tasks[0]`` here, each other one in a forked child; return
    their results in order. A child that raises or dies makes this raise `RlplaceError` naming
    it (after every other child has ended); interrupting the parent kills the children, and a
    parent killed outright takes them with it (`rlplace.interrupt.die_with_parent`)."""
    if not tasks:
        return []
    if len(tasks) > 1 and not fork_available():
        raise RlplaceError(f"{len(tasks)} searches side by side need os.fork (Linux); on {sys.platform} use one worker")
    children: list[tuple[int, int]] = []  # (pid, read end of its pipe)
    parent = os.getpid()
    try:
        for task in tasks[1:]:
            children.append(_spawn(task, parent))
        own = tasks[0]()
        results: list[Any] = [own]
        failures: list[str] = []
        for number, (pid, read_fd) in enumerate(children, start=1):
            payload = _read_all(read_fd)
            os.close(read_fd)
            _, status = os.waitpid(pid, 0)
            children[number - 1] = (0, -1)
            outcome = _outcome(payload, status)
            if outcome[0] == "ok":
                results.append(outcome[1])
            else:
                failures.append(f"search {number}: {outcome[1]}")
        if failures:
            raise RlplaceError("a search of the portfolio failed: " + "; ".join(failures))
        return results
    finally:
        for pid, read_fd in children:
            if pid:
                _kill(pid)
                os.close(read_fd)


def run_until(task: Callable[[], T], deadline: float) -> T | None:
    """``task()`` in a forked child; its result when the child ends by ``deadline``
    (`time.perf_counter` seconds), else None, the child killed at the deadline. A task that
    raises makes this raise `RlplaceError`. Needs `fork_available`."""
    if not fork_available():
        raise RlplaceError(f"a task with a deadline needs os.fork (Linux); on {sys.platform} use one worker")
    pid, read_fd = _spawn(task, os.getpid())
    chunks: list[bytes] = []
    try:
        while True:
            left = deadline - time.perf_counter()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                return None  # the finally kills it
            chunk = os.read(read_fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        pid = 0
        outcome = _outcome(b"".join(chunks), status)
        if outcome[0] != "ok":
            raise RlplaceError(f"a task with a deadline failed: {outcome[1]}")
        return outcome[1]
    finally:
        if pid:
            _kill(pid)
        os.close(read_fd)


def _spawn(task: Callable[[], Any], parent: int) -> tuple[int, int]:
    """Fork a child that runs ``task`` (`_child`): (its pid, the read end of its result pipe)."""
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns when a process with threads forks. The children run the
        # search single-threaded (numpy, numba, torch with one thread) and leave with
        # os._exit, never through the parent's atexit handlers or thread pools.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _child(task, write_fd, parent)
    os.close(write_fd)
    return pid, read_fd


def _outcome(payload: bytes, status: int) -> tuple[str, Any]:
    """A child's ("ok", result) or ("error", message) from what it sent and its wait status."""
    return pickle.loads(payload) if payload else ("error", f"exited with status {os.waitstatus_to_exitcode(status)} and no result")


def _child(task: Callable[[], Any], write_fd: int, parent: int) -> None:
    """Body of a forked child: run ``task``, send ("ok", result) or ("error", message), exit;
    killed with ``parent`` even when that one dies by SIGKILL and can reap nothing."""
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        die_with_parent(parent)
        try:
            outcome: tuple[str, Any] = ("ok", task())
        except BaseException as error:  # the parent reports it
            outcome = ("error", f"{type(error).__name__}: {error}")
            code = 1
        with os.fdopen(write_fd, "wb") as pipe:
            pipe.write(pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL))
    finally:
        os._exit(code)


def _read_all(read_fd: int) -> bytes:
    chunks = []
    while chunk := os.read(read_fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass
