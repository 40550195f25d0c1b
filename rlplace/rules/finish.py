"""The end of every decision: legalize, evaluate, repair, evaluate again (`settle`).

The baselines (`finalize`, op units, exact simulator check), the env's reference and final
placements and the policy's candidates (`rlplace.envs.repair.settle_groups`, group units) all
run `settle`, with the same exact repair (`rlplace.rules.repair.repair_exact`).
`fit_with_fallback` is the greedy baselines' way to survive the estimate running out.

Shapes: n ops, N items, u units, k devices.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement, as_placement, check_constraints
from rlplace.rules.estimate import activation_share
from rlplace.rules.feasible import NoRoomError
from rlplace.rules.repair import repair_estimate, repair_exact
from rlplace.rules.units import Units, build_units
from rlplace.units import show_bytes

#: Relative tolerance under which two step times count as equal.
TIME_TOLERANCE = 1e-12

SearchKey = tuple[float, float]
"""What the searches compare: (bytes over capacity, step time), smaller first, in that order."""


def key_better(a: SearchKey, b: SearchKey) -> bool:
    """``a`` beats ``b``: less overflow, or the same overflow and a step time smaller by more
    than `TIME_TOLERANCE` (relative)."""
    if a[0] != b[0]:
        return a[0] < b[0]
    return a[1] < b[1] - TIME_TOLERANCE * abs(b[1])


def key_equal(a: SearchKey, b: SearchKey) -> bool:
    """``a`` ties ``b``: the same overflow and step times within `TIME_TOLERANCE` (relative)."""
    return a[0] == b[0] and abs(a[1] - b[1]) <= TIME_TOLERANCE * abs(b[1])


def cutoff_for(against: SearchKey | None) -> float:
    """The step time above which a candidate compared with the search key ``against`` is
    neither better nor equal (`key_better`, `key_equal`), so its simulation may stop there
    (`rlplace.simulate.Simulator.score`'s ``cutoff``): ``inf`` without ``against`` or when
    ``against`` overflows memory (a fitting candidate beats it whatever its step time)."""
    if against is None or against[0] != 0:
        return float("inf")
    return against[1] + TIME_TOLERANCE * abs(against[1])


Evaluate = Callable[[np.ndarray], tuple[float, float]]
"""(N,) legal placement -> (step time, bytes over capacity summed over devices)."""


def settle(
    choice: np.ndarray,
    *,
    legalize: Callable[[np.ndarray], np.ndarray],
    evaluate: Evaluate,
    repair: Callable[[np.ndarray], tuple[np.ndarray, int]] | None,
) -> tuple[float, float, np.ndarray]:
    """Legalize ``choice``, evaluate it, and if it overflows memory and ``repair`` is given,
    repair it (``repair(legal) -> (repaired, moves)``) and evaluate again.

    Returns (overflow bytes, step time, (N,) legal placement), the repaired one when it moved a unit.
    """
    legal = legalize(np.asarray(choice, dtype=np.int64))
    step_time, overflow = evaluate(legal)
    if overflow > 0 and repair is not None:
        repaired, moves = repair(legal)
        if moves:
            legal = repaired
            step_time, overflow = evaluate(legal)
    return float(overflow), float(step_time), np.asarray(legal, dtype=np.int64)


def make_simulator(graph: OpGraph, cluster: Cluster, costs: CostTable, objective: str, microbatches: int = 1, schedule: str = "gpipe") -> Any:
    """The shared `rlplace.simulate.Simulator` for ``objective`` (it ignores ``microbatches``
    and ``schedule`` unless the objective is ``pipelined``): every method that scores
    candidates or checks memory with it sees the schedule the answer is judged under."""
    from rlplace.simulate import Simulator

    return Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule)


def finalize(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    placement: np.ndarray,
    *,
    objective: str,
    method: str,
    simulator: Any = None,
    microbatches: int = 1,
    schedule: str = "gpipe",
) -> Placement:
    """Check a method's placement exactly and return it read-only.

    Op times and colocation are checked (`check_constraints`: a method's output must already
    be legal); peak memory comes from the simulator (``simulator``, else one for
    ``objective``, ``microbatches`` and ``schedule``: under ``1f1b`` fewer micro-batches are in
    flight than under ``gpipe``, so a split may fit there and not here). A device over
    capacity gets units moved off it (`repair_exact`); if that fails, `RlplaceError` names the
    device and the overflow.
    """
    simulator = simulator if simulator is not None else make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    capacity = cluster.memory
    units: list[Units] = []

    def check(choice: np.ndarray) -> np.ndarray:
        legal = as_placement(choice, graph, cluster)
        check_constraints(graph, costs, legal)
        return legal

    def overflow(p: np.ndarray) -> tuple[float, float]:
        return 0.0, float(np.maximum(np.asarray(simulator.peak_memory(p), dtype=np.float64) - capacity, 0.0).sum())

    def repair(legal: np.ndarray) -> tuple[np.ndarray, int]:
        share = activation_share(objective, getattr(simulator, "microbatches", microbatches), getattr(simulator, "schedule", None) or schedule, cluster.num_devices)
        units.append(build_units(graph, costs, objective, share=share))
        assignment, peak, moves = repair_exact(units[0], units[0].contract(legal), lambda a: simulator.peak_memory(units[0].expand(a)), capacity)
        if np.any(peak > capacity):
            device = int(np.argmax(peak - capacity))
            raise RlplaceError(
                f"{method}: no placement of graph {graph.name!r} within device memory found: device {cluster.devices[device].name} "
                f"needs {show_bytes(float(peak[device]))} at its peak but has {show_bytes(float(capacity[device]))}; "
                "use more or larger devices, or a smaller batch"
            )
        return units[0].expand(assignment), moves

    _, _, result = settle(placement, legalize=check, evaluate=overflow, repair=repair)
    return as_placement(result, graph, cluster)


def fit_with_fallback(
    graph: OpGraph, cluster: Cluster, units: Units, budget: np.ndarray, decide: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """(u,) assignment from ``decide(budget)``; if that greedy pass runs out of room, from
    ``decide`` with unlimited memory followed by `repair_estimate` under ``budget``.

    Greedy passes commit memory early and can strand a large unit late although a placement
    exists; the fallback keeps the heuristic's choices and moves as few units as it can. When
    even the repair cannot meet the (conservative) estimate, the unlimited assignment is
    returned as is: `finalize` then checks it against the simulator's exact peak memory and
    repairs it or explains why it cannot.
    """
    try:
        return decide(budget)
    except NoRoomError:
        unlimited = decide(np.full_like(budget, np.inf))
        try:
            return repair_estimate(graph, cluster, units, unlimited, budget)
        except RlplaceError:
            return unlimited
