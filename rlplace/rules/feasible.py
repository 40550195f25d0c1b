"""Checks before a method decides: the inputs match, and no placement is impossible on sound bounds.

Errors that claim no placement exists use lower bounds of the simulator's peak memory
(`unit_memory_floor`), never the estimate, so they are true statements.

Shapes: n ops, k devices, u units.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.objectives import check_objective
from rlplace.rules.estimate import activation_share, memory_budget
from rlplace.rules.units import Units, build_units
from rlplace.units import show_bytes


class NoRoomError(RlplaceError):
    """A greedy pass met a unit that fits on no device any more (see `rlplace.rules.finish.fit_with_fallback`)."""


def unit_memory_floor(graph: OpGraph, units: Units, objective: str, microbatches: int = 1) -> np.ndarray:
    """(u,) bytes a unit certainly needs on its device: its resident bytes, plus (``latency``,
    ``pipelined``) the largest output + working memory of one of its ops, alive while it runs
    (under ``pipelined`` one micro-batch's share, 1 / ``microbatches`` of it)."""
    unit_of_op = units.unit_of_op
    floor = np.bincount(unit_of_op, weights=graph.resident_bytes, minlength=units.num_units)
    if objective != "throughput" and graph.num_ops:
        running = np.zeros(units.num_units)
        np.maximum.at(running, unit_of_op, graph.output_bytes + graph.work_bytes)
        floor = floor + running / (max(1, microbatches) if objective == "pipelined" else 1)
    return floor


def check_feasible(graph: OpGraph, cluster: Cluster, units: Units, objective: str, microbatches: int = 1) -> None:
    """Raise `RlplaceError` if no placement can exist (sound lower bounds, not the estimate).

    Checks, in order: a unit that no device can run; a unit that needs more memory than every
    device that can run it (`unit_memory_floor`); resident bytes beyond the whole cluster.
    """
    for unit in range(units.num_units):
        if not np.any(units.allowed[unit]):
            raise RlplaceError(
                f"{units.describe(graph, unit)} cannot run on any single device of cluster {cluster.name!r}: "
                "its ops have no time on a common device; give them times on a shared device class or split the class"
            )
    capacity = cluster.memory
    need = unit_memory_floor(graph, units, objective, microbatches)
    room = np.where(units.allowed, capacity[None, :], -np.inf).max(axis=1) if units.num_units else np.zeros(0)
    too_big = need > room
    if np.any(too_big):
        unit = int(np.argmax(need - room))
        where = np.flatnonzero(units.allowed[unit])
        largest = where[int(np.argmax(capacity[where]))]
        raise RlplaceError(
            f"{units.describe(graph, unit)} needs {show_bytes(need[unit])} but the largest device it can run on, "
            f"{cluster.devices[largest].name}, has {show_bytes(capacity[largest])}; use devices with more memory"
        )
    total = float(np.sum(graph.resident_bytes))
    if total > float(capacity.sum()):
        raise RlplaceError(
            f"graph {graph.name!r} needs {show_bytes(total)} but cluster {cluster.name!r} has {show_bytes(float(capacity.sum()))} "
            "of device memory in all; use more or larger devices"
        )


def start_assignment_error(graph: OpGraph, cluster: Cluster, units: Units, unit: int) -> NoRoomError:
    """Error for a unit that no device with room can take during a greedy pass."""
    return NoRoomError(
        f"{units.describe(graph, unit)} ({show_bytes(float(units.demand[unit]))}) fits on no device of cluster {cluster.name!r} "
        "once the ops before it are placed; use more or larger devices"
    )


def prepare(
    graph: OpGraph, cluster: Cluster, costs: CostTable, objective: str, *, microbatches: int = 1, schedule: str = "gpipe"
) -> tuple[Units, np.ndarray]:
    """Validate the objective and the inputs; return the op units and the (k,) memory budget.

    ``microbatches`` and ``schedule`` (``pipelined`` only) set the units' memory demand
    (`activation_share`) and the sound per-micro-batch floor of `check_feasible`.
    """
    check_objective(objective)
    if costs.op_time.shape != (graph.num_ops, cluster.num_devices):
        raise RlplaceError(
            f"cost table is {costs.op_time.shape[0]}x{costs.op_time.shape[1]} but graph {graph.name!r} has {graph.num_ops} ops "
            f"and cluster {cluster.name!r} {cluster.num_devices} devices; build it with CostTable.build(graph, cluster)"
        )
    units = build_units(graph, costs, objective, share=activation_share(objective, microbatches, schedule, cluster.num_devices))
    budget = memory_budget(graph, cluster, objective)
    check_feasible(graph, cluster, units, objective, microbatches)
    return units, budget
