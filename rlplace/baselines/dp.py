"""``dp``: the best contiguous split, by dynamic programming over ideals (Tarnawski et al., NeurIPS 2020).

**Blocks.** Ops are first grouped into blocks that any contiguous split keeps whole:

1. every colocation class is one block (ops without a class are blocks of their own); a
   backward op belongs to its forward op's block through the class (imported training
   graphs give forward and backward op one ``colorClass``);
2. the *forward graph* between blocks has the edges between forward ops, plus, for a block
   holding only backward ops (an "orphan", e.g. a backward op without a class), the
   backward edges touching it mirrored (reversed), so that the backward pass runs through the
   devices in reverse order, as the paper does;
3. blocks on a cycle of the forward graph are merged (a contiguous split cannot separate them);
4. a forward block with zero time on every device, zero resident bytes, no edge to a backward
   op and exactly one neighbour joins that neighbour (an input or a weight leaf): this never
   makes a split worse and cuts the number of ideals.

**Throughput** (``objective="throughput"``, the paper's max-load model, exact). An *ideal* is
a set of blocks closed under predecessors in the forward graph. A contiguous split is a chain
of ideals ``{} = I_0 ⊂ I_1 ⊂ ... ⊂ I_r = all``; stage j gets ``I_j \\ I_{j-1}`` on the j-th
device of a device sequence. Identical devices (same op times, memory and category) are
interchangeable, so the program runs over (how many devices of each kind are used, ideal):

    dp[s][I] = min( dp[s - e_t][I],                                      (device of kind t unused)
                    min over ideals J ⊂ I of max(dp[s - e_t][J], load_t(I \\ J)) )

where ``load_t(D)`` is the time of D's ops on a kind-t device plus, unless t is a CPU, the
transfer cost of D in the max-load model (for each op in D with a consumer outside, the
largest edge time to those consumers; for each op outside with consumers in D, the largest
edge time into D), and ``inf`` when D's resident bytes exceed the device memory or an op of D
cannot run there. With one accelerator kind and one CPU kind this is the paper's
``dp[cpus][fpgas][ideal]``. Ideals are enumerated by breadth-first search over downsets held
as Python integer bitsets; for each ideal I the sub-ideals J are visited by a second search
down the Hasse diagram, each once without a visited set (`_split_program`), which updates
the transfer cost of ``I \\ J`` incrementally (only ops touching the block that joins the set
change). Edge times are taken as the mean over device pairs (exact for imported graphs and for
clusters whose links are all alike); the placement returned is scored by the simulator, and
`DpSolution.optimal` is True only when the program was exact and the simulator agrees with
its value. When a graph has more than `IDEAL_LIMIT` (60 000, the authors' limit) ideals, or
the program would pass a ``work_limit`` of pairs of nested ideals x device states (none by
default; `rlplace.baselines.local_search.DP_START_WORK_LIMIT` when ``dp`` is a start of a
time-budgeted search), blocks are put
in one topological order (a chain, whose ideals are its prefixes) and the
program is exact over splits of that order only (`DpSolution.linearized`, ``optimal`` False);
a chain longer than `CHAIN_LIMIT` is first cut into that many runs of consecutive blocks
(`chain_segments`). With more than `MAX_DEVICE_STATES` (count per kind) states, devices are
taken in cluster order (``optimal`` False).

**Stages mode** (``stages=True``, ``--stages``): every answer above is already a contiguous
split (`stage_order` gives its device order); this mode only forbids the final memory repair,
which moves single ops and so could break contiguity: an overflowing split is an error.

**Latency / pipelined.** The blocks, in one topological order (at most `CHAIN_LIMIT` runs
of them, `chain_segments`), are cut into at most k consecutive stages, stage j on the j-th
device of the devices sorted fastest first. The same program over that chain proposes, for
every number of stages 1..k, the split that minimizes the largest stage cost (stage compute
plus its boundary transfers; memory from the estimate of `rlplace.rules`, whose activations
under ``pipelined`` with ``1f1b`` are the micro-batches that schedule keeps in flight). The
simulator scores these k candidates under the objective (and pipeline schedule) and the best
within memory wins; if
all overflow (the estimate omits received copies), the program runs again with the budgets
scaled by `MEMORY_MARGINS`. A pipeline's step is governed by its slowest stage, which the
model captures; one step's latency also by the sum of the stages, which only the simulator
measures, so the one-stage split is always among the candidates.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rlplace.baselines.summaries import mean_edge_time
from rlplace.cluster import CPU, Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.objectives import check_objective
from rlplace.placement import Placement, as_placement
from rlplace.rules import activation_share, finalize, make_simulator, memory_budget, op_memory_demand

#: Beyond this many ideals the blocks are linearized and the answer is no longer proven
#: optimal (the authors' C++ tool stops at the same count). The program's work is the number
#: of pairs of nested ideals it visits: from N - 1 (a chain) to about N^2 / 2 (wide lattices,
#: e.g. three parallel chains: 59 320 ideals, 4.7e8 pairs, minutes on a 2-core machine).
IDEAL_LIMIT = 60_000
#: Longest chain of blocks the linear program runs over (about CHAIN_LIMIT^2 / 2 pairs).
CHAIN_LIMIT = 1024
#: Fractions of the memory budget the stage program tries, in turn, until the simulator finds
#: a candidate within memory (latency / pipelined; the estimate omits received copies).
MEMORY_MARGINS = (1.0, 0.9, 0.8, 0.65, 0.5)
#: Beyond this many (count per device kind) states devices are taken in cluster order.
MAX_DEVICE_STATES = 64


@dataclass(frozen=True, eq=False)
class Blocks:
    """Ops grouped into the blocks a contiguous split keeps whole, in topological order.

    Shapes (n ops, b blocks):
        of_op: (n,) int64, block of each op; blocks are numbered in a topological order of
            the forward graph (ties: the block with the smallest op id first).
        predecessors: b Python ints, bit j set when block j precedes the block in the forward graph.
        successors: b lists of block ids.
    """

    of_op: np.ndarray
    predecessors: tuple[int, ...]
    successors: tuple[tuple[int, ...], ...]

    @property
    def num_blocks(self) -> int:
        return len(self.predecessors)


@dataclass(frozen=True, eq=False)
class IdealLattice:
    """The ideals of the forward block graph and the Hasse diagram between them.

    Shapes (N ideals, W = ceil(b / 64) words, E Hasse edges):
        words: (N, W) int64, ideal bitsets (bit j of word j // 64), in breadth-first order
            (nondecreasing size; ideal 0 is empty, ideal N-1 holds every block).
        down_ptr: (N + 1,) int64; ``down_sub[down_ptr[i]:down_ptr[i+1]]`` are the ideals
            one block smaller than ideal i, ``down_block`` the block removed (increasing).
        linearized: blocks were chained in one topological order (too many ideals otherwise).
    """

    words: np.ndarray
    down_ptr: np.ndarray
    down_sub: np.ndarray
    down_block: np.ndarray
    linearized: bool

    @property
    def num_ideals(self) -> int:
        return int(self.words.shape[0])


@dataclass(frozen=True, eq=False)
class DpSolution:
    """What `solve` found.

    Attributes:
        placement: (n,) device per op.
        model_value: the program's objective (max-load for ``throughput``; the largest stage
            cost for the others).
        step_time: the simulator's objective value of ``placement``.
        num_blocks, num_ideals, ideal_pairs: sizes of the search (pairs (I, J) evaluated).
        linearized: the ideals are prefixes of one topological order of the blocks.
        candidates: ``latency``/``pipelined``: (stages used, memory margin, model value,
            simulated time, simulated bytes over capacity) per candidate the simulator scored.
        optimal: ``placement`` is proven optimal over contiguous splits for the objective:
            ``throughput`` solved exactly over every ideal and every device order, and the
            simulator agrees with the program's value (it does when edge times are given or
            links are alike). Always False for ``latency``/``pipelined`` (a proxy program).
        why_not_optimal: one line saying why ``optimal`` is False ("" when it is True).
        over_work_limit: ``throughput``: the exact program passed ``work_limit`` and the
            linearized one answered.
    """

    placement: Placement
    model_value: float
    step_time: float
    num_blocks: int
    num_ideals: int
    ideal_pairs: int
    linearized: bool
    candidates: tuple[tuple[int, float, float, float, float], ...] = field(default_factory=tuple)
    optimal: bool = False
    why_not_optimal: str = ""
    over_work_limit: bool = False


def place(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    stages: bool = False,
    work_limit: float = math.inf,
) -> Placement:
    """The best contiguous split (module docstring); ``seed`` is unused (deterministic);
    ``work_limit`` as in `solve`."""
    del seed
    return solve(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, stages=stages, work_limit=work_limit).placement


def place_with_proof(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    stages: bool = False,
) -> tuple[Placement, bool]:
    """`place` and whether the split is proven optimal (`DpSolution.optimal`)."""
    del seed
    solution = solve(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, stages=stages)
    return solution.placement, solution.optimal


def solve(
    graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", microbatches: int = 1, schedule: str = "gpipe", stages: bool = False,
    work_limit: float = math.inf,
) -> DpSolution:  # fmt: skip
    """Run the program for ``objective`` and return the placement with the search statistics.

    ``microbatches`` and ``schedule``: M and the pipeline schedule of ``pipelined``; the
    candidates are scored, and their memory checked, under that schedule (the estimate's
    activations scaled by `rlplace.rules.activation_share`).

    ``stages``: the placement must stay a contiguous split (`stage_order` is not None): no
    memory repair that moves single ops after the program; a split that overflows device
    memory in the simulator raises `RlplaceError` instead.

    ``work_limit`` (``throughput``): when the exact program over ideals would visit more than
    this many pairs of nested ideals x device states, the linearized program (splits of one
    topological order) answers instead, as past `IDEAL_LIMIT` (`rlplace.baselines.local_search.DP_START_WORK_LIMIT`
    is the one a time-budgeted search gives its start).
    """
    check_objective(objective)
    if costs.op_time.shape != (graph.num_ops, cluster.num_devices):
        raise RlplaceError(
            f"cost table is {costs.op_time.shape[0]}x{costs.op_time.shape[1]} but graph {graph.name!r} has {graph.num_ops} ops "
            f"and cluster {cluster.name!r} {cluster.num_devices} devices; build it with CostTable.build(graph, cluster)"
        )
    if graph.num_ops == 0:
        return DpSolution(as_placement([], graph, cluster), 0.0, 0.0, 0, 1, 0, False, optimal=True)
    blocks = contract_blocks(graph, costs)
    if objective == "throughput":
        return _solve_throughput(graph, cluster, costs, blocks, stages, work_limit)
    return _solve_stages(graph, cluster, costs, blocks, objective, microbatches, schedule, stages)


def stage_order(graph: OpGraph, placement: np.ndarray) -> list[int] | None:
    """The devices of a contiguous split in stage order, or None if ``placement`` is not one.

    A placement is a contiguous split when its devices can be ordered so that no edge between
    forward ops goes from a later device to an earlier one (backward ops are free: they run
    through the stages in reverse). Then listing the forward ops stage by stage, each stage in
    the graph's order, is a topological order, and each stage is one device's run of it.
    Ties between devices with no edge between them keep the smaller device index first.
    """
    devices = np.asarray(placement, dtype=np.int64)
    used = sorted(set(devices.tolist()))
    src, dst = graph.edge_src, graph.edge_dst
    forward = ~graph.is_backward[src] & ~graph.is_backward[dst]
    a, b = devices[src[forward]], devices[dst[forward]]
    cross = {(int(x), int(y)) for x, y in zip(a.tolist(), b.tolist(), strict=True) if x != y}
    indegree = dict.fromkeys(used, 0)
    for _, y in cross:
        indegree[y] += 1
    ready = [d for d in used if indegree[d] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        d = heapq.heappop(ready)
        order.append(d)
        for x, y in cross:
            if x == d:
                indegree[y] -= 1
                if indegree[y] == 0:
                    heapq.heappush(ready, y)
    return order if len(order) == len(used) else None


def _finish(graph: OpGraph, cluster: Cluster, costs: CostTable, placement: np.ndarray, *, objective: str, simulator, stages: bool) -> Placement:
    """`finalize`, except that in stages mode an overflowing split is an error, not repaired."""
    if stages:
        result = as_placement(placement, graph, cluster)
        over = np.asarray(simulator.peak_memory(result), dtype=np.float64) - cluster.memory
        if np.any(over > 0):
            device = int(np.argmax(over))
            raise RlplaceError(
                f"dp --stages: the best contiguous split of graph {graph.name!r} overflows device {cluster.device_names[device]} "
                f"by {float(over[device]):.4g} bytes in the simulator; use more or larger devices, or drop --stages"
            )
        return finalize(graph, cluster, costs, result, objective=objective, method="dp", simulator=simulator)
    return finalize(graph, cluster, costs, placement, objective=objective, method="dp", simulator=simulator)


# ---------------------------------------------------------------------------------- blocks
def contract_blocks(graph: OpGraph, costs: CostTable) -> Blocks:
    """Group ops into blocks (module docstring, steps 1-4)."""
    n = graph.num_ops
    backward = graph.is_backward
    label = np.where(graph.coloc != NO_CLASS, graph.coloc, -1 - np.arange(n))
    _, block = np.unique(label, return_inverse=True)
    block = block.reshape(-1).astype(np.int64)
    has_forward = np.zeros(n, dtype=bool)
    has_forward[block[~backward]] = True
    src, dst = graph.edge_src, graph.edge_dst
    forward_edge = ~backward[src] & ~backward[dst]
    # Orphan status is fixed before any merge, so mirrored edges stay (as in the authors' tool).
    mirrored = backward[src] & backward[dst] & (~has_forward[block[src]] | ~has_forward[block[dst]])
    tail = np.concatenate([src[forward_edge], dst[mirrored]])
    head = np.concatenate([dst[forward_edge], src[mirrored]])

    while True:
        count = int(block.max()) + 1
        a, b = block[tail], block[head]
        keep = a != b
        matrix = coo_matrix((np.ones(int(keep.sum())), (a[keep], b[keep])), shape=(count, count))
        components, component = connected_components(matrix, directed=True, connection="strong")
        if components == count:
            break
        block = component[block].astype(np.int64)

    block = _merge_zero_leaves(graph, costs, block, tail, head)
    return _order_blocks(block, tail, head)


def _merge_zero_leaves(graph: OpGraph, costs: CostTable, block: np.ndarray, tail: np.ndarray, head: np.ndarray) -> np.ndarray:
    count = int(block.max()) + 1
    zero_op = np.all(costs.op_time == 0.0, axis=1) & (graph.resident_bytes == 0.0) & ~graph.is_backward
    touches_backward = np.zeros(graph.num_ops, dtype=bool)
    mixed = graph.is_backward[graph.edge_src] != graph.is_backward[graph.edge_dst]
    touches_backward[graph.edge_src[mixed]] = True
    touches_backward[graph.edge_dst[mixed]] = True
    eligible = np.ones(count, dtype=bool)
    np.logical_and.at(eligible, block, zero_op & ~touches_backward)
    neighbours: list[set[int]] = [set() for _ in range(count)]
    for a, b in zip(block[tail].tolist(), block[head].tolist(), strict=True):
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    parent = list(range(count))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for leaf in range(count):
        if eligible[leaf] and len(neighbours[leaf]) == 1:
            parent[find(leaf)] = find(next(iter(neighbours[leaf])))
    root = np.array([find(x) for x in range(count)], dtype=np.int64)
    return root[block]


def _order_blocks(block: np.ndarray, tail: np.ndarray, head: np.ndarray) -> Blocks:
    """Renumber blocks 0..b-1 in a topological order (Kahn, smallest first op first)."""
    labels, first_op = np.unique(block, return_index=True)
    dense = np.searchsorted(labels, block)
    count = labels.shape[0]
    edges = {(a, b) for a, b in zip(dense[tail].tolist(), dense[head].tolist(), strict=True) if a != b}
    out: list[list[int]] = [[] for _ in range(count)]
    indegree = [0] * count
    for a, b in edges:
        out[a].append(b)
        indegree[b] += 1
    heap = [(int(first_op[x]), x) for x in range(count) if indegree[x] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        _, x = heapq.heappop(heap)
        order.append(x)
        for y in out[x]:
            indegree[y] -= 1
            if indegree[y] == 0:
                heapq.heappush(heap, (int(first_op[y]), y))
    if len(order) != count:
        raise AssertionError("forward block graph still has a cycle after merging strong components")
    rank = np.empty(count, dtype=np.int64)
    rank[np.array(order, dtype=np.int64)] = np.arange(count)
    predecessors = [0] * count
    successors: list[list[int]] = [[] for _ in range(count)]
    for a, b in sorted(edges):
        predecessors[int(rank[b])] |= 1 << int(rank[a])
        successors[int(rank[a])].append(int(rank[b]))
    return Blocks(of_op=rank[dense].astype(np.int64), predecessors=tuple(predecessors), successors=tuple(tuple(s) for s in successors))


# ---------------------------------------------------------------------------------- ideals
def enumerate_ideals(blocks: Blocks, *, limit: int = IDEAL_LIMIT) -> IdealLattice | None:
    """All ideals by breadth-first search over downsets (Python int bitsets); None past ``limit``."""
    b = blocks.num_blocks
    predecessors, successors = blocks.predecessors, blocks.successors
    ideals = [0]
    index = {0: 0}
    addable = [sum(1 << v for v in range(b) if predecessors[v] == 0)]
    hasse: list[tuple[int, int, int]] = []  # (larger ideal, smaller ideal, block removed)
    position = 0
    while position < len(ideals):
        ideal, candidates = ideals[position], addable[position]
        remaining = candidates
        while remaining:
            low = remaining & -remaining
            remaining ^= low
            vertex = low.bit_length() - 1
            larger = ideal | low
            found = index.get(larger)
            if found is None:
                found = len(ideals)
                if found >= limit:
                    return None
                index[larger] = found
                ideals.append(larger)
                new_candidates = candidates ^ low
                for w in successors[vertex]:
                    if predecessors[w] & ~larger == 0:
                        new_candidates |= 1 << w
                addable.append(new_candidates)
            hasse.append((found, position, vertex))
        position += 1
    return _lattice(ideals, hasse, b, linearized=False)


def chain_ideals(num_blocks: int) -> IdealLattice:
    """The ideals of the chain 0 -> 1 -> ... -> b-1: its prefixes."""
    ideals = [(1 << p) - 1 for p in range(num_blocks + 1)]
    hasse = [(p, p - 1, p - 1) for p in range(1, num_blocks + 1)]
    return _lattice(ideals, hasse, num_blocks, linearized=True)


def chain_segments(blocks: Blocks, costs: CostTable, *, limit: int = CHAIN_LIMIT) -> Blocks:
    """``blocks`` as a chain in their topological order, cut into at most ``limit`` runs.

    Consecutive blocks are grouped so that each run holds about the same share of the total
    fastest-device time (plus an equal share of the count, so zero-time blocks spread too);
    with ``limit`` or fewer blocks each block is its own run. The chain's ideals are its prefixes.
    """
    count = blocks.num_blocks
    if count <= limit:
        segment = np.arange(count, dtype=np.int64)
    else:
        fastest = np.min(costs.op_time, axis=1) if costs.op_time.shape[1] else np.zeros(blocks.of_op.shape[0])
        weight = np.bincount(blocks.of_op, weights=np.where(np.isfinite(fastest), fastest, 0.0), minlength=count)
        weight = weight / max(float(weight.sum()), 1e-300) + 1.0 / count
        before = np.concatenate([[0.0], np.cumsum(weight)[:-1]]) / weight.sum()
        segment = np.minimum((before * limit).astype(np.int64), limit - 1)
        segment = np.unique(segment, return_inverse=True)[1].reshape(-1).astype(np.int64)
    runs = int(segment.max()) + 1 if count else 0
    predecessors = tuple(((1 << (r - 1)) if r else 0) for r in range(runs))
    successors = tuple(((r + 1,) if r + 1 < runs else ()) for r in range(runs))
    return Blocks(of_op=segment[blocks.of_op], predecessors=predecessors, successors=successors)


def _lattice(ideals: list[int], hasse: list[tuple[int, int, int]], num_blocks: int, *, linearized: bool) -> IdealLattice:
    width = max(1, math.ceil(num_blocks / 64))
    raw = b"".join(ideal.to_bytes(8 * width, "little") for ideal in ideals)
    words = np.frombuffer(raw, dtype="<i8").astype(np.int64).reshape(len(ideals), width)
    # Down edges of each ideal by increasing block: the program stops at the first block too large.
    edges = np.array(sorted(hasse, key=lambda edge: (edge[0], edge[2])), dtype=np.int64).reshape(-1, 3)
    down_ptr = np.searchsorted(edges[:, 0], np.arange(len(ideals) + 1)).astype(np.int64)
    return IdealLattice(words=words, down_ptr=down_ptr, down_sub=edges[:, 1].copy(), down_block=edges[:, 2].copy(), linearized=linearized)


# ---------------------------------------------------------------------- device sequences
@dataclass(frozen=True, eq=False)
class _Devices:
    """Device kinds and the (count per kind) states of the program.

    Shapes (T kinds, S states):
        members: T lists of device indices of each kind, in cluster order.
        prev_state: (S, T) int64, the state with one device of kind t fewer, -1 if none.
    """

    members: tuple[tuple[int, ...], ...]
    prev_state: np.ndarray
    every_order: bool = True

    @property
    def representative(self) -> list[int]:
        return [m[0] for m in self.members]


def _kinds(cluster: Cluster, costs: CostTable, budget: np.ndarray) -> _Devices:
    groups: dict[tuple, list[int]] = {}
    for d, device in enumerate(cluster.devices):
        key = (device.category, float(budget[d]), costs.op_time[:, d].tobytes())
        groups.setdefault(key, []).append(d)
    members = tuple(tuple(g) for g in groups.values())
    states = math.prod(len(g) + 1 for g in members)
    if states > MAX_DEVICE_STATES:
        return _sequence(tuple(range(cluster.num_devices)), every_order=False)
    strides = np.cumprod([1] + [len(g) + 1 for g in members[:-1]])
    prev = np.full((states, len(members)), -1, dtype=np.int64)
    for s in range(states):
        for t, g in enumerate(members):
            if (s // strides[t]) % (len(g) + 1) > 0:
                prev[s, t] = s - strides[t]
    return _Devices(members=members, prev_state=prev)


def _state_devices(prev_state: np.ndarray) -> np.ndarray:
    """(S,) int64, number of devices in each state (state 0 has none)."""
    count = np.zeros(prev_state.shape[0], dtype=np.int64)
    for s in range(1, prev_state.shape[0]):
        p = int(prev_state[s][prev_state[s] >= 0][0])
        count[s] = count[p] + 1
    return count


def _sequence(order: tuple[int, ...], *, every_order: bool = True) -> _Devices:
    """Devices taken in the given order: state s = the first s devices (``every_order``:
    the caller knows no other order can do better)."""
    k = len(order)
    prev = np.full((k + 1, k), -1, dtype=np.int64)
    for s in range(1, k + 1):
        prev[s, s - 1] = s - 1
    return _Devices(members=tuple((d,) for d in order), prev_state=prev, every_order=every_order)


# ------------------------------------------------------------------------------- program
@dataclass(frozen=True, eq=False)
class _Program:
    dp: np.ndarray
    choice_kind: np.ndarray
    choice_sub: np.ndarray
    pairs: int


def _run_program(
    graph: OpGraph,
    costs: CostTable,
    blocks: Blocks,
    lattice: IdealLattice,
    devices: _Devices,
    demand: np.ndarray,
    budget: np.ndarray,
    is_cpu: np.ndarray,
    work_limit: float = math.inf,
) -> _Program | None:
    """The program over ``lattice`` and ``devices``; None when it needs more than ``work_limit``
    pairs of nested ideals x device states."""
    nb = blocks.num_blocks
    reps = devices.representative
    block_time = np.zeros((nb, len(reps)))
    np.add.at(block_time, blocks.of_op, costs.op_time[:, reps])
    block_size = np.bincount(blocks.of_op, weights=demand, minlength=nb).astype(np.float64)
    kind_cap = budget[reps].astype(np.float64)
    kind_pays = ~is_cpu[reps]

    n = graph.num_ops
    edge_cost = graph.edge_given_time if graph.edge_given_time is not None else mean_edge_time(costs)
    out_ptr, out_op, order = graph.successor_table()
    out_block = blocks.of_op[out_op].astype(np.int64)
    out_cost = edge_cost[order].astype(np.float64)
    touch: list[set[int]] = [set() for _ in range(nb)]
    for u in range(n):
        lo, hi = out_ptr[u], out_ptr[u + 1]
        if hi > lo and np.any(out_cost[lo:hi] > 0):
            touch[int(blocks.of_op[u])].add(u)
            for c in set(out_block[lo:hi].tolist()):
                touch[c].add(u)
    touch_ptr = np.zeros(nb + 1, dtype=np.int64)
    touch_ptr[1:] = np.cumsum([len(t) for t in touch])
    touch_op = np.array([u for t in touch for u in sorted(t)], dtype=np.int64)

    dp, kind, sub, pairs = _split_program(
        lattice.words,
        lattice.down_ptr,
        lattice.down_sub,
        lattice.down_block,
        block_time,
        block_size,
        kind_cap,
        kind_pays,
        devices.prev_state,
        _state_devices(devices.prev_state),
        blocks.of_op,
        out_ptr,
        out_block,
        out_cost,
        touch_ptr,
        touch_op,
        np.int64(min(work_limit / devices.prev_state.shape[0], 2**62)),
    )
    if pairs < 0:
        return None
    return _Program(dp=dp, choice_kind=kind, choice_sub=sub, pairs=int(pairs))


def _backtrack(program: _Program, lattice: IdealLattice, blocks: Blocks, devices: _Devices, state: int) -> np.ndarray:
    """(n,) device per op of the split that reaches ``state`` with every block placed."""
    ideal = lattice.num_ideals - 1
    stages: list[tuple[int, int, int]] = []  # (kind, larger ideal, smaller ideal), last stage first
    while ideal != 0:
        kind = int(program.choice_kind[state, ideal])
        sub = int(program.choice_sub[state, ideal])
        if sub != ideal:
            stages.append((kind, ideal, sub))
        state = int(devices.prev_state[state, kind])
        ideal = sub
    block_device = np.full(blocks.num_blocks, -1, dtype=np.int64)
    used = [0] * len(devices.members)
    for kind, larger, smaller in reversed(stages):
        device = devices.members[kind][used[kind]]
        used[kind] += 1
        stage = lattice.words[larger] & ~lattice.words[smaller]
        for j in range(blocks.num_blocks):
            if (stage[j >> 6] >> (j & 63)) & 1:
                block_device[j] = device
    return block_device[blocks.of_op]


def _infeasible(graph: OpGraph, cluster: Cluster, objective: str) -> RlplaceError:
    return RlplaceError(
        f"dp: no contiguous split of graph {graph.name!r} over cluster {cluster.name!r} fits device memory "
        f"(objective {objective}) with every op on a device that can run it; use more or larger devices, or a non-contiguous method such as m-etf"
    )


def _solve_throughput(graph: OpGraph, cluster: Cluster, costs: CostTable, blocks: Blocks, stages: bool, work_limit: float) -> DpSolution:
    budget = memory_budget(graph, cluster, "throughput")
    devices = _kinds(cluster, costs, budget)
    is_cpu = np.array([d.category == CPU for d in cluster.devices], dtype=bool)
    demand = op_memory_demand(graph, "throughput")
    lattice = enumerate_ideals(blocks)
    exact_ideals = lattice is not None
    over_work = False
    program = None
    if lattice is not None:
        program = _run_program(graph, costs, blocks, lattice, devices, demand, budget, is_cpu, work_limit)
        over_work = program is None
    if program is None:  # too many ideals, or past the work limit
        blocks = chain_segments(blocks, costs)
        lattice = chain_ideals(blocks.num_blocks)
        program = _run_program(graph, costs, blocks, lattice, devices, demand, budget, is_cpu)
        assert program is not None  # no work limit
    full_state = devices.prev_state.shape[0] - 1
    value = float(program.dp[full_state, -1])
    if not math.isfinite(value):
        raise _infeasible(graph, cluster, "throughput")
    simulator = make_simulator(graph, cluster, costs, "throughput")
    placement = _finish(graph, cluster, costs, _backtrack(program, lattice, blocks, devices, full_state), objective="throughput", simulator=simulator, stages=stages)
    step_time = float(simulator.step_time(placement))
    if not exact_ideals:
        why = f"more than {IDEAL_LIMIT} ideals: blocks linearized, exact only over splits of one topological order"
    elif over_work:
        why = f"more than {work_limit:.3g} pairs of ideals x device states: blocks linearized, exact only over splits of one topological order"
    elif not devices.every_order:
        why = f"more than {MAX_DEVICE_STATES} device-count states: devices taken in cluster order"
    elif not math.isclose(step_time, value, rel_tol=1e-9, abs_tol=1e-12):
        why = f"the simulator's max-load {step_time:.6g} differs from the program's {value:.6g} (unequal links or a memory repair)"
    else:
        why = ""
    return DpSolution(
        placement=placement,
        model_value=value,
        step_time=step_time,
        num_blocks=blocks.num_blocks,
        num_ideals=lattice.num_ideals,
        ideal_pairs=program.pairs,
        linearized=lattice.linearized,
        optimal=not why,
        why_not_optimal=why,
        over_work_limit=over_work,
    )


def _solve_stages(
    graph: OpGraph, cluster: Cluster, costs: CostTable, blocks: Blocks, objective: str, microbatches: int, schedule: str, strict: bool
) -> DpSolution:
    blocks = chain_segments(blocks, costs)
    lattice = chain_ideals(blocks.num_blocks)
    total = np.where(np.isfinite(costs.op_time), costs.op_time, np.inf).sum(axis=0)
    devices = _sequence(tuple(int(d) for d in np.argsort(total, kind="stable")))
    is_cpu = np.array([d.category == CPU for d in cluster.devices], dtype=bool)
    demand = op_memory_demand(graph, objective, activation_share(objective, microbatches, schedule, cluster.num_devices))
    budget = memory_budget(graph, cluster, objective)
    simulator = make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    best: tuple[float, float, int] | None = None
    best_placement: Placement | None = None
    best_value = math.inf
    candidates: list[tuple[int, float, float, float, float]] = []
    pairs = 0
    # The estimate misses received copies of remote inputs: when every candidate overflows
    # in the simulator, ask the program again with a safety margin; last, with no cap at all.
    for margin in (*MEMORY_MARGINS, math.inf):
        caps = budget * margin if math.isfinite(margin) else np.full(cluster.num_devices, np.inf)
        program = _run_program(graph, costs, blocks, lattice, devices, demand, caps, is_cpu)
        assert program is not None  # no work limit
        pairs += program.pairs
        for stages in range(1, cluster.num_devices + 1):
            value = float(program.dp[stages, -1])
            if not math.isfinite(value) or (stages > 1 and value == float(program.dp[stages - 1, -1])):
                continue  # no split, or the same split as with fewer stages
            placement = as_placement(_backtrack(program, lattice, blocks, devices, stages), graph, cluster)
            step, overflow = simulator.score(placement)
            candidates.append((stages, margin, value, float(step), float(overflow)))
            key = (float(overflow), float(step), stages)
            if best is None or key < best:
                best, best_placement, best_value = key, placement, value
        if best is not None and best[0] == 0.0:
            break
    if best_placement is None:
        raise _infeasible(graph, cluster, objective)
    placement = _finish(graph, cluster, costs, best_placement, objective=objective, simulator=simulator, stages=strict)
    return DpSolution(
        placement=placement,
        model_value=best_value,
        step_time=float(simulator.step_time(placement)),
        num_blocks=blocks.num_blocks,
        num_ideals=lattice.num_ideals,
        ideal_pairs=pairs,
        linearized=True,
        candidates=tuple(candidates),
        optimal=False,
        why_not_optimal=f"{objective}: the program minimizes the largest stage cost, a proxy the simulator's candidates are scored by",
    )


# --------------------------------------------------------------------------- the kernel
@njit(cache=True)
def _in_set(words: np.ndarray, larger: int, smaller: int, block: int) -> bool:
    """Block ``block`` is in ideal ``larger`` and not in ideal ``smaller``."""
    word, bit = block >> 6, block & 63
    return ((words[larger, word] >> bit) & 1) == 1 and ((words[smaller, word] >> bit) & 1) == 0


@njit(cache=True)
def _transfer_change(u, block, words, larger, smaller, op_block, out_ptr, out_block, out_cost):
    """Change of op u's transfer cost on the set ``larger \\ smaller`` when ``block`` joins it.

    In the max-load model an op inside the set pays its largest edge time to consumers
    outside, an op outside pays its largest edge time to consumers inside.
    """
    own = op_block[u]
    inside_before = _in_set(words, larger, smaller, own)
    inside_after = inside_before or own == block
    before = 0.0
    after = 0.0
    for e in range(out_ptr[u], out_ptr[u + 1]):
        target = out_block[e]
        target_before = _in_set(words, larger, smaller, target)
        target_after = target_before or target == block
        cost = out_cost[e]
        if target_before != inside_before and cost > before:
            before = cost
        if target_after != inside_after and cost > after:
            after = cost
    return after - before


@njit(cache=True)
def _whole_ideals(words, down_ptr, down_sub, down_block, block_time, block_size, op_block, out_ptr, out_block, out_cost, touch_ptr, touch_op):
    """Time (N, T), size (N,) and transfer cost (N,) of every ideal taken as one set, built up
    the Hasse diagram (ideals come in nondecreasing size, so the smaller one is done first)."""
    num_ideals = words.shape[0]
    num_kinds = block_time.shape[1]
    time = np.zeros((num_ideals, num_kinds))
    size = np.zeros(num_ideals)
    comm = np.zeros(num_ideals)
    for ideal in range(1, num_ideals):
        e = down_ptr[ideal]
        sub, block = down_sub[e], down_block[e]
        for t in range(num_kinds):
            time[ideal, t] = time[sub, t] + block_time[block, t]
        size[ideal] = size[sub] + block_size[block]
        delta = 0.0
        for x in range(touch_ptr[block], touch_ptr[block + 1]):
            delta += _transfer_change(touch_op[x], block, words, sub, 0, op_block, out_ptr, out_block, out_cost)
        comm[ideal] = comm[sub] + delta
    return time, size, comm


@njit(cache=True)
def _split_program(
    words, down_ptr, down_sub, down_block, block_time, block_size, kind_cap, kind_pays, prev_state, state_devices, op_block, out_ptr, out_block, out_cost, touch_ptr, touch_op,
    max_pairs,
):
    """dp[s, I] over (device states, ideals); see the module docstring.

    Sub-ideals J of I are visited breadth first down the Hasse diagram from I, each exactly
    once and without a visited set: the set ``D = I \\ J`` only grows by a block smaller
    than every block already in it (its parent is D less its smallest block, which is again
    a set of this kind), so a sub-ideal's children are its first down edges, up to the first
    block not below ``min(D)``. D's time, size and transfer cost are updated from the
    parent's (only ops touching the joining block change). ``J = {}`` (all of I on
    one device) is scored first from the whole-ideal prefix sums; states of one device need
    nothing else, and every other state prunes the search below J once ``I \\ J`` takes at
    least as long as that state's best so far on every kind that can hold it (a set only
    grows further down, and its time bounds its load from below).

    Returns (dp (S, N), choice_kind (S, N), choice_sub (S, N), pairs evaluated). A choice with
    ``choice_sub == I`` leaves the device of that kind unused. Once more than ``max_pairs``
    pairs have been evaluated (checked before each ideal), it stops and returns pairs = -1
    (the tables are then partial).
    """
    num_ideals = words.shape[0]
    num_states, num_kinds = prev_state.shape
    whole_time, whole_size, whole_comm = _whole_ideals(
        words, down_ptr, down_sub, down_block, block_time, block_size, op_block, out_ptr, out_block, out_cost, touch_ptr, touch_op
    )
    # Ideal-major layout: the states of one sub-ideal share a cache line in the inner loop.
    dp = np.full((num_ideals, num_states), np.inf)
    choice_kind = np.full((num_ideals, num_states), -1, dtype=np.int64)
    choice_sub = np.full((num_ideals, num_states), -1, dtype=np.int64)
    dp[0, :] = 0.0
    set_min = np.empty(num_ideals, dtype=np.int64)
    queue = np.empty(num_ideals, dtype=np.int64)
    set_time = np.zeros((num_ideals, num_kinds))
    set_size = np.zeros(num_ideals)
    set_comm = np.zeros(num_ideals)
    best = np.empty(num_states)
    best_kind = np.empty(num_states, dtype=np.int64)
    best_sub = np.empty(num_states, dtype=np.int64)
    load = np.empty(num_kinds)
    pairs = 0
    for ideal in range(1, num_ideals):
        if pairs > max_pairs:
            return dp.T.copy(), choice_kind.T.copy(), choice_sub.T.copy(), -1
        best[:] = np.inf
        best_kind[:] = -1
        best_sub[:] = -1
        # J = {}: the whole ideal on the state's last device.
        for t in range(num_kinds):
            load[t] = np.inf
            if whole_size[ideal] <= kind_cap[t]:
                load[t] = whole_time[ideal, t] + (whole_comm[ideal] if kind_pays[t] else 0.0)
        for s in range(1, num_states):
            if state_devices[s] != 1:
                continue
            for t in range(num_kinds):
                if prev_state[s, t] == 0 and load[t] < best[s]:
                    best[s] = load[t]
                    best_kind[s] = t
                    best_sub[s] = 0
        set_min[ideal] = words.shape[1] * 64
        queue[0] = ideal
        head, tail = 0, 1
        set_time[ideal, :] = 0.0
        set_size[ideal] = 0.0
        set_comm[ideal] = 0.0
        while head < tail:
            sub = queue[head]
            head += 1
            if sub != ideal:
                pairs += 1
                for t in range(num_kinds):
                    load[t] = np.inf
                    if set_size[sub] <= kind_cap[t]:
                        load[t] = set_time[sub, t] + (set_comm[sub] if kind_pays[t] else 0.0)
                for s in range(1, num_states):
                    if state_devices[s] == 1:
                        continue
                    for t in range(num_kinds):
                        p = prev_state[s, t]
                        if p < 0:
                            continue
                        candidate = max(dp[sub, p], load[t])
                        if candidate < best[s]:
                            best[s] = candidate
                            best_kind[s] = t
                            best_sub[s] = sub
            # Below `sub` every set is larger: prune when no kind can take it or beat any best.
            worst = 0.0
            for s in range(1, num_states):
                if state_devices[s] > 1 and best[s] > worst:
                    worst = best[s]
            hopeless = True
            for t in range(num_kinds):
                if set_size[sub] <= kind_cap[t] and set_time[sub, t] < worst:
                    hopeless = False
            if hopeless:
                continue
            limit = set_min[sub]
            for e in range(down_ptr[sub], down_ptr[sub + 1]):
                block = down_block[e]
                if block >= limit:
                    break
                smaller = down_sub[e]
                set_min[smaller] = block
                for t in range(num_kinds):
                    set_time[smaller, t] = set_time[sub, t] + block_time[block, t]
                set_size[smaller] = set_size[sub] + block_size[block]
                delta = 0.0
                for x in range(touch_ptr[block], touch_ptr[block + 1]):
                    delta += _transfer_change(touch_op[x], block, words, ideal, sub, op_block, out_ptr, out_block, out_cost)
                set_comm[smaller] = set_comm[sub] + delta
                queue[tail] = smaller
                tail += 1
        for s in range(1, num_states):
            value, kind, choice = best[s], best_kind[s], best_sub[s]
            for t in range(num_kinds):
                p = prev_state[s, t]
                if p >= 0 and dp[ideal, p] <= value:
                    value, kind, choice = dp[ideal, p], t, ideal
            dp[ideal, s] = value
            choice_kind[ideal, s] = kind
            choice_sub[ideal, s] = choice
    return dp.T.copy(), choice_kind.T.copy(), choice_sub.T.copy(), pairs
