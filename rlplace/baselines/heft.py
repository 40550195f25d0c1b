"""``heft``: Heterogeneous Earliest Finish Time (Topcuoglu, Hariri and Wu, 2002).

Ops are ranked by their upward rank, ``rank(i) = w_i + max over i -> j of (c_e + rank(j))``,
with ``w`` the op's compute time averaged over the devices that can run it and ``c`` the
edge's transfer time averaged over device pairs; they are scheduled by decreasing rank (ties
by op id, which keeps a topological order). Each op goes to the device where it finishes
earliest, allowed to fill an idle gap between already scheduled ops (insertion policy); ties
go to the lower device index. Devices are limited to those that can run the op's unit and
have room for it under the memory estimate; the rest of a colocation class follows its first
op. The schedule optimises latency; for ``throughput`` it still returns a feasible placement.
If a unit finds no room, the schedule is redone without memory limits and repaired
(`rlplace.rules.fit_with_fallback`).
"""

from __future__ import annotations

import numpy as np

from rlplace.baselines.adjacency import bottom_levels
from rlplace.baselines.list_schedule import ListSchedule
from rlplace.baselines.summaries import finite_mean, mean_edge_time
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize, fit_with_fallback, prepare


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """HEFT schedule's placement (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    rank = bottom_levels(graph, finite_mean(costs.op_time), mean_edge_time(costs))
    order = np.lexsort((np.arange(graph.num_ops), -rank)).tolist()

    def decide(limit: np.ndarray) -> np.ndarray:
        plan = ListSchedule(graph, costs, units, limit)
        for op in order:
            devices = np.flatnonzero(plan.candidates(op))
            if devices.size == 0:
                raise plan.no_room_error(op, cluster)
            ready = plan.data_ready(op)
            best: tuple[float, int, float] | None = None
            for device in devices.tolist():
                duration = float(costs.op_time[op, device])
                start = plan.insertion_start(device, float(ready[device]), duration)
                if best is None or start + duration < best[0]:
                    best = (start + duration, device, start)
            assert best is not None
            plan.assign(op, best[1], best[2])
        return plan.unit_device

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="heft", microbatches=microbatches, schedule=schedule
    )
