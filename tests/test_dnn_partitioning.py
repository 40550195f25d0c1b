"""Tests of the dnn-partitioning importer, expert splits and graph-file dispatch."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from rlplace.errors import RlplaceError
from rlplace.formats import (
    is_expert_spec,
    load_dnn_partitioning,
    load_expert_placement,
    load_graph_file,
    load_placement_spec,
)
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.graph import OpGraph

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "graphs").is_dir(), reason=f"shared data absent at {DATA}")

#: graph, expert file, README human-expert max-load (training graphs without a split use the inference one).
EXPERT_CASES = [
    ("bert24_inference", "bert24_inference", 20.084),
    ("bert24_training", "bert24_training", 49.4049),
    ("resnet50_inference", "resnet50_inference", 43.9183),
    ("resnet50_training", "resnet50_inference", 112.108),
]


def tiny_file(**overrides: object) -> dict:
    """a -> b -> c plus a -> c; b is CPU-only; c is a backward node colocated with a."""
    data = {
        "maxSizePerFPGA": 100.0,
        "maxFPGAs": 2,
        "maxCPUs": 1,
        "nodes": [
            {"id": 7, "name": "embed", "supportedOnFpga": 1, "cpuLatency": 4.0, "fpgaLatency": 1.0, "isBackwardNode": 0, "colorClass": 1, "size": 30.0},
            {"id": 3, "supportedOnFpga": 0, "cpuLatency": 2.5, "fpgaLatency": 0.0, "isBackwardNode": 0, "colorClass": 2, "size": 10.0},
            {"id": 5, "supportedOnFpga": True, "cpuLatency": 6.0, "fpgaLatency": 2.0, "isBackwardNode": 1, "colorClass": 1},
        ],
        "edges": [
            {"sourceId": 7, "destId": 3, "cost": 0.5, "size": 64.0},
            {"sourceId": 3, "destId": 5, "cost": 0.25},
            {"sourceId": 7, "destId": 5, "cost": 0.5, "size": 64.0},
        ],
    }
    data.update(overrides)
    return data


def write(tmp_path: Path, data: object, name: str = "tiny.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_tiny_file_maps_every_field(tmp_path: Path) -> None:
    problem = load_dnn_partitioning(write(tmp_path, tiny_file()))
    graph, cluster = problem.graph, problem.cluster
    assert graph.names == ("7", "3", "5")
    assert dict(problem.node_ids) == {7: 0, 3: 1, 5: 2}
    assert graph.time_classes == ("accelerator", "cpu")
    assert graph.time_unit == "unit"
    np.testing.assert_array_equal(graph.given_times, [[1.0, 4.0], [math.inf, 2.5], [2.0, 6.0]])
    np.testing.assert_array_equal(graph.resident_bytes, [30.0, 10.0, 0.0])
    np.testing.assert_array_equal(graph.param_bytes, [30.0, 10.0, 0.0])
    np.testing.assert_array_equal(graph.output_bytes, [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(graph.is_backward, [False, False, True])
    assert graph.coloc[0] == graph.coloc[2] != graph.coloc[1]
    assert list(zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 2)]
    np.testing.assert_array_equal(graph.edge_given_time, [0.5, 0.5, 0.25])
    np.testing.assert_array_equal(graph.edge_bytes, [64.0, 64.0, 0.0])
    assert graph.meta["format"] == "dnn-partitioning"
    assert graph.meta["source"].endswith("tiny.json")
    assert graph.meta["debug_names"] == {"7": "embed"}
    assert cluster.device_names == ["acc0", "acc1", "cpu0"]
    assert [d.category for d in cluster.devices] == ["accelerator", "accelerator", "cpu"]
    np.testing.assert_array_equal(cluster.memory, [100.0, 100.0, math.inf])


def test_cost_table_uses_the_given_times(tmp_path: Path) -> None:
    from rlplace.costs import CostTable

    problem = load_dnn_partitioning(write(tmp_path, tiny_file()))
    costs = CostTable.build(problem.graph, problem.cluster)
    np.testing.assert_array_equal(costs.op_time, [[1.0, 1.0, 4.0], [math.inf, math.inf, 2.5], [2.0, 2.0, 6.0]])
    assert costs.edge_time[2, 0, 2] == 0.25 and costs.edge_time[2, 1, 1] == 0.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"maxFPGAs": None}, "maxFPGAs"),
        ({"maxFPGAs": 0}, "maxFPGAs"),
        ({"maxSizePerFPGA": -1.0}, "maxSizePerFPGA must be positive"),
        ({"nodes": "x"}, "must be JSON lists"),
    ],
)
def test_bad_top_level_fields(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(RlplaceError, match=message):
        load_dnn_partitioning(write(tmp_path, tiny_file(**change)))


def test_missing_field_is_named(tmp_path: Path) -> None:
    data = tiny_file()
    del data["maxCPUs"]
    with pytest.raises(RlplaceError, match="lacks field 'maxCPUs'"):
        load_dnn_partitioning(write(tmp_path, data))


def test_node_errors_name_the_node(tmp_path: Path) -> None:
    data = tiny_file()
    data["nodes"][0]["cpuLatency"] = -1.0
    with pytest.raises(RlplaceError, match="'7'"):
        load_dnn_partitioning(write(tmp_path, data))
    data = tiny_file()
    data["nodes"][1]["fpgaLatency"] = "slow"
    data["nodes"][1]["supportedOnFpga"] = 1
    with pytest.raises(RlplaceError, match="node 3 fpgaLatency"):
        load_dnn_partitioning(write(tmp_path, data))


def test_differing_costs_out_of_one_node_are_rejected(tmp_path: Path) -> None:
    data = tiny_file()
    data["edges"][2]["cost"] = 0.75
    with pytest.raises(RlplaceError, match="edges leaving node 7 have different costs"):
        load_dnn_partitioning(write(tmp_path, data))


def test_dangling_edge_and_cycle_are_rejected(tmp_path: Path) -> None:
    data = tiny_file()
    data["edges"].append({"sourceId": 5, "destId": 99, "cost": 0.25})
    with pytest.raises(RlplaceError, match="'99'"):
        load_dnn_partitioning(write(tmp_path, data))
    data = tiny_file()
    data["edges"].append({"sourceId": 5, "destId": 7, "cost": 0.25})
    with pytest.raises(RlplaceError, match="cycle"):
        load_dnn_partitioning(write(tmp_path, data))


def test_cpu_only_node_without_cpu_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(RlplaceError, match="node 3 is not supported on an accelerator and maxCPUs is 0"):
        load_dnn_partitioning(write(tmp_path, tiny_file(maxCPUs=0)))


def test_load_graph_file_tells_formats_apart(tmp_path: Path) -> None:
    graph, cluster = load_graph_file(write(tmp_path, tiny_file()))
    assert cluster is not None and cluster.num_devices == 3
    saved = tmp_path / "saved.json"
    graph.save(saved)
    again, no_cluster = load_graph_file(saved)
    assert no_cluster is None
    assert again.names == graph.names
    np.testing.assert_array_equal(again.given_times, graph.given_times)


@pytest.mark.parametrize("content", [[1, 2, 3], {"format": "onnx"}, {"nodes": []}])
def test_load_graph_file_rejects_other_json(tmp_path: Path, content: object) -> None:
    with pytest.raises(RlplaceError, match=r"accepted are an rlplace graph JSON .* and a dnn-partitioning JSON"):
        load_graph_file(write(tmp_path, content))


# ------------------------------------------------------------------------------ expert splits
def test_expert_split_and_colocation_fill(tmp_path: Path) -> None:
    problem = load_dnn_partitioning(write(tmp_path, tiny_file()))
    split = {"fpgas": [{"nodes": []}, {"nodes": [7]}], "cpus": [{"nodes": [3]}]}
    placement = load_expert_placement(write(tmp_path, split, "split.json"), problem)
    # backward node 5 is not listed: it follows node 7 (same colorClass) to acc1
    assert placement.tolist() == [1, 2, 1]
    assert not placement.flags.writeable


@pytest.mark.parametrize(
    ("split", "message"),
    [
        ({"fpgas": [{"nodes": [7, 42]}]}, "node 42 is not in graph"),
        ({"fpgas": [{"nodes": [7]}]}, "node 3 is not in the split and no node of its colorClass is"),
        ({"fpgas": [{"nodes": [7]}, {"nodes": []}, {"nodes": [3]}]}, r"fpgas\[2\] lists nodes but cluster .* has only 2 accelerators"),
        ({"fpgas": [{"nodes": [7, 3]}, {"nodes": [5]}]}, "nodes of one colorClass must share a device"),
        ({"fpgas": [{"nodes": [7, 3]}, {"nodes": [3]}]}, "node 3 is listed on two devices"),
        ({"fpgas": [{"nodes": ["7"]}]}, "node ids are integers"),
        ({"cpus": []}, "an expert split is a JSON object"),
    ],
)
def test_expert_split_errors(tmp_path: Path, split: dict, message: str) -> None:
    problem = load_dnn_partitioning(write(tmp_path, tiny_file()))
    with pytest.raises(RlplaceError, match=message):
        load_expert_placement(write(tmp_path, split, "split.json"), problem)


def test_placement_spec_dispatch(tmp_path: Path) -> None:
    problem = load_dnn_partitioning(write(tmp_path, tiny_file()))
    split = write(tmp_path, {"fpgas": [{"nodes": [7, 5]}], "cpus": [{"nodes": [3]}]}, "split.json")
    assert is_expert_spec(f"expert:{split}") and not is_expert_spec(str(split))
    assert load_placement_spec(f"expert:{split}", problem.graph, problem.cluster).tolist() == [0, 2, 0]
    plain = write(tmp_path, [1, 2, 1], "plain.json")
    assert load_placement_spec(str(plain), problem.graph, problem.cluster).tolist() == [1, 2, 1]
    with pytest.raises(RlplaceError, match="names no file"):
        load_placement_spec("expert:", problem.graph, problem.cluster)


# ------------------------------------------------------------------------------ shared data
def readme_max_load(graph: OpGraph, placement: np.ndarray, cpu_devices: set[int]) -> float:
    """The README's max-load formula, written out independently of rlplace.simulate."""
    accelerator, cpu = graph.given_times[:, 0], graph.given_times[:, 1]
    load: dict[int, float] = {}
    for op, device in enumerate(placement.tolist()):
        load[device] = load.get(device, 0.0) + (cpu[op] if device in cpu_devices else accelerator[op])
    cost = dict(zip(graph.edge_src.tolist(), graph.edge_given_time.tolist(), strict=True))
    for op, consumers in enumerate(graph.successors()):
        remote = {int(placement[v]) for v in consumers} - {int(placement[op])}
        for device in remote | ({int(placement[op])} if remote else set()):
            if device not in cpu_devices:
                load[device] += cost[op]
    return max(load.values())


@needs_data
def test_all_shared_graphs_load() -> None:
    files = sorted((DATA / "graphs").glob("*.json"))
    assert len(files) == 8
    for path in files:
        raw = json.loads(path.read_text())
        problem = load_dnn_partitioning(path)
        assert problem.graph.num_ops == len(raw["nodes"])
        assert problem.graph.num_edges == len(raw["edges"])
        assert problem.cluster.num_devices == raw["maxFPGAs"] + raw["maxCPUs"]
        assert int(problem.graph.is_backward.sum()) == sum(bool(n["isBackwardNode"]) for n in raw["nodes"])


def expert_case(graph_name: str, expert_name: str) -> tuple:
    problem = load_dnn_partitioning(DATA / "graphs" / f"{graph_name}__layer.json")
    placement = load_expert_placement(DATA / "human-experts" / f"{expert_name}_expert.json", problem)
    return problem, placement


@needs_data
@pytest.mark.parametrize(("graph_name", "expert_name", "reference"), EXPERT_CASES)
def test_expert_splits_match_readme_formula(graph_name: str, expert_name: str, reference: float) -> None:
    problem, placement = expert_case(graph_name, expert_name)
    cpus = {i for i, d in enumerate(problem.cluster.devices) if d.category == "cpu"}
    assert readme_max_load(problem.graph, placement, cpus) == pytest.approx(reference, rel=1e-4)


@needs_data
@pytest.mark.parametrize(("graph_name", "expert_name", "reference"), EXPERT_CASES)
def test_expert_throughput_matches_readme(graph_name: str, expert_name: str, reference: float) -> None:
    simulate = pytest.importorskip("rlplace.simulate")
    from rlplace.costs import CostTable

    problem, placement = expert_case(graph_name, expert_name)
    costs = CostTable.build(problem.graph, problem.cluster)
    result = simulate.simulate(problem.graph, problem.cluster, costs, placement, objective="throughput")
    assert abs(result.step_time - reference) / reference <= 1e-4
