"""Idle-priority spinners that keep the host's cores awake during a measurement."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from rlplace.measure.awake import cores_kept_awake, spinner_count


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_spinners_run_at_idle_priority_and_are_reaped_on_exit() -> None:
    with cores_kept_awake(count=2) as spinners:
        assert len(spinners) == 2
        time.sleep(0.3)  # let them lower their priority
        for spinner in spinners:
            assert spinner.poll() is None
            if hasattr(os, "SCHED_IDLE"):
                assert os.sched_getscheduler(spinner.pid) == os.SCHED_IDLE
                group = f"/proc/{spinner.pid}/autogroup"
                if os.path.exists(group):  # its own session's group must not compete as an equal
                    with open(group) as text:
                        assert text.read().split()[-1] == "19"
            else:
                assert psutil.Process(spinner.pid).nice() == 19
        pids = [spinner.pid for spinner in spinners]
    assert all(spinner.returncode is not None for spinner in spinners)
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids)


def test_spinners_are_stopped_when_the_block_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), cores_kept_awake(count=1) as spinners:
        raise RuntimeError("boom")
    assert spinners[0].returncode is not None


def test_disabled_starts_nothing_and_default_is_one_per_core() -> None:
    with cores_kept_awake(False) as spinners:
        assert spinners == []
    assert spinner_count() >= 1


def test_spinner_exits_by_itself_when_its_launcher_is_killed() -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-c", "import time; from rlplace.measure.awake import cores_kept_awake\nwith cores_kept_awake(count=1) as s:\n    print(s[0].pid, flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        spinner_pid = int(launcher.stdout.readline())
        assert psutil.pid_exists(spinner_pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        assert _gone(spinner_pid, within_s=5.0)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
