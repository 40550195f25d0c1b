"""Searches side by side (`rlplace.portfolio`): results in order, failures named, and a
portfolio never worse than the single search of the same seed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from rlplace import portfolio
from rlplace.cli import main
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.load import resolve_cluster
from rlplace.portfolio import MAX_WORKERS, resolve_workers, run_forked, run_until, worker_seed
from rlplace.simulate import Simulator
from rlplace.synthetic import layered

needs_fork = pytest.mark.skipif(not portfolio.fork_available(), reason="searches side by side need os.fork (Linux)")


@needs_fork
def test_each_task_runs_in_its_own_process_and_results_come_back_in_order() -> None:
    results = run_forked([lambda k=k: (k * k, os.getpid()) for k in range(3)])
    assert [value for value, _ in results] == [0, 1, 4]
    pids = [pid for _, pid in results]
    assert pids[0] == os.getpid()
    assert len(set(pids)) == 3


@needs_fork
def test_a_child_that_raises_or_dies_is_named_in_one_error() -> None:
    with pytest.raises(RlplaceError, match=r"search 1: ZeroDivisionError"):
        run_forked([lambda: 1, lambda: 1 // 0])
    with pytest.raises(RlplaceError, match=r"search 2: exited with status 3"):
        run_forked([lambda: 1, lambda: 2, lambda: os._exit(3)])


@needs_fork
def test_a_task_with_a_deadline_returns_its_result_or_none_with_the_child_killed(tmp_path: Path) -> None:
    """A task that ends in time gives its result (from another process); one that would sleep
    for a minute gives None at its deadline and its child is gone (its pid file names a dead
    process); one that raises is one error."""
    value, pid = run_until(lambda: (7 * 6, os.getpid()), time.perf_counter() + 30.0) or (None, None)
    assert value == 42 and pid != os.getpid()
    pid_file = tmp_path / "pid"

    def sleeper() -> int:
        pid_file.write_text(str(os.getpid()))
        time.sleep(60.0)
        return 1

    began = time.perf_counter()
    assert run_until(sleeper, time.perf_counter() + 0.5) is None
    assert time.perf_counter() - began < 30.0  # not the minute: the child was not waited for
    assert not psutil.pid_exists(int(pid_file.read_text()))
    with pytest.raises(RlplaceError, match=r"ZeroDivisionError"):
        run_until(lambda: 1 // 0, time.perf_counter() + 30.0)


@needs_fork
def test_children_die_with_a_parent_killed_outright(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import time
        from rlplace.portfolio import run_forked
        run_forked([lambda: time.sleep(600), lambda: time.sleep(600), lambda: time.sleep(600)])
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 60
        children: list[psutil.Process] = []
        while len(children) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
            children = psutil.Process(process.pid).children()
        assert len(children) == 2
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
    finally:
        process.kill()


def test_worker_counts_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert 1 <= resolve_workers(None) <= portfolio.MAX_DEFAULT_WORKERS
    for bad in (0, MAX_WORKERS + 1):
        with pytest.raises(RlplaceError, match="workers must be between"):
            resolve_workers(bad)
    monkeypatch.setattr(portfolio, "fork_available", lambda: False)
    assert resolve_workers(None) == 1
    assert resolve_workers(1) == 1
    with pytest.raises(RlplaceError, match=r"needs os\.fork"):
        resolve_workers(2)
    assert worker_seed(7, 0) == 7 and worker_seed(7, 1) != 8


def pipelined_case():
    graph = layered(60, seed=5, width=4)
    cluster = resolve_cluster("2xA100+2xT4")
    return graph, cluster, CostTable.build(graph, cluster)


@needs_fork
def test_the_policy_portfolio_is_repeatable_and_never_worse_than_its_first_member() -> None:
    """Member 0 is the single search of the same seed (same starts, same seed), so with a
    simulation budget the portfolio is never worse than it; the others only add."""
    from rlplace.policy_method import search

    graph, cluster, costs = pipelined_case()
    options = {"objective": "pipelined", "microbatches": 4, "evaluations": 300, "random_order": True, "seed": 11}
    simulator = Simulator(graph, cluster, costs, objective="pipelined", microbatches=4)
    single, single_stats = search(graph, cluster, costs, workers=1, **options)
    together, stats = search(graph, cluster, costs, workers=3, **options)
    again, _ = search(graph, cluster, costs, workers=3, **options)
    assert np.array_equal(together, again)
    assert simulator.step_time(together) <= simulator.step_time(single)
    polish = 3 * 6  # the final device exchange may pass the budget by 3 x the 6 device pairs
    assert single_stats.simulations < stats.simulations <= 3 * (300 + polish)
    # a simulation budget alone gives one search, whatever the machine's cores
    alone, _ = search(graph, cluster, costs, **options)
    assert np.array_equal(alone, single)


@needs_fork
def test_the_local_search_portfolio_is_never_worse_than_its_single_search() -> None:
    from rlplace.baselines.local_search import place

    graph, cluster, costs = pipelined_case()
    options = {"objective": "pipelined", "microbatches": 4, "evaluations": 200, "seed": 3}
    simulator = Simulator(graph, cluster, costs, objective="pipelined", microbatches=4)
    single = simulator.step_time(place(graph, cluster, costs, **options))
    assert simulator.step_time(place(graph, cluster, costs, workers=3, **options)) <= single
    with pytest.raises(RlplaceError, match="stage-boundary search"):
        place(graph, cluster, costs, workers=2, stages=True, **options)


def test_workers_on_the_command_line_are_clean_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    graph_file = tmp_path / "g.json"
    layered(12, seed=1).save(graph_file)
    base = ["place", str(graph_file), "--cluster", "2xV100-pcie"]
    assert main([*base, "--method", "policy", "--workers", "0"]) == 2
    assert "workers must be between" in capsys.readouterr().err
    assert main([*base, "--method", "heft", "--workers", "2"]) == 2
    assert "--workers applies to the methods policy, local-search" in capsys.readouterr().err


# ------------------------------------------------------------------- cores a container grants


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("files", "quota"),
    [
        ({"cpu.max": "150000 100000\n"}, 1.5),  # cgroup v2: 1.5 CPUs
        ({"cpu.max": "max 100000\n"}, None),  # v2, no limit
        ({"cpu/cpu.cfs_quota_us": "50000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 0.5),  # v1
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),  # v1, no limit
        ({"cpu.max": "garbage\n"}, None),
        ({}, None),
    ],
)
def test_cgroup_cpu_quota_reads_v2_then_v1(tmp_path: Path, files: dict[str, str], quota: float | None) -> None:
    assert portfolio.cgroup_cpu_quota(_cgroup(tmp_path, files), membership=tmp_path / "no-such-file") == quota


@pytest.mark.parametrize(
    ("membership", "files", "quota"),
    [
        # v2, nested: the limit sits on a parent of the process's cgroup
        ("0::/a/b\n", {"a/cpu.max": "200000 100000", "a/b/cpu.max": "max 100000", "cpu.max": "max 100000"}, 2.0),
        # v2: the smallest limit on the path counts
        ("0::/a/b\n", {"a/b/cpu.max": "50000 100000", "a/cpu.max": "300000 100000"}, 0.5),
        # v2: a sibling's limit is not this process's
        ("0::/a/b\n", {"a/c/cpu.max": "50000 100000"}, None),
        # v1: the cpu controller's own path
        ("4:cpu,cpuacct:/docker/x\n3:memory:/other\n", {"cpu/docker/x/cpu.cfs_quota_us": "150000", "cpu/docker/x/cpu.cfs_period_us": "100000"}, 1.5),
    ],
)
def test_cgroup_cpu_quota_follows_the_process_cgroup_path(tmp_path: Path, membership: str, files: dict[str, str], quota: float | None) -> None:
    (tmp_path / "cgroup-membership").write_text(membership)
    root = _cgroup(tmp_path / "fs", files)
    assert portfolio.cgroup_cpu_quota(root, membership=tmp_path / "cgroup-membership") == quota


def test_available_cores_is_capped_by_the_cgroup_quota_rounded_up(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    none = tmp_path / "no-such-file"  # membership unknown: the root's own files
    assert portfolio.available_cores(_cgroup(tmp_path / "none", {}), none) == mask
    assert portfolio.available_cores(_cgroup(tmp_path / "half", {"cpu.max": "50000 100000"}), none) == 1  # never 0
    assert portfolio.available_cores(_cgroup(tmp_path / "big", {"cpu.max": f"{100000 * (mask + 5)} 100000"}), none) == mask
    if mask >= 2:
        assert portfolio.available_cores(_cgroup(tmp_path / "one-and-a-bit", {"cpu.max": "110000 100000"}), none) == 2
