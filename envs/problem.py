"""`PlacementProblem`: what the env precomputes once for one (graph, cluster) pair.

Building one coarsens the graph when it has more ops than the env has node slots, computes
the cost table and the simulator of the *full* graph (rewards are always the full graph's
step time), aggregates per-group times and memory, derives which devices each group may use,
and scores a reference placement whose step time ``T_ref`` scales the reward.

Reference heuristic: ``rlplace.baselines.run_method(reference_method)`` on the group graph
(``m-topo`` by default, as ``rlplace place --method m-topo`` would run it), expanded to the full
graph, legalized, memory-repaired if needed and scored by the reward source. When the baseline
finds no feasible placement, or ``reference_method="speed-proportional-split"``, the reference is
`speed_proportional_split` (below); ``PlacementProblem.reference_method`` records which ran.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.rules import Units, build_units, legalize, repair_exact, settle
from rlplace.units import show_bytes

from .reward import RewardSource, make_reward_source

FALLBACK_REFERENCE = "speed-proportional-split"


@dataclass(frozen=True, eq=False)
class PlacementProblem:
    """One (graph, cluster) pair, ready for fast episodes.

    Shapes (n ops, G groups, k devices, m' edges between groups):
        group_of_op: (n,) int64, the group of every op (the identity without coarsening).
        group_time: (G, k) float64, summed op time of the group on each device, graph time
            unit; ``inf`` where one of its ops cannot run.
        allowed: (G, k) bool, devices a group may take: every op of its colocation unit can
            run there and the unit's resident bytes fit the device's capacity.
        first_allowed: (G,) int64, lowest allowed device per group.
        resident, transient, work, export: (G,) float64 bytes per group: resident bytes
            (parameters, gradients, optimizer state); summed output bytes; the largest working
            memory of one op; outputs read by other groups (copied once per remote device).
            ``transient``, ``work`` and ``export`` are 0 under ``throughput``, whose memory model
            counts resident bytes only.
        group_preds: G int64 arrays, producer groups of each group.
        group_edge_src, group_edge_dst: (m',) int64, ``src < dst``, one entry per connected
            pair of groups; group_edge_bytes: (m',) float64 bytes carried (summed).
        unit_leader: (G,) int64, first group of the group's colocation unit (itself when the
            group has no colocation partner in another group); units move together.
        capacity: (k,) float64 bytes (``inf`` for an uncapped device).
        single_time: fastest single-device time of the graph (sum of op times), time unit.
        reference_time: T_ref, the reference placement's step time, time unit.
        reference_placement: (n,) int64 reference placement of the full graph.
        units: the colocation units of the groups (`rlplace.rules.build_units` over groups).
        copy_and_work_bound: bytes, every exported output once plus the largest working memory.
    """

    graph: OpGraph
    cluster: Cluster
    costs: CostTable
    objective: str
    microbatches: int
    group_graph: OpGraph
    coarsening: Any
    group_of_op: np.ndarray
    group_time: np.ndarray
    allowed: np.ndarray
    first_allowed: np.ndarray
    resident: np.ndarray
    transient: np.ndarray
    work: np.ndarray
    export: np.ndarray
    group_preds: tuple[np.ndarray, ...]
    group_edge_src: np.ndarray
    group_edge_dst: np.ndarray
    group_edge_bytes: np.ndarray
    unit_leader: np.ndarray
    capacity: np.ndarray
    simulator: Any
    reward_source: RewardSource
    single_time: float
    reference_time: float
    reference_placement: np.ndarray
    reference_method: str
    units: Units | None = None
    copy_and_work_bound: float = 0.0

    @property
    def num_groups(self) -> int:
        return int(self.group_time.shape[0])

    @property
    def num_devices(self) -> int:
        return self.cluster.num_devices

    def expand(self, group_placement: np.ndarray) -> np.ndarray:
        """(G,) device per group -> (n,) int64 device per op of the full graph."""
        return np.asarray(group_placement, dtype=np.int64)[self.group_of_op]

    def surely_fits(self, group_placement: np.ndarray) -> bool:
        """Whether a coarse upper bound of the simulated peak fits every device: per device its
        groups' resident and output bytes, plus a copy of every exported output and the largest
        working memory of the graph. When it holds the simulator's memory pass can be skipped."""
        held = np.bincount(group_placement, weights=self.resident + self.transient, minlength=self.num_devices)
        return bool(np.all(held + self.copy_and_work_bound <= self.capacity))

    def peak_memory(self, placement: np.ndarray) -> np.ndarray:
        """(k,) bytes, the simulator's memory model for a full-graph placement."""
        return np.asarray(self.simulator.peak_memory(placement), dtype=np.float64)

    def legalize(self, choice: np.ndarray) -> tuple[np.ndarray, int]:
        """(G,) chosen devices (any int) -> ((G,) int64 legal devices, choices outside the mask),
        by `rlplace.rules.legalize`: a device the group may not take becomes its first allowed
        device, then every group of a colocation unit follows the unit's first group."""
        return legalize(choice, self.allowed, self.first_allowed, self.unit_leader)

    def repair(self, group_placement: np.ndarray) -> tuple[np.ndarray, bool, int]:
        """`rlplace.rules.repair_exact` on the groups' colocation units: move units off
        devices whose simulated peak exceeds capacity while that lowers the total overflow.

        Returns ((G,) int64 repaired placement, whether it fits in memory, units moved).
        """
        units = self.units
        assert units is not None
        assignment, peak, moves = repair_exact(
            units,
            units.contract(group_placement),
            lambda unit_device: self.peak_memory(self.expand(units.expand(unit_device))),
            self.capacity,
            allowed=self.allowed[units.first_op],
        )
        return units.expand(assignment), bool(np.all(peak <= self.capacity)), moves

    def settle(self, choice: np.ndarray, *, repair: bool = True) -> tuple[float, float, np.ndarray]:
        """(overflow bytes, step time, (G,) legal placement) of a (G,) choice by `rlplace.rules.settle`:
        legalize, score the full graph with the reward source, and (``repair``) repair and score again."""
        return settle(
            choice,
            legalize=lambda c: self.legalize(c)[0],
            evaluate=lambda legal: self.reward_source.evaluate(self.expand(legal)),
            repair=(lambda legal: self.repair(legal)[0::2]) if repair else None,
        )


def build_problem(
    graph: OpGraph,
    cluster: Cluster,
    *,
    objective: str,
    microbatches: int,
    max_nodes: int,
    schedule: str = "gpipe",
    reward_source: str | Callable[..., RewardSource] = "simulator",
    reference_method: str = "m-topo",
) -> PlacementProblem:
    """Precompute everything of `PlacementProblem` for ``graph`` on ``cluster``."""
    from rlplace.simulate import Simulator

    group_graph, coarsening, group_of_op = _coarsen(graph, max_nodes)
    costs = CostTable.build(graph, cluster)
    k = cluster.num_devices
    num_groups = group_graph.num_ops
    capacity = cluster.memory

    group_time = np.zeros((num_groups, k))
    np.add.at(group_time, group_of_op, costs.op_time)
    resident = np.bincount(group_of_op, weights=graph.resident_bytes, minlength=num_groups)
    static_memory = objective == "throughput"
    edge_src_group = group_of_op[graph.edge_src]
    edge_dst_group = group_of_op[graph.edge_dst]
    crossing = edge_src_group != edge_dst_group
    if np.any(edge_src_group[crossing] > edge_dst_group[crossing]):
        raise RlplaceError(f"graph {graph.name!r}: the coarsening's groups are not in topological order; this is a bug in rlplace.coarsen, please report it")
    if static_memory:
        transient = np.zeros(num_groups)
        work = np.zeros(num_groups)
        export = np.zeros(num_groups)
    else:
        transient = np.bincount(group_of_op, weights=graph.output_bytes, minlength=num_groups)
        work = np.zeros(num_groups)
        np.maximum.at(work, group_of_op, graph.work_bytes)
        exported_ops = np.unique(graph.edge_src[crossing])
        export = np.bincount(group_of_op[exported_ops], weights=graph.output_bytes[exported_ops], minlength=num_groups)

    pair_keys = edge_src_group[crossing] * num_groups + edge_dst_group[crossing]
    unique_keys, inverse = np.unique(pair_keys, return_inverse=True)
    group_edge_src = unique_keys // num_groups
    group_edge_dst = unique_keys % num_groups
    group_edge_bytes = np.bincount(inverse, weights=graph.edge_bytes[crossing], minlength=unique_keys.size)
    preds_order = np.argsort(group_edge_dst, kind="stable")
    bounds = np.searchsorted(group_edge_dst[preds_order], np.arange(num_groups + 1))
    group_preds = tuple(group_edge_src[preds_order][bounds[g] : bounds[g + 1]] for g in range(num_groups))

    units = build_units(graph, costs, objective, group_of_op, num_groups)
    unit_leader = units.leader
    unit_resident = np.bincount(units.of_op, weights=resident, minlength=units.num_units)
    allowed = (units.allowed & (unit_resident[:, None] <= capacity[None, :]))[units.of_op]
    if not np.all(np.any(allowed, axis=1)):
        g = int(np.argmin(np.any(allowed, axis=1)))
        op = graph.names[int(np.argmax(group_of_op == g))]
        raise RlplaceError(
            f"graph {graph.name!r} cannot be placed on cluster {cluster.name!r}: the group of op {op!r} "
            f"(with its colocated ops, {show_bytes(unit_resident[units.of_op[g]])} resident) fits on no device that can run it; use a cluster with more memory"
        )
    first_allowed = np.argmax(allowed, axis=1).astype(np.int64)

    finite_totals = np.where(np.all(np.isfinite(costs.op_time), axis=0), costs.op_time.sum(axis=0), np.inf)
    single_time = float(np.min(finite_totals)) if np.any(np.isfinite(finite_totals)) else float(np.sum(np.min(costs.op_time, axis=1)))
    if not single_time > 0:
        raise RlplaceError(f"graph {graph.name!r} has no work (every op takes 0 time on cluster {cluster.name!r}); nothing to place")

    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule)
    source = make_reward_source(reward_source, simulator, graph, cluster, costs, objective=objective, microbatches=simulator.microbatches)
    problem = PlacementProblem(
        graph=graph,
        cluster=cluster,
        costs=costs,
        objective=objective,
        microbatches=simulator.microbatches,
        group_graph=group_graph,
        coarsening=coarsening,
        group_of_op=_readonly(group_of_op),
        group_time=_readonly(group_time),
        allowed=_readonly(allowed),
        first_allowed=_readonly(first_allowed),
        resident=_readonly(resident),
        transient=_readonly(transient),
        work=_readonly(work),
        export=_readonly(export),
        group_preds=group_preds,
        group_edge_src=_readonly(group_edge_src.astype(np.int64)),
        group_edge_dst=_readonly(group_edge_dst.astype(np.int64)),
        group_edge_bytes=_readonly(group_edge_bytes),
        unit_leader=_readonly(unit_leader),
        capacity=_readonly(capacity),
        simulator=simulator,
        reward_source=source,
        single_time=single_time,
        reference_time=np.nan,
        reference_placement=np.zeros(graph.num_ops, dtype=np.int64),
        reference_method=reference_method,
        units=units,
        copy_and_work_bound=float(export.sum() + (work.max() if work.size else 0.0)),
    )
    return _with_reference(problem, reference_method)


def _with_reference(problem: PlacementProblem, method: str) -> PlacementProblem:
    """A copy of ``problem`` with T_ref filled in: the reference heuristic's placement, settled
    (legalized, scored, memory-repaired if needed) like every candidate."""
    group_placement, used = _reference_groups(problem, method)
    _, step_time, legal = problem.settle(group_placement)
    if not (np.isfinite(step_time) and step_time > 0):
        raise RlplaceError(f"reference placement ({used}) of graph {problem.graph.name!r} on {problem.cluster.name!r} has step time {step_time!r}; cannot scale rewards")
    placement = problem.expand(legal)
    placement.setflags(write=False)
    return replace(problem, reference_time=float(step_time), reference_placement=placement, reference_method=used)


def _reference_groups(problem: PlacementProblem, method: str) -> tuple[np.ndarray, str]:
    """(G,) reference device per group and the method that produced it.

    A baseline that finds no feasible placement (it raises `RlplaceError`) falls back to
    `speed_proportional_split`, as does ``method == FALLBACK_REFERENCE``.
    """
    if method != FALLBACK_REFERENCE:
        from rlplace.baselines import run_method

        group_costs = problem.costs if problem.coarsening is None else CostTable.grouped(problem.costs, problem.coarsening.group_of, problem.group_graph, problem.cluster)
        try:
            outcome = run_method(method, problem.group_graph, problem.cluster, group_costs, objective=problem.objective, microbatches=problem.microbatches, seed=0)
        except RlplaceError:
            pass
        else:
            return np.asarray(outcome.placement, dtype=np.int64), method
    return speed_proportional_split(problem), FALLBACK_REFERENCE


def speed_proportional_split(problem: PlacementProblem) -> np.ndarray:
    """Fallback reference: cut the groups, in topological order, into contiguous runs, one per
    device in index order, each run's compute proportional to the device's speed (the inverse
    of its time for the whole graph); a group its device may not take goes to its first
    allowed device.

    Returns (G,) int64 device per group.
    """
    k = problem.num_devices
    fastest = np.min(np.where(np.isfinite(problem.group_time), problem.group_time, np.inf), axis=1)
    fastest = np.where(np.isfinite(fastest), fastest, 0.0)
    totals = np.where(np.isfinite(problem.group_time), problem.group_time, 0.0).sum(axis=0)
    speed = 1.0 / np.maximum(totals, 1e-30)
    share_end = np.cumsum(speed / speed.sum())
    progress = (np.cumsum(fastest) - fastest / 2) / max(float(fastest.sum()), 1e-30)
    placement = np.minimum(np.searchsorted(share_end, progress, side="right"), k - 1).astype(np.int64)
    bad = ~problem.allowed[np.arange(placement.size), placement]
    placement[bad] = problem.first_allowed[bad]
    return placement


def _coarsen(graph: OpGraph, max_nodes: int) -> tuple[OpGraph, Any, np.ndarray]:
    """(group graph, coarsening or None, (n,) group of each op)."""
    if graph.num_ops <= max_nodes:
        return graph, None, np.arange(graph.num_ops, dtype=np.int64)
    from rlplace.coarsen import coarsen

    coarsening = coarsen(graph, max_nodes)
    group_graph = coarsening.graph
    if group_graph.num_ops > max_nodes:
        raise RlplaceError(
            f"graph {graph.name!r} ({graph.num_ops} ops) coarsens to {group_graph.num_ops} groups at best, "
            f"more than max_nodes={max_nodes}; raise max_nodes"
        )
    group_of_op = np.asarray(coarsening.group_of, dtype=np.int64)
    return group_graph, coarsening, group_of_op


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array
