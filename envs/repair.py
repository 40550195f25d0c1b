"""Deterministic rules that turn any chosen device per group into a placement the cluster can run.

1. `legalize`: a device the group may not take (beyond the cluster, an op that cannot run
   there, a colocation unit too large for it) becomes the group's lowest allowed device;
   then every group of a colocation unit follows the unit's first group (whose choice was
   masked to devices every member may take).
2. `repair_memory` (``oom_mode="repair"``): while a device overflows (the simulator's memory
   model), move colocation units off it, largest first (bytes: resident + outputs + working
   memory; ties to the lower group id), each onto the allowed device with the most free memory
   that can hold it (ties to the lower device index), until the bytes moved cover the
   overflow; then simulate again. A unit moves at most once, so the rule ends after at most G
   rounds; if a round moves nothing the placement stays infeasible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .problem import PlacementProblem


def legalize(problem: PlacementProblem, choice: np.ndarray) -> tuple[np.ndarray, int]:
    """(G,) chosen devices (any int) -> ((G,) int64 legal devices, number of choices outside the
    mask) by rule 1 of the module docstring."""
    choice = np.asarray(choice, dtype=np.int64)
    k = problem.num_devices
    in_range = (choice >= 0) & (choice < k)
    clipped = np.where(in_range, choice, 0)
    ok = in_range & problem.allowed[np.arange(choice.size), clipped]
    devices = np.where(ok, clipped, problem.first_allowed)
    return devices[problem.unit_leader], int(choice.size - np.count_nonzero(ok))


def repair_memory(problem: PlacementProblem, group_placement: np.ndarray) -> tuple[np.ndarray, bool, int]:
    """Rule 2 of the module docstring.

    Args:
        group_placement: (G,) int64 legal device per group.
    Returns:
        (repaired (G,) int64 placement, whether it fits in memory, number of units moved).
    """
    placement = np.array(group_placement, dtype=np.int64)
    capacity = problem.capacity
    k = problem.num_devices
    leader = problem.unit_leader
    unit_bytes = np.bincount(leader, weights=problem.resident + problem.transient + problem.work, minlength=leader.size)
    moved = np.zeros(leader.size, dtype=bool)
    moves = 0
    for _ in range(leader.size + 1):
        peak = problem.peak_memory(problem.expand(placement))
        overflow = peak - capacity
        if not np.any(overflow > 0):
            return placement, True, moves
        free = capacity - peak
        moved_this_round = False
        for device in np.flatnonzero(overflow > 0):
            need = float(overflow[device])
            units = np.unique(leader[(placement == device) & ~moved[leader]])
            for unit in units[np.lexsort((units, -unit_bytes[units]))]:
                if need <= 0:
                    break
                size = unit_bytes[unit]
                candidates = problem.allowed[unit] & (np.arange(k) != device) & (free >= size)
                if not np.any(candidates):
                    continue
                target = int(np.argmax(np.where(candidates, free, -np.inf)))
                placement[leader == unit] = target
                free[target] -= size
                free[device] += size
                need -= size
                moved[unit] = True
                moves += 1
                moved_this_round = True
        if not moved_this_round:
            break
    return placement, False, moves
