"""``round-robin``: units dealt to devices in turn, in topological order.

Units (single ops, or whole colocation classes) are taken in the order of their first op.
A pointer starts at device 0; each unit goes to the first device, from the pointer on
(cyclically), that can run it and has room for it under the memory estimate of
`rlplace.rules`; the pointer then moves one past that device. If a unit finds no
room, the deal is redone without memory limits and repaired (`rlplace.rules.fit_with_fallback`). With no colocation
and no constraints, op ``i`` lands on device ``i mod k``.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import MemoryLedger, finalize, fit_with_fallback, prepare, start_assignment_error


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """Deal units to devices cyclically (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    k = cluster.num_devices

    def decide(limit: np.ndarray) -> np.ndarray:
        ledger = MemoryLedger(units, limit)
        assignment = np.empty(units.num_units, dtype=np.int64)
        pointer = 0
        for unit in range(units.num_units):
            for step in range(k):
                device = (pointer + step) % k
                if ledger.fits(unit, device):
                    break
            else:
                raise start_assignment_error(graph, cluster, units, unit)
            assignment[unit] = device
            ledger.add(unit, device)
            pointer = (device + 1) % k
        return assignment

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="round-robin", microbatches=microbatches, schedule=schedule
    )
