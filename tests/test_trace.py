"""Chrome trace export: one complete event per op (and micro-batch), per-link transfer tracks."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.simulate import simulate
from rlplace.trace import write_chrome_trace

TIMES = {"a": 1e-3, "b": 2e-3, "c": 3e-3, "d": 0.5e-3}


def problem() -> tuple[OpGraph, Cluster, CostTable]:
    ops = [{"name": name, "times": {"accelerator": t}, "is_backward": name == "d"} for name, t in TIMES.items()]
    edges = [{"src": "a", "dst": "b", "time": 1e-4}, {"src": "a", "dst": "c", "time": 1e-4}, {"src": "b", "dst": "d", "time": 2e-4}, {"src": "c", "dst": "d", "time": 2e-4}]
    graph = OpGraph.build(ops, edges, time_classes=("accelerator",))
    devices = [Device(f"gpu{i}", "custom", "accelerator", 1e12, 1e12, 1e9, 1e12) for i in range(3)]
    cluster = Cluster.build("three", devices, intra_host=(1e9, 0.0))
    return graph, cluster, CostTable.build(graph, cluster)


def load(path) -> list[dict]:
    data = json.loads(path.read_text())
    return data["traceEvents"]


def op_events(events: list[dict]) -> list[dict]:
    return [e for e in events if e["ph"] == "X" and e["cat"] in ("forward", "backward")]


def test_one_complete_event_per_op_with_its_duration_in_microseconds(tmp_path):
    graph, cluster, costs = problem()
    placement = np.array([0, 1, 2, 0])
    result = simulate(graph, cluster, costs, placement, record=True)
    path = tmp_path / "step.trace.json"
    write_chrome_trace(result, graph, cluster, path)
    events = load(path)
    ops = op_events(events)
    assert sorted(e["name"] for e in ops) == sorted(TIMES)
    for e in ops:
        assert e["dur"] == pytest.approx(TIMES[e["name"]] * 1e6, rel=1e-12)
        assert e["pid"] == int(placement[graph.index_of(e["name"])]) + 1
        assert e["tid"] == 0
        assert e["ts"] == pytest.approx(result.op_start[graph.index_of(e["name"])] * 1e6)
    transfers = [e for e in events if e["ph"] == "X" and e["cat"] == "transfer"]
    assert len(transfers) == 4  # a->gpu1, a->gpu2, b->gpu0, c->gpu0
    assert {(e["pid"], e["tid"]) for e in transfers} == {(1, 2), (1, 3), (2, 1), (3, 1)}  # tid 1 + destination
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names[(1, 0)] == "compute" and names[(1, 2)] == "send -> gpu1"
    processes = [e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"]
    assert processes == ["gpu0 (custom)", "gpu1 (custom)", "gpu2 (custom)"]


def test_pipelined_trace_has_every_microbatch_and_no_overlap_on_a_track(tmp_path):
    graph, cluster, costs = problem()
    result = simulate(graph, cluster, costs, np.array([0, 1, 1, 0]), objective="pipelined", microbatches=3, record=True)
    path = tmp_path / "pipe.trace.json"
    write_chrome_trace(result, graph, cluster, path)
    events = load(path)
    ops = op_events(events)
    assert len(ops) == 3 * graph.num_ops
    assert sorted({e["args"]["microbatch"] for e in ops}) == [0, 1, 2]
    for e in ops:
        assert e["dur"] == pytest.approx(TIMES[e["name"]] * 1e6 / 3, rel=1e-12)
    tracks: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in events:
        if e["ph"] == "X":
            tracks.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in tracks.values():
        spans.sort()
        for (_, end), (begin, _) in itertools.pairwise(spans):
            assert end <= begin + 1e-9


def test_throughput_trace_lays_ops_back_to_back(tmp_path):
    graph, cluster, costs = problem()
    result = simulate(graph, cluster, costs, np.array([0, 0, 1, 0]), objective="throughput")
    path = tmp_path / "load.trace.json"
    write_chrome_trace(result, graph, cluster, path)
    events = load(path)
    on_gpu0 = sorted((e["ts"], e["name"], e["dur"]) for e in op_events(events) if e["pid"] == 1)
    assert [name for _, name, _ in on_gpu0] == ["a", "b", "d"]
    assert on_gpu0[1][0] == pytest.approx(1e3) and on_gpu0[2][0] == pytest.approx(3e3)
    load_block = [e for e in events if e.get("cat") == "transfer" and e["pid"] == 1]
    assert load_block and load_block[0]["dur"] == pytest.approx((result.device_load[0] - result.busy_time[0]) * 1e6)


def test_unrecorded_schedule_is_refused(tmp_path):
    graph, cluster, costs = problem()
    result = simulate(graph, cluster, costs, np.array([0, 1, 2, 0]))
    with pytest.raises(RlplaceError, match="record=True"):
        write_chrome_trace(result, graph, cluster, tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_cli_simulate_with_a_schedule_reports_it_and_traces_every_microbatch(tmp_path, capsys):
    from rlplace.cli import main

    graph, _, _ = problem()
    graph_file = tmp_path / "g.json"
    graph.save(graph_file)
    placement = tmp_path / "p.json"
    placement.write_text("[0, 1, 1, 0]")
    trace = tmp_path / "t.json"
    args = ["simulate", str(graph_file), "--placement", str(placement), "--cluster", "2xV100-pcie", "--objective", "pipelined", "--microbatches", "3"]
    assert main([*args, "--schedule", "1f1b", "--json", "--trace", str(trace)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["schedule"], out["microbatches"]) == ("1f1b", 3)
    assert len(out["peak_activation_bytes"]) == 2
    data = json.loads(trace.read_text())
    assert data["otherData"]["schedule"] == "1f1b"
    ops = op_events(data["traceEvents"])
    assert sorted((e["args"]["op"], e["args"]["microbatch"]) for e in ops) == [(op, mb) for op in range(4) for mb in range(3)]


def test_the_env_takes_the_schedule_as_part_of_the_objective():
    import gymnasium as gym

    import rlplace.envs  # noqa: F401  (registers rlplace/Placement-v0)
    from rlplace.errors import RlplaceError
    from rlplace.synthetic import synthetic_graph

    graph = synthetic_graph("layered", n=15, seed=0, training=True)
    devices = [Device(f"gpu{i}", "custom", "accelerator", 10e12, 10e12, 16 * 2**30, 900e9) for i in range(2)]
    cluster = Cluster.build("two", devices, intra_host=(10e9, 1e-5))
    env = gym.make("rlplace/Placement-v0", models=[graph], clusters=[cluster], objective="pipelined", microbatches=4, schedule="1f1b").unwrapped
    simulator = env.problem(0, 0).simulator
    assert (simulator.schedule, simulator.microbatches) == ("1f1b", 4)
    with pytest.raises(RlplaceError, match="unknown schedule"):
        gym.make("rlplace/Placement-v0", models=[graph], clusters=[cluster], objective="pipelined", schedule="zero-bubble")
