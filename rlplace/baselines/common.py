"""Shared pieces of the classic baselines: colocation units, the memory estimate, checks.

Every baseline works on *units*: an op without a colocation class is a unit of its own;
the ops of one class form one unit, placed when the algorithm meets its first op (the others
are forced onto the same device). Units are numbered in the order of their first op, so unit
order is a topological order of first ops.

Memory estimate (what the heuristics respect while they decide):

- ``throughput`` objective: the static sum of ``resident_bytes`` per device, which is exactly
  the dnn-partitioning paper's constraint and the simulator's memory for that objective.
- ``latency`` / ``pipelined``: ``resident_bytes + output_bytes`` of every op on the device
  (every activation counted as live for the whole step, which is what a training graph does
  with forward activations kept for the backward pass), plus, reserved on every device, the
  largest ``work_bytes`` of any op (a device runs one op at a time). Received copies of remote
  inputs are not counted.

The estimate can be far above the simulator's peak for graphs whose activations die early
(inference), never below it by more than received copies. Errors that claim no placement
exists use sound lower bounds instead (`check_feasible`). Greedy passes that run out of room
under the estimate are redone without limits and repaired (`fit_with_fallback`). The
simulator gives the exact peak memory; `finalize` checks it once at the end and, if a device
is over, moves units off it (`repair_exact`) before giving up with a clear error.

Shapes used below: n ops, m edges, k devices, u units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.placement import Placement, as_placement, check_constraints

OBJECTIVES = ("latency", "pipelined", "throughput")


#: Relative tolerance under which two step times count as equal.
TIME_TOLERANCE = 1e-12
#: Moves `repair_exact` simulates per step before it gives up.
EXACT_REPAIR_TRIES = 8


class NoRoomError(RlplaceError):
    """A greedy pass met a unit that fits on no device any more (see `fit_with_fallback`)."""


def check_objective(objective: str) -> str:
    """Return ``objective`` or raise `RlplaceError` naming the valid ones."""
    if objective not in OBJECTIVES:
        raise RlplaceError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    return objective


def format_bytes(value: float) -> str:
    """``20.0 GB`` style, SI units (the unit the errors of this package use)."""
    if not np.isfinite(value):
        return "unlimited"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


# ----------------------------------------------------------------------------- memory
def op_memory_demand(graph: OpGraph, objective: str) -> np.ndarray:
    """(n,) bytes each op adds to its device under the memory estimate (module docstring)."""
    if objective == "throughput":
        return np.asarray(graph.resident_bytes, dtype=np.float64)
    return graph.resident_bytes + graph.output_bytes


def memory_budget(graph: OpGraph, cluster: Cluster, objective: str) -> np.ndarray:
    """(k,) bytes per device the estimate may fill: capacity minus the largest ``work_bytes``."""
    reserve = 0.0 if objective == "throughput" or graph.num_ops == 0 else float(np.max(graph.work_bytes))
    return cluster.memory - reserve


# ------------------------------------------------------------------------------ units
@dataclass(frozen=True, eq=False)
class Units:
    """Colocation units of a graph on a cluster.

    Shapes (n ops, u units, k devices):
        of_op: (n,) int64, unit of each op.
        first_op: (u,) int64, smallest op id of each unit (ascending with the unit id).
        members: u int64 arrays, op ids of each unit, ascending.
        demand: (u,) float64, bytes of the unit under the memory estimate.
        allowed: (u, k) bool, every op of the unit can run on the device (finite op time).
        time: (u, k) float64, summed op time of the unit on each device (``inf`` if not allowed).
    """

    of_op: np.ndarray
    first_op: np.ndarray
    members: tuple[np.ndarray, ...]
    demand: np.ndarray
    allowed: np.ndarray
    time: np.ndarray

    @property
    def num_units(self) -> int:
        return int(self.first_op.shape[0])

    def expand(self, unit_device: np.ndarray) -> np.ndarray:
        """(n,) device per op from (u,) device per unit."""
        return np.asarray(unit_device, dtype=np.int64)[self.of_op]

    def contract(self, placement: np.ndarray) -> np.ndarray:
        """(u,) device per unit from a colocation-respecting (n,) placement (its first op's device)."""
        return np.asarray(placement, dtype=np.int64)[self.first_op]

    def describe(self, graph: OpGraph, unit: int) -> str:
        """``op 'x'`` or ``colocation class of op 'x' (3 ops)`` for error messages."""
        first = graph.names[int(self.first_op[unit])]
        size = len(self.members[unit])
        return f"op {first!r}" if size == 1 else f"colocation class of op {first!r} ({size} ops)"


def build_units(graph: OpGraph, costs: CostTable, objective: str) -> Units:
    """Group ops into units (module docstring) and sum their memory demand and times."""
    n, k = graph.num_ops, costs.num_devices
    class_of = graph.coloc
    # Key per op: its class (offset past op ids) or the op itself; units ordered by first op.
    key = np.where(class_of != NO_CLASS, n + class_of, np.arange(n))
    _, first_index, inverse = np.unique(key, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    of_op = rank[inverse.reshape(-1)].astype(np.int64)
    first_op = first_index[order].astype(np.int64)
    u = first_op.shape[0]
    sort = np.argsort(of_op, kind="stable")
    bounds = np.searchsorted(of_op[sort], np.arange(u + 1))
    members = tuple(sort[bounds[j] : bounds[j + 1]].astype(np.int64) for j in range(u))
    demand = np.bincount(of_op, weights=op_memory_demand(graph, objective), minlength=u)
    time = np.zeros((u, k), dtype=np.float64)
    np.add.at(time, of_op, costs.op_time)
    allowed = np.isfinite(time)
    if n:
        allowed.setflags(write=False)
    return Units(of_op=of_op, first_op=first_op, members=members, demand=demand, allowed=allowed, time=time)


def unit_memory_floor(graph: OpGraph, units: Units, objective: str) -> np.ndarray:
    """(u,) bytes a unit certainly needs on its device: its resident bytes, plus (``latency``,
    ``pipelined``) the largest output + working memory of one of its ops, alive while it runs.

    Unlike the estimate, this is a lower bound on the simulator's peak, so errors built on it
    are true statements.
    """
    floor = np.bincount(units.of_op, weights=graph.resident_bytes, minlength=units.num_units)
    if objective != "throughput" and graph.num_ops:
        running = np.zeros(units.num_units)
        np.maximum.at(running, units.of_op, graph.output_bytes + graph.work_bytes)
        floor = floor + running
    return floor


def check_feasible(graph: OpGraph, cluster: Cluster, units: Units, objective: str) -> None:
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
    need = unit_memory_floor(graph, units, objective)
    room = np.where(units.allowed, capacity[None, :], -np.inf).max(axis=1) if units.num_units else np.zeros(0)
    too_big = need > room
    if np.any(too_big):
        unit = int(np.argmax(need - room))
        where = np.flatnonzero(units.allowed[unit])
        largest = where[int(np.argmax(capacity[where]))]
        raise RlplaceError(
            f"{units.describe(graph, unit)} needs {format_bytes(need[unit])} but the largest device it can run on, "
            f"{cluster.devices[largest].name}, has {format_bytes(capacity[largest])}; use devices with more memory"
        )
    total = float(np.sum(graph.resident_bytes))
    if total > float(capacity.sum()):
        raise RlplaceError(
            f"graph {graph.name!r} needs {format_bytes(total)} but cluster {cluster.name!r} has {format_bytes(float(capacity.sum()))} "
            "of device memory in all; use more or larger devices"
        )


class MemoryLedger:
    """Bytes committed per device under the memory estimate.

    Shapes: budget, used: (k,) float64 bytes.
    """

    def __init__(self, units: Units, budget: np.ndarray) -> None:
        self.units = units
        self.budget = np.asarray(budget, dtype=np.float64)
        self.used = np.zeros_like(self.budget)

    def room(self) -> np.ndarray:
        """(k,) bytes still free."""
        return self.budget - self.used

    def fits(self, unit: int, device: int) -> bool:
        return bool(self.units.allowed[unit, device] and self.units.demand[unit] <= self.budget[device] - self.used[device])

    def candidates(self, unit: int) -> np.ndarray:
        """(k,) bool, devices that can run the unit and have room for it."""
        return self.units.allowed[unit] & (self.units.demand[unit] <= self.room())

    def add(self, unit: int, device: int) -> None:
        self.used[device] += self.units.demand[unit]

    def remove(self, unit: int, device: int) -> None:
        self.used[device] -= self.units.demand[unit]


def ledger_for(unit_device: np.ndarray, units: Units, budget: np.ndarray) -> MemoryLedger:
    """A ledger holding every unit of a complete (u,) assignment."""
    ledger = MemoryLedger(units, budget)
    np.add.at(ledger.used, np.asarray(unit_device, dtype=np.int64), units.demand)
    return ledger


# ---------------------------------------------------------------------- cost summaries
def finite_mean(op_time: np.ndarray) -> np.ndarray:
    """(n,) mean of each row over its finite entries."""
    finite = np.isfinite(op_time)
    return np.where(finite, op_time, 0.0).sum(axis=1) / np.maximum(finite.sum(axis=1), 1)


def fastest_time(op_time: np.ndarray) -> np.ndarray:
    """(n,) time of each op on its fastest device."""
    return op_time.min(axis=1) if op_time.shape[1] else np.zeros(op_time.shape[0])


def mean_edge_time(costs: CostTable) -> np.ndarray:
    """(m,) transfer time of each edge averaged over ordered pairs of distinct devices."""
    k = costs.num_devices
    if k < 2:
        return np.zeros(costs.edge_time.shape[0])
    return costs.edge_time.sum(axis=(1, 2)) / (k * (k - 1))


def device_speed(costs: CostTable) -> np.ndarray:
    """(k,) relative speed of each device, summing to 1.

    Measured on the ops every device can run: speed is inversely proportional to their total
    time on the device. Equal speeds when no such op has any cost.
    """
    k = costs.num_devices
    common = np.all(np.isfinite(costs.op_time), axis=1)
    totals = costs.op_time[common].sum(axis=0) if np.any(common) else np.zeros(k)
    if not np.all(totals > 0):
        return np.full(k, 1.0 / k)
    speed = 1.0 / totals
    return speed / speed.sum()


# --------------------------------------------------------------------------- adjacency
@dataclass(frozen=True, eq=False)
class EdgeIndex:
    """Incoming and outgoing edge ids per op (CSR form).

    Shapes: in_start, out_start: (n + 1,); in_edges, out_edges: (m,) int64 edge ids.
    """

    in_start: np.ndarray
    in_edges: np.ndarray
    out_start: np.ndarray
    out_edges: np.ndarray

    @classmethod
    def build(cls, graph: OpGraph) -> EdgeIndex:
        n = graph.num_ops
        by_dst = np.argsort(graph.edge_dst, kind="stable")
        by_src = np.argsort(graph.edge_src, kind="stable")
        in_start = np.searchsorted(graph.edge_dst[by_dst], np.arange(n + 1))
        out_start = np.searchsorted(graph.edge_src[by_src], np.arange(n + 1))
        return cls(in_start=in_start, in_edges=by_dst.astype(np.int64), out_start=out_start, out_edges=by_src.astype(np.int64))

    def incoming(self, op: int) -> np.ndarray:
        return self.in_edges[self.in_start[op] : self.in_start[op + 1]]

    def outgoing(self, op: int) -> np.ndarray:
        return self.out_edges[self.out_start[op] : self.out_start[op + 1]]


def bottom_levels(graph: OpGraph, op_weight: np.ndarray, edge_weight: np.ndarray) -> np.ndarray:
    """(n,) longest path from each op to an exit, counting the op's own weight.

    ``level[i] = op_weight[i] + max over edges i -> j of (edge_weight[e] + level[j])``.
    """
    n = graph.num_ops
    level = np.asarray(op_weight, dtype=np.float64).copy()
    index = EdgeIndex.build(graph)
    for op in range(n - 1, -1, -1):
        out = index.outgoing(op)
        if out.size:
            level[op] = op_weight[op] + float(np.max(edge_weight[out] + level[graph.edge_dst[out]]))
    return level


# ------------------------------------------------------------------- list scheduling
class ListSchedule:
    """A partial schedule that list-scheduling heuristics (m-ETF, m-SCT, HEFT, CP) build.

    Ops are placed one at a time after all their producers. Transfers take
    ``costs.edge_time[e, a, b]`` with no link contention (the simulator, which models
    contention, judges the result). Memory follows the estimate through a `MemoryLedger`;
    a unit's bytes are committed when its first op is placed.

    Shapes (n ops, k devices, u units):
        op_device: (n,) int64, -1 while unplaced.  unit_device: (u,) int64, -1 while unplaced.
        start, finish: (n,) float64.  available: (k,) float64, when each device's last op ends.
    """

    def __init__(self, graph: OpGraph, costs: CostTable, units: Units, budget: np.ndarray) -> None:
        self.graph = graph
        self.costs = costs
        self.units = units
        self.ledger = MemoryLedger(units, budget)
        self.edges = EdgeIndex.build(graph)
        n, k = graph.num_ops, costs.num_devices
        self.op_device = np.full(n, -1, dtype=np.int64)
        self.unit_device = np.full(units.num_units, -1, dtype=np.int64)
        self.start = np.zeros(n)
        self.finish = np.zeros(n)
        self.available = np.zeros(k)
        self.busy: list[list[tuple[float, float]]] = [[] for _ in range(k)]

    def candidates(self, op: int) -> np.ndarray:
        """(k,) bool, devices ``op`` may go to: its unit's device, or any that runs the unit and has room."""
        unit = int(self.units.of_op[op])
        placed = self.unit_device[unit]
        if placed >= 0:
            mask = np.zeros(self.costs.num_devices, dtype=bool)
            mask[placed] = True
            return mask
        return self.ledger.candidates(unit)

    def data_ready(self, op: int) -> np.ndarray:
        """(k,) time at which all of ``op``'s inputs could be on each device."""
        incoming = self.edges.incoming(op)
        if incoming.size == 0:
            return np.zeros(self.costs.num_devices)
        sources = self.graph.edge_src[incoming]
        if np.any(self.op_device[sources] < 0):
            raise AssertionError("list scheduling placed an op before its producer")
        arrival = self.finish[sources][:, None] + self.costs.edge_time[incoming, self.op_device[sources], :]
        return arrival.max(axis=0)

    def insertion_start(self, device: int, ready: float, duration: float) -> float:
        """Earliest start >= ``ready`` of an idle gap of ``duration`` on ``device`` (HEFT insertion)."""
        previous_end = 0.0
        for begin, end in self.busy[device]:
            candidate = max(previous_end, ready)
            if candidate + duration <= begin:
                return candidate
            previous_end = max(previous_end, end)
        return max(previous_end, ready)

    def assign(self, op: int, device: int, start: float) -> None:
        """Place ``op`` on ``device`` starting at ``start`` (commits its unit on first use)."""
        unit = int(self.units.of_op[op])
        if self.unit_device[unit] < 0:
            self.unit_device[unit] = device
            self.ledger.add(unit, device)
        duration = float(self.costs.op_time[op, device])
        self.op_device[op] = device
        self.start[op] = start
        self.finish[op] = start + duration
        self.available[device] = max(self.available[device], start + duration)
        intervals = self.busy[device]
        position = len(intervals)
        while position > 0 and intervals[position - 1][0] > start:
            position -= 1
        intervals.insert(position, (start, start + duration))

    def no_room_error(self, op: int, cluster: Cluster) -> NoRoomError:
        """Error for an op whose unit fits on no device any more."""
        unit = int(self.units.of_op[op])
        room = self.ledger.room()
        return NoRoomError(
            f"{self.units.describe(self.graph, unit)} needs {format_bytes(self.units.demand[unit])} but the devices that can run it "
            f"have at most {format_bytes(float(np.max(np.where(self.units.allowed[unit], room, -np.inf))))} left once earlier ops are placed; "
            f"cluster {cluster.name!r} is too small for this graph under this heuristic (try local-search or more memory)"
        )


# ------------------------------------------------------------------------------ repair
def repair_estimate(graph: OpGraph, cluster: Cluster, units: Units, unit_device: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """Make a (u,) assignment obey op times and the memory estimate with few moves.

    First every unit on a device it cannot run on moves to the fastest device that can run it
    and has room; then, while a device is over its budget, the unit that removes the overflow
    with the least memory (or the largest unit when none does) moves to the device with the
    most room that can take it. Raises `RlplaceError` when a unit fits nowhere.
    """
    assignment = np.array(unit_device, dtype=np.int64)
    ledger = ledger_for(assignment, units, budget)
    for unit in np.flatnonzero(~units.allowed[np.arange(units.num_units), assignment]):
        ledger.remove(int(unit), int(assignment[unit]))
        options = np.flatnonzero(ledger.candidates(int(unit)))
        if options.size == 0:
            options = np.flatnonzero(units.allowed[unit])
        target = int(options[int(np.argmin(units.time[unit, options]))])
        assignment[unit] = target
        ledger.add(int(unit), target)
    for _ in range(units.num_units + 1):
        over = ledger.used - ledger.budget
        device = int(np.argmax(over))
        if over[device] <= 0:
            return assignment
        moved = _move_off(units, assignment, ledger, device, float(over[device]), ledger.room())
        if not moved:
            raise RlplaceError(
                f"cannot fit graph {graph.name!r} on cluster {cluster.name!r}: device {cluster.devices[device].name} is "
                f"{format_bytes(float(over[device]))} over its memory and no op fits elsewhere; use more or larger devices"
            )
    return assignment


def _move_off(units: Units, assignment: np.ndarray, ledger: MemoryLedger, device: int, overflow: float, room: np.ndarray) -> bool:
    """Move one unit off ``device`` to free ``overflow`` bytes; ``room`` is the free space per device."""
    for unit in _units_to_move(units, assignment, device, overflow):
        options = units.allowed[unit] & (room >= units.demand[unit])
        options[device] = False
        if np.any(options):
            target = int(np.argmax(np.where(options, room, -np.inf)))
            ledger.remove(unit, device)
            ledger.add(unit, target)
            assignment[unit] = target
            return True
    return False


# ----------------------------------------------------------------------- final check
def make_simulator(graph: OpGraph, cluster: Cluster, costs: CostTable, objective: str, microbatches: int = 1) -> Any:
    """The shared `rlplace.simulate.Simulator` for ``objective`` (imported lazily);
    ``microbatches`` counts only for ``pipelined``."""
    from rlplace.simulate import Simulator

    return Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches if objective == "pipelined" else 1)


def finalize(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    placement: np.ndarray,
    *,
    objective: str,
    method: str,
    simulator: Any = None,
) -> Placement:
    """Check a method's placement exactly and return it read-only.

    Op times and colocation are checked (`check_constraints`); peak memory comes from the
    simulator. A device over capacity gets units moved off it (`repair_exact`); if that
    fails, `RlplaceError` names the device and the overflow.
    """
    result = as_placement(placement, graph, cluster)
    check_constraints(graph, costs, result)
    simulator = simulator if simulator is not None else make_simulator(graph, cluster, costs, objective)
    capacity = cluster.memory
    peak = np.asarray(simulator.peak_memory(result), dtype=np.float64)
    if np.all(peak <= capacity):
        return result
    return as_placement(repair_exact(graph, cluster, costs, result, objective=objective, method=method, simulator=simulator), graph, cluster)


def repair_exact(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    placement: np.ndarray,
    *,
    objective: str,
    method: str,
    simulator: Any,
) -> np.ndarray:
    """Move units off devices whose simulated peak memory exceeds capacity.

    Each step takes the most overflowing device and tries, in order, up to
    ``EXACT_REPAIR_TRIES`` of its units (those whose estimated size alone covers the overflow,
    smallest first, then the others, largest first), each to the device with the most
    simulated slack that can run it; the first move that lowers the total simulated overflow
    is kept. Raises `RlplaceError` when no tried move helps or the step limit (units + 1) is
    reached.
    """
    units = build_units(graph, costs, objective)
    assignment = units.contract(placement)
    capacity = cluster.memory
    peak = np.asarray(simulator.peak_memory(units.expand(assignment)), dtype=np.float64)
    for _ in range(units.num_units + 1):
        over = peak - capacity
        device = int(np.argmax(over))
        if over[device] <= 0:
            return units.expand(assignment)
        total = float(np.maximum(over, 0.0).sum())
        improved = False
        for unit in _units_to_move(units, assignment, device, float(over[device]))[:EXACT_REPAIR_TRIES]:
            options = units.allowed[unit].copy()
            options[device] = False
            if not np.any(options):
                continue
            trial = assignment.copy()
            trial[unit] = int(np.argmax(np.where(options, capacity - peak, -np.inf)))
            trial_peak = np.asarray(simulator.peak_memory(units.expand(trial)), dtype=np.float64)
            if float(np.maximum(trial_peak - capacity, 0.0).sum()) < total:
                assignment, peak, improved = trial, trial_peak, True
                break
        if not improved:
            break
    over = peak - capacity
    device = int(np.argmax(over))
    raise RlplaceError(
        f"{method}: no placement of graph {graph.name!r} within device memory found: device {cluster.devices[device].name} "
        f"needs {format_bytes(float(peak[device]))} at its peak but has {format_bytes(float(capacity[device]))}; "
        "use more or larger devices, or a smaller batch"
    )


def _units_to_move(units: Units, assignment: np.ndarray, device: int, overflow: float) -> list[int]:
    """Units on ``device`` with memory, those whose estimate covers ``overflow`` first (smallest first), then the rest (largest first)."""
    on_device = np.flatnonzero(assignment == device)
    on_device = on_device[units.demand[on_device] > 0]
    demand = units.demand[on_device]
    fixes = np.flatnonzero(demand >= overflow)
    rest = np.flatnonzero(demand < overflow)
    order = np.concatenate([fixes[np.argsort(demand[fixes], kind="stable")], rest[np.argsort(-demand[rest], kind="stable")]])
    return [int(on_device[i]) for i in order]


def start_assignment_error(graph: OpGraph, cluster: Cluster, units: Units, unit: int) -> NoRoomError:
    """Error for a unit that no device with room can take during a greedy pass."""
    return NoRoomError(
        f"{units.describe(graph, unit)} ({format_bytes(float(units.demand[unit]))}) fits on no device of cluster {cluster.name!r} "
        "once the ops before it are placed; use more or larger devices"
    )


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


def prepare(graph: OpGraph, cluster: Cluster, costs: CostTable, objective: str) -> tuple[Units, np.ndarray]:
    """Validate the objective and the inputs; return the units and the (k,) memory budget."""
    check_objective(objective)
    if costs.op_time.shape != (graph.num_ops, cluster.num_devices):
        raise RlplaceError(
            f"cost table is {costs.op_time.shape[0]}x{costs.op_time.shape[1]} but graph {graph.name!r} has {graph.num_ops} ops "
            f"and cluster {cluster.name!r} {cluster.num_devices} devices; build it with CostTable.build(graph, cluster)"
        )
    units = build_units(graph, costs, objective)
    budget = memory_budget(graph, cluster, objective)
    check_feasible(graph, cluster, units, objective)
    return units, budget
