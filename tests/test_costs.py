"""The cost model: roofline op times, transfer times, given times, grouped tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.baselines.summaries import mean_edge_time
from rlplace.cli import main
from rlplace.cluster import Cluster, Device
from rlplace.cluster_spec import load_cluster
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


# ------------------------------------------------------------- edge times by link class
def dense_edge_times(graph: OpGraph, cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """The dense (m, k, k) formula the factored table replaced: times and fixed parts."""
    k = cluster.num_devices
    off_diagonal = ~np.eye(k, dtype=bool)
    if graph.edge_given_time is not None:
        times = graph.edge_given_time[:, None, None] * off_diagonal[None, :, :]
        return times, np.zeros_like(times)
    with np.errstate(divide="ignore"):
        inverse_bandwidth = np.where(off_diagonal, 1.0 / cluster.bandwidth, 0.0)
    fixed = np.broadcast_to(cluster.latency[None, :, :] * off_diagonal[None], (graph.num_edges, k, k)).astype(np.float64)
    return fixed + graph.edge_bytes[:, None, None] * inverse_bandwidth[None], fixed


LINKS = st.tuples(st.sampled_from([1e9, 12.5e9, 150e9, 3e8]), st.sampled_from([0.0, 1e-6, 5e-6, 2e-5]))


@st.composite
def graph_and_cluster(draw: st.DrawFn) -> tuple[OpGraph, Cluster]:
    """Mixed CPU/accelerator devices on 1-3 hosts, per-pair link overrides, maybe given edge times."""
    k = draw(st.integers(1, 7))
    hosts = draw(st.lists(st.integers(0, 2), min_size=k, max_size=k))
    cpu = draw(st.lists(st.booleans(), min_size=k, max_size=k))
    devices = [
        Device(f"d{i}", "custom", "cpu" if cpu[i] else "accelerator", 1e12, 2e12, 16e9, 1e11, host=hosts[i]) for i in range(k)
    ]
    names = [d.name for d in devices]
    pairs = st.tuples(st.sampled_from(names), st.sampled_from(names)).filter(lambda p: p[0] != p[1]) if k > 1 else st.nothing()
    links = draw(st.dictionaries(pairs, LINKS, max_size=6)) if k > 1 else {}
    cluster = Cluster.build("random", devices, intra_host=draw(LINKS), inter_host=draw(LINKS), links=links)
    m = draw(st.integers(0, 6))
    sizes = draw(st.lists(st.sampled_from([0.0, 1.0, 4e3, 1e6, 3.3e7]), min_size=m, max_size=m))
    ops = [{"name": f"o{i}", "kind": "matmul", "flops": 1e6, "bytes_accessed": 1e3} for i in range(m + 1)]
    edges = [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": sizes[i]} for i in range(m)]
    if draw(st.booleans()):
        for edge, time in zip(edges, draw(st.lists(st.sampled_from([0.0, 0.5, 2.0, 1e-4]), min_size=m, max_size=m)), strict=True):
            edge["time"] = time
        for op in ops:
            op["times"] = {"accelerator": 1.0, "cpu": 2.0}
    return OpGraph.build(ops, edges), cluster


@settings(max_examples=120, deadline=None)
@given(graph_and_cluster())
def test_link_classes_give_exactly_the_dense_edge_times(case: tuple[OpGraph, Cluster]) -> None:
    graph, cluster = case
    costs = CostTable.build(graph, cluster)
    times, fixed = dense_edge_times(graph, cluster)
    k, m = cluster.num_devices, graph.num_edges
    assert costs.link_class.shape == (k, k) and costs.edge_class_time.shape == costs.edge_class_fixed.shape == (m, costs.num_classes)
    assert np.all(np.diagonal(costs.link_class) == 0) and not np.any(costs.edge_class_time[:, 0])
    # at most one class per distinct off-diagonal (latency, bandwidth), plus "same device"
    distinct = {(cluster.latency[a, b], cluster.bandwidth[a, b]) for a in range(k) for b in range(k) if a != b}
    assert costs.num_classes <= len(distinct) + 1
    np.testing.assert_array_equal(costs.edge_class_time[:, costs.link_class], times)  # bit for bit
    np.testing.assert_array_equal(costs.edge_class_fixed[:, costs.link_class], fixed)
    np.testing.assert_array_equal(costs.edge_time, times)
    np.testing.assert_array_equal(costs.edge_fixed, fixed)
    assert not costs.edge_time.flags.writeable and costs.edge_time is costs.edge_time
    # sums over pairs = sums over classes weighted by pair counts
    if k > 1:
        np.testing.assert_allclose(mean_edge_time(costs), times.sum(axis=(1, 2)) / (k * (k - 1)), rtol=1e-12)
    # a dense table given to the constructor factors back to the same times
    again = CostTable(costs.op_time, times, "s", edge_fixed=fixed)
    np.testing.assert_array_equal(again.edge_time, times)
    np.testing.assert_array_equal(again.edge_fixed, fixed)
    assert again.num_classes <= costs.num_classes


def test_link_classes_of_a_two_host_cluster_with_one_override() -> None:
    """Hand-built: 4 devices on 2 hosts; d0 -> d1 overridden: classes 0 (same), intra, inter, override."""
    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 2e12, 16e9, 1e11, host=i // 2) for i in range(4)]
    cluster = Cluster.build("two-hosts", devices, intra_host=(100e9, 1e-6), inter_host=(10e9, 1e-5), links={("d0", "d1"): (50e9, 2e-6)})
    graph = OpGraph.build([{"name": "a", "kind": "matmul", "flops": 1.0}, {"name": "b", "kind": "matmul", "flops": 1.0}], [{"src": "a", "dst": "b", "bytes": 1e9}])
    costs = CostTable.build(graph, cluster)
    assert costs.num_classes == 4
    c = costs.link_class
    assert c[0, 1] == c[1, 0] != c[2, 3] and c[0, 2] == c[3, 1] and len({c[0, 1], c[2, 3], c[0, 2], 0}) == 4
    assert costs.edge_time[0, 0, 1] == pytest.approx(2e-6 + 1e9 / 50e9)
    assert costs.edge_time[0, 2, 3] == pytest.approx(1e-6 + 1e9 / 100e9)
    assert costs.edge_time[0, 1, 3] == pytest.approx(1e-5 + 1e9 / 10e9)
    assert costs.edge_fixed[0, 1, 3] == 1e-5


def thousand_device_yaml(path: Path, hosts: int = 125, per_host: int = 8) -> Path:
    lines = ["name: big", "devices:"]
    lines += [f"  - {{name: g{h * per_host + i}, kind: V100-32GB, host: {h}}}" for h in range(hosts) for i in range(per_host)]
    lines += ["interconnect:", "  intra_host: {bandwidth: 150GB/s, latency: 5us}", "  inter_host: {bandwidth: 12.5GB/s, latency: 20us}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def chain_graph(path: Path, num_ops: int) -> Path:
    ops = [{"name": f"o{i}", "kind": "matmul", "flops": 1e9, "bytes_accessed": 1e6, "output_bytes": 1e6, "param_bytes": 4e6} for i in range(num_ops)]
    edges = [{"src": f"o{i}", "dst": f"o{i + 1}", "bytes": 1e6} for i in range(num_ops - 1)]
    OpGraph.build(ops, edges, name="chain").save(path)
    return path


def test_a_thousand_device_cluster_costs_memory_in_proportion_to_links_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cluster_file = thousand_device_yaml(tmp_path / "big.yaml")
    graph_file = chain_graph(tmp_path / "g.json", 600)
    cluster = load_cluster(str(cluster_file))
    graph = OpGraph.load(graph_file)
    assert cluster.num_devices == 1000
    costs = CostTable.build(graph, cluster)
    m, k = graph.num_edges, cluster.num_devices
    assert costs.num_classes == 3  # same device, inside a host, between hosts
    # O(m * L + k^2): op times (n, k) x 2, edge classes (m, L) x 2, link classes (k, k)
    assert costs.nbytes() <= 8 * (2 * graph.num_ops * k + 2 * m * costs.num_classes + k * k)
    assert costs.nbytes() < 20e6  # the dense (m, k, k) table alone would be 599 x 1000^2 x 8 B = 4.8 GB
    # the dense table is refused with the limit's name, not allocated
    with pytest.raises(RlplaceError, match="MAX_DENSE_EDGE_TABLE_BYTES"):
        _ = costs.edge_time
    placement = tmp_path / "p.json"
    placement.write_text(json.dumps([i // 100 * 97 for i in range(600)]))
    assert main(["simulate", str(graph_file), "--placement", str(placement), "--cluster", str(cluster_file), "--json"]) == 0
    simulated = json.loads(capsys.readouterr().out)
    assert simulated["step_time"] > 0
    assert main(["place", str(graph_file), "--cluster", str(cluster_file), "--method", "m-topo", "--json"]) == 0
    placed = json.loads(capsys.readouterr().out)
    assert len(placed["placement"]) == 600 and max(placed["placement"]) < 1000


def test_factored_edge_table_past_its_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-pair overrides on every link make one class per pair; the (m, L) table is capped by name."""
    import rlplace.limits

    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 2e12, 16e9, 1e11) for i in range(3)]
    links = {(f"d{a}", f"d{b}"): (1e9 * (1 + a * 3 + b), 1e-6) for a in range(3) for b in range(3) if a != b}
    cluster = Cluster.build("all-distinct", devices, intra_host=(1e9, 1e-6), links=links)
    graph = OpGraph.build([{"name": "a", "kind": "matmul", "flops": 1.0}, {"name": "b", "kind": "matmul", "flops": 1.0}], [{"src": "a", "dst": "b", "bytes": 1e6}])
    assert CostTable.build(graph, cluster).num_classes == 7  # 6 links + same device
    monkeypatch.setattr(rlplace.limits, "MAX_EDGE_TABLE_BYTES", 6 * 8)
    with pytest.raises(RlplaceError, match="MAX_EDGE_TABLE_BYTES"):
        CostTable.build(graph, cluster)
