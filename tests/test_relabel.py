"""The guided search's device-contents exchange (`relabel`) and the interchangeable devices it skips."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.agents.guided_search import _relabel_descent, distinct_device_pairs, guided_search
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable, interchangeable_devices
from rlplace.envs.improve_state import build_move_problem
from rlplace.graph import OpGraph
from rlplace.simulate import Simulator


def mixed_cluster() -> Cluster:
    """Devices 0, 1: fast (2 TFLOP/s) on host 0; 2, 3: slow (1 TFLOP/s) on host 0; 4: fast on host 1."""
    speeds_hosts = [(2e12, 0), (2e12, 0), (1e12, 0), (1e12, 0), (2e12, 1)]
    devices = [Device(f"d{i}", f"k{int(speed)}", "accelerator", speed, speed, 1e12, 1e12, host=host) for i, (speed, host) in enumerate(speeds_hosts)]
    return Cluster.build("mixed", devices, intra_host=(1e10, 0.0), inter_host=(1e9, 1e-5))


def chain(flops: list[float], edge_bytes: float = 1e6) -> OpGraph:
    ops = [{"name": f"o{i}", "flops": value, "output_bytes": edge_bytes} for i, value in enumerate(flops)]
    edges = [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": edge_bytes} for i in range(len(flops) - 1)]
    return OpGraph.build(ops, edges, name="chain")


def test_interchangeable_devices_group_equal_devices_with_equal_links() -> None:
    graph = chain([1e9, 2e9, 3e9])
    cluster = mixed_cluster()
    # device 4 is as fast as 0 and 1 but sits on the other host: exchanging it with 0 changes which links are slow
    assert interchangeable_devices(CostTable.build(graph, cluster), cluster) == [[0, 1], [2, 3], [4]]
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    pairs = distinct_device_pairs(problem)
    assert (0, 1) not in pairs and (2, 3) not in pairs
    assert len(pairs) == 10 - 2


def test_a_homogeneous_one_host_cluster_has_no_pair_to_exchange() -> None:
    devices = [Device(f"g{i}", "same", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(4)]
    cluster = Cluster.build("four", devices, intra_host=(1e10, 0.0), inter_host=(1e9, 0.0))
    graph = chain([1e9, 2e9])
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    assert distinct_device_pairs(problem) == []


@st.composite
def placements_on_the_mixed_cluster(draw: st.DrawFn) -> tuple[OpGraph, np.ndarray, int]:
    n = draw(st.integers(2, 7))
    ops = [{"name": f"o{i}", "flops": draw(st.floats(1e8, 1e10)), "output_bytes": draw(st.floats(0.0, 1e8))} for i in range(n)]
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    edges = [{"src": f"o{i}", "dst": f"o{j}", "bytes": ops[i]["output_bytes"]} for i, j in chosen]
    placement = np.array(draw(st.lists(st.integers(0, 4), min_size=n, max_size=n)), dtype=np.int64)
    return OpGraph.build(ops, edges), placement, draw(st.sampled_from([1, 3]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements_on_the_mixed_cluster())
def test_exchanging_two_interchangeable_devices_never_changes_the_simulated_step(case: tuple[OpGraph, np.ndarray, int]) -> None:
    graph, placement, microbatches = case
    cluster = mixed_cluster()
    costs = CostTable.build(graph, cluster)
    objective = "latency" if microbatches == 1 else "pipelined"
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches)
    step, overflow = simulator.score(placement)
    for group in interchangeable_devices(costs, cluster):
        for b in group[1:]:
            a = group[0]
            exchanged = placement.copy()
            exchanged[placement == a], exchanged[placement == b] = b, a
            other_step, other_overflow = simulator.score(exchanged)
            assert other_step == step and other_overflow == overflow


def test_the_exchange_moves_a_whole_stage_onto_the_fast_devices() -> None:
    """Heavy ops on the slow pair and light ones on the fast pair: exchanging the contents of
    a fast and a slow device is the first improvement found, and the result is exact."""
    graph = chain([8e9, 8e9, 1e8, 1e8], edge_bytes=0.0)
    cluster = mixed_cluster()
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    current = np.array([2, 2, 0, 0], dtype=np.int64)  # heavy on slow device 2, light on fast device 0
    current_key = problem.score(current)
    found = _relabel_descent(problem, current, current_key, distinct_device_pairs(problem), np.random.default_rng(0), problem.score, lambda: False)
    assert found is not None
    trial, key = found
    # exactly one device pair exchanged, and the heavy pair now runs at 2 TFLOP/s
    assert len(set(trial[:2].tolist())) == 1 and len(set(trial[2:].tolist())) == 1
    assert cluster.devices[int(trial[0])].fp32_flops == 2e12
    assert key < current_key and key == problem.score(trial)


def test_with_relabel_the_search_never_ends_worse_and_it_costs_nothing_without_pairs() -> None:
    graph = chain([8e9, 8e9, 1e8, 1e8, 4e9], edge_bytes=1e6)
    cluster = mixed_cluster()
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="pipelined", microbatches=2)
    start = np.array([2, 3, 0, 1, 4], dtype=np.int64)
    for relabel in (False, True):
        best, key, stats = guided_search(problem, [start], None, evaluations=300, relabel=relabel, seed=3)
        assert key <= problem.score(start) and key == problem.score(best)
        assert stats.simulations <= 300 + 1
