"""Compatibility names for code written against the old ``rlplace.baselines.common``.

Each rule now lives in one module with one job; import from there in new code:

- placement rules (units, memory estimate, ledger, feasibility, repair, finalize): `rlplace.rules`
- objectives: `rlplace.objectives`; byte formatting for people: `rlplace.units.show_bytes`
- cost summaries: `rlplace.baselines.summaries`; edge lists and bottom levels:
  `rlplace.baselines.adjacency`; list scheduling: `rlplace.baselines.list_schedule`

Nothing is defined here.
"""

from __future__ import annotations

from rlplace.baselines.adjacency import EdgeIndex, bottom_levels
from rlplace.baselines.list_schedule import ListSchedule
from rlplace.baselines.summaries import device_speed, fastest_time, finite_mean, mean_edge_time
from rlplace.objectives import OBJECTIVES, check_objective
from rlplace.rules import (
    EXACT_REPAIR_TRIES,
    TIME_TOLERANCE,
    MemoryLedger,
    NoRoomError,
    Units,
    build_units,
    check_feasible,
    finalize,
    fit_with_fallback,
    ledger_for,
    make_simulator,
    memory_budget,
    op_memory_demand,
    prepare,
    repair_estimate,
    repair_exact,
    start_assignment_error,
    unit_memory_floor,
)
from rlplace.units import show_bytes as format_bytes

__all__ = [
    "EXACT_REPAIR_TRIES",
    "OBJECTIVES",
    "TIME_TOLERANCE",
    "EdgeIndex",
    "ListSchedule",
    "MemoryLedger",
    "NoRoomError",
    "Units",
    "bottom_levels",
    "build_units",
    "check_feasible",
    "check_objective",
    "device_speed",
    "fastest_time",
    "finalize",
    "finite_mean",
    "fit_with_fallback",
    "format_bytes",
    "ledger_for",
    "make_simulator",
    "mean_edge_time",
    "memory_budget",
    "op_memory_demand",
    "prepare",
    "repair_estimate",
    "repair_exact",
    "start_assignment_error",
    "unit_memory_floor",
]
