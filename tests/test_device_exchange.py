"""Device exchanges: `rlplace.costs.interchangeable_devices` (the groups the max-load program's
symmetry cuts and the guided search's final polish rely on) and the polish itself."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.agents.guided_search import _exchange_descent, distinct_device_pairs, guided_search
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable, interchangeable_devices
from rlplace.envs.improve_state import build_move_problem
from rlplace.graph import OpGraph
from rlplace.rules import cutoff_for
from rlplace.simulate import Simulator


def mixed_cluster() -> Cluster:
    """Devices 0, 1: fast (2 TFLOP/s) on host 0; 2, 3: slow (1 TFLOP/s) on host 0; 4: fast on host 1."""
    speeds_hosts = [(2e12, 0), (2e12, 0), (1e12, 0), (1e12, 0), (2e12, 1)]
    devices = [Device(f"d{i}", f"k{int(speed)}", "accelerator", speed, speed, 1e12, 1e12, host=host) for i, (speed, host) in enumerate(speeds_hosts)]
    return Cluster.build("mixed", devices, intra_host=(1e10, 0.0), inter_host=(1e9, 1e-5))


def test_equal_devices_with_equal_links_form_a_group() -> None:
    ops = [{"name": f"o{i}", "flops": 1e9 * (i + 1), "output_bytes": 1e6} for i in range(3)]
    graph = OpGraph.build(ops, [{"src": "o0", "dst": "o1", "bytes": 1e6}, {"src": "o1", "dst": "o2", "bytes": 1e6}])
    cluster = mixed_cluster()
    # device 4 is as fast as 0 and 1 but on the other host: exchanging it with 0 changes which links are slow
    assert interchangeable_devices(CostTable.build(graph, cluster), cluster) == [[0, 1], [2, 3], [4]]


def test_devices_whose_fixed_op_parts_differ_are_not_interchangeable() -> None:
    """Equal op times, but device 1's include a fixed part, which a pipeline pays once per
    micro-batch: its step at M > 1 differs, so 0 and 1 no longer form a group."""
    ops = [{"name": f"o{i}", "flops": 1e9 * (i + 1), "output_bytes": 1e6} for i in range(3)]
    graph = OpGraph.build(ops, [{"src": "o0", "dst": "o1", "bytes": 1e6}, {"src": "o1", "dst": "o2", "bytes": 1e6}])
    cluster = mixed_cluster()
    costs = CostTable.build(graph, cluster)
    op_fixed = np.zeros_like(costs.op_time)
    op_fixed[:, 1] = 0.5 * costs.op_time[:, 1]
    fixed = costs.with_op_times(costs.op_time, op_fixed)
    assert interchangeable_devices(fixed, cluster) == [[0], [1], [2, 3], [4]]
    simulator = Simulator(graph, cluster, fixed, objective="pipelined", microbatches=4)
    assert simulator.step_time(np.zeros(3, np.int64)) != simulator.step_time(np.ones(3, np.int64))


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
    """The docstring's claim beyond the max-load model: the event simulator (latency and a
    3-micro-batch pipeline) gives the same step time and overflow after the exchange."""
    graph, placement, microbatches = case
    cluster = mixed_cluster()
    costs = CostTable.build(graph, cluster)
    objective = "latency" if microbatches == 1 else "pipelined"
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches)
    step, overflow = simulator.score(placement)
    for group in interchangeable_devices(costs, cluster):
        a = group[0]
        for b in group[1:]:
            exchanged = placement.copy()
            exchanged[placement == a], exchanged[placement == b] = b, a
            assert simulator.score(exchanged) == (step, overflow)


def chain(flops: list[float], edge_bytes: float) -> OpGraph:
    ops = [{"name": f"o{i}", "flops": value, "output_bytes": edge_bytes} for i, value in enumerate(flops)]
    edges = [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": edge_bytes} for i in range(len(flops) - 1)]
    return OpGraph.build(ops, edges, name="chain")


def test_only_pairs_that_can_differ_are_exchanged() -> None:
    graph = chain([1e9, 2e9], 1e6)
    mixed = build_move_problem(graph, mixed_cluster(), CostTable.build(graph, mixed_cluster()), objective="latency")
    pairs = distinct_device_pairs(mixed)
    assert (0, 1) not in pairs and (2, 3) not in pairs and len(pairs) == 10 - 2
    devices = [Device(f"g{i}", "same", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(4)]
    homogeneous = Cluster.build("four", devices, intra_host=(1e10, 0.0), inter_host=(1e9, 0.0))
    assert distinct_device_pairs(build_move_problem(graph, homogeneous, CostTable.build(graph, homogeneous), objective="latency")) == []


def test_the_exchange_moves_a_heavy_stage_onto_a_fast_device() -> None:
    """Heavy ops on slow device 2, light ones on fast device 0, no transfer cost: the first
    improving exchange swaps a fast and a slow device's contents, and its key is exact."""
    graph = chain([8e9, 8e9, 1e8, 1e8], 0.0)
    cluster = mixed_cluster()
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    current = np.array([2, 2, 0, 0], dtype=np.int64)
    pairs = distinct_device_pairs(problem)
    found = _exchange_descent(problem, current, problem.score(current), pairs, np.random.default_rng(0), lambda trial, against: problem.score(trial, cutoff=cutoff_for(against)))
    assert found is not None
    trial, key = found
    assert trial[0] == trial[1] and cluster.devices[int(trial[0])].fp32_flops == 2e12
    assert trial[2] == trial[3] != trial[0]
    # heavy pair: 16 GFLOP at 2 TFLOP/s instead of 1 TFLOP/s, so the step time falls by about 8 ms
    assert key == problem.score(trial) and key[1] < problem.score(current)[1] - 7e-3


def test_the_polish_only_improves_the_searchs_answer_and_costs_nothing_without_pairs() -> None:
    graph = chain([8e9, 8e9, 1e8, 1e8, 4e9, 2e9], 1e6)
    start = np.array([2, 3, 0, 1, 4, 2], dtype=np.int64)
    cluster = mixed_cluster()
    problem = build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective="pipelined", microbatches=2)
    plain = guided_search(problem, [start], None, evaluations=10, polish=False, seed=0)
    polished = guided_search(problem, [start], None, evaluations=10, polish=True, seed=0)
    # the same search until the budget is spent, then exchanges that each score better
    assert polished[1] < plain[1] and polished[1] == problem.score(polished[0])
    assert polished[2].moves_taken > plain[2].moves_taken
    assert polished[2].simulations - plain[2].simulations <= 3 * len(distinct_device_pairs(problem))
    devices = [Device(f"g{i}", "same", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(4)]
    homogeneous = Cluster.build("four", devices, intra_host=(1e10, 0.0), inter_host=(1e9, 0.0))
    problem = build_move_problem(graph, homogeneous, CostTable.build(graph, homogeneous), objective="latency")
    start = start % 4
    plain = guided_search(problem, [start], None, evaluations=40, polish=False, seed=1)
    polished = guided_search(problem, [start], None, evaluations=40, polish=True, seed=1)
    assert polished[2].simulations == plain[2].simulations and np.array_equal(polished[0], plain[0])
