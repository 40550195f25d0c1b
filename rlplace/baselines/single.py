"""``single``: every op on the fastest single device that can hold the whole graph.

The fastest device is the one with the smallest total op time (from the cost table, so
profiled graphs work too). A device qualifies when it can run every op (no ``inf`` time) and
the simulator's exact peak memory of the graph on it fits its capacity. When no device
qualifies, the error says why: which op no device can run, or how much memory the graph needs
against the largest device.
"""

from __future__ import annotations

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement, as_placement
from rlplace.rules import make_simulator, prepare
from rlplace.units import show_bytes


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """All ops on the fastest device that runs them all within its memory (peak memory under
    ``objective``, ``microbatches`` and ``schedule``).

    ``seed`` is unused (the method is deterministic). Ties in total time go to the lower index.
    """
    del seed
    prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)  # clear errors for ops too big for every device
    total_time = costs.op_time.sum(axis=0)
    runs_all = np.isfinite(total_time)
    if not np.any(runs_all):
        blockers = [f"op {graph.names[int(np.argmax(~np.isfinite(costs.op_time[:, d])))]!r} cannot run on {cluster.devices[d].name}" for d in range(cluster.num_devices)]
        raise RlplaceError(
            f"no single device of cluster {cluster.name!r} can run every op ({'; '.join(blockers[:3])}); "
            "use a multi-device method such as m-etf"
        )
    simulator = make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    capacity = cluster.memory
    peaks: dict[int, float] = {}
    for device in np.argsort(np.where(runs_all, total_time, np.inf), kind="stable"):
        device = int(device)
        if not runs_all[device]:
            break
        placement = as_placement(np.full(graph.num_ops, device), graph, cluster)
        peak = float(np.asarray(simulator.peak_memory(placement))[device])
        if peak <= capacity[device]:
            return placement
        peaks[device] = peak
    largest = max(peaks, key=lambda d: (capacity[d], -d))
    raise RlplaceError(
        f"graph {graph.name!r} needs {show_bytes(peaks[largest])} on one device but the largest device that can run it, "
        f"{cluster.devices[largest].name}, has {show_bytes(capacity[largest])}; use a multi-device method such as m-topo"
    )
