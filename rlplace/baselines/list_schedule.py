"""`ListSchedule`: the partial schedule list-scheduling heuristics (m-ETF, m-SCT, HEFT, CP) build.

Shapes: n ops, k devices, u units.
"""

from __future__ import annotations

import numpy as np

from rlplace.baselines.adjacency import EdgeIndex
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.rules import MemoryLedger, NoRoomError, Units
from rlplace.units import show_bytes


class ListSchedule:
    """A partial schedule that list-scheduling heuristics (m-ETF, m-SCT, HEFT, CP) build.

    Ops are placed one at a time after all their producers. Transfers take
    ``costs.edge_class_time[e, costs.link_class[a, b]]`` with no link contention (the simulator, which models
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
        classes = self.costs.link_class[self.op_device[sources], :]  # (s, k)
        arrival = self.finish[sources][:, None] + self.costs.edge_class_time[incoming[:, None], classes]
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
            f"{self.units.describe(self.graph, unit)} needs {show_bytes(self.units.demand[unit])} but the devices that can run it "
            f"have at most {show_bytes(float(np.max(np.where(self.units.allowed[unit], room, -np.inf))))} left once earlier ops are placed; "
            f"cluster {cluster.name!r} is too small for this graph under this heuristic (try local-search or more memory)"
        )
