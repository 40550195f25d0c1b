"""`observe`'s per-unit and per-pair features (compiled in `rlplace.envs.feature_kernel`)
against a plain-Python statement of what each column means, and one case by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.agents.improve_data import memory_bound as memory_bound_cluster
from rlplace.cluster import Cluster, Device
from rlplace.cluster_spec import load_cluster
from rlplace.costs import CostTable
from rlplace.envs.improve_state import FEATURE_LIMIT, MoveProblem, build_move_problem, legal_moves, observe
from rlplace.graph import OpGraph
from rlplace.synthetic import synthetic_graph


def _feature(value: float) -> float:
    """NaN -> 0, clipped to +-FEATURE_LIMIT, rounded to float32."""
    return 0.0 if math.isnan(value) else float(np.float32(min(max(value, -FEATURE_LIMIT), FEATURE_LIMIT)))


def reference_features(problem: MoveProblem, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(u, 10) node and (u, k, 12) pair features, one loop per definition (improve_state's docstring)."""
    units, graph = problem.units, problem.graph
    u, k = problem.num_units, problem.num_devices
    placement = units.expand(assignment)
    result = problem.simulator.run(placement)
    T = result.step_time
    scale = u / T
    time = [[units.time[a, d] if units.allowed[a, d] else 0.0 for d in range(k)] for a in range(u)]
    memory = problem.cluster.memory
    capacity = [memory[d] if math.isfinite(memory[d]) else max(float(units.demand.sum()), 1.0) for d in range(k)]
    used = [sum(units.demand[a] for a in range(u) if assignment[a] == d) for d in range(k)]
    room = [problem.budget[d] - used[d] for d in range(k)]
    legal = legal_moves(problem, assignment)
    busy = list(result.busy_time)
    load = list(result.device_load if result.device_load is not None else busy)
    busiest = max(range(k), key=lambda d: (load[d], -d))
    on_path = {int(units.of_op[op]) for op in result.critical_path}
    comm = [[0.0] * k for _ in range(u)]
    neighbour_bytes = [[0.0] * k for _ in range(u)]
    for e in range(graph.num_edges):
        src, dst = int(graph.edge_src[e]), int(graph.edge_dst[e])
        a, b = int(units.of_op[src]), int(units.of_op[dst])
        if a == b:
            continue
        for d in range(k):  # the producer's unit on d, the consumer where it is; and the other way
            comm[a][d] += problem.costs.edge_time[e, d, placement[dst]]
            comm[b][d] += problem.costs.edge_time[e, placement[src], d]
        neighbour_bytes[a][placement[dst]] += graph.edge_bytes[e]
        neighbour_bytes[b][placement[src]] += graph.edge_bytes[e]
    nodes = np.zeros((u, 10))
    pairs = np.zeros((u, k, 12))
    for a in range(u):
        here = int(assignment[a])
        ops = np.flatnonzero(units.of_op == a)
        allowed = [units.time[a, d] for d in range(k) if units.allowed[a, d]]
        total_bytes = max(sum(neighbour_bytes[a]), 1.0)
        row = [
            min(result.op_start[ops]) / T,
            max(result.op_finish[ops]) / T,
            1.0 if a in on_path else 0.0,
            time[a][here] * scale,
            min(allowed) * scale,
            sum(allowed) / len(allowed) * scale,
            units.demand[a] / capacity[here],
            1.0 - neighbour_bytes[a][here] / total_bytes,
            comm[a][here] * scale,
            1.0 if here == busiest else 0.0,
        ]
        nodes[a] = [_feature(v) for v in row]
        for d in range(k):
            after = list(busy)
            if d != here:
                after[here] -= time[a][here]
                after[d] += time[a][d]
            row = [
                time[a][d] * scale,
                (time[a][d] - time[a][here]) * scale,
                comm[a][d] * scale,
                (comm[a][d] - comm[a][here]) * scale,
                neighbour_bytes[a][d] / total_bytes,
                1.0 if d == here else 0.0,
                1.0 if units.demand[a] <= room[d] else 0.0,
                min(max((room[d] - units.demand[a]) / capacity[d], -4.0), 4.0),
                load[d] / T,
                (load[d] + time[a][d]) / T,
                1.0 if legal[a, d] else 0.0,
                max(after) / T - 1.0,
            ]
            pairs[a, d] = [_feature(v) for v in row]
    return nodes, pairs


def _problem(objective: str, cluster: str, memory_bound: bool, seed: int) -> MoveProblem:
    graph = synthetic_graph("synthetic:layered:n=24", seed=seed, training=True)
    fleet = load_cluster(cluster)
    if memory_bound:  # no device holds the model: some moves do not fit
        fleet = memory_bound_cluster(fleet, graph, objective)
    built = CostTable.build(graph, fleet)
    # a different speed per (op, device) and per direction of each link, so no two views of a
    # transfer or a device can be confused for each other
    rng = np.random.default_rng(seed)
    k = fleet.num_devices
    asymmetric = built.edge_time * rng.uniform(0.5, 2.0, size=(graph.num_edges, k, k))
    costs = CostTable(op_time=built.op_time * rng.uniform(0.5, 2.0, size=built.op_time.shape), edge_time=asymmetric, time_unit=built.time_unit)
    return build_move_problem(graph, fleet, costs, objective=objective, microbatches=4 if objective == "pipelined" else 1)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 50),
    objective=st.sampled_from(["latency", "pipelined", "throughput"]),
    cluster=st.sampled_from(["2xA100+2xT4", "4xT4", "2x4xV100"]),
    memory_bound=st.booleans(),
    draw=st.integers(0, 2**31 - 1),
)
def test_observe_features_match_their_plain_definitions(seed: int, objective: str, cluster: str, memory_bound: bool, draw: int) -> None:
    problem = _problem(objective, cluster, memory_bound, seed)
    rng = np.random.default_rng(draw)
    allowed = problem.units.allowed
    assignment = np.array([rng.choice(np.flatnonzero(allowed[a])) for a in range(problem.num_units)], dtype=np.int64)
    obs = observe(problem, assignment)
    nodes, pairs = reference_features(problem, assignment)
    assert obs.nodes.dtype == np.float32 and obs.pairs.dtype == np.float32
    np.testing.assert_allclose(obs.nodes, nodes, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(obs.pairs, pairs, rtol=1e-6, atol=1e-7)


def test_communication_and_load_features_by_hand() -> None:
    """Two ops a -> b (8 bytes, 2 s on the link), 3 s and 1 s on either of two devices, a on d0
    and b on d1: T = 3 + 2 + 1 = 6 s, two units, so per-unit times scale by 2 / 6."""
    graph = OpGraph.build([{"name": "a"}, {"name": "b"}], [{"src": "a", "dst": "b", "bytes": 8.0}])
    devices = [Device(name, "custom", "accelerator", 1e12, 1e12, 1e12, 1e12) for name in ("d0", "d1")]
    cluster = Cluster.build("pair", devices, intra_host=(1e9, 0.0))
    costs = CostTable(op_time=np.array([[3.0, 3.0], [1.0, 1.0]]), edge_time=np.array([[[0.0, 2.0], [2.0, 0.0]]]), time_unit="s")
    problem = build_move_problem(graph, cluster, costs, objective="latency")
    obs = observe(problem, np.array([0, 1]))
    assert obs.step_time == pytest.approx(6.0)
    scale = 2 / 6
    a, b = (int(problem.units.of_op[op]) for op in (0, 1))
    # a's comm: on d0 its edge to b (on d1) costs 2 s, on d1 nothing; the same for b
    assert obs.pairs[a, :, 2] == pytest.approx([2 * scale, 0.0])
    assert obs.pairs[b, :, 3] == pytest.approx([-2 * scale, 0.0])
    assert obs.nodes[a, 8] == pytest.approx(2 * scale)
    # busy (3, 1): a to d1 gives (0, 4), max 4 s; b to d0 gives (4, 0)
    assert obs.pairs[a, 1, 11] == pytest.approx(4 / 6 - 1)
    assert obs.pairs[b, 0, 11] == pytest.approx(4 / 6 - 1)
    assert obs.pairs[a, 0, 11] == pytest.approx(3 / 6 - 1)
    assert obs.edge_attr[0, 1] == pytest.approx(2 / 6)
