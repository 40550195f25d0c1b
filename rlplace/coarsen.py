"""Coarsening: contract ops into at most G groups whose quotient graph is still a DAG, and back.

A placer works on the coarse graph (one op per group) and `Coarsening.expand` turns its
answer into a placement of the original ops; `Coarsening.device_map` turns an op placement
into accelerate's ``{module path: device}`` map (`rlplace.devicemap`).

Pipeline (every step keeps the quotient acyclic):

1. **Atoms.** Each colocation class is contracted into one atom when that keeps the graph a
   DAG. A class whose contraction would close a cycle stays spread over several atoms —
   in a training graph that is every class, since a forward op is tied to its backward ops
   with the rest of the network in between. The class's ops on the other side of
   forward/backward from its first op are *mirrors* of that first op (the *anchor*).
2. **Labels.** A strategy labels the atoms under a group budget: ``module`` (module paths
   from ``graph.meta["module_paths"]``, the heaviest modules refined best-first from the
   root, forward and backward apart), ``chain`` (single-producer/single-consumer chains,
   then neighbours merged in topological order), ``metis`` (pymetis k-way parts of the
   undirected graph) or ``topo`` (a balanced split of a topological order). Only anchors and
   ordinary atoms are labelled by the strategy: every mirror takes its anchor's label on the
   backward side, so forward group i and the backward group mirroring it pair up, and
   backward ops in no class (gradient accumulations) join a neighbouring backward group.
3. **Acyclic refinement.** Non-convex labels (a path leaves and re-enters them), then labels
   still on a quotient cycle, are split by the number of label changes on the longest path
   into each atom; an edge between two different parts always raises that number, so
   splitting everything would leave no cycle, and targeted splits usually suffice. The
   budget of step 2 is searched so that the parts fit G after the splits; when METIS's
   parts are so far from convex that fewer than G/2 groups remain, ``topo`` replaces it.
4. **Contiguous merge.** While there are still more than G parts, the two neighbours with
   the smallest combined weight in a topological order of the quotient are merged;
   contiguous runs of a topological order never form a cycle.

The coarse graph sums costs and sizes over each group (``given_times`` per class too), keeps
``output_bytes`` of the outputs read outside the group (or by nobody), and carries one edge
per ordered pair of groups whose bytes are the sum, over producer ops, of each producer's
tensor once per consumer group (the largest of its edges there; given edge times the same
way). Groups holding parts of one colocation class share a coarse colocation class, so a
coarse placement that respects the coarse classes expands to one that respects the
original ones. Group numbers follow a topological order of the coarse graph.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rlplace.cluster import Cluster
from rlplace.devicemap import DeviceMapValue, module_device_map
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph

METHODS = ("auto", "module", "chain", "metis", "topo")
#: Rounds of targeted splitting before every label is split (which always succeeds).
_MAX_REFINE_ROUNDS = 32
#: Sequences longer than this many times the group budget are pre-cut by cumulative weight.
_PRESPLIT = 8
#: Above this many labels the convexity test (bitsets of labels per node) is skipped.
_MAX_BITSET_LABELS = 4096
#: Budgets tried to leave room for mirrors and the splits of step 3.
_MAX_BUDGET_ROUNDS = 8


@dataclass(frozen=True, eq=False)
class Coarsening:
    """Ops grouped into a coarse graph, with the mapping both ways.

    Shapes (n fine ops, G groups):
        graph: the coarse `OpGraph`, one op per group, in a topological order.
        group_of: (n,) int64, group of each fine op.
        source: the fine graph.
        method: the strategy that made the labels (``module``, ``chain``, ``metis``,
            ``topo`` or ``atoms`` when the atoms already fit).
    """

    graph: OpGraph
    group_of: np.ndarray
    source: OpGraph
    method: str

    @property
    def num_groups(self) -> int:
        return self.graph.num_ops

    def members(self, group: int) -> np.ndarray:
        """Fine op ids of ``group``, ascending."""
        return np.flatnonzero(self.group_of == group)

    def expand(self, group_placement: Sequence[int] | np.ndarray) -> np.ndarray:
        """(G,) device per group -> (n,) read-only int64 device per fine op."""
        groups = np.asarray(group_placement)
        if groups.shape != (self.num_groups,):
            raise RlplaceError(f"group placement has shape {groups.shape}, but the coarse graph has {self.num_groups} groups; give one device per group")
        if groups.size and (not np.issubdtype(groups.dtype, np.integer) or groups.min() < 0):
            raise RlplaceError("a group placement holds non-negative integer device indices")
        placement = groups.astype(np.int64)[self.group_of]
        placement.setflags(write=False)
        return placement

    def device_map(self, op_placement: Sequence[int] | np.ndarray, cluster: Cluster) -> dict[str, DeviceMapValue]:
        """accelerate ``device_map`` for a placement of the fine ops (`rlplace.devicemap.module_device_map`)."""
        return module_device_map(self.source, op_placement, cluster)


# --------------------------------------------------------------------------- entry point
def coarsen(graph: OpGraph, max_groups: int = 256, *, method: str = "auto", seed: int = 0) -> Coarsening:
    """Group the ops of ``graph`` into at most ``max_groups`` groups (see the module docstring).

    ``method="auto"`` keeps the atoms when they fit, else uses module paths when the graph
    has them, else chains. ``seed`` only matters for ``metis``.
    """
    if method not in METHODS:
        raise RlplaceError(f"unknown coarsening method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(max_groups, bool) or not isinstance(max_groups, (int, np.integer)) or max_groups < 1:
        raise RlplaceError(f"max_groups must be a positive integer (got {max_groups!r})")
    max_groups = int(max_groups)
    paths = _module_paths(graph)
    if method == "module" and paths is None:
        raise RlplaceError(f"graph {graph.name!r} has no module paths (meta['module_paths']); coarsen it with method 'chain', 'metis' or 'topo'")
    atoms = _atoms(graph)
    atom_weight = np.bincount(atoms.atom_of, weights=_op_weights(graph), minlength=atoms.dag.num_nodes)
    if method == "auto":
        method = _auto_method(atoms.dag.num_nodes, max_groups, has_paths=paths is not None)
    if method == "atoms":
        labels = np.arange(atoms.dag.num_nodes, dtype=np.int64)
    else:
        keys_for = _module_keys(graph, paths or [], atoms) if method == "module" else _unit_keys(method, atoms, atom_weight, seed)
        labels = _fit_budget(keys_for, atoms.dag, max_groups)
        if method == "metis" and _num_labels(labels) < min(max_groups, atoms.dag.num_nodes) // 2:
            # METIS ignores edge directions; when its parts are far from convex, the acyclic
            # splits leave too few groups, and a topological-order split does better.
            method = "topo"
            labels = _fit_budget(_unit_keys(method, atoms, atom_weight, seed), atoms.dag, max_groups)
    groups_of_atom = _merge_contiguous(labels, atoms.dag, atom_weight, max_groups)
    group_of = groups_of_atom[atoms.atom_of] if graph.num_ops else np.zeros(0, dtype=np.int64)
    group_of.setflags(write=False)
    coarse = _coarse_graph(graph, group_of, paths, method, max_groups)
    return Coarsening(graph=coarse, group_of=group_of, source=graph, method=method)


def _num_labels(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if labels.size else 0


def _auto_method(num_nodes: int, max_groups: int, *, has_paths: bool) -> str:
    if num_nodes <= max_groups:
        return "atoms"
    return "module" if has_paths else "chain"


def _fit_budget(keys_for: Callable[[int], np.ndarray], dag: _Dag, max_groups: int) -> np.ndarray:
    """Acyclic labels from ``keys_for(budget)`` for the largest budget whose parts fit ``max_groups``.

    Mirrors and acyclic splits make more parts than the budget, so the budget is searched
    (proportional guesses, then bisection). When no budget fits, the last labels are
    returned and `_merge_contiguous` finishes the job.
    """
    fits_at, fails_at = 0, max_groups + 1
    best: np.ndarray | None = None
    best_count = -1
    budget = max_groups
    labels = np.zeros(dag.num_nodes, dtype=np.int64)
    for _ in range(_MAX_BUDGET_ROUNDS):
        labels = _refine_acyclic(keys_for(budget), dag)
        count = int(labels.max()) + 1 if labels.size else 0
        if count <= max_groups:
            fits_at = budget
            if count > best_count:
                best, best_count = labels, count
            if count == max_groups:
                break
            budget = (fits_at + fails_at) // 2
        else:
            fails_at = budget
            budget = max(fits_at + 1, min(fails_at - 1, budget * max_groups // count))
        if fails_at - fits_at <= 1:
            break
    return best if best is not None else labels


# --------------------------------------------------------------------------- atoms
@dataclass(frozen=True)
class _Dag:
    """A DAG whose nodes are numbered in a topological order.

    Shapes (k nodes, E edges):
        first_op: (k,) int64, smallest fine op id in each node (tie-break for orders).
        src, dst: (E,) int64, unique edges, ``src < dst``, sorted by (dst, src).
        edge_bytes: (E,) float64, bytes of the fine edges each edge stands for.
    """

    first_op: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    edge_bytes: np.ndarray

    @property
    def num_nodes(self) -> int:
        return int(self.first_op.shape[0])

    def induced(self, keep: np.ndarray) -> tuple[_Dag, np.ndarray]:
        """The subgraph on the nodes where ``keep`` is true, and their ids here."""
        ids = np.flatnonzero(keep)
        new_id = np.full(self.num_nodes, -1, dtype=np.int64)
        new_id[ids] = np.arange(ids.size)
        inside = keep[self.src] & keep[self.dst]
        return _Dag(self.first_op[ids], new_id[self.src[inside]], new_id[self.dst[inside]], self.edge_bytes[inside]), ids


@dataclass(frozen=True)
class _Atoms:
    """Ops contracted into atoms.

    Shapes (n ops, A atoms):
        atom_of: (n,) int64.
        dag: the atom DAG.
        anchor: (A,) int64; for a *mirror* atom (an op of a colocation class that could not
            be contracted, on the other side of forward/backward from the class's first op)
            the atom of that first op, else -1.
        backward: (A,) bool, every op of the atom is a backward op.
    """

    atom_of: np.ndarray
    dag: _Dag
    anchor: np.ndarray
    backward: np.ndarray

    @property
    def mirror(self) -> np.ndarray:
        return self.anchor >= 0

    @property
    def follower(self) -> np.ndarray:
        """(A,) bool: backward atoms that are neither mirrors nor anchors, in a graph with mirrors.

        They follow a neighbouring mirror's group instead of being labelled on their own.
        """
        mirror = self.mirror
        if not np.any(mirror):
            return np.zeros_like(mirror)
        is_anchor = np.zeros_like(mirror)
        is_anchor[self.anchor[mirror]] = True
        return self.backward & ~mirror & ~is_anchor


def _atoms(graph: OpGraph) -> _Atoms:
    """Contract colocation classes, or their forward and backward halves, where no cycle results.

    First whole classes; for a class whose contraction would close a cycle, each half (the
    ops on its first op's side of forward/backward, and the others) separately. Contracted
    groups that still sit on a cycle are undone, repeatedly, until none does.
    The ops of a class left over several atoms on the other side from its first op are
    marked as mirrors of that op's atom.
    """
    n = graph.num_ops
    ops = np.arange(n, dtype=np.int64)
    label = ops.copy()
    has_class = graph.coloc != NO_CLASS
    first = np.zeros(0, dtype=np.int64)
    if np.any(has_class):
        classes = graph.coloc[has_class]
        first = np.full(int(classes.max()) + 1, n, dtype=np.int64)
        np.minimum.at(first, classes, ops[has_class])
        label[has_class] = first[classes]
        split = has_class & _on_cycle(label, graph.edge_src, graph.edge_dst, n)[label]
        if np.any(split):
            halves = graph.coloc[split] * 2 + graph.is_backward[split]
            half_first = np.full(2 * first.size, n, dtype=np.int64)
            np.minimum.at(half_first, halves, ops[split])
            label[split] = half_first[halves]
        while True:
            undo = (label != ops) & _on_cycle(label, graph.edge_src, graph.edge_dst, n)[label]
            if not np.any(undo):
                break
            label[undo] = ops[undo]
    _, atom_of = np.unique(label, return_inverse=True)
    atom_of = atom_of.astype(np.int64).reshape(-1)
    num_nodes = int(atom_of.max()) + 1 if n else 0
    first_op = np.full(num_nodes, n, dtype=np.int64)
    np.minimum.at(first_op, atom_of, ops)
    a, b = atom_of[graph.edge_src], atom_of[graph.edge_dst]
    cross = a != b
    keys, inverse = np.unique(a[cross] * num_nodes + b[cross], return_inverse=True)
    edge_bytes = np.bincount(inverse.reshape(-1), weights=graph.edge_bytes[cross], minlength=keys.size)
    src, dst = keys // max(num_nodes, 1), keys % max(num_nodes, 1)
    if np.any(src > dst):
        rank = _topological_rank(num_nodes, src, dst, first_op)
        atom_of = rank[atom_of]
        reordered = np.empty_like(first_op)
        reordered[rank] = first_op
        first_op = reordered
        src, dst = rank[src], rank[dst]
    order = np.lexsort((src, dst))
    anchor = np.full(num_nodes, -1, dtype=np.int64)
    if np.any(has_class):
        classed = np.flatnonzero(has_class)
        class_atom = atom_of[first[graph.coloc[classed]]]
        mirror_ops = classed[(atom_of[classed] != class_atom) & (graph.is_backward[classed] != graph.is_backward[first[graph.coloc[classed]]])]
        anchor[atom_of[mirror_ops]] = atom_of[first[graph.coloc[mirror_ops]]]
    dag = _Dag(first_op=first_op, src=src[order], dst=dst[order], edge_bytes=edge_bytes[order])
    backward = np.bincount(atom_of, weights=(~graph.is_backward).astype(np.float64), minlength=num_nodes) == 0
    return _Atoms(atom_of=atom_of, dag=dag, anchor=anchor, backward=backward)


def _on_cycle(part_of: np.ndarray, src: np.ndarray, dst: np.ndarray, num_parts: int) -> np.ndarray:
    """(num_parts,) bool: the part lies on a cycle of the quotient graph."""
    a, b = part_of[src], part_of[dst]
    keep = a != b
    if not np.any(keep):
        return np.zeros(num_parts, dtype=bool)
    matrix = coo_matrix((np.ones(int(keep.sum()), dtype=np.int8), (a[keep], b[keep])), shape=(num_parts, num_parts)).tocsr()
    _, component = connected_components(matrix, directed=True, connection="strong")
    size = np.bincount(component)
    return size[component] > 1


def _quotient_edges(part_of: np.ndarray, src: np.ndarray, dst: np.ndarray, num_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique edges between different parts, sorted by (src part, dst part)."""
    a, b = part_of[src], part_of[dst]
    keep = a != b
    keys = np.unique(a[keep] * num_parts + b[keep])
    return keys // max(num_parts, 1), keys % max(num_parts, 1)


def _topological_rank(k: int, src: np.ndarray, dst: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """(k,) rank of each node in Kahn's order, ties by smallest ``priority``; needs a DAG."""
    indegree = np.bincount(dst, minlength=k).tolist()
    order = np.argsort(src, kind="stable")
    bounds = np.searchsorted(src[order], np.arange(k + 1)).tolist()
    consumers = dst[order].tolist()
    prio = priority.tolist()
    heap = [(prio[v], v) for v in range(k) if indegree[v] == 0]
    heapq.heapify(heap)
    rank = [0] * k
    position = 0
    while heap:
        _, v = heapq.heappop(heap)
        rank[v] = position
        position += 1
        for w in consumers[bounds[v] : bounds[v + 1]]:
            indegree[w] -= 1
            if indegree[w] == 0:
                heapq.heappush(heap, (prio[w], w))
    if position != k:
        raise AssertionError("coarsening produced a cyclic quotient graph")
    return np.asarray(rank, dtype=np.int64)


# --------------------------------------------------------------------------- weights
def _op_weights(graph: OpGraph) -> np.ndarray:
    """(n,) float64 balance weight per op: shares of compute, memory traffic and resident memory, plus a count term."""
    n = graph.num_ops
    if n == 0:
        return np.zeros(0)
    if graph.given_times is not None:
        finite = np.where(np.isinf(graph.given_times), np.nan, graph.given_times)
        with np.errstate(all="ignore"):
            time = np.nan_to_num(np.nanmin(np.where(np.all(np.isnan(finite), axis=1, keepdims=True), 0.0, finite), axis=1))
        terms = [time, graph.resident_bytes]
    else:
        terms = [graph.flops, graph.bytes_accessed, graph.resident_bytes]
    weight = np.full(n, 1.0 / n)
    for term in terms:
        total = float(term.sum())
        if total > 0:
            weight += term / total
    return weight


# --------------------------------------------------------------------------- strategies
def _module_paths(graph: OpGraph) -> list[str] | None:
    paths = graph.meta.get("module_paths") if isinstance(graph.meta, Mapping) else None
    if not isinstance(paths, Sequence) or isinstance(paths, str) or len(paths) != graph.num_ops:
        return None
    cleaned = ["" if p is None else str(p) for p in paths]
    return cleaned if any(cleaned) else None


def _module_keys(graph: OpGraph, paths: list[str], atoms: _Atoms) -> Callable[[int], np.ndarray]:
    """Budget -> atom keys (module prefix, direction).

    Ops that sit directly in an expanded module (the root's functional calls, a block's
    residual adds, gradient accumulations outside any module) are scattered between its
    children; as a group of their own they would be cut to pieces, so they join a neighbour:
    forward ones a forward neighbour, then mirrors take their anchor's prefix on the backward
    side, then backward ones a backward neighbour.
    """
    tree = _ModuleTree(paths, graph.is_backward, _op_weights(graph))
    mirror = atoms.mirror
    first_op = atoms.dag.first_op
    forward_side = ~mirror & ~atoms.backward
    backward_side = mirror | atoms.backward

    def keys_for(budget: int) -> np.ndarray:
        op_keys, op_loose = tree.labels(budget)
        keys = op_keys[first_op]
        loose = op_loose[first_op] & ~mirror
        if np.any(loose & forward_side):
            keys = _follow(keys, forward_side & ~loose, forward_side & loose, atoms.dag)
        keys[mirror] = keys[atoms.anchor[mirror]] | 1
        if np.any(loose & backward_side):
            keys = _follow(keys, backward_side & ~loose, backward_side & loose, atoms.dag)
        return keys

    return keys_for


def _unit_keys(method: str, atoms: _Atoms, atom_weight: np.ndarray, seed: int) -> Callable[[int], np.ndarray]:
    """Budget -> atom keys: ``method`` labels the non-mirror atoms, each mirror follows its anchor.

    A mirror's weight counts on its anchor, since colocation puts them on one device.
    """
    mirror = atoms.mirror
    follower = atoms.follower
    sub, ids = atoms.dag.induced(~mirror & ~follower)
    position = np.full(atoms.dag.num_nodes, -1, dtype=np.int64)
    position[ids] = np.arange(ids.size)
    unit_weight = atom_weight[ids] + np.bincount(position[atoms.anchor[mirror]], weights=atom_weight[mirror], minlength=ids.size)
    chains = _chain_labels(sub) if method == "chain" else None

    def keys_for(budget: int) -> np.ndarray:
        if method == "metis":
            base = _metis_labels(sub, unit_weight, budget, seed)
        else:
            start = _split_chains(chains, unit_weight, budget) if chains is not None else np.arange(sub.num_nodes, dtype=np.int64)
            base = _merge_contiguous(start, sub, unit_weight, budget)
        keys = np.full(atoms.dag.num_nodes, -1, dtype=np.int64)
        keys[ids] = base * 2
        keys[mirror] = keys[atoms.anchor[mirror]] + 1
        if np.any(follower):
            keys = _follow(keys, mirror, follower, atoms.dag)
        return keys

    return keys_for


def _follow(keys: np.ndarray, sources: np.ndarray, todo: np.ndarray, dag: _Dag) -> np.ndarray:
    """Give each ``todo`` node the key of a neighbour: its latest producer among ``sources``,
    else its latest already-keyed ``todo`` producer, else (second pass, in reverse) its earliest
    such consumer, else a new key of its own.

    The latest producer is the most local context: a gradient accumulation joins the layer
    whose gradient it adds, not the chain of accumulations before it. Linear in nodes + edges.
    """
    k = dag.num_nodes
    key = keys.tolist()
    is_source = sources.tolist()
    pending = todo.tolist()
    known = [not t for t in pending]
    by_dst = np.searchsorted(dag.dst, np.arange(k + 1)).tolist()
    producers = dag.src.tolist()
    order = np.lexsort((dag.dst, dag.src))
    by_src = np.searchsorted(dag.src[order], np.arange(k + 1)).tolist()
    consumers = dag.dst[order].tolist()

    def pick(neighbours: list[int]) -> int:
        fallback = -1
        for node in neighbours:
            if known[node]:
                if is_source[node]:
                    return node
                if pending[node] and fallback < 0:
                    fallback = node
        return fallback

    for v in range(k):
        if pending[v]:
            chosen = pick(producers[by_dst[v] : by_dst[v + 1]][::-1])
            if chosen >= 0:
                key[v], known[v] = key[chosen], True
    for v in range(k - 1, -1, -1):
        if not known[v]:
            chosen = pick(consumers[by_src[v] : by_src[v + 1]])
            if chosen >= 0:
                key[v], known[v] = key[chosen], True
    result = np.asarray(key, dtype=np.int64)
    lonely = ~np.asarray(known, dtype=bool)
    result[lonely] = int(result.max()) + 1 + 2 * np.arange(int(lonely.sum()))
    return result


class _ModuleTree:
    """The module hierarchy of a graph's ops, refined best-first under a group budget.

    A group is (tree node, direction); a tree node is a module prefix or a run of
    consecutive sibling modules. Expanding a prefix replaces its groups by one per child
    module; when that would exceed the budget, by as many runs of consecutive children (in
    execution order, balanced by weight) as fit. Ops that sit directly in an expanded prefix
    are returned as *loose*: they join neighbouring groups (see `_module_keys`).
    """

    def __init__(self, paths: list[str], is_backward: np.ndarray, weight: np.ndarray) -> None:
        unique_paths, first_index, path_id = np.unique(np.asarray(paths, dtype=object), return_index=True, return_inverse=True)
        self.paths: list[str] = [str(p) for p in unique_paths]
        self.path_id = path_id.astype(np.int64).reshape(-1)
        self.direction = is_backward.astype(np.int64)
        pair = self.path_id * 2 + self.direction
        present = np.bincount(pair, minlength=2 * len(self.paths)).reshape(-1, 2) > 0
        path_weight = np.bincount(self.path_id, weights=weight, minlength=len(self.paths))
        # Per prefix: children, directions present in the subtree, subtree weight, and the
        # first op (execution order of siblings).
        self.children: dict[str, set[str]] = {"": set()}
        self.subtree_dirs: dict[str, set[int]] = {"": set()}
        self.subtree_weight: dict[str, float] = {"": 0.0}
        self.first_op: dict[str, int] = {"": 0}
        for index, path in enumerate(self.paths):
            dirs = {d for d in (0, 1) if present[index, d]}
            parts = path.split(".") if path else []
            prefixes = ["", *(".".join(parts[: depth + 1]) for depth in range(len(parts)))]
            for depth, prefix in enumerate(prefixes):
                if prefix not in self.children:
                    self.children[prefix] = set()
                    self.subtree_dirs[prefix] = set()
                    self.subtree_weight[prefix] = 0.0
                    self.first_op[prefix] = int(first_index[index])
                if depth:
                    self.children[prefixes[depth - 1]].add(prefix)
                self.subtree_dirs[prefix] |= dirs
                self.subtree_weight[prefix] += float(path_weight[index])
                self.first_op[prefix] = min(self.first_op[prefix], int(first_index[index]))

    def labels(self, budget: int) -> tuple[np.ndarray, np.ndarray]:
        """Expand the heaviest prefixes while the count of groups fits ``budget``.

        Returns (n,) int64 label ``2 * node id + direction`` per op and (n,) bool, true for
        the ops that sit directly in an expanded prefix.
        """
        node_of: dict[str, str] = {}  # child prefix -> run name, for prefixes expanded into runs
        expanded: set[str] = set()
        count = len(self.subtree_dirs[""])
        heap = [(-self.subtree_weight[""], "")]
        while heap:
            _, prefix = heapq.heappop(heap)
            children = sorted(self.children[prefix], key=self.first_op.__getitem__)
            if not children:
                continue
            rest = count - len(self.subtree_dirs[prefix])
            full = rest + sum(len(self.subtree_dirs[child]) for child in children)
            if full <= budget:
                expanded.add(prefix)
                count = full
                for child in children:
                    heapq.heappush(heap, (-self.subtree_weight[child], child))
                continue
            runs = (budget - rest) // max(1, len(self.subtree_dirs[prefix]))
            if runs >= 2:
                expanded.add(prefix)
                for child, run in zip(children, self._runs(children, runs), strict=True):
                    node_of[child] = f"{prefix}[{run}]"
                count = rest + runs * len(self.subtree_dirs[prefix])
        group_node = [self._group_node(path, expanded, node_of) for path in self.paths]
        loose = np.array([path in expanded for path in self.paths], dtype=bool)
        _, node_id = np.unique(np.asarray(group_node, dtype=object), return_inverse=True)
        return node_id.astype(np.int64).reshape(-1)[self.path_id] * 2 + self.direction, loose[self.path_id]

    def _runs(self, children: list[str], runs: int) -> list[int]:
        """Run index of each child (in order): ``runs`` contiguous runs of about equal weight."""
        weight = np.array([self.subtree_weight[child] for child in children])
        before = np.concatenate([[0.0], np.cumsum(weight)[:-1]])
        total = float(weight.sum())
        if total <= 0:
            return (np.arange(len(children)) * runs // len(children)).tolist()
        return np.minimum((before * (runs / total)).astype(np.int64), runs - 1).tolist()

    @staticmethod
    def _group_node(path: str, expanded: set[str], node_of: dict[str, str]) -> str:
        """The tree node whose group holds the ops of ``path``."""
        if "" not in expanded:
            return ""
        parts = path.split(".") if path else []
        for depth in range(len(parts)):
            prefix = ".".join(parts[: depth + 1])
            if prefix in node_of:
                return node_of[prefix]
            if prefix not in expanded:
                return prefix
        return path


def _chain_labels(dag: _Dag) -> np.ndarray:
    """Label nodes by maximal chains: an edge u -> v joins them when u has one consumer and v one producer."""
    k = dag.num_nodes
    out_degree = np.bincount(dag.src, minlength=k)
    in_degree = np.bincount(dag.dst, minlength=k)
    chain = (out_degree[dag.src] == 1) & (in_degree[dag.dst] == 1)
    matrix = coo_matrix((np.ones(int(chain.sum()), dtype=np.int8), (dag.src[chain], dag.dst[chain])), shape=(k, k))
    _, component = connected_components(matrix, directed=False)
    return component.astype(np.int64)


def _split_chains(chains: np.ndarray, weight: np.ndarray, budget: int) -> np.ndarray:
    """Cut chains heavier than ``total / budget`` into consecutive pieces of about that weight.

    A run of consecutive chain nodes is convex, so the pieces keep the quotient a DAG; they
    let the budget be used where chains alone would leave few, heavy groups.
    """
    if chains.size == 0:
        return chains
    total = float(weight.sum())
    if total <= 0:
        return chains
    target = total / max(budget, 1)
    order = np.lexsort((np.arange(chains.size), chains))
    sorted_chain = chains[order]
    cumulative = np.cumsum(weight[order]) - weight[order]
    starts = np.flatnonzero(np.r_[True, sorted_chain[1:] != sorted_chain[:-1]])
    offset = np.repeat(cumulative[starts], np.diff(np.r_[starts, chains.size]))
    piece = np.empty(chains.size, dtype=np.int64)
    piece[order] = ((cumulative - offset) / target).astype(np.int64)
    return _compact(chains * (int(piece.max()) + 1) + piece)


def _metis_labels(dag: _Dag, weight: np.ndarray, max_parts: int, seed: int) -> np.ndarray:
    """pymetis k-way parts of the undirected DAG: vertex weight = balance weight, edge weight = bytes."""
    import pymetis

    k = dag.num_nodes
    parts = min(max_parts, k)
    if parts <= 1:
        return np.zeros(k, dtype=np.int64)
    if 2 * parts > k or dag.src.size == 0:
        # Nearly one node per part (where METIS' bisection fails on empty halves), or no edges.
        return _merge_contiguous(np.arange(k, dtype=np.int64), dag, weight, parts)
    scale = 1e6 / max(float(dag.edge_bytes.max()), 1.0)
    e_weight = np.maximum(1, np.round(dag.edge_bytes * scale)).astype(np.int64)
    rows = np.concatenate([dag.src, dag.dst])
    cols = np.concatenate([dag.dst, dag.src])
    weights = np.concatenate([e_weight, e_weight])
    order = np.lexsort((cols, rows))
    xadj = np.searchsorted(rows[order], np.arange(k + 1))
    v_weight = np.maximum(1, np.round(weight * (1e6 / max(float(weight.sum()), 1e-300)))).astype(np.int64)
    _, membership = pymetis.part_graph(
        parts,
        adjacency=pymetis.CSRAdjacency(xadj.tolist(), cols[order].tolist()),
        vweights=v_weight.tolist(),
        eweights=weights[order].tolist(),
        options=pymetis.Options(seed=int(seed)),
    )
    return np.asarray(membership, dtype=np.int64)


# --------------------------------------------------------------------------- acyclic repair
def _refine_acyclic(labels: np.ndarray, dag: _Dag) -> np.ndarray:
    """Split labels until the quotient is a DAG; compact ids.

    First every non-convex label (a path leaves it and comes back) is split, then, for
    labels that are convex but still sit on a quotient cycle, those on the cycle are split.
    A split groups a label's nodes by `_label_changes`, which separates the two ends of
    every path that leaves the label, so each round makes progress; after
    `_MAX_REFINE_ROUNDS` rounds every label is split, which always yields a DAG.
    """
    labels = _compact(labels)
    for round_index in range(_MAX_REFINE_ROUNDS + 2):
        k = _num_labels(labels)
        split_label = _nonconvex_labels(labels, dag) if k <= _MAX_BITSET_LABELS else np.zeros(k, dtype=bool)
        if not np.any(split_label):
            split_label = _on_cycle(labels, dag.src, dag.dst, max(k, 1))
            if not np.any(split_label):
                return labels
        changes = _label_changes(labels, dag)
        split = split_label[labels] if round_index < _MAX_REFINE_ROUNDS else np.ones(labels.size, dtype=bool)
        labels = _compact(np.where(split, labels * (int(changes.max()) + 1) + changes, -1 - labels))
    raise AssertionError("acyclic refinement did not converge")


def _nonconvex_labels(labels: np.ndarray, dag: _Dag) -> np.ndarray:
    """(K,) bool: some path leaves the label and comes back to it.

    One reverse pass with Python integers as bitsets of the labels reachable from each node.
    """
    k = dag.num_nodes
    order = np.lexsort((dag.dst, dag.src))
    by_src = np.searchsorted(dag.src[order], np.arange(k + 1)).tolist()
    consumers = dag.dst[order].tolist()
    label = labels.tolist()
    reach = [0] * k
    bad: set[int] = set()
    for v in range(k - 1, -1, -1):
        own = label[v]
        bits = 0
        for c in consumers[by_src[v] : by_src[v + 1]]:
            below = reach[c]
            if label[c] != own and (below >> own) & 1:
                bad.add(own)
            bits |= below | (1 << label[c])
        reach[v] = bits
    mask = np.zeros(_num_labels(labels), dtype=bool)
    mask[list(bad)] = True
    return mask


def _label_changes(labels: np.ndarray, dag: _Dag) -> np.ndarray:
    """(A,) longest-path count of label changes into each atom (atoms are in topological order).

    Linear in atoms + edges; along any edge between different labels the count rises.
    """
    k = dag.num_nodes
    bounds = np.searchsorted(dag.dst, np.arange(k + 1)).tolist()
    producers = dag.src.tolist()
    label = labels.tolist()
    changes = [0] * k
    for v in range(k):
        lo, hi = bounds[v], bounds[v + 1]
        if lo == hi:
            continue
        own = label[v]
        best = 0
        for p in producers[lo:hi]:
            c = changes[p] + (label[p] != own)
            if c > best:
                best = c
        changes[v] = best
    return np.asarray(changes, dtype=np.int64)


def _compact(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int64).reshape(-1)


# --------------------------------------------------------------------------- merging
def _merge_contiguous(labels: np.ndarray, dag: _Dag, atom_weight: np.ndarray, max_groups: int) -> np.ndarray:
    """(A,) final group per atom: parts in topological order, lightest neighbours merged until <= max_groups."""
    if labels.size == 0:
        return labels
    labels = _compact(labels)
    k = int(labels.max()) + 1
    first_atom = np.full(k, labels.size, dtype=np.int64)
    np.minimum.at(first_atom, labels, np.arange(labels.size))
    src, dst = _quotient_edges(labels, dag.src, dag.dst, k)
    rank = _topological_rank(k, src, dst, first_atom)
    part_weight = np.bincount(rank[labels], weights=atom_weight, minlength=k)
    if k <= max_groups:
        return rank[labels]
    segment = _merge_lightest_neighbours(part_weight, max_groups)
    return segment[rank[labels]]


def _merge_lightest_neighbours(weight: np.ndarray, max_groups: int) -> np.ndarray:
    """(k,) segment id per position of a sequence after merging the lightest adjacent pairs.

    A long sequence is first cut by cumulative weight into ``_PRESPLIT * max_groups`` runs
    (vectorized), so the greedy merge works on a few thousand items at most.
    """
    if weight.size > _PRESPLIT * max_groups:
        runs = _PRESPLIT * max_groups
        before = np.concatenate([[0.0], np.cumsum(weight)[:-1]])
        total = float(weight.sum())
        run_of = np.minimum((before * (runs / total)).astype(np.int64), runs - 1) if total > 0 else np.arange(weight.size) * runs // weight.size
        run_of = _compact(run_of)
        return _merge_lightest_neighbours(np.bincount(run_of, weights=weight), max_groups)[run_of]
    k = weight.size
    w = weight.tolist()
    nxt = list(range(1, k + 1))
    prv = list(range(-1, k - 1))
    alive = [True] * k
    version = [0] * k
    heap = [(w[i] + w[i + 1], i, 0) for i in range(k - 1)]
    heapq.heapify(heap)
    count = k
    while count > max_groups and heap:
        _, i, ver = heapq.heappop(heap)
        if not alive[i] or ver != version[i] or nxt[i] >= k:
            continue
        j = nxt[i]
        w[i] += w[j]
        alive[j] = False
        nxt[i] = nxt[j]
        if nxt[j] < k:
            prv[nxt[j]] = i
        count -= 1
        version[i] += 1
        if nxt[i] < k:
            heapq.heappush(heap, (w[i] + w[nxt[i]], i, version[i]))
        p = prv[i]
        if p >= 0:
            version[p] += 1
            heapq.heappush(heap, (w[p] + w[i], p, version[p]))
    head = np.cumsum(np.asarray(alive, dtype=np.int64)) - 1
    return head


# --------------------------------------------------------------------------- coarse graph
def _coarse_graph(graph: OpGraph, group_of: np.ndarray, paths: list[str] | None, method: str, max_groups: int) -> OpGraph:
    """One op per group: sums of costs and sizes, bytes crossing groups, shared colocation classes."""
    g = int(group_of.max()) + 1 if group_of.size else 0

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(group_of, weights=values, minlength=g)

    src_group, dst_group = group_of[graph.edge_src], group_of[graph.edge_dst]
    cross = src_group != dst_group
    # A producer's tensor goes once to each consumer group (the largest of its edges there).
    edge_key = graph.edge_src[cross] * g + dst_group[cross]
    sent_key, sent_index = np.unique(edge_key, return_inverse=True)
    sent_index = sent_index.reshape(-1)
    sent_bytes = np.zeros(sent_key.size)
    np.maximum.at(sent_bytes, sent_index, graph.edge_bytes[cross])
    pair = group_of[sent_key // g] * g + sent_key % g
    group_pair, pair_index = np.unique(pair, return_inverse=True)
    pair_index = pair_index.reshape(-1)
    edge_bytes = np.bincount(pair_index, weights=sent_bytes, minlength=group_pair.size)
    edge_time = None
    if graph.edge_given_time is not None:
        sent_time = np.zeros(sent_key.size)
        np.maximum.at(sent_time, sent_index, graph.edge_given_time[cross])
        edge_time = np.bincount(pair_index, weights=sent_time, minlength=group_pair.size)

    out_degree = np.bincount(graph.edge_src, minlength=graph.num_ops)
    leaves = np.zeros(graph.num_ops, dtype=bool)
    leaves[graph.edge_src[cross]] = True
    leaves |= out_degree == 0
    given = None
    if graph.given_times is not None:
        given = np.stack([total(graph.given_times[:, c]) for c in range(graph.given_times.shape[1])], axis=1).reshape(g, -1)

    labels = _group_labels(graph, group_of, g, paths)
    meta: dict[str, Any] = {
        "coarsened_from": graph.name,
        "coarsen_method": method,
        "max_groups": max_groups,
        "group_sizes": np.bincount(group_of, minlength=g).tolist(),
    }
    if paths is not None:
        meta["module_paths"] = _common_prefixes(paths, group_of, g)
    op_params = graph.meta.get("op_params")
    if isinstance(op_params, Sequence) and len(op_params) == graph.num_ops:
        merged: list[list[str]] = [[] for _ in range(g)]
        for op, names in enumerate(op_params):
            if names:
                merged[int(group_of[op])].extend(str(name) for name in names)
        meta["op_params"] = [sorted(set(names)) for names in merged]
    return OpGraph(
        names=tuple(labels),
        kinds=tuple(_dominant_kinds(graph, group_of, g)),
        flops=total(graph.flops),
        bytes_accessed=total(graph.bytes_accessed),
        output_bytes=total(np.where(leaves, graph.output_bytes, 0.0)),
        param_bytes=total(graph.param_bytes),
        resident_bytes=total(graph.resident_bytes),
        work_bytes=total(graph.work_bytes),
        is_backward=np.bincount(group_of, weights=(~graph.is_backward).astype(np.float64), minlength=g) == 0,
        coloc=_coarse_coloc(graph.coloc, group_of, g),
        edge_src=group_pair // max(g, 1),
        edge_dst=group_pair % max(g, 1),
        edge_bytes=edge_bytes,
        given_times=given,
        time_classes=graph.time_classes,
        edge_given_time=edge_time,
        time_unit=graph.time_unit,
        name=f"{graph.name}/coarse",
        meta=meta,
    )


def _coarse_coloc(coloc: np.ndarray, group_of: np.ndarray, g: int) -> np.ndarray:
    """(G,) coarse class: groups holding parts of one fine class share a class; -1 for the others."""
    result = np.full(g, NO_CLASS, dtype=np.int64)
    has_class = coloc != NO_CLASS
    if not np.any(has_class):
        return result
    classes = coloc[has_class]
    groups = group_of[has_class]
    first_group = np.full(int(classes.max()) + 1, g, dtype=np.int64)
    np.minimum.at(first_group, classes, groups)
    link = first_group[classes] != groups
    if not np.any(link):
        return result
    tied = np.zeros(g, dtype=bool)
    tied[groups[link]] = True
    tied[first_group[classes[link]]] = True
    matrix = coo_matrix((np.ones(int(link.sum()), dtype=np.int8), (first_group[classes[link]], groups[link])), shape=(g, g))
    _, component = connected_components(matrix, directed=False)
    result[tied] = _compact(component[tied])
    return result


def _dominant_kinds(graph: OpGraph, group_of: np.ndarray, g: int) -> list[str]:
    """The kind with the most FLOPs in each group (the most frequent kind where no op has FLOPs)."""
    if g == 0:
        return []
    kind_names, kind_id = np.unique(np.asarray(graph.kinds, dtype=object), return_inverse=True)
    kind_id = kind_id.reshape(-1)
    cells = group_of * kind_names.size + kind_id
    flops = np.bincount(cells, weights=graph.flops, minlength=g * kind_names.size).reshape(g, -1)
    counts = np.bincount(cells, minlength=g * kind_names.size).reshape(g, -1)
    score = np.where(flops.max(axis=1, keepdims=True) > 0, flops, counts)
    return [str(kind_names[i]) for i in score.argmax(axis=1).tolist()]


def _group_labels(graph: OpGraph, group_of: np.ndarray, g: int, paths: list[str] | None) -> list[str]:
    """Unique names: the common module path (or first op's name), `` (bwd)`` for backward groups."""
    first = np.full(g, graph.num_ops, dtype=np.int64)
    np.minimum.at(first, group_of, np.arange(graph.num_ops))
    size = np.bincount(group_of, minlength=g)
    backward = np.bincount(group_of, weights=(~graph.is_backward).astype(np.float64), minlength=g) == 0
    if paths is not None:
        bases = [p or "<root>" for p in _common_prefixes(paths, group_of, g, ranges=True)]
    else:
        bases = [graph.names[int(first[i])] + (f" +{int(size[i]) - 1}" if size[i] > 1 else "") for i in range(g)]
    labels: list[str] = []
    seen: dict[str, int] = {}
    for i in range(g):
        base = bases[i] + (" (bwd)" if backward[i] and paths is not None else "")
        count = seen.get(base, 0)
        seen[base] = count + 1
        labels.append(base if count == 0 else f"{base}#{count + 1}")
    taken = set(labels)
    if len(taken) != g:  # a generated "#k" name collided with an original name
        labels = [f"{label}@{i}" for i, label in enumerate(labels)]
    return labels


def _common_prefixes(paths: list[str], group_of: np.ndarray, g: int, *, ranges: bool = False) -> list[str]:
    """Per group, the longest module path that prefixes (by components) its ops' non-empty paths.

    With ``ranges``, a group whose paths part right after that prefix at numbered children
    gets their range appended (``model.layers.0-7``), for display.
    """
    unique_paths, path_id = np.unique(np.asarray(paths, dtype=object), return_inverse=True)
    pairs = np.unique(group_of * unique_paths.size + path_id.reshape(-1))
    members: list[list[list[str]]] = [[] for _ in range(g)]
    for key in pairs.tolist():
        group, index = divmod(key, unique_paths.size)
        if unique_paths[index]:
            members[group].append(str(unique_paths[index]).split("."))
    result: list[str] = []
    for parts_list in members:
        if not parts_list:
            result.append("")
            continue
        prefix = parts_list[0]
        for parts in parts_list[1:]:
            common = 0
            while common < min(len(prefix), len(parts)) and prefix[common] == parts[common]:
                common += 1
            prefix = prefix[:common]
        name = ".".join(prefix)
        following = {parts[len(prefix)] for parts in parts_list if len(parts) > len(prefix)}
        if ranges and len(following) > 1 and all(part.isdigit() for part in following):
            numbers = sorted(int(part) for part in following)
            name = f"{name}.{numbers[0]}-{numbers[-1]}" if name else f"{numbers[0]}-{numbers[-1]}"
        result.append(name)
    return result
