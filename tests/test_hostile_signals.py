"""Signals: SIGTERM and SIGHUP end ``rlplace measure`` like Ctrl-C (ranks and keep-awake spinners
reaped, temporary folder removed, exit 143 / 129); a rank exits by itself when its launcher
dies even by SIGKILL (issue 13)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]
TINY_MLP = f"{REPO / 'tests' / 'fixtures' / 'tiny_models.py'}:mlp"


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[int]:
    """Pids still running (zombies count as gone) after up to ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = []
        for process in processes:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process.pid)
            except psutil.NoSuchProcess:
                continue
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _start_measure(tmp_path: Path) -> tuple[subprocess.Popen[str], list[psutil.Process]]:
    """A 2-rank gloo measurement that would run for days, and its descendants once both ranks run."""
    from rlplace.load import load_model

    placement = tmp_path / "zeros.json"
    placement.write_text(json.dumps([0] * load_model(TINY_MLP).graph.num_ops))
    environment = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "rlplace.cli", "measure", TINY_MLP, "--placement", str(placement), "--cluster", "2xV100-pcie"]
    process = subprocess.Popen([*command, "--steps", "100000000", "--timeout", "3600"], env=environment, stderr=subprocess.PIPE, text=True)
    launcher = psutil.Process(process.pid)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        children = launcher.children(recursive=True)
        ranks = [c for c in children if "rlplace.measure.distributed" in " ".join(_cmdline(c))]
        if len(ranks) == 2:
            time.sleep(1.0)  # let the ranks get into their steps
            return process, launcher.children(recursive=True)
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    pytest.fail(f"the ranks never started: {process.stderr.read() if process.stderr else ''}")


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143)], ids=["SIGTERM"])
def test_a_signal_reaps_ranks_and_spinners_and_removes_the_temporary_folder(signum: int, status: int, tmp_path: Path) -> None:
    process, descendants = _start_measure(tmp_path)
    assert any(tmp_path.glob("rlplace-measure-*"))
    process.send_signal(signum)
    assert process.wait(timeout=60) == status
    assert process.stderr is not None and process.stderr.read().strip() == f"terminated by {signal.Signals(signum).name}"
    assert _wait_gone(descendants, 10.0) == []
    assert not any(tmp_path.glob("rlplace-measure-*"))


def test_sighup_maps_to_129_in_process() -> None:
    """The handler itself, without a measurement: SIGHUP during a command gives 129."""
    code = textwrap.dedent(
        """
        import os, signal, sys
        import rlplace.commands as commands
        from rlplace.cli import main

        def hang(args):
            os.kill(os.getpid(), signal.SIGHUP)
            raise AssertionError("not reached")

        commands.run_zoo = hang
        sys.exit(main(["zoo"]))
        """
    )
    process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert process.returncode == 129, process.stderr
    assert process.stderr.strip() == "terminated by SIGHUP"


def test_a_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    """`die_with_parent`: the parent is SIGKILLed and can clean up nothing; the child goes anyway."""
    pid_file = tmp_path / "child.pid"
    parent_code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import os, time; from rlplace.interrupt import die_with_parent; die_with_parent(); open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)"], start_new_session=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code])
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "the child never started"
        time.sleep(0.1)
    child = psutil.Process(int(pid_file.read_text()))
    parent.kill()
    parent.wait()
    assert _wait_gone([child], 10.0) == []
