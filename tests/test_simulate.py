"""Step-time simulator: hand-computed schedules on tiny graphs, invariants on random DAGs.

Tiny graphs use given times (class ``accelerator``/``cpu``) and given edge times, so every
op and transfer time below is exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.graph import OpGraph
from rlplace.objectives import SCHEDULES
from rlplace.placement import respect_colocation
from rlplace.simulate import OBJECTIVES, Simulator, basic_lower_bound, lower_bound, simulate, work_bound

DATA = shared_data_dir()


# --------------------------------------------------------------------------- helpers
def device(name: str, memory: float = 1e12, category: str = "accelerator") -> Device:
    return Device(name, "custom", category, 1e12, 1e12, memory, 1e12)


def cluster_of(k: int, memory: float = 1e12, categories: Sequence[str] | None = None) -> Cluster:
    categories = categories or ["accelerator"] * k
    return Cluster.build("test", [device(f"d{i}", memory, categories[i]) for i in range(k)], intra_host=(1e9, 0.0))


def graph_of(times: Mapping[str, float], edges: Sequence[tuple[str, str, float]], **op_fields: Mapping[str, float]) -> OpGraph:
    """Ops named in ``times`` order with an accelerator time each; edges (src, dst, transfer time).

    ``op_fields`` maps a field (``output_bytes``, ``resident_bytes``, ``work_bytes``,
    ``is_backward``) to per-op values.
    """
    ops = []
    for name, t in times.items():
        op = {"name": name, "times": {"accelerator": t}}
        for key, values in op_fields.items():
            if name in values:
                op[key] = values[name]
        ops.append(op)
    return OpGraph.build(ops, [{"src": s, "dst": d, "bytes": 0.0, "time": t} for s, d, t in edges], time_classes=("accelerator",))


def place(graph: OpGraph, where: Mapping[str, int]) -> np.ndarray:
    return np.array([where[name] for name in graph.names], dtype=np.int64)


def run(graph: OpGraph, cluster: Cluster, where: Mapping[str, int], **kwargs) -> object:
    return simulate(graph, cluster, CostTable.build(graph, cluster), place(graph, where), **kwargs)


# --------------------------------------------------------------------- latency cases
def test_chain_on_one_device_is_sum_of_op_times():
    graph = graph_of({"a": 1.0, "b": 2.5, "c": 0.5}, [("a", "b", 9.0), ("b", "c", 9.0)])
    result = run(graph, cluster_of(2), {"a": 1, "b": 1, "c": 1})
    assert result.step_time == 4.0
    assert list(result.busy_time) == [0.0, 4.0]
    assert result.critical_path == (0, 1, 2)


def test_fork_join_across_two_devices_pays_each_transfer_once():
    graph = graph_of({"a": 1.0, "b": 2.0, "c": 3.0, "d": 1.0}, [("a", "b", 0.5), ("a", "c", 0.5), ("b", "d", 0.25), ("c", "d", 0.25)])
    result = run(graph, cluster_of(2), {"a": 0, "b": 0, "c": 1, "d": 0}, record=True)
    # a [0,1] d0; a->c [1,1.5]; c [1.5,4.5] d1; c->d [4.5,4.75]; d [4.75,5.75] d0
    assert result.step_time == 5.75
    assert list(result.op_start) == [0.0, 1.0, 1.5, 4.75]
    assert result.transfers.num_transfers == 2
    assert list(result.transfers.start) == [1.0, 4.5]
    assert result.critical_path == (0, 2, 3)


def test_two_consumers_on_one_remote_device_cost_one_transfer():
    graph = graph_of({"a": 1.0, "b": 0.5, "c": 0.5}, [("a", "b", 1.0), ("a", "c", 1.0)])
    result = run(graph, cluster_of(2), {"a": 0, "b": 1, "c": 1}, record=True)
    # one transfer [1,2]; b [2,2.5]; c [2.5,3]  (two serialized transfers would end at 3.5)
    assert result.step_time == 3.0
    assert result.transfers.num_transfers == 1


def test_one_transfer_takes_the_largest_edge_time_to_that_device():
    graph = graph_of({"a": 1.0, "b": 0.5, "c": 0.5}, [("a", "b", 1.0), ("a", "c", 1.5)])
    result = run(graph, cluster_of(2), {"a": 0, "b": 1, "c": 1}, record=True)
    # one transfer [1,2.5]; b [2.5,3]; c [3,3.5]
    assert result.step_time == 3.5
    assert list(result.transfers.finish) == [2.5]


def test_two_transfers_on_one_link_serialize_but_different_links_overlap():
    graph = graph_of({"a": 1.0, "b": 1.0, "c": 1.0, "e": 1.0}, [("a", "c", 3.0), ("b", "e", 3.0)])
    cluster = cluster_of(3)
    same_link = run(graph, cluster, {"a": 0, "b": 0, "c": 1, "e": 1}, record=True)
    # a [0,1], b [1,2]; a->c [1,4]; b->e waits for the link: [4,7]; c [4,5]; e [7,8]
    assert same_link.step_time == 8.0
    assert list(same_link.transfers.start) == [1.0, 4.0]
    # b's tensor goes over link 0->2 instead: [2,5]; e [5,6]
    assert run(graph, cluster, {"a": 0, "b": 0, "c": 1, "e": 2}).step_time == 6.0


def test_priority_decides_among_ready_ops_and_critical_path_follows_the_device():
    graph = graph_of({"x": 1.0, "y": 1.0, "z": 5.0}, [("y", "z", 0.0)])
    cluster = cluster_of(2)
    costs = CostTable.build(graph, cluster)
    placement = place(graph, {"x": 0, "y": 0, "z": 1})
    default = simulate(graph, cluster, costs, placement)
    assert default.step_time == 7.0  # x [0,1], y [1,2], z [2,7]
    assert default.critical_path == (0, 1, 2)  # y waited for the device, which ran x
    assert simulate(graph, cluster, costs, placement, priority=[1.0, 0.0, 2.0]).step_time == 6.0
    assert Simulator(graph, cluster, costs).step_time(placement, priority=np.array([1.0, 0.0, 2.0])) == 6.0


# -------------------------------------------------------------------- pipelined cases
@pytest.mark.parametrize("microbatches", [1, 2, 3, 4, 7])
def test_two_stage_chain_with_m_microbatches_takes_m_plus_one_stage_times(microbatches):
    stage = 1.5  # per micro-batch
    graph = graph_of({"a": stage * microbatches, "b": stage * microbatches}, [("a", "b", 0.0)])
    result = run(graph, cluster_of(2), {"a": 0, "b": 1}, objective="pipelined", microbatches=microbatches)
    assert result.step_time == pytest.approx((microbatches + 1) * stage, rel=1e-12)


def test_pipelined_runs_forward_of_every_microbatch_before_backward():
    # one device: f -> b; GPipe order f0 f1 b0 b1, so b0 starts after f1
    graph = graph_of({"f": 2.0, "b": 4.0}, [("f", "b", 0.0)], is_backward={"b": True})
    result = run(graph, cluster_of(1), {"f": 0, "b": 0}, objective="pipelined", microbatches=2, record=True)
    assert result.microbatch_start.tolist() == [[0.0, 2.0], [1.0, 4.0]]
    assert result.step_time == 6.0


def test_pipelined_with_one_microbatch_equals_latency():
    graph = graph_of(
        {"f1": 1.0, "f2": 2.0, "loss": 0.5, "b2": 3.0, "b1": 2.0},
        [("f1", "f2", 0.3), ("f2", "loss", 0.2), ("loss", "b2", 0.1), ("b2", "b1", 0.4), ("f1", "b1", 0.7)],
        is_backward={"b2": True, "b1": True},
    )
    where = {"f1": 0, "f2": 1, "loss": 1, "b2": 0, "b1": 1}
    latency = run(graph, cluster_of(2), where)
    pipelined = run(graph, cluster_of(2), where, objective="pipelined", microbatches=1)
    assert pipelined.step_time == latency.step_time
    assert pipelined.peak_memory.tolist() == latency.peak_memory.tolist()


# ------------------------------------------------------------------ pipeline schedules
def two_stage_chain(microbatches: int) -> OpGraph:
    """f0 (device 0) -> f1 (device 1) -> b1 (device 1) -> b0 (device 0), f0 -> b0 the saved
    activation. Per micro-batch: forward 1, backward 2, each cross-device transfer 1 (f0 -> f1,
    b1 -> b0); f0 keeps 1 byte, f1 2 bytes per micro-batch alive; gradients and working
    memory are 0 bytes."""
    m = float(microbatches)
    return graph_of(
        {"f0": m, "f1": m, "b1": 2 * m, "b0": 2 * m},
        [("f0", "f1", m), ("f1", "b1", 0.0), ("b1", "b0", m), ("f0", "b0", 0.0)],
        output_bytes={"f0": m, "f1": 2 * m},
        is_backward={"b1": True, "b0": True},
    )


TWO_STAGES = {"f0": 0, "f1": 1, "b1": 1, "b0": 0}


def test_gpipe_on_a_two_stage_chain_with_four_microbatches_by_hand():
    # Device 0 runs f0 of mb 0..3 at 0,1,2,3; each goes over the link 0->1 in [j+1, j+2].
    # Device 1 prefers forwards: f1 of mb j at j+2 (2,3,4,5), then b1 of mb 0..3 at 6,8,10,12.
    # Gradients cross 1->0 in [8,9], [10,11], [12,13], [14,15]; b0 runs at 9,11,13,15 -> step 17.
    # Memory, device 0: f0's output of every micro-batch lives from its start to its b0
    # ([0,11], [1,13], [2,15], [3,17]) -> 4 x 1 byte. Device 1: f1's outputs [2,8], [3,10],
    # [4,12], [5,14] (4 x 2 bytes over [5,8)) plus the received f0 copy of mb 3 in [5,6]
    # (arrival to f1's finish; mb 2's copy is released at 5 before mb 3's is allocated) -> 9.
    result = run(two_stage_chain(4), cluster_of(2), TWO_STAGES, objective="pipelined", microbatches=4, schedule="gpipe", record=True)
    assert result.microbatch_start.T.tolist() == [[0, 1, 2, 3], [2, 3, 4, 5], [6, 8, 10, 12], [9, 11, 13, 15]]
    assert result.step_time == 17.0
    assert result.activation_memory.tolist() == [4.0, 9.0]
    assert result.schedule == "gpipe"


def test_1f1b_on_a_two_stage_chain_with_four_microbatches_by_hand():
    # p = 2 stages: device 0 (stage 0) warms up with w = min(4, 2) = 2 forwards, device 1 with 1;
    # forward j + w waits for the device's backward of j.
    # d0: f0 mb0 [0,1], mb1 [1,2]; link 0->1: [1,2], [2,3].
    # d1: f1 mb0 [2,3]; b1 mb0 [3,5] (f1 mb1 arrived at 3 but waits for b1 mb0); f1 mb1 [5,6]; b1 mb1 [6,8].
    # link 1->0: mb0 [5,6] -> d0: b0 mb0 [6,8]; its end opens f0 mb2 [8,9]; mb1's gradient
    # arrives at 9 -> b0 mb1 [9,11] (preferred: f0 mb3 waits for it) -> f0 mb3 [11,12].
    # link 0->1: mb2 [9,10] -> d1: f1 mb2 [10,11], b1 mb2 [11,13]; mb3 [12,13] -> f1 mb3 [13,14], b1 mb3 [14,16].
    # link 1->0: mb2 [13,14] -> b0 mb2 [14,16]; mb3 [16,17] -> b0 mb3 [17,19] -> step 19 (the
    # alternation exposes each transfer, which GPipe's run of forwards hides: 19 > 17).
    # Memory, device 0: f0 outputs [0,8], [1,11], [8,16], [11,19] -> never more than 2 alive
    # -> 2 bytes. Device 1: f1 outputs [2,5], [5,8], [10,13], [13,16] (one at a time, 2 bytes)
    # plus received f0 copies [2,3], [3,6], [10,11], [13,14] -> 2 + 1 = 3 bytes.
    result = run(two_stage_chain(4), cluster_of(2), TWO_STAGES, objective="pipelined", microbatches=4, schedule="1f1b", record=True)
    assert result.microbatch_start.T.tolist() == [[0, 1, 8, 11], [2, 5, 10, 13], [3, 6, 11, 14], [6, 9, 14, 17]]
    assert result.step_time == 19.0
    assert result.activation_memory.tolist() == [2.0, 3.0]
    assert result.schedule == "1f1b"
    assert result.to_json_dict()["schedule"] == "1f1b"
    # every device holds one block: interleaved 1F1B is 1F1B
    interleaved = run(two_stage_chain(4), cluster_of(2), TWO_STAGES, objective="pipelined", microbatches=4, schedule="interleaved-1f1b", record=True)
    assert interleaved.microbatch_start.tolist() == result.microbatch_start.tolist()


def test_interleaved_1f1b_on_a_two_device_four_chunk_chain_by_hand():
    # f0 f1 f2 f3 b3 b2 b1 b0 on devices 0 1 0 1 1 0 1 0: each device holds two chunks
    # (d0: f0 | f2, d1: f1 | f3; b_i in f_i's chunk). Per micro-batch forward 1, backward 2,
    # every cross-device transfer 1; M = 2, p = 2, one round of 2 micro-batches.
    # Order: forward (chunk, mb) = (0,0) (0,1) (1,0) (1,1), backward (1,0) (1,1) (0,0) (0,1).
    # Warm-up w = (v - 1) p + 2 (p - r - 1) + 1: d0 (r = 0) 5 -> capped at 4 (all forwards first,
    # no gate); d1 (r = 1) 3: f1.0 f1.1 f3.0 b3.0 f3.1 b3.1 b1.0 b1.1, f3.1 waits for b3.0.
    # d0: f0.0 [0,1], f0.1 [1,2]; d1: f1.0 [2,3], f1.1 [3,4]; d0: f2.0 [4,5], f2.1 [5,6];
    # d1: f3.0 [6,7], b3.0 [7,9] (f3.1 arrived at 7 but waits), f3.1 [9,10], b3.1 [10,12];
    # d0: b2.0 [10,12], b2.1 [13,15]; d1: b1.0 [13,15], b1.1 [16,18]; d0: b0.0 [16,18], b0.1 [19,21].
    m = 2.0
    names = ["f0", "f1", "f2", "f3", "b3", "b2", "b1", "b0"]
    edges = [(a, b, m) for a, b in itertools.pairwise(names)] + [(f"f{i}", f"b{i}", 0.0) for i in range(3)]
    graph = graph_of({name: m * (1.0 if name[0] == "f" else 2.0) for name in names}, edges, is_backward={f"b{i}": True for i in range(4)})
    where = {"f0": 0, "f1": 1, "f2": 0, "f3": 1, "b3": 1, "b2": 0, "b1": 1, "b0": 0}
    result = run(graph, cluster_of(2), where, objective="pipelined", microbatches=2, schedule="interleaved-1f1b", record=True)
    assert result.microbatch_start.tolist() == [[0, 2, 4, 6, 7, 10, 13, 16], [1, 3, 5, 9, 10, 13, 16, 19]]
    assert result.step_time == 21.0
    # 1F1B treats each device as one stage: micro-batch 1 waits for micro-batch 0's whole backward
    assert run(graph, cluster_of(2), where, objective="pipelined", microbatches=2, schedule="1f1b").step_time > 21.0


def test_unknown_schedule_is_a_clear_error():
    graph = graph_of({"a": 1.0}, [])
    with pytest.raises(RlplaceError, match="unknown schedule 'pipedream'"):
        run(graph, cluster_of(1), {"a": 0}, objective="pipelined", microbatches=2, schedule="pipedream")
    from rlplace.cli import SCHEDULES as CLI_SCHEDULES

    assert CLI_SCHEDULES == SCHEDULES  # the parser takes them from rlplace.objectives, which imports no numba


# ------------------------------------------------------------------------- memory
def test_device_over_capacity_is_oom_with_the_overflow():
    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 0.0)], resident_bytes={"a": 150.0, "b": 30.0})
    result = run(graph, cluster_of(2, memory=100.0), {"a": 0, "b": 1})
    assert result.oom
    assert result.peak_memory.tolist() == [150.0, 30.0]
    assert result.overflow_bytes.tolist() == [50.0, 0.0]
    fits = run(graph, cluster_of(2, memory=200.0), {"a": 0, "b": 1})
    assert not fits.oom and fits.total_overflow == 0.0


def training_graph() -> OpGraph:
    return graph_of(
        {"f1": 1.0, "f2": 1.0, "loss": 1.0, "b2": 1.0, "b1": 1.0},
        [("f1", "f2", 0.0), ("f2", "loss", 0.0), ("loss", "b2", 0.0), ("f2", "b2", 0.0), ("b2", "b1", 0.0), ("f1", "b1", 0.0)],
        output_bytes={"f1": 10.0, "f2": 20.0, "loss": 1.0, "b2": 40.0, "b1": 80.0},
        work_bytes={"b1": 5.0},
        resident_bytes={"f1": 100.0},
        is_backward={"b2": True, "b1": True},
    )


def test_training_activations_stay_until_their_backward_op():
    graph = training_graph()
    result = run(graph, cluster_of(1), dict.fromkeys(graph.names, 0))
    # f1 [0,1] f2 [1,2] loss [2,3] b2 [3,4] b1 [4,5]; f1's output lives [0,5) (b1 reads it),
    # f2's [1,4), loss's [2,4), b2's [3,5), b1's [4,5) plus 5 working bytes.
    # [3,4): 10+20+1+40 = 71; [4,5): 10+40+80+5 = 135; + 100 resident
    assert result.peak_memory.tolist() == [235.0]


def test_received_copy_lives_on_the_remote_device_from_arrival_to_last_consumer():
    graph = graph_of({"a": 1.0, "b": 2.0, "c": 1.0}, [("a", "b", 0.5), ("a", "c", 0.5)], output_bytes={"a": 10.0, "b": 3.0})
    result = run(graph, cluster_of(2), {"a": 0, "b": 1, "c": 1})
    # a's output on d0 [0,1.5) until its transfer leaves; copy on d1 [1.5,4.5) (b [1.5,3.5], c [3.5,4.5]); b's output [1.5,3.5)
    assert result.peak_memory.tolist() == [10.0, 13.0]


def test_pipelined_activations_are_one_microbatch_each():
    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 0.0)], output_bytes={"a": 100.0})
    where = {"a": 0, "b": 0}
    assert run(graph, cluster_of(1), where).peak_memory.tolist() == [100.0]
    # a0 [0,.5] b0 [.5,1] a1 [1,1.5] b1 [1.5,2]: a0's output [0,1) and a1's [1,2) never overlap
    assert run(graph, cluster_of(1), where, objective="pipelined", microbatches=2).peak_memory.tolist() == [50.0]


# ---------------------------------------------------------------------- throughput
def test_throughput_is_the_max_load_with_a_cpu_paying_no_transfers():
    ops = [
        {"name": "a", "times": {"accelerator": 9.0, "cpu": 4.0}},
        {"name": "b", "times": {"accelerator": 5.0, "cpu": 50.0}},
        {"name": "c", "times": {"accelerator": 7.0, "cpu": 70.0}},
        {"name": "d", "times": {"accelerator": 1.0, "cpu": 10.0}},
    ]
    edges = [
        {"src": "a", "dst": "b", "time": 2.0},
        {"src": "a", "dst": "c", "time": 2.0},
        {"src": "b", "dst": "d", "time": 1.0},
        {"src": "c", "dst": "d", "time": 3.0},
    ]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator", "cpu"))
    cluster = cluster_of(3, categories=["accelerator", "accelerator", "cpu"])
    result = run(graph, cluster, {"a": 2, "b": 0, "c": 1, "d": 0}, objective="throughput", record=True)
    # gpu0: b 5 + d 1 + receive a 2 + receive c 3 = 11; gpu1: c 7 + receive a 2 + send c 3 = 12;
    # cpu: a 4, sends for free
    assert result.device_load.tolist() == [11.0, 12.0, 4.0]
    assert result.step_time == 12.0
    assert result.busy_time.tolist() == [6.0, 7.0, 4.0]
    assert result.critical_path == (2,)
    # a on gpu0 instead: gpu0 pays its send once (2) although it feeds two devices
    moved = run(graph, cluster, {"a": 0, "b": 0, "c": 1, "d": 0}, objective="throughput")
    assert moved.device_load.tolist() == [9.0 + 5.0 + 1.0 + 2.0 + 3.0, 7.0 + 2.0 + 3.0, 0.0]


def test_throughput_memory_is_static_resident_bytes():
    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 1.0)], resident_bytes={"a": 60.0, "b": 70.0}, output_bytes={"a": 1000.0})
    result = run(graph, cluster_of(2, memory=100.0), {"a": 0, "b": 0}, objective="throughput")
    assert result.peak_memory.tolist() == [130.0, 0.0]
    assert result.overflow_bytes.tolist() == [30.0, 0.0]


def load_dnn_partitioning(graph_file: Path) -> tuple[OpGraph, Cluster, dict]:
    """Independent minimal reader of the format in the data README (not the project's importer)."""
    data = json.loads(graph_file.read_text())
    ops = [
        {
            "name": str(node["id"]),
            "times": {"accelerator": node["fpgaLatency"] if node.get("supportedOnFpga", 1) else math.inf, "cpu": node["cpuLatency"]},
            "resident_bytes": node.get("size", 0.0),
            "is_backward": bool(node.get("isBackwardNode", 0)),
            "coloc": node.get("colorClass"),
        }
        for node in data["nodes"]
    ]
    edges = [{"src": str(e["sourceId"]), "dst": str(e["destId"]), "time": e["cost"], "bytes": e.get("size", 0.0)} for e in data["edges"]]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator", "cpu"), time_unit="unit")
    devices = [device(f"acc{i}", data["maxSizePerFPGA"]) for i in range(data["maxFPGAs"])] + [device("cpu", math.inf, "cpu")]
    cluster = Cluster.build("dnn", devices, intra_host=(1.0, 0.0))
    color = {str(node["id"]): node.get("colorClass") for node in data["nodes"]}
    return graph, cluster, color


@pytest.mark.parametrize(
    ("name", "expert", "one_device"),
    [("bert24_inference", 20.084, 92.406), ("bert24_training", 49.4049, 217.813), ("resnet50_inference", 43.9183, 201.45)],
)
def test_throughput_matches_the_papers_reference_numbers(name, expert, one_device):
    graph_file = DATA / "graphs" / f"{name}__layer.json"
    if not graph_file.exists():
        pytest.skip(f"shared data not found at {DATA}")
    graph, cluster, color = load_dnn_partitioning(graph_file)
    costs = CostTable.build(graph, cluster)
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    assert simulator.step_time(np.zeros(graph.num_ops, dtype=np.int64)) == pytest.approx(one_device, rel=1e-5)
    split = json.loads((DATA / "human-experts" / f"{name}_expert.json").read_text())
    where: dict[str, int] = {}
    for d, fpga in enumerate(split["fpgas"]):
        where.update({str(node): d for node in fpga["nodes"]})
    where.update({str(node): cluster.num_devices - 1 for node in split["cpus"][0]["nodes"]})
    class_device = {color[op]: d for op, d in where.items() if color[op] is not None}
    placement = np.array([where.get(op, class_device.get(color[op], -1)) for op in graph.names])
    assert simulator.step_time(placement) == pytest.approx(expert, rel=1e-4)
    assert simulator.lower_bound <= expert


# ----------------------------------------------------------------- lower bound
def test_work_bound_is_total_work_over_total_speed_for_uniform_speeds():
    op_time = np.array([[2.0, 1.0], [4.0, 2.0], [6.0, 3.0]])  # device 1 twice as fast
    assert work_bound(op_time) == pytest.approx(1.0 / (1.0 / 12.0 + 1.0 / 6.0))


def test_work_bound_stays_sound_when_ops_prefer_different_devices():
    op_time = np.array([[1.0, 100.0], [100.0, 1.0]])  # best placement: busy time 1
    assert work_bound(op_time) <= 1.0 + 1e-12


def test_lower_bound_is_work_or_fastest_critical_path():
    graph = graph_of({"a": 1.0, "b": 2.0, "c": 3.0}, [("a", "b", 5.0), ("a", "c", 5.0)])
    cluster = cluster_of(2)
    costs = CostTable.build(graph, cluster)
    assert lower_bound(graph, cluster, costs) == 4.0  # a then c, free communication
    assert lower_bound(graph, cluster, costs, objective="throughput") == 3.0  # 6 / 2 devices
    assert basic_lower_bound(graph, cluster, costs, objective="pipelined", microbatches=2) == 3.0
    # c's two instances (3 in all) after a's first half (0.5)
    assert lower_bound(graph, cluster, costs, objective="pipelined", microbatches=2) == 3.5


def test_lower_bound_counts_an_ops_microbatches_one_after_another():
    # a (1) -> b (8) -> c (1), M = 4: b's four instances take 8 on one device, after a's first
    # quarter and before c's last one: 0.25 + 8 + 0.25. The work (10 / 2) and the path over M
    # (10 / 4) give only 5, which `basic_lower_bound` keeps.
    graph = graph_of({"a": 1.0, "b": 8.0, "c": 1.0}, [("a", "b", 0.0), ("b", "c", 0.0)])
    cluster = cluster_of(2)
    costs = CostTable.build(graph, cluster)
    assert basic_lower_bound(graph, cluster, costs, objective="pipelined", microbatches=4) == 5.0
    assert lower_bound(graph, cluster, costs, objective="pipelined", microbatches=4) == 8.5
    # ... and it is reached: a and c on one device, b on the other
    assert Simulator(graph, cluster, costs, objective="pipelined", microbatches=4).step_time(place(graph, {"a": 0, "b": 1, "c": 0})) == 8.5
    assert lower_bound(graph, cluster, costs) == 10.0  # M = 1: the critical path


def test_lower_bound_keeps_a_colocation_class_on_one_device():
    # x and y (3 each) must share a device; z (1) is free. Work over two devices says 3.5,
    # the longest op 3; the class alone keeps one device busy for 6, under every objective.
    graph = graph_of({"x": 3.0, "y": 3.0, "z": 1.0}, [("x", "z", 0.0)], coloc={"x": "layer", "y": "layer"})
    cluster = cluster_of(2)
    costs = CostTable.build(graph, cluster)
    assert basic_lower_bound(graph, cluster, costs, objective="throughput") == 3.5
    assert lower_bound(graph, cluster, costs, objective="throughput") == 6.0
    assert lower_bound(graph, cluster, costs) == 6.0
    # under latency z after x adds its tail: the class's least tail is y's (0), so still 6
    assert Simulator(graph, cluster, costs).step_time(place(graph, {"x": 0, "y": 0, "z": 1})) == 6.0


def test_lower_bound_pays_fixed_costs_per_microbatch():
    # one op of time 4, of which 1 fixed: M = 2 micro-batches take 2 * (1 + 3 / 2) = 5
    graph = graph_of({"a": 4.0}, [])
    cluster = cluster_of(1)
    costs = CostTable(op_time=np.array([[4.0]]), edge_time=np.zeros((0, 1, 1)), op_fixed=np.array([[1.0]]), time_unit="s")
    assert lower_bound(graph, cluster, costs, objective="pipelined", microbatches=2) == 5.0
    assert Simulator(graph, cluster, costs, objective="pipelined", microbatches=2).step_time(np.zeros(1, dtype=np.int64)) == 5.0


# ---------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    graph = graph_of({"a": 1.0, "b": 1.0}, [("a", "b", 0.0)])
    cluster = cluster_of(2)
    costs = CostTable.build(graph, cluster)
    with pytest.raises(RlplaceError, match="objective"):
        Simulator(graph, cluster, costs, objective="speed")
    with pytest.raises(RlplaceError, match="microbatches"):
        Simulator(graph, cluster, costs, objective="pipelined", microbatches=0)
    simulator = Simulator(graph, cluster, costs)
    with pytest.raises(RlplaceError, match="2 ops"):
        simulator.step_time([0])
    with pytest.raises(RlplaceError, match=r"devices 0\.\.1"):
        simulator.run([0, 2])
    with pytest.raises(RlplaceError, match="priority"):
        simulator.run([0, 1], priority=[0.0])
    with pytest.raises(RlplaceError, match="cost table"):
        Simulator(graph, cluster_of(3), costs)


def test_op_on_a_device_it_cannot_run_on():
    ops = [{"name": "a", "times": {"accelerator": 1.0, "cpu": 1.0}}, {"name": "b", "times": {"accelerator": math.inf, "cpu": 2.0}}]
    graph = OpGraph.build(ops, [{"src": "a", "dst": "b", "time": 0.0}], time_classes=("accelerator", "cpu"))
    cluster = cluster_of(2, categories=["accelerator", "cpu"])
    simulator = Simulator(graph, cluster, CostTable.build(graph, cluster))
    assert simulator.step_time([0, 0]) == math.inf
    assert simulator.step_time([0, 1]) == 3.0
    with pytest.raises(RlplaceError, match="cannot run"):
        simulator.run([0, 0])


# ------------------------------------------------------------------- random DAGs
def reference_schedule(op_time: np.ndarray, edge_src, edge_dst, edge_time: np.ndarray, is_backward, placement, microbatches: int = 1) -> float:
    """A plain-Python rendering of the documented rules, written independently of the kernel."""
    n, k = op_time.shape
    consumers: dict[int, list[tuple[int, int]]] = {i: [] for i in range(n)}
    pending: dict[tuple[int, int], int] = {}
    for e, (s, d) in enumerate(zip(edge_src, edge_dst, strict=True)):
        consumers[int(s)].append((int(d), e))
    indegree = np.bincount(np.asarray(edge_dst, dtype=np.int64), minlength=n)
    instances = [(mb, i) for mb in range(microbatches) for i in range(n)]
    for inst in instances:
        pending[inst] = int(indegree[inst[1]])

    def preference(inst: tuple[int, int]) -> tuple:
        mb, i = inst
        return (i,) if microbatches == 1 else (bool(is_backward[i]), mb, i)

    ready: list[set] = [set() for _ in range(k)]
    for inst in instances:
        if pending[inst] == 0:
            ready[placement[inst[1]]].add(inst)
    running: dict[int, tuple[float, tuple[int, int]]] = {}
    link_queue: dict[tuple[int, int], list[int]] = {}
    link_running: dict[tuple[int, int], tuple[float, int]] = {}
    transfers: list[tuple[tuple[int, int], int, float]] = []  # (producer instance, dst, duration)
    now, makespan = 0.0, 0.0
    while True:
        for d in range(k):
            if d not in running and ready[d]:
                inst = min(ready[d], key=preference)
                ready[d].remove(inst)
                running[d] = (now + op_time[inst[1], d] / microbatches, inst)
        for link, queue in link_queue.items():
            if link not in link_running and queue:
                x = queue.pop(0)
                link_running[link] = (now + transfers[x][2], x)
        ends = [end for end, _ in running.values()] + [end for end, _ in link_running.values()]
        if not ends:
            return makespan
        now = min(ends)
        for d, (end, inst) in sorted(running.items(), key=lambda item: item[1][1][0] * n + item[1][1][1]):
            if end != now:
                continue
            del running[d]
            makespan = max(makespan, now)
            mb, i = inst
            remote: dict[int, float] = {}
            for j, e in consumers[i]:
                dj = placement[j]
                if dj == d:
                    pending[(mb, j)] -= 1
                    if pending[(mb, j)] == 0:
                        ready[d].add((mb, j))
                else:
                    remote[dj] = max(remote.get(dj, 0.0), edge_time[e, d, dj] / microbatches)
            for dj in sorted(remote):
                transfers.append((inst, dj, remote[dj]))
                link_queue.setdefault((d, dj), []).append(len(transfers) - 1)
        for link, (end, x) in sorted(link_running.items(), key=lambda item: item[1][1]):
            if end != now:
                continue
            del link_running[link]
            (mb, i), dj, _ = transfers[x]
            for j, _e in consumers[i]:
                if placement[j] == dj:
                    pending[(mb, j)] -= 1
                    if pending[(mb, j)] == 0:
                        ready[dj].add((mb, j))


@st.composite
def problems(draw):
    n = draw(st.integers(1, 9))
    k = draw(st.integers(1, 3))
    pairs = [(s, d) for d in range(n) for s in range(d)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=min(len(pairs), 14))) if pairs else []
    chosen.sort()
    op_time = np.array(draw(st.lists(st.lists(st.integers(0, 4), min_size=k, max_size=k), min_size=n, max_size=n)), dtype=np.float64)
    edge_time = np.array(draw(st.lists(st.lists(st.integers(0, 3), min_size=k * k, max_size=k * k), min_size=len(chosen), max_size=len(chosen))), dtype=np.float64)
    edge_time = edge_time.reshape(len(chosen), k, k) * (1 - np.eye(k))[None]
    is_backward = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    output_bytes = draw(st.lists(st.integers(0, 50), min_size=n, max_size=n))
    ops = [{"name": f"o{i}", "is_backward": is_backward[i], "output_bytes": output_bytes[i], "resident_bytes": 1.0} for i in range(n)]
    graph = OpGraph.build(ops, [{"src": f"o{s}", "dst": f"o{d}", "bytes": 8.0} for s, d in chosen])
    cluster = cluster_of(k)
    costs = CostTable(op_time=op_time, edge_time=edge_time, time_unit="s")
    placement = np.array(draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)), dtype=np.int64)
    microbatches = draw(st.integers(1, 3))
    return graph, cluster, costs, placement, microbatches


RANDOM = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@RANDOM
@given(problems())
def test_schedule_matches_an_independent_reference(problem):
    graph, cluster, costs, placement, microbatches = problem
    expected = reference_schedule(costs.op_time, graph.edge_src, graph.edge_dst, costs.edge_time, graph.is_backward, placement, microbatches)
    objective = "pipelined" if microbatches > 1 else "latency"
    assert Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches).step_time(placement) == pytest.approx(expected, rel=1e-12, abs=1e-12)


@RANDOM
@given(problems(), st.sampled_from(OBJECTIVES), st.sampled_from(SCHEDULES), st.data())
def test_step_time_is_at_least_the_lower_bound_with_classes_and_fixed_costs(problem, objective, schedule, data):
    graph, cluster, costs, placement, microbatches = problem
    n = graph.num_ops
    classes = data.draw(st.lists(st.integers(-1, 1), min_size=n, max_size=n))  # -1: no class
    graph = dataclasses.replace(graph, coloc=np.array(classes, dtype=np.int64))
    share = data.draw(st.sampled_from([0.0, 0.5, 1.0]))
    costs = CostTable(op_time=costs.op_time, edge_time=costs.edge_time, op_fixed=share * costs.op_time, time_unit="s")
    placement = respect_colocation(graph, placement)
    step = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule).step_time(placement)
    bound = lower_bound(graph, cluster, costs, objective=objective, microbatches=microbatches)
    assert step >= bound * (1 - 1e-9)
    assert bound >= basic_lower_bound(graph, cluster, costs, objective=objective, microbatches=microbatches)


@RANDOM
@given(problems(), st.sampled_from(OBJECTIVES))
def test_step_time_is_at_least_the_lower_bound(problem, objective):
    graph, cluster, costs, placement, microbatches = problem
    result = simulate(graph, cluster, costs, placement, objective=objective, microbatches=microbatches)
    assert result.step_time >= result.lower_bound * (1 - 1e-9)
    assert result.lower_bound == lower_bound(graph, cluster, costs, objective=objective, microbatches=microbatches)
    assert np.all(result.peak_memory >= np.bincount(placement, weights=graph.resident_bytes, minlength=cluster.num_devices))


@RANDOM
@given(problems(), st.sampled_from(OBJECTIVES))
def test_one_device_gives_the_sum_of_compute(problem, objective):
    graph, cluster, costs, placement, microbatches = problem
    device_index = int(placement[0])
    result = simulate(graph, cluster, costs, np.full(graph.num_ops, device_index), objective=objective, microbatches=microbatches)
    assert result.step_time == pytest.approx(costs.op_time[:, device_index].sum(), rel=1e-9, abs=1e-12)


@RANDOM
@given(problems())
def test_pipelined_with_one_microbatch_is_latency_exactly(problem):
    graph, cluster, costs, placement, _ = problem
    latency = simulate(graph, cluster, costs, placement)
    pipelined = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=1)
    assert pipelined.step_time == latency.step_time
    assert pipelined.critical_path == latency.critical_path


@RANDOM
@given(problems())
def test_critical_path_is_a_chain_of_dependencies_ending_last(problem):
    graph, cluster, costs, placement, microbatches = problem
    objective = "pipelined" if microbatches > 1 else "latency"
    result = simulate(graph, cluster, costs, placement, objective=objective, microbatches=microbatches, record=True)
    starts, finishes = result.microbatch_start, result.microbatch_finish
    path = list(zip(result.critical_path_microbatch, result.critical_path, strict=True))
    assert finishes[path[-1]] == result.step_time
    assert starts[path[0]] == 0.0
    for earlier, later in itertools.pairwise(path):
        assert finishes[earlier] <= starts[later]


@RANDOM
@given(problems(), st.sampled_from(OBJECTIVES))
def test_inputs_are_unchanged(problem, objective):
    graph, cluster, costs, placement, microbatches = problem
    before = [np.array(a, copy=True) for a in (costs.op_time, costs.edge_time, placement, graph.edge_src, graph.output_bytes, cluster.bandwidth)]
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches)
    simulator.run(placement, record=True)
    simulator.score(placement)
    after = (costs.op_time, costs.edge_time, placement, graph.edge_src, graph.output_bytes, cluster.bandwidth)
    for old, new in zip(before, after, strict=True):
        np.testing.assert_array_equal(old, new)
    assert placement.flags.writeable  # the caller's array is not frozen behind its back


@RANDOM
@given(problems())
def test_score_and_peak_memory_agree_with_run(problem):
    graph, cluster, costs, placement, microbatches = problem
    objective = "pipelined" if microbatches > 1 else "latency"
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches)
    result = simulator.run(placement)
    assert simulator.score(placement) == (result.step_time, result.total_overflow)
    assert simulator.peak_memory(placement).tolist() == result.peak_memory.tolist()
    assert simulator.step_time(placement) == result.step_time


@RANDOM
@given(problems(), st.sampled_from(SCHEDULES))
def test_one_microbatch_is_latency_exactly_under_every_schedule(problem, schedule):
    graph, cluster, costs, placement, _ = problem
    latency = simulate(graph, cluster, costs, placement, record=True)
    pipelined = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=1, schedule=schedule, record=True)
    assert pipelined.step_time == latency.step_time
    assert pipelined.microbatch_start.tolist() == latency.microbatch_start.tolist()
    assert pipelined.peak_memory.tolist() == latency.peak_memory.tolist()


@RANDOM
@given(problems(), st.sampled_from(SCHEDULES))
def test_every_schedule_runs_every_instance_after_its_inputs(problem, schedule):
    graph, cluster, costs, placement, microbatches = problem
    simulator = Simulator(graph, cluster, costs, objective="pipelined", microbatches=microbatches, schedule=schedule)
    result = simulator.run(placement, record=True)
    assert math.isfinite(result.step_time)  # no deadlock
    starts, finishes = result.microbatch_start, result.microbatch_finish
    for src, dst in zip(graph.edge_src, graph.edge_dst, strict=True):
        assert np.all(starts[:, dst] >= finishes[:, src])
    assert result.step_time == finishes.max(initial=0.0)
    assert simulator.score(placement) == (result.step_time, result.total_overflow)
    path = list(zip(result.critical_path_microbatch, result.critical_path, strict=True))
    if path:
        assert finishes[path[-1]] == result.step_time
        assert starts[path[0]] == 0.0
    for earlier, later in itertools.pairwise(path):
        assert finishes[earlier] <= starts[later]


@st.composite
def pipeline_chains(draw):
    """A forward chain f0..f(L-1), its mirrored backward chain, f_i -> b_i saved activations,
    cut into p contiguous stages (b_i with f_i); random integer times, transfers and bytes."""
    length = draw(st.integers(1, 6))
    stages = draw(st.integers(1, min(length, 3)))
    cuts = sorted(draw(st.lists(st.integers(1, length - 1), min_size=stages - 1, max_size=stages - 1, unique=True))) if stages > 1 else []
    stage_of = np.searchsorted(cuts, np.arange(length), side="right")
    names = [f"f{i}" for i in range(length)] + [f"b{i}" for i in reversed(range(length))]
    ops = [
        {"name": name, "is_backward": name[0] == "b", "output_bytes": draw(st.integers(0, 50)), "work_bytes": draw(st.integers(0, 5))}
        for name in names
    ]
    edges = list(itertools.pairwise(names)) + [(f"f{i}", f"b{i}") for i in range(length - 1)]
    graph = OpGraph.build(ops, [{"src": s, "dst": d, "bytes": 1.0} for s, d in edges])
    k = stages
    op_time = np.array(draw(st.lists(st.integers(1, 4), min_size=graph.num_ops * k, max_size=graph.num_ops * k)), dtype=np.float64).reshape(graph.num_ops, k)
    edge_time = np.array(draw(st.lists(st.integers(0, 2), min_size=graph.num_edges * k * k, max_size=graph.num_edges * k * k)), dtype=np.float64)
    edge_time = edge_time.reshape(graph.num_edges, k, k) * (1 - np.eye(k))[None]
    placement = np.array([stage_of[int(name[1:])] for name in graph.names], dtype=np.int64)
    microbatches = draw(st.integers(1, 6))
    return graph, cluster_of(k), CostTable(op_time=op_time, edge_time=edge_time, time_unit="s"), placement, microbatches


def in_flight(result, graph: OpGraph, placement: np.ndarray, device_index: int) -> int:
    """Most micro-batches at once whose forward started on the device and whose backward there has not finished."""
    forward = np.flatnonzero((placement == device_index) & ~graph.is_backward)
    backward = np.flatnonzero((placement == device_index) & graph.is_backward)
    if forward.size == 0 or backward.size == 0:
        return 0
    begin = result.microbatch_start[:, forward].min(axis=1)
    end = result.microbatch_finish[:, backward].max(axis=1)
    return max(int(np.sum((begin <= t) & (t < end))) for t in begin)


@RANDOM
@given(pipeline_chains())
def test_1f1b_keeps_at_most_the_stages_ahead_in_flight(problem):
    # stage r of p keeps at most min(M, p - r) micro-batches in flight, whatever M is; GPipe
    # may keep all M. With one block per device interleaved 1F1B is 1F1B exactly.
    graph, cluster, costs, placement, microbatches = problem
    one_f_one_b = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=microbatches, schedule="1f1b", record=True)
    stages = cluster.num_devices
    for d in range(stages):
        assert in_flight(one_f_one_b, graph, placement, d) <= min(microbatches, stages - d)
    interleaved = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=microbatches, schedule="interleaved-1f1b", record=True)
    assert interleaved.microbatch_start.tolist() == one_f_one_b.microbatch_start.tolist()
    assert interleaved.activation_memory.tolist() == one_f_one_b.activation_memory.tolist()


# ------------------------------------------------ fixed costs under pipelined micro-batches
def test_fixed_op_and_link_costs_are_paid_by_every_microbatch():
    # f0 (device 0) -> f1 (device 1). Step times: f0 4 of which 1 fixed, f1 4 none fixed, the
    # transfer 2 of which 1 fixed (latency). M = 2, one micro-batch: f0 1 + 3/2 = 2.5, f1 2,
    # transfer 1 + 1/2 = 1.5. d0: f0 [0, 2.5], [2.5, 5]; link [2.5, 4], [5, 6.5];
    # d1: f1 [4, 6], [6.5, 8.5] -> 8.5 (7 if everything were divided by M).
    graph = graph_of({"f0": 4.0, "f1": 4.0}, [("f0", "f1", 2.0)])
    cluster = cluster_of(2)
    plain = CostTable.build(graph, cluster)
    op_fixed = np.array([[1.0, 1.0], [0.0, 0.0]])
    edge_fixed = np.array([[[0.0, 1.0], [1.0, 0.0]]])
    costs = CostTable(plain.op_time, plain.edge_time, "s", op_fixed=op_fixed, edge_fixed=edge_fixed)
    placement = place(graph, {"f0": 0, "f1": 1})
    result = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=2, record=True)
    assert result.microbatch_start.T.tolist() == [[0.0, 2.5], [4.0, 6.5]]
    assert result.step_time == 8.5
    assert simulate(graph, cluster, plain, placement, objective="pipelined", microbatches=2).step_time == 7.0
    # M = 1 and the latency objective are unchanged by fixed parts
    assert simulate(graph, cluster, costs, placement).step_time == simulate(graph, cluster, plain, placement).step_time == 10.0
    op_time, edge_time = costs.microbatch_scaled(3)
    assert op_time.tolist() == [[6.0, 6.0], [4.0, 4.0]]
    assert edge_time[:, costs.link_class].tolist() == [[[0.0, 4.0], [4.0, 0.0]]]


def test_analytic_cost_table_records_launch_cost_and_latency_as_fixed():
    # one matmul and one optimizer update on 2 accelerators (launch 5 us, link latency 3 us)
    graph = OpGraph.build(
        [{"name": "mm", "kind": "matmul", "flops": 2e9, "bytes_accessed": 1e6, "output_bytes": 4e3}, {"name": "adam", "kind": "optimizer", "bytes_accessed": 1e6, "is_backward": True}],
        [{"src": "mm", "dst": "adam", "bytes": 4e3}],
    )
    cluster = Cluster.build("two", [device("d0"), device("d1")], intra_host=(1e9, 3e-6))
    costs = CostTable.build(graph, cluster)
    assert costs.op_fixed.tolist() == [[5e-6, 5e-6], [0.0, 0.0]]  # an update runs once per step: nothing fixed per micro-batch
    assert costs.edge_fixed[0].tolist() == [[0.0, 3e-6], [3e-6, 0.0]]
    assert costs.edge_time[0, 0, 1] == pytest.approx(3e-6 + 4e3 / 1e9, rel=1e-12)


@RANDOM
@given(problems(), st.floats(0.2, 4.0))
def test_score_skips_the_buffers_only_when_they_cannot_overflow(problem, scale):
    """`Simulator.score`'s shortcut (makespan only when every buffer fits at once) gives the
    same (step time, overflow) as the full memory model, with capacities around the peak."""
    graph, cluster, costs, placement, microbatches = problem
    objective = "pipelined" if microbatches > 1 else "latency"
    peak = Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches).run(placement).peak_memory
    capacity = max(float(peak.max()) * scale, 1.0)
    tight = dataclasses.replace(cluster, devices=tuple(dataclasses.replace(d, memory=capacity) for d in cluster.devices))
    simulator = Simulator(graph, tight, costs, objective=objective, microbatches=microbatches)
    result = simulator.run(placement)
    assert simulator.score(placement) == (result.step_time, result.total_overflow)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), k=st.integers(2, 5), memory=st.floats(1e5, 1e9))
def test_the_buffer_bound_kernel_matches_its_definition(seed: int, k: int, memory: float) -> None:
    """`Simulator._surely_fits` (a numba kernel) against the sums it stands for, written in numpy."""
    from rlplace.synthetic import fork_join

    graph = fork_join(60, seed=seed, training=True)
    simulator = Simulator(graph, cluster_of(k, memory=memory), CostTable.build(graph, cluster_of(k, memory=memory)))
    rng = np.random.default_rng(seed)
    for _ in range(5):
        p = rng.integers(0, k, graph.num_ops).astype(np.int64)
        bound = np.bincount(p, weights=graph.resident_bytes, minlength=k) + np.bincount(p, weights=graph.work_bytes + graph.output_bytes, minlength=k)
        cross = p[graph.edge_src] != p[graph.edge_dst]
        bound += np.bincount(p[graph.edge_dst[cross]], weights=graph.output_bytes[graph.edge_src[cross]], minlength=k)
        assert simulator._surely_fits(p) == bool(np.all(bound <= memory))
