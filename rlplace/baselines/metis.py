"""``metis``: a k-way min-cut partition (pymetis) of the unit graph, mapped to devices.

- Vertices are units (colocation classes contracted); a vertex weighs the unit's compute time
  on the reference device (the fastest one; the unit's own fastest time where it cannot run
  there). Edges between units weigh the bytes they carry (the given transfer times for
  profiled graphs, whose bytes may be absent), summed over the edges between the two units.
- Target part weights (``tpwgts``) are proportional to device speed
  (`rlplace.baselines.summaries.device_speed`), so faster devices get more work.
- Parts map to devices by a minimum-cost assignment (``scipy.optimize.linear_sum_assignment``)
  on each part's compute time on each device, then `repair_estimate` moves units off devices
  that cannot run them or lack memory.
METIS only sees integers: weights are scaled to at most about 1e8 in total, and every vertex
and edge weighs at least 1.
"""

from __future__ import annotations

import numpy as np

from rlplace.baselines.summaries import device_speed
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.io import c_stdout_discarded
from rlplace.placement import Placement
from rlplace.rules import Units, finalize, prepare, repair_estimate

_WEIGHT_SCALE = 1e8


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """Partition with METIS (seeded with ``seed``), map parts to devices, repair (module docstring)."""
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    k = cluster.num_devices
    speed = device_speed(costs)
    trivial = k == 1 or units.num_units <= 1
    parts = np.zeros(units.num_units, dtype=np.int64) if trivial else partition(graph, units, speed, k, seed)
    assignment = map_parts_to_devices(units, parts, k)[parts] if units.num_units else parts
    assignment = repair_estimate(graph, cluster, units, assignment, budget)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="metis", microbatches=microbatches, schedule=schedule
    )


def partition(graph: OpGraph, units: Units, speed: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(u,) part id per unit from ``pymetis.part_graph`` with target weights ``speed``."""
    import pymetis

    reference = int(np.argmax(speed))
    work = np.where(units.allowed[:, reference], units.time[:, reference], np.min(units.time, axis=1))
    vertex_weights = _integer_weights(work)
    a = units.of_op[graph.edge_src]
    b = units.of_op[graph.edge_dst]
    between = a != b
    edge_weight = graph.edge_given_time if graph.edge_given_time is not None else graph.edge_bytes
    u = units.num_units
    # Undirected, both directions stored, parallel edges merged by summing.
    lo, hi = np.minimum(a[between], b[between]), np.maximum(a[between], b[between])
    pair_key, inverse = np.unique(lo * u + hi, return_inverse=True)
    pair_weight = np.bincount(inverse.reshape(-1), weights=edge_weight[between], minlength=pair_key.shape[0])
    src = np.concatenate([pair_key // u, pair_key % u])
    dst = np.concatenate([pair_key % u, pair_key // u])
    weights = np.concatenate([pair_weight, pair_weight])
    order = np.lexsort((dst, src))
    src, dst, weights = src[order], dst[order], _integer_weights(weights[order])
    adj_starts = np.searchsorted(src, np.arange(u + 1))
    targets = speed / speed.sum()
    with c_stdout_discarded():  # METIS prints from C (e.g. "***Cannot bisect a graph with 0 vertices!")
        result = pymetis.part_graph(
            k,
            pymetis.CSRAdjacency(adj_starts.tolist(), dst.tolist()),
            vweights=vertex_weights.tolist(),
            eweights=weights.tolist() if weights.size else None,
            tpwgts=targets.tolist(),
            options=pymetis.Options(seed=int(seed)),
        )
    return np.asarray(result.vertex_part, dtype=np.int64)


def map_parts_to_devices(units: Units, parts: np.ndarray, k: int) -> np.ndarray:
    """(k,) device of each part: minimum total compute time, one part per device."""
    from scipy.optimize import linear_sum_assignment

    cost = np.zeros((k, k))
    np.add.at(cost, parts, units.time)
    finite = np.isfinite(cost)
    penalty = (cost[finite].max() if np.any(finite) else 1.0) * (k + 1) + 1.0
    # Each op that cannot run on the device costs a penalty, so parts avoid such devices.
    blocked = np.zeros((k, k))
    np.add.at(blocked, parts, ~units.allowed)
    rows, columns = linear_sum_assignment(np.where(finite, cost, 0.0) + penalty * blocked)
    mapping = np.empty(k, dtype=np.int64)
    mapping[rows] = columns
    return mapping


def _integer_weights(values: np.ndarray) -> np.ndarray:
    """Non-negative floats -> int64 >= 1, summing to at most about ``_WEIGHT_SCALE``."""
    values = np.asarray(values, dtype=np.float64)
    total = float(values.sum())
    if values.size == 0:
        return values.astype(np.int64)
    scaled = values * (_WEIGHT_SCALE / total) if total > 0 else np.zeros_like(values)
    return np.maximum(np.round(scaled), 1).astype(np.int64)
