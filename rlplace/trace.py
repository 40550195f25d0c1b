"""Chrome trace export of a simulated schedule (opens in Perfetto and chrome://tracing).

Layout: one process per device (named after it); in it thread 0 is the device's compute
(one ``ph: "X"`` complete event per op and micro-batch, ``args.microbatch`` naming it: every
micro-batch is drawn where the pipeline schedule, ``otherData.schedule``, ran it) and thread
``1 + b`` is the link from this device to device ``b`` (one event per transfer; a link
carries one transfer at a time, so events on a track never overlap). Process and thread names come as ``ph: "M"`` metadata
events. Times are microseconds (``ts``, ``dur``), converted from the graph's time unit
(seconds for analytic graphs; a unit the converter does not know, such as the
dnn-partitioning files' ``"unit"``, is drawn as if it were seconds and named in
``otherData``).

The ``throughput`` objective has no schedule: each device's ops are drawn back to back from
time 0 (one steady-state period), followed by one ``transfers`` event as long as the
device's transfer load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.io import write_text_atomic
from rlplace.simulate import SimResult

#: Microseconds per time unit.
MICROSECONDS_PER_UNIT = {"s": 1e6, "ms": 1e3, "us": 1.0, "ns": 1e-3}
COMPUTE_TID = 0


def write_chrome_trace(result: SimResult, graph: OpGraph, cluster: Cluster, path: str | Path) -> None:
    """Write `chrome_trace` of ``result`` to ``path`` as JSON, atomically."""
    write_text_atomic(path, json.dumps(chrome_trace(result, graph, cluster)))


def chrome_trace(result: SimResult, graph: OpGraph, cluster: Cluster) -> dict[str, Any]:
    """The trace as a JSON-ready dict ``{"traceEvents": [...], ...}``.

    ``result`` must come from ``run(..., record=True)`` (or ``simulate(..., record=True)``)
    unless its objective is ``throughput``.
    """
    n, k = graph.num_ops, cluster.num_devices
    if result.placement is None or result.placement.shape != (n,) or result.op_duration is None:
        raise RlplaceError(f"the simulation result does not belong to graph {graph.name!r} ({n} ops); simulate this graph first")
    if result.busy_time.shape != (k,):
        raise RlplaceError(f"the simulation result has {result.busy_time.shape[0]} devices but cluster {cluster.name!r} has {k}")
    scale = MICROSECONDS_PER_UNIT.get(result.time_unit, 1e6)
    events: list[dict[str, Any]] = []
    for d, device in enumerate(cluster.devices):
        pid = d + 1
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": COMPUTE_TID, "args": {"name": f"{device.name} ({device.kind})"}})
        events.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": COMPUTE_TID, "args": {"sort_index": d}})
        events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": COMPUTE_TID, "args": {"name": "compute"}})
        for b, other in enumerate(cluster.devices):
            if b != d:
                events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": 1 + b, "args": {"name": f"send -> {other.name}"}})
    if result.objective == "throughput":
        events.extend(_throughput_events(result, graph, scale))
    else:
        if result.microbatch_start is None or result.transfers is None:
            raise RlplaceError("the simulation result has no recorded schedule; simulate with record=True to write a trace")
        events.extend(_schedule_events(result, graph, cluster, scale))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "graph": graph.name,
            "cluster": cluster.name,
            "objective": result.objective,
            "microbatches": result.microbatches,
            "schedule": result.schedule,
            "step_time": float(result.step_time),
            "time_unit": result.time_unit,
            "microseconds_per_time_unit": scale,
        },
    }


def _op_event(graph: OpGraph, op: int, device: int, microbatch: int, start: float, duration: float, scale: float) -> dict[str, Any]:
    return {
        "ph": "X",
        "name": graph.names[op],
        "cat": "backward" if graph.is_backward[op] else "forward",
        "ts": start * scale,
        "dur": duration * scale,
        "pid": device + 1,
        "tid": COMPUTE_TID,
        "args": {"op": op, "kind": graph.kinds[op], "microbatch": microbatch},
    }


def _schedule_events(result: SimResult, graph: OpGraph, cluster: Cluster, scale: float) -> list[dict[str, Any]]:
    assert result.microbatch_start is not None and result.transfers is not None and result.op_duration is not None and result.placement is not None
    events = []
    per_microbatch = result.op_duration / result.microbatches
    for mb in range(result.microbatches):
        for op in range(graph.num_ops):
            device = int(result.placement[op])
            events.append(_op_event(graph, op, device, mb, float(result.microbatch_start[mb, op]), float(per_microbatch[op]), scale))
    log = result.transfers
    for x in range(log.num_transfers):
        op, src, dst = int(log.op[x]), int(log.src[x]), int(log.dst[x])
        events.append(
            {
                "ph": "X",
                "name": f"{graph.names[op]} -> {cluster.devices[dst].name}",
                "cat": "transfer",
                "ts": float(log.start[x]) * scale,
                "dur": float(log.finish[x] - log.start[x]) * scale,
                "pid": src + 1,
                "tid": 1 + dst,
                "args": {"op": op, "microbatch": int(log.microbatch[x]), "src": cluster.devices[src].name, "dst": cluster.devices[dst].name},
            }
        )
    return events


def _throughput_events(result: SimResult, graph: OpGraph, scale: float) -> list[dict[str, Any]]:
    assert result.op_start is not None and result.op_duration is not None and result.placement is not None
    events = [_op_event(graph, op, int(result.placement[op]), 0, float(result.op_start[op]), float(result.op_duration[op]), scale) for op in range(graph.num_ops)]
    load = result.device_load if result.device_load is not None else result.busy_time
    for d in np.flatnonzero(load > result.busy_time):
        events.append(
            {
                "ph": "X",
                "name": "transfers",
                "cat": "transfer",
                "ts": float(result.busy_time[d]) * scale,
                "dur": float(load[d] - result.busy_time[d]) * scale,
                "pid": int(d) + 1,
                "tid": COMPUTE_TID,
                "args": {"transfer_load": float(load[d] - result.busy_time[d])},
            }
        )
    return events
