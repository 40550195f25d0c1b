"""`rlplace.costs.interchangeable_devices`: the device groups the max-load program's symmetry cuts rely on."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable, interchangeable_devices
from rlplace.graph import OpGraph
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
