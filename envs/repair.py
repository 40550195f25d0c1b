"""The env's names for the shared placement rules (`rlplace.rules`), applied to a `PlacementProblem`.

1. `legalize`: a device the group may not take (beyond the cluster, an op that cannot run
   there, a colocation unit too large for it) becomes the group's lowest allowed device;
   then every group of a colocation unit follows the unit's first group.
2. `repair_memory` (``oom_mode="repair"``): `rlplace.rules.repair_exact` on the groups'
   colocation units, the same exact repair the baselines' final check runs.
3. `settle_groups`: legalize, score, repair, score again (`rlplace.rules.settle`).

The rules live on the problem (`PlacementProblem.legalize`, ``.repair``, ``.settle``); this
module keeps the function names callers use. It imports nothing from ``problem`` at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def legalize(problem: Any, choice: np.ndarray) -> tuple[np.ndarray, int]:
    """(G,) chosen devices (any int) -> ((G,) int64 legal devices, number of choices outside the mask)."""
    return problem.legalize(choice)


def repair_memory(problem: Any, group_placement: np.ndarray) -> tuple[np.ndarray, bool, int]:
    """((G,) int64 repaired placement, whether it fits in memory, number of units moved)."""
    return problem.repair(group_placement)


def settle_groups(problem: Any, choice: np.ndarray, *, repair: bool = True) -> tuple[float, float, np.ndarray]:
    """(overflow bytes, step time, (G,) legal placement) of a (G,) group choice."""
    return problem.settle(choice, repair=repair)
