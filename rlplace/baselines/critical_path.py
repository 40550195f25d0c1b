"""``critical-path``: list scheduling by bottom level, each op at its earliest start time.

The priority of an op is its bottom level: the longest path from it to the end of the graph,
counting every op at its time on its fastest device and every edge at its transfer time
averaged over device pairs. Whenever ops are ready (all producers scheduled), the one with the
highest bottom level (ties: lower op id) is scheduled on the device where it can *start*
earliest, after the device's last op (no insertion); ties go to the earlier finish, then the
lower device index. Devices are limited to those that can run the op's unit and have room
for it under the memory estimate; the rest of a colocation class follows its first op. The
schedule optimises latency; for ``throughput`` it still returns a feasible placement.
If a unit finds no room, the schedule is redone without memory limits and repaired
(`rlplace.rules.fit_with_fallback`).
"""

from __future__ import annotations

import heapq

import numpy as np

from rlplace.baselines.adjacency import bottom_levels
from rlplace.baselines.list_schedule import ListSchedule
from rlplace.baselines.summaries import fastest_time, mean_edge_time
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize, fit_with_fallback, prepare


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """Bottom-level list schedule's placement (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    level = bottom_levels(graph, fastest_time(costs.op_time), mean_edge_time(costs))
    n = graph.num_ops

    def decide(limit: np.ndarray) -> np.ndarray:
        plan = ListSchedule(graph, costs, units, limit)
        missing = np.bincount(graph.edge_dst, minlength=n).astype(np.int64)
        ready = [(-float(level[op]), op) for op in range(n) if missing[op] == 0]
        heapq.heapify(ready)
        while ready:
            _, op = heapq.heappop(ready)
            devices = np.flatnonzero(plan.candidates(op))
            if devices.size == 0:
                raise plan.no_room_error(op, cluster)
            start = np.maximum(plan.data_ready(op)[devices], plan.available[devices])
            finish = start + costs.op_time[op, devices]
            pick = int(np.lexsort((devices, finish, start))[0])
            plan.assign(op, int(devices[pick]), float(start[pick]))
            for edge in plan.edges.outgoing(op).tolist():
                consumer = int(graph.edge_dst[edge])
                missing[consumer] -= 1
                if missing[consumer] == 0:
                    heapq.heappush(ready, (-float(level[consumer]), consumer))
        return plan.unit_device

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="critical-path", microbatches=microbatches, schedule=schedule
    )
