"""``m-sct`` (Baechi, SoCC 2020): small-communication-time scheduling under memory limits.

Hanen and Munier's SCT heuristic: a linear program picks *favourite children* (a child that
should run right after its parent on the parent's device, saving the transfer), then list
scheduling follows ETF while keeping each favourite child on its parent's device.

The LP relaxation, with ``x_e`` in [0, 1] per edge (0 = the child is the favourite), start
times ``s`` and makespan ``w``, minimises ``w`` subject to

    s_i + p_i + c_e x_e <= s_j   for every edge e = i -> j
    sum of x over i's out-edges >= out_degree(i) - 1   (at most one favourite child)
    sum of x over j's in-edges  >= in_degree(j) - 1    (favourite of at most one parent)
    s_i + p_i <= w

with ``p`` the op's compute time averaged over the devices that can run it and ``c`` the
edge's transfer time averaged over device pairs (times scaled to O(1) for the solver). It is
solved with ``scipy.optimize.linprog(method="highs")``. An edge is a favourite when
``x_e < 0.5``; conflicts (two favourites of one parent or child) keep the smallest ``x``
(then the largest transfer time). Scheduling is `rlplace.baselines.m_etf.run_etf` with the
favourite child pinned to its parent's device whenever that device may take it, and a device
whose last op has an unscheduled favourite child kept free for it (other ops use it only when
they may use no other device). Baechi also lets an *urgent* op (one as ready everywhere as it
will ever be) take a waiting device; this version does not.
If a unit finds no room, the schedule is redone without memory limits and repaired
(`rlplace.rules.fit_with_fallback`).
"""

from __future__ import annotations

import numpy as np

from rlplace.baselines.adjacency import EdgeIndex
from rlplace.baselines.list_schedule import ListSchedule
from rlplace.baselines.m_etf import run_etf
from rlplace.baselines.summaries import finite_mean, mean_edge_time
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize, fit_with_fallback, prepare

#: Edges whose relaxed x_e is below this become favourite-child edges.
FAVOURITE_THRESHOLD = 0.5


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """SCT schedule's placement (module docstring). ``seed`` is unused."""
    del seed
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    relaxed = solve_favourite_lp(graph, finite_mean(costs.op_time), mean_edge_time(costs))
    favourite_parent = favourite_parents(graph, relaxed, mean_edge_time(costs))

    def decide(limit: np.ndarray) -> np.ndarray:
        plan = ListSchedule(graph, costs, units, limit)
        run_etf(plan, cluster, favourite_parent)
        return plan.unit_device

    assignment = fit_with_fallback(graph, cluster, units, budget, decide)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="m-sct", microbatches=microbatches, schedule=schedule
    )


def solve_favourite_lp(graph: OpGraph, op_time: np.ndarray, edge_time: np.ndarray) -> np.ndarray:
    """(m,) relaxed favourite-child variables ``x_e`` (0 = favourite) of the SCT LP."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    n, m = graph.num_ops, graph.num_edges
    if m == 0:
        return np.zeros(0)
    scale = float(op_time.sum() + edge_time.sum())
    scale = 1.0 / scale if scale > 0 else 1.0
    p, c = op_time * scale, edge_time * scale
    x_var, s_var, w_var = np.arange(m), m + np.arange(n), m + n
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    rhs: list[np.ndarray] = []
    count = 0

    def add(block_rows: np.ndarray, block_cols: np.ndarray, block_vals: np.ndarray, block_rhs: np.ndarray) -> None:
        nonlocal count
        rows.append(block_rows + count)
        cols.append(block_cols)
        vals.append(block_vals)
        rhs.append(block_rhs)
        count += block_rhs.shape[0]

    edge_rows = np.arange(m)
    src, dst = graph.edge_src, graph.edge_dst
    # s_src - s_dst + c_e x_e <= -p_src
    add(np.repeat(edge_rows, 3), np.stack([s_var[src], s_var[dst], x_var], axis=1).reshape(-1), np.stack([np.ones(m), -np.ones(m), c], axis=1).reshape(-1), -p[src])
    index = EdgeIndex.build(graph)
    for starts, edges in ((index.out_start, index.out_edges), (index.in_start, index.in_edges)):
        degree = np.diff(starts)
        nodes = np.flatnonzero(degree >= 2)
        if nodes.size:
            # -sum x <= 1 - degree
            block_rows = np.repeat(np.arange(nodes.size), degree[nodes])
            block_cols = np.concatenate([edges[starts[v] : starts[v + 1]] for v in nodes])
            add(block_rows, block_cols, -np.ones(block_cols.shape[0]), 1.0 - degree[nodes])
    # s_i - w <= -p_i
    add(np.repeat(np.arange(n), 2), np.stack([s_var, np.full(n, w_var)], axis=1).reshape(-1), np.tile([1.0, -1.0], n), -p)
    matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(count, m + n + 1)).tocsr()
    objective = np.zeros(m + n + 1)
    objective[w_var] = 1.0
    bounds = [(0.0, 1.0)] * m + [(0.0, None)] * (n + 1)
    result = linprog(objective, A_ub=matrix, b_ub=np.concatenate(rhs), bounds=bounds, method="highs")
    if result.status != 0:
        raise RlplaceError(f"m-sct: the favourite-child LP of graph {graph.name!r} was not solved ({result.message}); use m-etf instead")
    return np.clip(np.asarray(result.x[:m]), 0.0, 1.0)


def favourite_parents(graph: OpGraph, relaxed: np.ndarray, edge_time: np.ndarray) -> np.ndarray:
    """(n,) favourite parent of each op (-1 for none) from the rounded LP solution."""
    n = graph.num_ops
    parent = np.full(n, -1, dtype=np.int64)
    has_favourite = np.zeros(n, dtype=bool)
    chosen = np.flatnonzero(relaxed < FAVOURITE_THRESHOLD)
    for edge in chosen[np.lexsort((chosen, -edge_time[chosen], relaxed[chosen]))]:
        src, dst = int(graph.edge_src[edge]), int(graph.edge_dst[edge])
        if not has_favourite[src] and parent[dst] < 0:
            has_favourite[src] = True
            parent[dst] = src
    return parent
