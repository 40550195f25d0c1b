"""The three objectives a placement is judged by, owned here and imported everywhere else.

``latency``     one training step (or inference pass) of one batch, seconds or the graph's unit.
``pipelined``   M micro-batches streamed through the devices (GPipe style); ``microbatches``
                applies to this objective only (`rlplace.simulate.Simulator` ignores it for the
                others, so callers pass the user's value through unchanged).
``throughput``  the slowest device's busy time per batch (the dnn-partitioning paper's metric);
                memory counts resident bytes only.

A ``pipelined`` step follows a schedule (`SCHEDULES`; the order each device runs its micro-batches
in is built by `rlplace.schedules`): ``gpipe`` (all forwards, then all backwards), ``1f1b``
(one forward, one backward after a warm-up), ``interleaved-1f1b`` (Megatron's virtual stages).
"""

from __future__ import annotations

from rlplace.errors import RlplaceError

OBJECTIVES: tuple[str, ...] = ("latency", "pipelined", "throughput")
SCHEDULES: tuple[str, ...] = ("gpipe", "1f1b", "interleaved-1f1b")


def check_objective(objective: str) -> str:
    """Return ``objective`` or raise `RlplaceError` naming the valid ones."""
    if objective not in OBJECTIVES:
        raise RlplaceError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return objective


def check_schedule(schedule: str) -> str:
    """Return ``schedule`` or raise `RlplaceError` naming the valid ones."""
    if schedule not in SCHEDULES:
        raise RlplaceError(f"unknown schedule {schedule!r}; use one of {', '.join(SCHEDULES)}")
    return schedule
