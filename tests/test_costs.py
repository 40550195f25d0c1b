"""The cost model: roofline op times, transfer times, given times, grouped tables."""

from __future__ import annotations

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.costs import BANDWIDTH_EFFICIENCY, COMPUTE_EFFICIENCY, LAUNCH_OVERHEAD_S, CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph


def two_devices() -> Cluster:
    """gpu0: 10 TFLOP/s fp32, 100 TFLOP/s fp16, 1 TB/s; gpu1 half as fast; link 10 GB/s, 10 us."""
    devices = [
        Device("gpu0", "custom", "accelerator", 10e12, 100e12, 16e9, 1e12),
        Device("gpu1", "custom", "accelerator", 5e12, 50e12, 16e9, 0.5e12),
    ]
    return Cluster.build("pair", devices, intra_host=(10e9, 10e-6))


def test_roofline_compute_bound_memory_bound_and_free_ops() -> None:
    graph = OpGraph.build(
        [
            {"name": "gemm", "kind": "matmul", "flops": 7e9, "bytes_accessed": 1e6},
            {"name": "add", "kind": "elementwise", "flops": 0.0, "bytes_accessed": 8e8},
            {"name": "view", "kind": "view", "flops": 0.0, "bytes_accessed": 1e9},
        ],
        [{"src": "gemm", "dst": "add", "bytes": 1e8}, {"src": "add", "dst": "view", "bytes": 0.0}],
    )
    costs = CostTable.build(graph, two_devices())
    overhead = LAUNCH_OVERHEAD_S["accelerator"]
    # 7 GFLOP at 10 TFLOP/s x 0.70 efficiency = 1 ms; the 1 MB it touches is negligible.
    assert costs.op_time[0, 0] == pytest.approx(7e9 / (10e12 * COMPUTE_EFFICIENCY["matmul"]) + overhead)
    assert costs.op_time[0, 1] == pytest.approx(2e-3 + overhead)
    # 800 MB at 1 TB/s x 0.8 = 1 ms.
    assert costs.op_time[1, 0] == pytest.approx(8e8 / (1e12 * BANDWIDTH_EFFICIENCY) + overhead)
    assert costs.op_time[2].tolist() == [0.0, 0.0]
    # 100 MB over 10 GB/s + 10 us; nothing within a device.
    assert costs.edge_time[0, 0, 1] == pytest.approx(10e-6 + 1e8 / 10e9)
    assert costs.edge_time[0, 0, 0] == 0.0 and costs.edge_time[0, 1, 1] == 0.0
    assert costs.edge_time[1, 1, 0] == pytest.approx(10e-6)


def test_fp16_graph_uses_tensor_core_peak() -> None:
    graph = OpGraph.build([{"name": "gemm", "kind": "matmul", "flops": 7e10}], [], meta={"precision": "bf16"})
    costs = CostTable.build(graph, two_devices())
    assert costs.op_time[0, 0] == pytest.approx(7e10 / (100e12 * 0.70) + LAUNCH_OVERHEAD_S["accelerator"])


def test_given_times_pick_the_device_category_column() -> None:
    graph = OpGraph.build(
        [{"name": "a", "times": {"accelerator": 2.0, "cpu": 9.0}}, {"name": "b", "times": {"accelerator": 3.0, "cpu": 4.0}}],
        [{"src": "a", "dst": "b", "bytes": 5.0, "time": 0.5}],
        time_classes=("accelerator", "cpu"),
        time_unit="unit",
    )
    devices = [Device("acc0", "custom", "accelerator", 1, 1, 1e9, 1), Device("cpu0", "custom", "cpu", 1, 1, np.inf, 1)]
    costs = CostTable.build(graph, Cluster.build("m", devices, intra_host=(1.0, 0.0)))
    assert costs.op_time.tolist() == [[2.0, 9.0], [3.0, 4.0]]
    assert costs.edge_time[0].tolist() == [[0.0, 0.5], [0.5, 0.0]]
    assert costs.time_unit == "unit"


def test_given_times_without_a_column_for_a_device_is_an_error() -> None:
    graph = OpGraph.build([{"name": "a", "times": {"accelerator": 1.0}}], [], time_classes=("accelerator",))
    devices = [Device("cpu0", "custom", "cpu", 1, 1, 1e9, 1)]
    with pytest.raises(RlplaceError, match="cpu0"):
        CostTable.build(graph, Cluster.build("c", devices, intra_host=(1.0, 0.0)))


def test_grouped_costs_sum_member_times() -> None:
    from rlplace.cluster_spec import load_cluster
    from rlplace.coarsen import coarsen
    from rlplace.costs import CostTable
    from rlplace.synthetic import synthetic_graph

    graph = synthetic_graph("synthetic:layered:n=120:seed=1", training=True)
    cluster = load_cluster("2xA100+2xT4")
    coarsening = coarsen(graph, 16)
    fine = CostTable.build(graph, cluster)
    grouped = CostTable.grouped(fine, coarsening.group_of, coarsening.graph, cluster)
    assert grouped.op_time.shape == (coarsening.graph.num_ops, 4)
    group = int(coarsening.group_of[0])
    members = coarsening.group_of == group
    assert grouped.op_time[group] == pytest.approx(fine.op_time[members].sum(axis=0), rel=1e-12)
    assert grouped.op_time.sum() == pytest.approx(fine.op_time.sum(), rel=1e-12)
