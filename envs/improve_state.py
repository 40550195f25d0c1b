"""The improvement problem: one placement of colocation units, its simulation, its legal moves.

`MoveProblem` is built once per (graph, cluster, costs, objective, M) on the *same* core
objects every classic method uses (`rlplace.rules.prepare`: colocation units, the
memory estimate's budget; `rlplace.simulate.Simulator`), so a move here is a move of
``local-search``. A move is (unit, device): every op of the colocation unit goes to the device.

Legal moves (`legal_moves`): the unit exists, the device exists, every op of the unit can run
there (finite time), the device differs from the unit's current one, and the unit's bytes fit
the device's room under the baselines' memory estimate (`rlplace.rules.MemoryLedger`).

`observe` turns a placement into features computed from ONE ``Simulator.run`` (critical path
included) plus vectorised numpy over the edges; all times are divided by the current step
time T and all bytes by the device capacity (or the graph's total bytes when uncapped), so the
features do not depend on the time or memory scale.

Shapes (u units, k devices, e unit edges, x op edges crossing units):
    node features (u, NODE_FEATURES), pair features (u, k, PAIR_FEATURES), device features
    (k, DEVICE_FEATURES), global features (GLOBAL_FEATURES,), edge index (2, e), edge features
    (e, EDGE_FEATURES).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.rules import Units, make_simulator, prepare
from rlplace.simulate import basic_lower_bound

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
    """Features of the (u,) ``assignment`` from one simulation (module docstring)."""
    units, costs, graph = problem.units, problem.costs, problem.graph
    u, k = problem.num_units, problem.num_devices
    placement = units.expand(assignment)
    result = problem.simulator.run(placement)
    T = float(result.step_time) if np.isfinite(result.step_time) and result.step_time > 0 else 1.0
    start_time = T if start_time is None else start_time
    capacity = np.where(np.isfinite(problem.cluster.memory), problem.cluster.memory, max(float(units.demand.sum()), 1.0))
    used = problem.used(assignment)
    legal = legal_moves(problem, assignment, used)
    arange_u = np.arange(u)

    # per unit, from the simulation
    of_op = units.of_op
    if result.op_start is not None:
        start = np.full(u, np.inf)
        np.minimum.at(start, of_op, result.op_start)
        finish = np.zeros(u)
        np.maximum.at(finish, of_op, result.op_finish)
    else:
        start = np.zeros(u)
        finish = np.zeros(u)
    critical = np.zeros(u)
    if result.critical_path:
        critical[of_op[np.asarray(result.critical_path, dtype=np.int64)]] = 1.0
    time = np.where(units.allowed, units.time, 0.0)
    scale = max(u, 1) / T  # per-unit quantities relative to the average unit's share of T
    time_here = time[arange_u, assignment]
    finite_time = np.where(units.allowed, units.time, np.nan)
    fastest = np.nanmin(np.where(units.allowed, units.time, np.inf), axis=1)
    mean_time = np.nanmean(finite_time, axis=1)

    # communication: comm[u, d] = transfer time of u's crossing edges if u sat on d (others fixed)
    comm = np.zeros((u, k))
    nb_bytes = np.zeros((u, k))
    edge_comm = np.zeros(problem.edge_src.size)
    x = problem.cross_edges
    if x.size:
        src_op, dst_op = graph.edge_src[x], graph.edge_dst[x]
        ps, pd = placement[src_op], placement[dst_op]
        et = costs.edge_time[x]  # (x, k, k)
        rows = np.arange(x.size)
        np.add.at(comm, of_op[src_op], et[rows, :, pd])
        np.add.at(comm, of_op[dst_op], et[rows, ps, :])
        byts = graph.edge_bytes[x]
        np.add.at(nb_bytes, (of_op[src_op], pd), byts)
        np.add.at(nb_bytes, (of_op[dst_op], ps), byts)
        np.add.at(edge_comm, problem.cross_edge_unit, et[rows, ps, pd])
    comm_here = comm[arange_u, assignment]
    nb_total = np.maximum(nb_bytes.sum(axis=1), 1.0)
    nb_here = nb_bytes[arange_u, assignment]
    busy = np.asarray(result.busy_time, dtype=np.float64)
    load = np.asarray(result.device_load if result.device_load is not None else busy, dtype=np.float64)
    busiest = int(np.argmax(load))

    nodes = np.stack(
        [
            np.where(np.isfinite(start), start, 0.0) / T,
            finish / T,
            critical,
            time_here * scale,
            np.where(np.isfinite(fastest), fastest, 0.0) * scale,
            np.nan_to_num(mean_time) * scale,
            units.demand / capacity[assignment],
            1.0 - nb_here / nb_total,
            comm_here * scale,
            (assignment == busiest).astype(np.float64),
        ],
        axis=1,
    )
    room = problem.budget - used
    fits = (units.demand[:, None] <= room[None, :]).astype(np.float64)
    room_after = (room[None, :] - units.demand[:, None]) / capacity[None, :]
    is_current = np.zeros((u, k))
    is_current[arange_u, assignment] = 1.0
    pairs = np.stack(
        [
            time * scale,
            (time - time_here[:, None]) * scale,
            comm * scale,
            (comm - comm_here[:, None]) * scale,
            nb_bytes / nb_total[:, None],
            is_current,
            fits,
            np.clip(room_after, -4.0, 4.0),
            np.broadcast_to(load[None, :] / T, (u, k)),
            (load[None, :] + time) / T,
            legal.astype(np.float64),
            _max_load_after(busy, assignment, time, time_here) / T - 1.0,
        ],
        axis=2,
    )
    totals = np.where(units.allowed.all(axis=0), time.sum(axis=0), np.inf)
    with np.errstate(invalid="ignore", divide="ignore"):
        speed = np.min(totals) / totals if np.isfinite(np.min(totals)) else np.ones(k)
    link = problem.link_cost / max(float(problem.link_cost[problem.link_cost > 0].min()) if np.any(problem.link_cost > 0) else 1.0, 1e-30)
    devices = np.stack(
        [load / T, np.asarray(result.peak_memory) / capacity, room / capacity, np.nan_to_num(speed), np.log1p(link), np.ones(k)],
        axis=1,
    )
    objective = np.zeros(3)
    objective[OBJECTIVES.index(problem.objective)] = 1.0
    lower = problem.observed_bound if np.isfinite(problem.observed_bound) else 0.0
    globals_ = np.concatenate([objective, [np.log2(problem.microbatches) / 4.0, k / 16.0, T / max(start_time, 1e-30), moves_left, lower / T]])
    max_bytes = np.log1p(float(problem.edge_bytes.max())) if problem.edge_bytes.size else 1.0
    cut = (assignment[problem.edge_src] != assignment[problem.edge_dst]).astype(np.float64)
    edge_attr = np.stack([np.log1p(problem.edge_bytes) / max(max_bytes, 1e-9), edge_comm / T, cut], axis=1) if problem.edge_src.size else np.zeros((0, EDGE_FEATURES))
    return Observation(
        nodes=finite_features(nodes),
        pairs=finite_features(pairs),
        devices=finite_features(devices),
        globals=finite_features(globals_),
        edge_index=np.stack([problem.edge_src, problem.edge_dst]).astype(np.int64),
        edge_attr=finite_features(edge_attr),
        legal=legal,
        step_time=float(result.step_time),
        overflow=float(result.total_overflow),
    )


#: Features are clipped to +-FEATURE_LIMIT (an uncapped device's room, a unit that cannot run anywhere else).
FEATURE_LIMIT = 100.0


def finite_features(values: np.ndarray) -> np.ndarray:
    """float32 copy with NaN -> 0 and everything clipped to +-`FEATURE_LIMIT`."""
    out = np.clip(values, -FEATURE_LIMIT, FEATURE_LIMIT).astype(np.float32)  # +-inf -> +-limit
    out[np.isnan(out)] = 0.0
    return out


def _max_load_after(busy: np.ndarray, assignment: np.ndarray, time: np.ndarray, time_here: np.ndarray) -> np.ndarray:
    """(u, k) max device compute time after moving each unit to each device (others fixed)."""
    u, k = time.shape
    after = np.broadcast_to(busy, (u, k, k)).copy()  # [unit, target device, device]
    after[np.arange(u), :, assignment] -= time_here[:, None]
    after[:, np.arange(k), np.arange(k)] += time
    after[np.arange(u), assignment, assignment] = busy[assignment]
    return after.max(axis=2)


def apply_move(assignment: np.ndarray, unit: int, device: int) -> np.ndarray:
    """A copy of ``assignment`` with ``unit`` on ``device``."""
    moved = np.array(assignment, dtype=np.int64, copy=True)
    moved[unit] = device
    return moved
