"""``m-topo`` (Baechi, SoCC 2020): the topological order cut into contiguous chunks of equal compute.

Units are walked in topological order of their first op and filled into devices in index
order: a device takes units while its compute (each unit at its time *on that device*) stays
within a cap ``T`` and the unit fits its memory estimate, then the walk moves to the next
device. Baechi sets ``T`` to the total compute over k; on heterogeneous clusters that leaves
the rounding remainder to the last device, however slow, so here ``T`` is the smallest cap for
which the walk places every unit (bisection, 60 steps; the walk only gets further as ``T``
grows). The result is the contiguous split that balances compute best under memory caps;
communication is ignored. A unit that cannot run on the walk's device goes to the fastest
device that can run it and has room, without moving the walk. If memory stops the walk at any
cap, the walk is redone without memory limits and repaired (`rlplace.rules.fit_with_fallback`).
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import MemoryLedger, Units, finalize, fit_with_fallback, prepare, start_assignment_error

_BISECTION_STEPS = 60


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """Contiguous chunks of the topological order (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    time = np.where(units.allowed, units.time, 0.0)
    high = float(time.max(axis=1).sum()) if units.num_units else 0.0

    def decide(limit: np.ndarray) -> np.ndarray:
        return smallest_cap_walk(units, limit, high, graph, cluster)

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="m-topo", microbatches=microbatches, schedule=schedule
    )


def smallest_cap_walk(units: Units, budget: np.ndarray, high: float, graph: OpGraph, cluster: Cluster) -> np.ndarray:
    """The walk under the smallest cap in [0, ``high``] that places every unit (bisection)."""
    assignment, left_over = walk(units, budget, high)
    if assignment is None:
        # Every device can take all compute at this cap, so memory stopped the walk.
        raise start_assignment_error(graph, cluster, units, left_over)
    low = 0.0
    for _ in range(_BISECTION_STEPS):
        middle = (low + high) / 2
        candidate, _ = walk(units, budget, middle)
        if candidate is None:
            low = middle
        else:
            high, assignment = middle, candidate
        if high - low <= 1e-12 * high:
            break
    return assignment


def walk(units: Units, budget: np.ndarray, cap: float) -> tuple[np.ndarray | None, int]:
    """((u,) assignment of the walk under compute cap ``cap``, -1), or (None, first unit left over)."""
    k = units.allowed.shape[1]
    ledger = MemoryLedger(units, budget)
    load = np.zeros(k)
    assignment = np.empty(units.num_units, dtype=np.int64)
    current = 0
    for unit in range(units.num_units):
        if not units.allowed[unit, current]:
            options = np.flatnonzero(ledger.candidates(unit))
            if options.size == 0:
                return None, unit
            device = int(options[int(np.argmin(units.time[unit, options]))])
        else:
            while current < k and not (
                units.allowed[unit, current] and ledger.fits(unit, current) and (load[current] == 0 or load[current] + units.time[unit, current] <= cap)
            ):
                current += 1
            if current == k:
                return None, unit
            device = current
        assignment[unit] = device
        ledger.add(unit, device)
        load[device] += units.time[unit, device]
    return assignment, -1
