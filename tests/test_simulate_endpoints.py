"""Messages that cost their endpoints compute (``cluster.meta[MESSAGE_CPU_META_KEY]``):
hand-computed schedules on tiny graphs, and bit-identical results when the cost is 0."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.costs import MESSAGE_CPU_META_KEY, CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.simulate import Simulator, endpoint_time, simulate


def cluster_of(k: int, message_cpu: float | None = None) -> Cluster:
    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(k)]
    cluster = Cluster.build("test", devices, intra_host=(1e9, 0.0))
    if message_cpu is None:
        return cluster
    return dataclasses.replace(cluster, meta=dict(cluster.meta) | {MESSAGE_CPU_META_KEY: message_cpu})


def graph_of(times: Mapping[str, float], edges: Sequence[tuple[str, str, float]]) -> OpGraph:
    ops = [{"name": name, "times": {"accelerator": t}} for name, t in times.items()]
    return OpGraph.build(ops, [{"src": s, "dst": d, "bytes": 0.0, "time": t} for s, d, t in edges], time_classes=("accelerator",))


def place(graph: OpGraph, where: Mapping[str, int]) -> np.ndarray:
    return np.array([where[name] for name in graph.names], dtype=np.int64)


def run(graph: OpGraph, cluster: Cluster, where: Mapping[str, int], **kwargs: object):
    return simulate(graph, cluster, CostTable.build(graph, cluster), place(graph, where), **kwargs)


def test_a_message_costs_its_sender_and_its_receiver():
    graph = graph_of({"a": 1.0, "b": 2.0}, [("a", "b", 0.5)])
    result = run(graph, cluster_of(2, 0.125), {"a": 0, "b": 1}, record=True)
    # a [0, 1.125] on d0; transfer [1.125, 1.625]; b [1.625, 3.75] on d1
    assert result.step_time == 3.75
    assert list(result.op_start) == [0.0, 1.625]
    assert list(result.busy_time) == [1.125, 2.125]
    assert list(result.transfers.start) == [1.125]


def test_no_message_no_cost():
    graph = graph_of({"a": 1.0, "b": 2.0}, [("a", "b", 0.5)])
    assert run(graph, cluster_of(2, 0.125), {"a": 1, "b": 1}).step_time == 3.0


def test_one_transfer_to_two_consumers_costs_the_first_consumer_only():
    graph = graph_of({"a": 1.0, "b": 0.5, "c": 0.5}, [("a", "b", 1.0), ("a", "c", 1.0)])
    result = run(graph, cluster_of(2, 0.25), {"a": 0, "b": 1, "c": 1}, record=True)
    # a [0, 1.25]; one transfer [1.25, 2.25]; b (lowest id) [2.25, 3.0]; c [3.0, 3.5]
    assert result.step_time == 3.5
    assert list(result.op_duration) == [1.25, 0.75, 0.5]
    assert result.transfers.num_transfers == 1


def test_a_sender_pays_once_per_remote_device():
    graph = graph_of({"a": 1.0, "b": 1.0, "c": 1.0}, [("a", "b", 0.5), ("a", "c", 0.5)])
    extra = endpoint_time(graph.edge_src, graph.edge_dst, place(graph, {"a": 0, "b": 1, "c": 2}), 3, 3, 0.25)
    assert list(extra) == [0.5, 0.25, 0.25]
    # a [0, 1.5]; both transfers [1.5, 2]; b and c [2, 3.25]
    assert run(graph, cluster_of(3, 0.25), {"a": 0, "b": 1, "c": 2}).step_time == 3.25


def test_every_microbatch_pays_the_endpoint_cost_in_full():
    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 0.5)])
    result = run(graph, cluster_of(2, 0.125), {"a": 0, "b": 1}, objective="pipelined", microbatches=2)
    # per micro-batch: a 0.5 + 0.125, transfer 0.25, b 0.5 + 0.125
    # a0 [0, 0.625], a1 [0.625, 1.25]; x0 [0.625, 0.875], x1 [1.25, 1.5]; b0 [0.875, 1.5], b1 [1.5, 2.125]
    assert result.step_time == pytest.approx(2.125, abs=1e-12)


def test_throughput_ignores_the_endpoint_cost():
    graph = graph_of({"a": 1.0, "b": 2.0}, [("a", "b", 0.5)])
    where = {"a": 0, "b": 1}
    assert run(graph, cluster_of(2, 0.125), where, objective="throughput").step_time == run(graph, cluster_of(2), where, objective="throughput").step_time


@pytest.mark.parametrize("seed", range(12))
def test_zero_cost_gives_bit_identical_results(seed: int):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(2, 12)), int(rng.integers(1, 4))
    ops = [{"name": f"o{i}", "is_backward": bool(rng.random() < 0.3), "output_bytes": float(rng.integers(1, 100))} for i in range(n)]
    edges = [(s, d) for s in range(n) for d in range(s + 1, n) if rng.random() < 0.35]
    graph = OpGraph.build(ops, [{"src": f"o{s}", "dst": f"o{d}", "bytes": 8.0} for s, d in edges])
    costs = CostTable(op_time=rng.uniform(0.1, 2.0, size=(n, k)), edge_time=rng.uniform(0.0, 1.0, size=(len(edges), k, k)), time_unit="s")
    placement = rng.integers(0, k, size=n).astype(np.int64)
    for objective, microbatches in (("latency", 1), ("pipelined", 3)):
        plain = Simulator(graph, cluster_of(k), costs, objective=objective, microbatches=microbatches)
        zero = Simulator(graph, cluster_of(k, 0.0), costs, objective=objective, microbatches=microbatches)
        a, b = plain.run(placement, record=True), zero.run(placement, record=True)
        assert a.step_time == b.step_time and plain.step_time(placement) == zero.step_time(placement)
        np.testing.assert_array_equal(a.op_start, b.op_start)
        np.testing.assert_array_equal(a.busy_time, b.busy_time)
        np.testing.assert_array_equal(a.peak_memory, b.peak_memory)


def test_positive_cost_never_shortens_a_step():
    rng = np.random.default_rng(7)
    for _ in range(20):
        n, k = int(rng.integers(2, 10)), 2
        edges = [(s, d) for s in range(n) for d in range(s + 1, n) if rng.random() < 0.4]
        graph = OpGraph.build([{"name": f"o{i}"} for i in range(n)], [{"src": f"o{s}", "dst": f"o{d}", "bytes": 8.0} for s, d in edges])
        costs = CostTable(op_time=rng.uniform(0.1, 2.0, size=(n, k)), edge_time=rng.uniform(0.0, 1.0, size=(len(edges), k, k)), time_unit="s")
        placement = rng.integers(0, k, size=n).astype(np.int64)
        base = simulate(graph, cluster_of(k), costs, placement)
        charged = simulate(graph, cluster_of(k, 0.2), costs, placement)
        extra = endpoint_time(graph.edge_src, graph.edge_dst, placement, n, k, 0.2)
        np.testing.assert_allclose(charged.busy_time, base.busy_time + np.bincount(placement, weights=extra, minlength=k))
        assert charged.step_time >= base.step_time - 1e-12


@pytest.mark.parametrize("bad", [-1e-3, float("nan"), "x"])
def test_a_bad_cost_is_a_clear_error(bad: object):
    graph = graph_of({"a": 1.0, "b": 2.0}, [("a", "b", 0.5)])
    with pytest.raises(RlplaceError, match=MESSAGE_CPU_META_KEY):
        run(graph, cluster_of(2, bad), {"a": 0, "b": 1})  # type: ignore[arg-type]
