"""Entry point of one rank: ``python -m rlplace.measure.distributed --job JOB.json --out DIR``.

Runs a measurement job (`rlplace.measure.ranks.run_rank`) or a calibration job
(`rlplace.measure.calibrate.run_calibration_rank`) and writes rank 0's result to
DIR/result.json, or an error report to DIR/error-<rank>.txt.

Start ranks:
    * on one host: `rlplace.measure.launch.launch_job` (what ``rlplace measure`` does);
    * across hosts: ``torchrun --nnodes N --nproc-per-node 1 --node-rank R --master-addr A
      --master-port P -m rlplace.measure.distributed --job JOB.json --out DIR`` on each host
      (every host needs the job file and the model's code; rank 0 writes DIR/result.json).

This module sits above both the measuring and the calibrating code and nothing imports it
but the interpreter; the names re-exported below keep older imports working.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlplace.measure.allocator import steady_allocator
from rlplace.measure.launch import NICE_VARIABLE, MeasureFailure, free_port, launch_job, launch_local, report_rank_outcome, stop_processes
from rlplace.measure.ranks import BACKENDS, DistTransport, MeasureJob, rank_device, run_rank, run_step, time_assignment

__all__ = [
    "BACKENDS", "DistTransport", "MeasureFailure", "MeasureJob", "free_port", "launch_job", "launch_local", "main", "rank_device",
    "run_rank", "run_step", "stop_processes", "time_assignment",
]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry of one rank: ``python -m rlplace.measure.distributed --job JOB --out DIR``.

    Rank, world size and the rendezvous come from the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) as torchrun and `launch_local` set them.
    """
    parser = argparse.ArgumentParser(prog="python -m rlplace.measure.distributed", description="one rank of a distributed step-time measurement")
    parser.add_argument("--job", required=True, help="job JSON written by rlplace measure")
    parser.add_argument("--out", required=True, help="folder for result.json (rank 0) and error-<rank>.txt")
    args = parser.parse_args(argv)
    _apply_priority()
    steady_allocator()
    world_size, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))

    def work(rank: int) -> dict[str, Any] | None:
        data = json.loads(Path(args.job).read_text(encoding="utf-8"))
        if data.get("kind") == "calibrate":
            from rlplace.measure.calibrate import run_calibration_rank

            return run_calibration_rank(data, rank, world_size, local_rank)
        return run_rank(MeasureJob(**data), rank, world_size, local_rank)

    return report_rank_outcome(Path(args.out), work)


def _apply_priority() -> None:
    """Raise this rank's CPU priority when the launcher asks (``RLPLACE_RANK_NICE``).

    Threads started later (torch's, gloo's) inherit it; the rank's session (its own, see
    `launch_job`) gets it too, since with autogroup scheduling the kernel shares the CPU
    between sessions first. A negative value needs root; it keeps other processes on a shared
    host from stretching measured step times, as if each rank had its core to itself (what
    the simulator assumes of a device).
    """
    value = os.environ.get(NICE_VARIABLE)
    if not value:
        return
    try:
        os.setpriority(os.PRIO_PROCESS, 0, int(value))
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():  # with autogroup scheduling, nice only ranks threads inside one session
            autogroup.write_text(value, encoding="ascii")
    except (OSError, ValueError) as exc:
        print(f"rlplace: cannot set nice {value}: {exc}", file=sys.stderr)


if __name__ == "__main__":
    status = main()
    # Skip interpreter teardown: the result is on disk, and C++ destructors of torch's and
    # gloo's background threads at exit sometimes abort the process ("terminate called
    # without an active exception"), which would read as a crashed rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
