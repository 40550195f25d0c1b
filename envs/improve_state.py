"""The improvement problem: one placement of colocation units, its simulation, its legal moves.

`MoveProblem` is built once per (graph, cluster, costs, objective, M) on the *same* core
objects every classic method uses (`rlplace.rules.prepare`: colocation units, the
memory estimate's budget; `rlplace.simulate.Simulator`), so a move here is a move of
``local-search``. A move is (unit, device): every op of the colocation unit goes to the device.

Legal moves (`legal_moves`): the unit exists, the device exists, every op of the unit can run
there (finite time), the device differs from the unit's current one, and the unit's bytes fit
the device's room under the baselines' memory estimate (`rlplace.rules.MemoryLedger`).

`observe` turns a placement into features computed from ONE ``Simulator.run`` (critical path
included) plus two compiled passes over the units and crossing edges
(`rlplace.envs.feature_kernel`; what no placement changes is computed once per problem); all times are divided by the current step
time T and all bytes by the device capacity (or the graph's total bytes when uncapped), so the
features do not depend on the time or memory scale.

Shapes (u units, k devices, e unit edges, x op edges crossing units):
    node features (u, NODE_FEATURES), pair features (u, k, PAIR_FEATURES), device features
    (k, DEVICE_FEATURES), global features (GLOBAL_FEATURES,), edge index (2, e), edge features
    (e, EDGE_FEATURES).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.rules import Units, make_simulator, prepare
from rlplace.simulate import basic_lower_bound

from . import feature_kernel

OBJECTIVES = ("latency", "pipelined", "throughput")
#: start/T, finish/T, on critical path, time here/T, fastest time/T, mean time/T, demand/cap,
#: bytes to neighbours (cut share), comm time of its cut edges/T, on the busiest device.
NODE_FEATURES = 10
#: time there/T, (time there - time here)/T, comm there/T, (comm there - comm here)/T,
#: neighbour bytes there / all neighbour bytes, is current device, fits, room after/cap,
#: busy there/T, (busy there + time there)/T, legal, estimated max device load after the
#: move / T - 1 (compute only). Per-unit times are scaled by u/T (relative to the mean unit), not 1/T.
PAIR_FEATURES = 12
#: busy/T, peak/cap, room/cap, speed (total time of the fastest device / its total time),
#: mean link time per byte relative to the fastest link, present.
DEVICE_FEATURES = 6
#: objective one-hot (3), log2(M)/4, devices/16, T/T_start, moves left share, lower bound/T.
GLOBAL_FEATURES = 8
#: log1p(bytes)/log1p(max bytes), comm time at current placement/T, cut.
EDGE_FEATURES = 3


@dataclass(frozen=True, eq=False)
class MoveProblem:
    """Everything fixed for one (graph, cluster, costs, objective, M).

    Attributes (u units, k devices, e unit edges, x crossing op edges):
        units: the colocation units (`rlplace.rules.Units`).
        budget: (k,) bytes the memory estimate may fill per device.
        simulator: the shared `Simulator` (objective, M).
        edge_src, edge_dst: (e,) int64 unit edges (one per connected ordered unit pair).
        edge_bytes: (e,) float64 bytes summed over the op edges between the pair.
        cross_edges: (x,) int64 ids of op edges whose ends lie in different units.
        cross_edge_unit: (x,) int64 unit edge of each crossing op edge.
        link_cost: (k,) float64 mean transfer seconds per byte from each device to the others.
        schedule: the pipeline schedule the simulator runs under ``pipelined`` (``gpipe`` ...).
        observed_bound: the work and critical-path bound (`rlplace.simulate.basic_lower_bound`)
            the observation's global feature holds: the one the shipped weights were trained
            with (the simulator's own `lower_bound` has been tightened since).
    """

    graph: OpGraph
    cluster: Cluster
    costs: CostTable
    objective: str
    microbatches: int
    units: Units
    budget: np.ndarray
    simulator: Any
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_bytes: np.ndarray
    cross_edges: np.ndarray
    cross_edge_unit: np.ndarray
    link_cost: np.ndarray
    observed_bound: float
    schedule: str = "gpipe"
    #: Derived arrays built on first use (`observe`'s placement-independent features).
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def num_units(self) -> int:
        return self.units.num_units

    @property
    def num_devices(self) -> int:
        return self.cluster.num_devices

    def score(self, assignment: np.ndarray, *, cutoff: float = np.inf) -> tuple[float, float]:
        """(bytes over capacity, step time) of a (u,) assignment: smaller is better, in that
        order; with a finite ``cutoff``, ``(0.0, inf)`` may stand for a step time that fits and
        surely exceeds it (`rlplace.simulate.Simulator.score`)."""
        step_time, overflow = self.simulator.score(self.units.expand(assignment), cutoff=cutoff)
        return float(overflow), float(step_time)

    def used(self, assignment: np.ndarray) -> np.ndarray:
        """(k,) bytes of the memory estimate per device for a (u,) assignment."""
        return np.bincount(assignment, weights=self.units.demand, minlength=self.num_devices)


def build_move_problem(
    graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str, microbatches: int = 1, schedule: str = "gpipe"
) -> MoveProblem:
    """Units, budget and simulator as the baselines build them (same ``microbatches`` and
    ``schedule``, so the same memory demand and the same simulated step), plus the unit edge list.

    Raises `RlplaceError` (from ``prepare``) for an unknown objective, a mismatched cost table
    or an infeasible problem.
    """
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    simulator = make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    a = units.of_op[graph.edge_src]
    b = units.of_op[graph.edge_dst]
    cross = np.flatnonzero(a != b).astype(np.int64)
    u = units.num_units
    keys = a[cross] * max(u, 1) + b[cross]
    unique, inverse = np.unique(keys, return_inverse=True)
    edge_bytes = np.bincount(inverse.reshape(-1), weights=graph.edge_bytes[cross], minlength=unique.size)
    k = cluster.num_devices
    per_byte = costs.edge_time / np.maximum(graph.edge_bytes, 1.0)[:, None, None] if graph.num_edges else np.zeros((0, k, k))
    off = ~np.eye(k, dtype=bool)
    if graph.num_edges and k > 1:
        link = per_byte.mean(axis=0)
        link_cost = np.array([link[d][off[d]].mean() for d in range(k)])
    else:
        link_cost = np.zeros(k)
    return MoveProblem(
        graph=graph,
        cluster=cluster,
        costs=costs,
        objective=objective,
        microbatches=simulator.microbatches,
        units=units,
        budget=np.asarray(budget, dtype=np.float64),
        simulator=simulator,
        edge_src=(unique // max(u, 1)).astype(np.int64),
        edge_dst=(unique % max(u, 1)).astype(np.int64),
        edge_bytes=edge_bytes,
        cross_edges=cross,
        cross_edge_unit=inverse.reshape(-1).astype(np.int64),
        link_cost=link_cost,
        observed_bound=basic_lower_bound(graph, cluster, costs, objective=objective, microbatches=simulator.microbatches),
        schedule=schedule,
    )


def legal_moves(problem: MoveProblem, assignment: np.ndarray, used: np.ndarray | None = None) -> np.ndarray:
    """(u, k) bool: moves of a unit to another device that can run it and has room for it
    under the memory estimate (``used``: (k,) bytes already committed, computed when None)."""
    used = problem.used(assignment) if used is None else used
    room = problem.budget - used
    legal = problem.units.allowed & (problem.units.demand[:, None] <= room[None, :])
    legal[np.arange(problem.num_units), assignment] = False
    return legal


@dataclass(frozen=True, eq=False)
class Observation:
    """Unpadded features of one placement (shapes in the module docstring) and its score."""

    nodes: np.ndarray
    pairs: np.ndarray
    devices: np.ndarray
    globals: np.ndarray
    edge_index: np.ndarray
    edge_attr: np.ndarray
    legal: np.ndarray
    step_time: float
    overflow: float


def observe(problem: MoveProblem, assignment: np.ndarray, *, start_time: float | None = None, moves_left: float = 1.0) -> Observation:
    """Features of the (u,) ``assignment`` from one simulation (module docstring); the
    per-unit and per-pair ones come from `rlplace.envs.feature_kernel`."""
    units = problem.units
    fixed = _fixed_features(problem)
    assignment = np.asarray(assignment, dtype=np.int64)
    placement = units.expand(assignment)
    result = problem.simulator.run(placement)
    T = float(result.step_time) if np.isfinite(result.step_time) and result.step_time > 0 else 1.0
    start_time = T if start_time is None else start_time
    used = problem.used(assignment)
    room = problem.budget - used
    legal = legal_moves(problem, assignment, used)
    has_times = result.op_start is not None
    start, finish, critical, comm, nb_bytes, edge_comm = feature_kernel.unit_sums(
        assignment,
        placement,
        units.of_op,
        result.op_start if has_times else _NO_TIMES,
        result.op_finish if has_times else _NO_TIMES,
        has_times,
        np.asarray(result.critical_path, dtype=np.int64),
        problem.cross_edges,
        problem.graph.edge_src,
        problem.graph.edge_dst,
        fixed.edge_time,
        problem.graph.edge_bytes,
        problem.cross_edge_unit,
        problem.edge_src.size,
        problem.num_devices,
    )
    busy = np.asarray(result.busy_time, dtype=np.float64)
    load = np.asarray(result.device_load if result.device_load is not None else busy, dtype=np.float64)
    nodes, pairs = feature_kernel.unit_and_pair_features(
        assignment, T, start, finish, critical, comm, nb_bytes, np.maximum(nb_bytes.sum(axis=1), 1.0),
        fixed.time, fixed.fastest, fixed.mean_time, units.demand, fixed.capacity, room, legal, busy, load,
    )  # fmt: skip
    devices = np.stack(
        [load / T, np.asarray(result.peak_memory) / fixed.capacity, room / fixed.capacity, fixed.speed, fixed.link, np.ones(problem.num_devices)],
        axis=1,
    )
    lower = problem.observed_bound if np.isfinite(problem.observed_bound) else 0.0
    globals_ = np.concatenate([fixed.objective, [np.log2(problem.microbatches) / 4.0, problem.num_devices / 16.0, T / max(start_time, 1e-30), moves_left, lower / T]])
    cut = (assignment[problem.edge_src] != assignment[problem.edge_dst]).astype(np.float64)
    edge_attr = np.stack([fixed.edge_size, edge_comm / T, cut], axis=1) if problem.edge_src.size else np.zeros((0, EDGE_FEATURES))
    return Observation(
        nodes=finite_features(nodes),
        pairs=finite_features(pairs),
        devices=finite_features(devices),
        globals=finite_features(globals_),
        edge_index=fixed.edge_index,
        edge_attr=finite_features(edge_attr),
        legal=legal,
        step_time=float(result.step_time),
        overflow=float(result.total_overflow),
    )


@dataclass(frozen=True, eq=False)
class _FixedFeatures:
    """What `observe` needs that no placement changes, computed once per problem.

    Shapes (u units, k devices, m op edges, e unit edges):
        time: (u, k) unit time per device, 0 where it cannot run; fastest, mean_time: (u,)
            its fastest and mean time over the devices that can run it (0 where none can).
        capacity: (k,) bytes the memory features divide by (the graph's total demand where a
            device is uncapped); speed: (k,) total time of the fastest device / its total time;
            link: (k,) log1p(mean time per byte / the fastest link's); objective: (3,) one-hot.
        edge_time: (m, k, k) the cost table's dense edge times; edge_size: (e,) log1p(bytes)
            / log1p(largest); edge_index: (2, e) int64.
    """

    time: np.ndarray
    fastest: np.ndarray
    mean_time: np.ndarray
    capacity: np.ndarray
    speed: np.ndarray
    link: np.ndarray
    objective: np.ndarray
    edge_time: np.ndarray
    edge_size: np.ndarray
    edge_index: np.ndarray


def _fixed_features(problem: MoveProblem) -> _FixedFeatures:
    """``problem``'s `_FixedFeatures`, built on first use and kept on the problem."""
    fixed = problem.cache.get("fixed_features")
    if fixed is None:
        fixed = problem.cache["fixed_features"] = _build_fixed_features(problem)
    return fixed


def _build_fixed_features(problem: MoveProblem) -> _FixedFeatures:
    units, k = problem.units, problem.num_devices
    time = np.where(units.allowed, units.time, 0.0)
    fastest = np.nanmin(np.where(units.allowed, units.time, np.inf), axis=1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a unit no device can run: mean of nothing
        mean_time = np.nanmean(np.where(units.allowed, units.time, np.nan), axis=1)
    capacity = np.where(np.isfinite(problem.cluster.memory), problem.cluster.memory, max(float(units.demand.sum()), 1.0))
    totals = np.where(units.allowed.all(axis=0), time.sum(axis=0), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = np.min(totals) / totals if np.isfinite(np.min(totals)) else np.ones(k)
    positive = problem.link_cost[problem.link_cost > 0]
    link = problem.link_cost / max(float(positive.min()) if positive.size else 1.0, 1e-30)
    objective = np.zeros(3)
    objective[OBJECTIVES.index(problem.objective)] = 1.0
    max_bytes = np.log1p(float(problem.edge_bytes.max())) if problem.edge_bytes.size else 1.0
    m = problem.graph.num_edges
    return _FixedFeatures(
        time=time,
        fastest=np.where(np.isfinite(fastest), fastest, 0.0),
        mean_time=np.nan_to_num(mean_time),
        capacity=capacity,
        speed=np.nan_to_num(speed),
        link=np.log1p(link),
        objective=objective,
        edge_time=problem.costs.edge_time if m else np.zeros((0, k, k)),
        edge_size=np.log1p(problem.edge_bytes) / max(max_bytes, 1e-9),
        edge_index=np.stack([problem.edge_src, problem.edge_dst]).astype(np.int64),
    )


#: `feature_kernel.unit_sums`' op times when the simulation has none.
_NO_TIMES = np.zeros(0)

#: Features are clipped to +-FEATURE_LIMIT (an uncapped device's room, a unit that cannot run anywhere else).
FEATURE_LIMIT = 100.0


def finite_features(values: np.ndarray) -> np.ndarray:
    """float32 copy with NaN -> 0 and everything clipped to +-`FEATURE_LIMIT`."""
    out = np.clip(values, -FEATURE_LIMIT, FEATURE_LIMIT).astype(np.float32)  # +-inf -> +-limit
    out[np.isnan(out)] = 0.0
    return out


def apply_move(assignment: np.ndarray, unit: int, device: int) -> np.ndarray:
    """A copy of ``assignment`` with ``unit`` on ``device``."""
    moved = np.array(assignment, dtype=np.int64, copy=True)
    moved[unit] = device
    return moved
