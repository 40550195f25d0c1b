"""Compiled halves of `rlplace.envs.improve_state.observe`: the per-unit and per-pair features.

`observe` runs once per ranking of the guided search (every few moves), so its cost is paid
thousands of times per decision. Written as vectorised numpy it was ~50 small array
operations (``np.add.at``, ``np.stack``, clipping) costing ~1.3 ms on 100-130 units, four
times the simulation it summarises; these two kernels do the same arithmetic in two passes.

Sums run in the order the numpy version took them (into each array, every crossing edge's
producer side, then every consumer side, each in edge order), so the accumulated float64
values are the same (`observe` then clips and rounds them with `finite_features`).

Shapes: u units, k devices, n ops, m op edges, x crossing op edges, e unit edges.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def unit_sums(
    assignment: np.ndarray,
    placement: np.ndarray,
    of_op: np.ndarray,
    op_start: np.ndarray,
    op_finish: np.ndarray,
    has_times: bool,
    critical_ops: np.ndarray,
    cross: np.ndarray,
    edge_src: np.ndarray,
    edge_dst: np.ndarray,
    edge_time: np.ndarray,
    edge_bytes: np.ndarray,
    cross_edge_unit: np.ndarray,
    num_unit_edges: int,
    num_devices: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """What one simulated placement says per unit, and what its crossing edges cost.

    Args:
        assignment: (u,) int64 device of each unit; placement: (n,) int64 device of each op.
        of_op: (n,) int64 unit of each op; op_start, op_finish: (n,) float64 first micro-batch's
            times (ignored unless ``has_times``); critical_ops: (c,) int64 ops on the critical path.
        cross: (x,) int64 op edges whose ends lie in different units; edge_src, edge_dst: (m,)
            int64; edge_time: (m, k, k) float64 transfer time of each edge per (src, dst) device;
            edge_bytes: (m,) float64; cross_edge_unit: (x,) int64 unit edge of each crossing edge.

    Returns:
        start (u,) earliest op start and finish (u,) latest op finish (zeros without
        ``has_times``), critical (u,) 1.0 on the critical path, comm (u, k) transfer time of the unit's
        crossing edges were it on each device (the other ends where they are), nb_bytes (u, k)
        bytes to neighbours sitting on each device, edge_comm (e,) transfer time per unit edge now.
    """
    u = assignment.shape[0]
    k = num_devices
    start = np.zeros(u)
    finish = np.zeros(u)
    if has_times:
        start[:] = np.inf
        for op in range(of_op.shape[0]):
            unit = of_op[op]
            if op_start[op] < start[unit]:
                start[unit] = op_start[op]
            if op_finish[op] > finish[unit]:
                finish[unit] = op_finish[op]
    critical = np.zeros(u)
    for i in range(critical_ops.shape[0]):
        critical[of_op[critical_ops[i]]] = 1.0
    comm = np.zeros((u, k))
    nb_bytes = np.zeros((u, k))
    edge_comm = np.zeros(num_unit_edges)
    for i in range(cross.shape[0]):  # producer sides, in edge order (and each edge's cost now)
        edge = cross[i]
        src, dst = placement[edge_src[edge]], placement[edge_dst[edge]]
        unit = of_op[edge_src[edge]]
        for d in range(k):
            comm[unit, d] += edge_time[edge, d, dst]
        nb_bytes[unit, dst] += edge_bytes[edge]
        edge_comm[cross_edge_unit[i]] += edge_time[edge, src, dst]
    for i in range(cross.shape[0]):  # then consumer sides, in edge order
        edge = cross[i]
        src = placement[edge_src[edge]]
        unit = of_op[edge_dst[edge]]
        for d in range(k):
            comm[unit, d] += edge_time[edge, src, d]
        nb_bytes[unit, src] += edge_bytes[edge]
    return start, finish, critical, comm, nb_bytes, edge_comm


@njit(cache=True)
def unit_and_pair_features(
    assignment: np.ndarray,
    step_time: float,
    start: np.ndarray,
    finish: np.ndarray,
    critical: np.ndarray,
    comm: np.ndarray,
    nb_bytes: np.ndarray,
    nb_total: np.ndarray,
    time: np.ndarray,
    fastest: np.ndarray,
    mean_time: np.ndarray,
    demand: np.ndarray,
    capacity: np.ndarray,
    room: np.ndarray,
    legal: np.ndarray,
    busy: np.ndarray,
    load: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(u, NODE_FEATURES) and (u, k, PAIR_FEATURES) float64 features, before `finite_features`
    (the columns are listed in `rlplace.envs.improve_state`).

    Args:
        step_time: T, the current step time (> 0); start, finish, critical, comm, nb_bytes:
            `unit_sums`; nb_total: (u,) max(bytes to all neighbours, 1).
        time: (u, k) unit time per device, 0 where not allowed; fastest, mean_time: (u,) the
            unit's fastest and mean allowed time, 0 where undefined.
        demand: (u,) bytes; capacity: (k,) bytes (finite); room: (k,) budget left per device.
        legal: (u, k) bool; busy, load: (k,) compute time and load per device.
    """
    u, k = time.shape
    T = step_time
    scale = max(u, 1) / T
    busiest = 0
    for d in range(1, k):
        if load[d] > load[busiest]:
            busiest = d
    highest_busy = busy.max() if k else 0.0
    nodes = np.empty((u, 10))
    pairs = np.empty((u, k, 12))
    for a in range(u):
        here = assignment[a]
        time_here = time[a, here]
        comm_here = comm[a, here]
        nodes[a, 0] = (start[a] if np.isfinite(start[a]) else 0.0) / T
        nodes[a, 1] = finish[a] / T
        nodes[a, 2] = critical[a]
        nodes[a, 3] = time_here * scale
        nodes[a, 4] = fastest[a] * scale
        nodes[a, 5] = mean_time[a] * scale
        nodes[a, 6] = demand[a] / capacity[here]
        nodes[a, 7] = 1.0 - nb_bytes[a, here] / nb_total[a]
        nodes[a, 8] = comm_here * scale
        nodes[a, 9] = 1.0 if here == busiest else 0.0
        for d in range(k):
            room_after = (room[d] - demand[a]) / capacity[d]
            if d == here:
                most = highest_busy
            else:
                # the busiest device once the unit's time leaves `here` and lands on d
                most = -np.inf
                for j in range(k):
                    value = busy[j]
                    if j == here:
                        value = busy[j] - time_here
                    if j == d:
                        value = value + time[a, d]
                    if value > most:
                        most = value
            pairs[a, d, 0] = time[a, d] * scale
            pairs[a, d, 1] = (time[a, d] - time_here) * scale
            pairs[a, d, 2] = comm[a, d] * scale
            pairs[a, d, 3] = (comm[a, d] - comm_here) * scale
            pairs[a, d, 4] = nb_bytes[a, d] / nb_total[a]
            pairs[a, d, 5] = 1.0 if d == here else 0.0
            pairs[a, d, 6] = 1.0 if demand[a] <= room[d] else 0.0
            pairs[a, d, 7] = min(max(room_after, -4.0), 4.0)
            pairs[a, d, 8] = load[d] / T
            pairs[a, d, 9] = (load[d] + time[a, d]) / T
            pairs[a, d, 10] = 1.0 if legal[a, d] else 0.0
            pairs[a, d, 11] = most / T - 1.0
    return nodes, pairs

