"""`rlplace measure --trace`: one traced step per rank beside the simulated schedule; the
keep-awake decision calibration records."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import psutil

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.measure.calibrate import keep_awake_helps
from rlplace.measure.timeline import MEASURED_PID_BASE, Span, StepRecorder, merged_trace, process_names, rank_summary
from rlplace.simulate import simulate
from rlplace.trace import chrome_trace


def simulated_two_devices() -> dict:
    cpu = Device("d", "cpu", "cpu", 1e9, 1e9, 1e9, 1e9)
    import dataclasses

    cluster = Cluster.build("two", [dataclasses.replace(cpu, name="rank0"), dataclasses.replace(cpu, name="rank1")], intra_host=(1e9, 1e-5))
    graph = OpGraph.build([{"name": "a", "kind": "matmul", "flops": 1e6}, {"name": "b", "kind": "matmul", "flops": 1e6}], [{"src": "a", "dst": "b", "bytes": 1e3}])
    costs = CostTable.build(graph, cluster)
    return chrome_trace(simulate(graph, cluster, costs, np.array([0, 1]), record=True), graph, cluster)


def test_merged_trace_has_one_track_per_rank_and_per_simulated_device() -> None:
    ranks = [
        [Span("forward segment 0", "compute", 10.0, 10.004), Span("send value a to 1", "send", 10.003, 10.0031)],
        [Span("forward segment 1", "compute", 10.001, 10.009), Span("recv value a from 0", "wait", 10.001, 10.005)],
    ]
    trace = merged_trace(simulated_two_devices(), ranks, meta={"measured_step_time_s": 0.009})
    names = process_names(trace)
    assert sorted(n for n in names.values() if n.startswith("measured")) == ["measured rank0", "measured rank1"]
    assert sorted(n for n in names.values() if n.startswith("simulated")) == ["simulated rank0 (cpu)", "simulated rank1 (cpu)"]
    measured = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] >= MEASURED_PID_BASE]
    # Times in microseconds from the earliest span of any rank.
    assert sorted((e["pid"] - MEASURED_PID_BASE, round(e["ts"]), round(e["dur"])) for e in measured) == [(0, 0, 4000), (0, 3000, 100), (1, 1000, 4000), (1, 1000, 8000)]
    assert trace["otherData"]["measured_step_time_s"] == 0.009
    summary = rank_summary(ranks[1])
    assert round(summary["wait"] * 1e6) == 4000 and round(summary["compute"] * 1e6) == 4000 and round(summary["step"] * 1e6) == 8000


def test_recorder_nests_spans_in_call_order() -> None:
    ticks = iter(range(10))
    recorder = StepRecorder(clock=lambda: float(next(ticks)))
    with recorder.span("outer", "compute"), recorder.span("inner", "wait", bytes=4):
        pass
    assert [(s.name, s.start, s.end) for s in recorder.spans] == [("inner", 1.0, 2.0), ("outer", 0.0, 3.0)]
    assert recorder.spans[0].args == {"bytes": 4}


def test_measure_trace_writes_ranks_beside_the_simulation(tmp_path: Path, capsys) -> None:
    from rlplace.measure.cli import run_measure_command
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import MeasureSetup, local_cpu_cluster
    from rlplace.placement import respect_colocation

    model = "rlplace.measure.models:two_branch"
    setup = MeasureSetup.prepare(ModelRecipe(model, batch_size=4), local_cpu_cluster(2))
    right = np.array([str(p).startswith("right") for p in setup.graph.meta["module_paths"]])
    placement = tmp_path / "placement.json"
    placement.write_text(json.dumps([int(d) for d in respect_colocation(setup.graph, right.astype(np.int64))]))
    out = tmp_path / "trace.json"
    args = argparse.Namespace(model=model, placement=str(placement), batch_size=4, backend="gloo", steps=1, warmup=0, json=True, trace=str(out), timeout=120.0)
    assert run_measure_command(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["trace"] == str(out) and payload["keep_awake"] is False
    trace = json.loads(out.read_text())
    names = process_names(trace)
    assert sorted(n for n in names.values() if n.startswith("measured")) == ["measured rank0", "measured rank1"]
    assert len([n for n in names.values() if n.startswith("simulated")]) == 2
    spans = {pid: [e for e in trace["traceEvents"] if e["ph"] == "X" and e["pid"] == pid] for pid in (MEASURED_PID_BASE, MEASURED_PID_BASE + 1)}
    # One branch per rank: each rank computes a forward and a backward segment; the head's rank
    # waits for the other branch's output and the other rank for its gradient.
    for events in spans.values():
        assert any(e["name"].startswith("forward segment") for e in events) and any(e["name"].startswith("backward segment") for e in events)
        assert any(e["cat"] == "wait" for e in events)
    assert not [p for p in psutil.Process().children(recursive=True) if "rlplace.measure.distributed" in " ".join(p.cmdline())]


def test_keep_awake_is_chosen_only_when_it_speeds_splits_and_spares_one_rank() -> None:
    assert keep_awake_helps({"split_idle": 0.030, "split_awake": 0.020, "single_idle": 0.010, "single_awake": 0.0101})
    assert not keep_awake_helps({"split_idle": 0.030, "split_awake": 0.028, "single_idle": 0.010, "single_awake": 0.010})  # under 10 % faster
    assert not keep_awake_helps({"split_idle": 0.030, "split_awake": 0.020, "single_idle": 0.010, "single_awake": 0.012})  # one rank slower
    assert not keep_awake_helps({})


def test_run_delay_never_decreases() -> None:
    from rlplace.measure.ranks import run_delay

    first = run_delay()
    sum(range(200_000))
    second = run_delay()
    assert (first != first and second != second) or 0.0 <= first <= second  # NaN off Linux
