"""Colocation units: the items (ops, or groups of ops) that must share a device.

An op without a colocation class is on its own; the ops of one class must share a device. When
ops are grouped (a coarsening, the env's node slots), groups that hold ops of one class are
tied too, transitively. A *unit* is a maximal set of tied items. Units are numbered in the
order of their first (lowest) item, so with items in topological order unit order is a
topological order of first items.

The baselines build units over ops (`build_units`), the env over its groups
(`build_units` with ``group_of_op``); both come from `colocation_leaders`, so the two agree.

Shapes used below: n ops, N items (N = n without grouping), u units, k devices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rlplace.costs import CostTable
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.rules.estimate import op_memory_demand


def colocation_leaders(graph: OpGraph, group_of_op: np.ndarray | None = None, num_groups: int | None = None) -> np.ndarray:
    """(N,) int64 leader (lowest item id) of each item's unit.

    Items are the ops (``group_of_op`` None) or the groups ``group_of_op`` (n,) maps ops to,
    numbered 0..``num_groups``-1. Two items are tied when they hold ops of one colocation class.
    """
    n = graph.num_ops
    if group_of_op is None:
        group_of_op, num_groups = np.arange(n, dtype=np.int64), n
    group_of_op = np.asarray(group_of_op, dtype=np.int64)
    count = int(num_groups if num_groups is not None else (group_of_op.max() + 1 if n else 0))
    has_class = graph.coloc != NO_CLASS
    if not np.any(has_class):
        return np.arange(count, dtype=np.int64)
    from scipy.sparse import coo_matrix  # only graphs with colocation classes pay for scipy
    from scipy.sparse.csgraph import connected_components

    classes = graph.coloc[has_class].astype(np.int64)
    groups = group_of_op[has_class]
    # Bipartite graph: nodes 0..count-1 are items, count.. are classes; an edge per classed op.
    size = count + int(classes.max()) + 1
    adjacency = coo_matrix((np.ones(groups.size), (groups, count + classes)), shape=(size, size))
    _, label = connected_components(adjacency, directed=False)
    leader_of_label = np.full(int(label.max()) + 1, count, dtype=np.int64)
    np.minimum.at(leader_of_label, label[:count], np.arange(count, dtype=np.int64))
    return leader_of_label[label[:count]]


@dataclass(frozen=True, eq=False)
class Units:
    """Colocation units of a graph's items on a cluster.

    Shapes (n ops, N items, u units, k devices):
        of_op: (N,) int64, unit of each item (named for the common case, items = ops).
        first_op: (u,) int64, smallest item id of each unit (ascending with the unit id).
        members: u int64 arrays, item ids of each unit, ascending.
        demand: (u,) float64, bytes of the unit under the memory estimate (`rlplace.rules.estimate`).
        allowed: (u, k) bool, every op of the unit can run on the device (finite op time).
        time: (u, k) float64, summed op time of the unit on each device (``inf`` if not allowed).
        item_of_op: (n,) int64 item of each op (the identity when items are ops).
    """

    of_op: np.ndarray
    first_op: np.ndarray
    members: tuple[np.ndarray, ...]
    demand: np.ndarray
    allowed: np.ndarray
    time: np.ndarray
    item_of_op: np.ndarray | None = None

    @property
    def num_units(self) -> int:
        return int(self.first_op.shape[0])

    @property
    def leader(self) -> np.ndarray:
        """(N,) int64 first item of each item's unit."""
        return self.first_op[self.of_op]

    @property
    def unit_of_op(self) -> np.ndarray:
        """(n,) int64 unit of each op (``of_op`` itself when items are ops)."""
        return self.of_op if self.item_of_op is None else self.of_op[self.item_of_op]

    def expand(self, unit_device: np.ndarray) -> np.ndarray:
        """(N,) device per item from (u,) device per unit."""
        return np.asarray(unit_device, dtype=np.int64)[self.of_op]

    def contract(self, placement: np.ndarray) -> np.ndarray:
        """(u,) device per unit from a colocation-respecting (N,) placement (its first item's device)."""
        return np.asarray(placement, dtype=np.int64)[self.first_op]

    def to_ops(self, unit_device: np.ndarray) -> np.ndarray:
        """(n,) device per op from (u,) device per unit."""
        items = self.expand(unit_device)
        return items if self.item_of_op is None else items[self.item_of_op]

    def describe(self, graph: OpGraph, unit: int) -> str:
        """``op 'x'`` or ``colocation class of op 'x' (3 ops)`` for error messages (items = ops)."""
        first = graph.names[int(self.first_op[unit])]
        size = len(self.members[unit])
        return f"op {first!r}" if size == 1 else f"colocation class of op {first!r} ({size} ops)"


def members_of(of_item: np.ndarray, count: int) -> tuple[np.ndarray, ...]:
    """``count`` int64 arrays: the item ids of each unit of the (N,) unit-of-item map ``of_item``, ascending."""
    sort = np.argsort(of_item, kind="stable")
    bounds = np.searchsorted(of_item[sort], np.arange(count + 1))
    return tuple(sort[bounds[j] : bounds[j + 1]].astype(np.int64) for j in range(count))


def build_units(
    graph: OpGraph,
    costs: CostTable,
    objective: str,
    group_of_op: np.ndarray | None = None,
    num_groups: int | None = None,
    *,
    share: float = 1.0,
) -> Units:
    """Units of ``graph``'s ops (or of the groups ``group_of_op`` maps them to) with their
    memory demand under ``objective`` (``share``: `rlplace.rules.estimate.activation_share`)
    and their summed times on each device."""
    n, k = graph.num_ops, costs.num_devices
    item_of_op = np.arange(n, dtype=np.int64) if group_of_op is None else np.asarray(group_of_op, dtype=np.int64)
    count = n if group_of_op is None else int(num_groups if num_groups is not None else (item_of_op.max() + 1 if n else 0))
    leader = colocation_leaders(graph, item_of_op, count)
    first_op, of_op = np.unique(leader, return_inverse=True)
    first_op = first_op.astype(np.int64)
    of_op = of_op.reshape(-1).astype(np.int64)
    u = first_op.shape[0]
    members = members_of(of_op, u)
    unit_of_op = of_op[item_of_op]
    demand = np.bincount(unit_of_op, weights=op_memory_demand(graph, objective, share), minlength=u)
    time = np.zeros((u, k), dtype=np.float64)
    np.add.at(time, unit_of_op, costs.op_time)
    allowed = np.isfinite(time)
    if n:
        allowed.setflags(write=False)
    return Units(of_op=of_op, first_op=first_op, members=members, demand=demand, allowed=allowed, time=time,
                 item_of_op=None if group_of_op is None else item_of_op)
