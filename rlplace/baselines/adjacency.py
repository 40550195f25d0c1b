"""Edge lists per op (`EdgeIndex`) and longest paths to an exit (`bottom_levels`).

Shapes: n ops, m edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlplace.graph import OpGraph


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
        in_start = np.searchsorted(graph.edge_dst[by_dst], np.arange(n + 1))
        out_start, _, out_edges = graph.successor_table()
        return cls(in_start=in_start, in_edges=by_dst.astype(np.int64), out_start=out_start, out_edges=out_edges)

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
