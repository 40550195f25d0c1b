"""The integer program of the ``throughput`` (max-load) objective as matrices, and one HiGHS call.

Tarnawski et al. (NeurIPS 2020) place non-contiguously under the max-load model with an
integer program; this is that program on our cost tables (per-link edge times, CPUs, any
cluster). `rlplace.baselines.ilp` solves it (the ``ilp`` method) and searches with it.

Variables (u units, k devices, i ranges over ops whose output some other unit reads):

- ``x[u, d]`` in {0, 1}: unit u on device d (fixed to 0 where the unit cannot run on d);
- ``r[i, d] >= 0``: what device d pays to receive op i's output;
- ``s[i, a] >= 0``: what device a pays to send op i's output;
- ``L``: the largest load, minimised.

Constraints, for every unit u, device d and every pair (op i, consumer unit v) of an edge
that crosses units, with ``t(a, b)`` the largest time of those edges on the link a -> b
(0 when a = b) and ``M`` the largest such time:

- ``sum_d x[u, d] = 1`` and ``sum_u demand_u x[u, d] <= budget_d`` (the static memory of the
  max-load model, `rlplace.rules.prepare`'s estimate);
- receive: ``r[i, d] >= sum_a t(a, d) x[U(i), a] - M (1 - x[v, d])``;
- send: ``s[i, a] >= sum_b t(a, b) x[v, b] - M (1 - x[U(i), a])``;
- ``L >= sum_u T[u, d] x[u, d] + sum_i (r[i, d] + s[i, d])``, the transfer terms only on
  devices that are not CPUs.

For a fixed x the smallest feasible r and s are exactly the simulator's transfer charges (the
receiver pays the largest edge time of i's edges to it, the sender the largest over its
receivers), so the program's optimum is the simulator's ``throughput`` optimum over all
placements of the units. Devices that are interchangeable (`rlplace.costs.interchangeable_devices`:
equal op times and fixed parts, memory and kind, and a link pattern that a swap of the two
leaves unchanged) make many equal solutions; the
program keeps one of them by letting the j-th device of each interchangeable group hold
only units j, j+1, ... (a relabelling that orders the group's devices by their first unit
always exists). Times are divided by the work bound and memory rows by their budget, so
HiGHS's absolute tolerances do not swallow microsecond transfer times.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from rlplace.cluster import CPU, Cluster
from rlplace.costs import CostTable, interchangeable_devices
from rlplace.graph import OpGraph
from rlplace.rules import Units

#: Relative gap at which HiGHS calls a solution optimal.
MIP_GAP = 1e-4


class MaxLoadProgram:
    """The matrices of the module docstring's program (times in units of ``scale`` seconds)."""

    def __init__(self, graph: OpGraph, cluster: Cluster, costs: CostTable, units: Units, budget: np.ndarray) -> None:
        from scipy.optimize import LinearConstraint
        from scipy.sparse import coo_matrix

        from rlplace.simulate import work_bound

        u, k = units.num_units, cluster.num_devices
        self.units, self.num_devices = units, k
        self.scale = work_bound(np.asarray(costs.op_time, dtype=np.float64)) or 1.0
        is_cpu = np.array([device.category == CPU for device in cluster.devices], dtype=bool)
        producer, consumer_unit, pair_time = crossing_pairs(graph, costs, units)
        pair_time = pair_time / self.scale
        producers, producer_of_pair = np.unique(producer, return_inverse=True)
        num_producers = producers.shape[0]
        # variable layout: x (u*k) | r (P*k) | s (P*k) | L
        self.num_x = u * k
        r0, s0 = self.num_x, self.num_x + num_producers * k
        top = s0 + num_producers * k
        num_vars = top + 1
        producer_unit = units.unit_of_op[producer]

        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        low: list[np.ndarray] = []
        high: list[np.ndarray] = []
        count = 0

        def block(row: np.ndarray, col: np.ndarray, val: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
            nonlocal count
            keep = val != 0
            rows.append(row[keep] + count)
            cols.append(col[keep])
            vals.append(val[keep])
            low.append(lo)
            high.append(hi)
            count += lo.shape[0]

        devices = np.arange(k)
        # one device per unit
        block(np.repeat(np.arange(u), k), np.arange(u * k), np.ones(u * k), np.ones(u), np.ones(u))
        # static memory
        finite = np.flatnonzero(np.isfinite(budget) & (budget > 0))
        if finite.size and np.any(units.demand > 0):
            share = units.demand[:, None] / budget[None, finite]  # (u, f)
            row = np.tile(np.arange(finite.size), u)
            col = (np.arange(u)[:, None] * k + finite[None, :]).ravel()
            block(row, col, share.ravel(), np.full(finite.size, -np.inf), np.ones(finite.size))
        # transfers: receive rows (pair, d) and send rows (pair, a) on devices that pay them
        pays = np.flatnonzero(~is_cpu)
        num_pairs = producer.shape[0]
        if num_pairs and pays.size:
            big_in = pair_time[:, :, pays].max(axis=1)  # (pairs, |pays|) largest t(a, d)
            big_out = pair_time[:, pays, :].max(axis=2)  # (pairs, |pays|) largest t(a, b)
            pair_rows = np.arange(num_pairs)[:, None] * pays.size + np.arange(pays.size)[None, :]  # (pairs, |pays|)
            for role in ("receive", "send"):
                big = big_in if role == "receive" else big_out
                own = (r0 if role == "receive" else s0) + producer_of_pair[:, None] * k + pays[None, :]
                # coefficient rows: the cost variable, the other end's x over every device, the big-M x
                if role == "receive":
                    coef = -np.transpose(pair_time[:, :, pays], (0, 2, 1))  # (pairs, |pays|, a): -t(a, d)
                    x_unit, m_unit = producer_unit, consumer_unit
                else:
                    coef = -pair_time[:, pays, :]  # (pairs, |pays|, b): -t(a, b)
                    x_unit, m_unit = consumer_unit, producer_unit
                row = np.concatenate([pair_rows.ravel(), np.repeat(pair_rows.ravel(), k), pair_rows.ravel()])
                col = np.concatenate(
                    [
                        own.ravel(),
                        (x_unit[:, None, None] * k + devices[None, None, :]).repeat(pays.size, axis=1).ravel(),
                        (m_unit[:, None] * k + pays[None, :]).ravel(),
                    ]
                )
                val = np.concatenate([np.ones(pair_rows.size), coef.ravel(), -big.ravel()])
                block(row, col, val, -big.ravel(), np.full(pair_rows.size, np.inf))
        # load: sum_u T x + sum_i (r + s) - L <= 0 on every device
        times = np.where(units.allowed, units.time, 0.0) / self.scale
        row = [np.repeat(devices[None, :], u, axis=0).ravel()]
        col = [np.arange(u * k)]
        val = [times.ravel()]
        if num_producers and pays.size:
            for start in (r0, s0):
                row.append(np.repeat(pays, num_producers))
                col.append(start + np.arange(num_producers)[None, :] * k + pays[:, None])
                val.append(np.ones(pays.size * num_producers))
        row.append(devices)
        col.append(np.full(k, top))
        val.append(-np.ones(k))
        block(np.concatenate(row), np.concatenate([c.ravel() for c in col]), np.concatenate(val), np.full(k, -np.inf), np.zeros(k))

        matrix = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(count, num_vars)).tocsr()
        self.constraints = LinearConstraint(matrix, np.concatenate(low), np.concatenate(high))
        self.cost = np.zeros(num_vars)
        self.cost[top] = 1.0
        self.lower = np.zeros(num_vars)
        self.upper = np.full(num_vars, np.inf)
        allowed = units.allowed.copy()
        for group in interchangeable_devices(costs, cluster):
            for position, device in enumerate(group[1:], start=1):
                allowed[: min(position, u), device] = False
        self.upper[: self.num_x] = allowed.ravel().astype(np.float64)
        self.allowed = units.allowed.astype(np.float64)  # (u, k) without the symmetry cuts
        self.integrality = np.zeros(num_vars)
        self.integrality[: self.num_x] = 1
        self.size = (self.num_x, count)

    def assignment(self, solution: np.ndarray) -> np.ndarray:
        """(u,) int64 device per unit from a solution vector."""
        return np.argmax(solution[: self.num_x].reshape(self.units.num_units, self.num_devices), axis=1).astype(np.int64)


def crossing_pairs(graph: OpGraph, costs: CostTable, units: Units) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (op i, consumer unit v) pairs of edges between different units.

    Returns (producer (p,) int64, consumer_unit (p,) int64, time (p, k, k) float64 seconds:
    the largest time of the pair's edges on each link a -> b, 0 on the diagonal).
    """
    unit_of_op = units.unit_of_op
    src, dst = np.asarray(graph.edge_src, dtype=np.int64), np.asarray(graph.edge_dst, dtype=np.int64)
    crossing = np.flatnonzero(unit_of_op[src] != unit_of_op[dst])
    k = costs.num_devices
    if crossing.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k, k))
    keys = np.stack([src[crossing], unit_of_op[dst[crossing]]], axis=1)
    pairs, pair_of_edge = np.unique(keys, axis=0, return_inverse=True)
    class_time = np.asarray(costs.edge_class_time, dtype=np.float64)[crossing]  # (c, L)
    largest = np.zeros((pairs.shape[0], class_time.shape[1]))
    np.maximum.at(largest, pair_of_edge.reshape(-1), class_time)
    link = np.asarray(costs.link_class, dtype=np.int64)
    time = largest[:, link]  # (p, k, k)
    time[:, np.arange(k), np.arange(k)] = 0.0
    return pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64), time


def run_milp(program: MaxLoadProgram, lower: np.ndarray, upper: np.ndarray, time_limit_s: float) -> Any:
    """`scipy.optimize.milp` on ``program`` with variable bounds ``lower`` / ``upper``."""
    from scipy.optimize import Bounds, milp

    options = {"time_limit": float(time_limit_s), "mip_rel_gap": MIP_GAP, "disp": False}
    arguments = {"constraints": program.constraints, "integrality": program.integrality, "bounds": Bounds(lower, upper)}
    with solver_prints_to_stderr():
        result = milp(program.cost, **arguments, options=options)
        if result.status == 4:  # HiGHS "solve error": its presolve fails on some tiny programs; once more without it
            result = milp(program.cost, **arguments, options={**options, "presolve": False})
    return result


@contextlib.contextmanager
def solver_prints_to_stderr() -> Iterator[None]:
    """Point file descriptor 1 at stderr for the duration of a solve: HiGHS writes the odd
    diagnostic line to the process's stdout even with ``disp=False`` (seen once:
    ``HighsMipSolverData::transformNewIntegerFeasibleSolution``), and ``place --json``'s
    stdout must carry the JSON alone."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
