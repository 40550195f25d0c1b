"""``m-etf`` (Baechi, SoCC 2020): earliest-task-first list scheduling under memory limits.

Repeatedly, among the ready ops (all producers placed) and the devices each may use, the
pair with the earliest start time is scheduled, where

    start(op, d) = max(time device d becomes free, time all inputs can be on d)

and inputs arrive ``costs.edge_time`` after their producer ends (no link contention; see
`rlplace.baselines.list_schedule.ListSchedule`). Ties go to the earlier finish, then the lower op
id, then the lower device index. A device may be used when it can run the op's unit and has
room for it under the memory estimate; the rest of a colocation class follows its first op.
The schedule optimises latency; for ``throughput`` it still returns a feasible placement.
If a unit finds no room, the schedule is redone without memory limits and repaired
(`rlplace.rules.fit_with_fallback`).
"""

from __future__ import annotations

import numpy as np

from rlplace.baselines.list_schedule import ListSchedule
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize, fit_with_fallback, prepare


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """ETF schedule's placement (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)

    def decide(limit: np.ndarray) -> np.ndarray:
        plan = ListSchedule(graph, costs, units, limit)
        run_etf(plan, cluster)
        return plan.unit_device

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="m-etf", microbatches=microbatches, schedule=schedule
    )


def run_etf(schedule: ListSchedule, cluster: Cluster, favourite_parent: np.ndarray | None = None) -> None:
    """Schedule every op of ``schedule`` by ETF.

    Args:
        favourite_parent: (n,) int64 or None (m-SCT's favourite children). Op j with
            ``favourite_parent[j] = i >= 0`` goes to i's device whenever that device may take
            it; and while the last op placed on a device has an unscheduled favourite child,
            the device is kept for that child: other ops may use it only when it is the one
            device they may use.
    """
    graph, costs = schedule.graph, schedule.costs
    n = graph.num_ops
    missing = np.bincount(graph.edge_dst, minlength=n).astype(np.int64)
    ready: list[int] = [op for op in range(n) if missing[op] == 0]
    arrival: dict[int, np.ndarray] = {op: schedule.data_ready(op) for op in ready}
    favourite_child = None
    if favourite_parent is not None:
        favourite_child = np.full(n, -1, dtype=np.int64)
        children = np.flatnonzero(favourite_parent >= 0)
        favourite_child[favourite_parent[children]] = children
    last_op = np.full(costs.num_devices, -1, dtype=np.int64)
    while ready:
        ops = np.array(ready, dtype=np.int64)
        mask = _candidate_mask(schedule, ops, favourite_parent)
        if favourite_child is not None:
            _keep_for_favourites(mask, ops, last_op, favourite_child, schedule.op_device)
        blocked = ~np.any(mask, axis=1)
        if np.any(blocked):
            raise schedule.no_room_error(int(ops[int(np.argmax(blocked))]), cluster)
        start = np.maximum(np.stack([arrival[op] for op in ready]), schedule.available[None, :])
        finish = start + costs.op_time[ops]
        rows, columns = np.nonzero(mask)
        pick = np.lexsort((columns, ops[rows], finish[rows, columns], start[rows, columns]))[0]
        row, device = int(rows[pick]), int(columns[pick])
        op = int(ops[row])
        schedule.assign(op, device, float(start[row, device]))
        last_op[device] = op
        ready.pop(row)
        del arrival[op]
        for edge in schedule.edges.outgoing(op):
            consumer = int(graph.edge_dst[edge])
            missing[consumer] -= 1
            if missing[consumer] == 0:
                ready.append(consumer)
                arrival[consumer] = schedule.data_ready(consumer)


def _candidate_mask(schedule: ListSchedule, ops: np.ndarray, favourite_parent: np.ndarray | None) -> np.ndarray:
    """(r, k) bool, devices each ready op may use."""
    units = schedule.units
    op_units = units.of_op[ops]
    placed = schedule.unit_device[op_units]
    room = schedule.ledger.room()
    mask = units.allowed[op_units] & (units.demand[op_units][:, None] <= room[None, :])
    fixed = placed >= 0
    if np.any(fixed):
        mask[fixed] = False
        mask[np.flatnonzero(fixed), placed[fixed]] = True
    if favourite_parent is not None:
        parents = favourite_parent[ops]
        for row in np.flatnonzero((parents >= 0) & ~fixed):
            device = schedule.op_device[parents[row]]
            if device >= 0 and mask[row, device]:
                mask[row] = False
                mask[row, device] = True
    return mask


def _keep_for_favourites(mask: np.ndarray, ops: np.ndarray, last_op: np.ndarray, favourite_child: np.ndarray, op_device: np.ndarray) -> None:
    """Clear, in place, devices kept for a pending favourite child from other ops' (r, k) masks."""
    has_last = last_op >= 0
    pending = np.where(has_last, favourite_child[np.maximum(last_op, 0)], -1)
    waiting = (pending >= 0) & has_last
    waiting[waiting] = op_device[pending[waiting]] < 0
    if not np.any(waiting):
        return
    for row, op in enumerate(ops.tolist()):
        kept = waiting & (pending != op) & mask[row]
        if np.any(kept) and np.any(mask[row] & ~kept):
            mask[row] &= ~kept
