"""Importer for the profiled graphs of Tarnawski et al. (NeurIPS 2020), "dnn-partitioning".

A file holds one problem: a DAG of profiled nodes and the machine it must be split over
(``maxFPGAs`` identical accelerators of ``maxSizePerFPGA`` bytes, plus ``maxCPUs`` CPUs).
This module turns it into an `OpGraph` with *given* times and a matching `Cluster`, and
reads the authors' split files (``fpgas[i].nodes`` / ``cpus[j].nodes``) into placements.

Mapping of the fields (see ``shared/data/dnn-partitioning/README.md``):

========================  =====================================================
file                      rlplace
========================  =====================================================
node ``id``               op name ``str(id)`` (the file's ids stay the op names)
``fpgaLatency``           ``given_times[:, 0]`` (class ``"accelerator"``);
                          ``inf`` when ``supportedOnFpga`` is 0
``cpuLatency``            ``given_times[:, 1]`` (class ``"cpu"``)
``size``                  ``resident_bytes`` = ``param_bytes`` (the paper's memory
                          model is static: the sum of sizes per accelerator)
(none)                    ``output_bytes`` = 0, ``work_bytes`` = 0
``isBackwardNode``        ``is_backward``
``colorClass``            ``coloc`` (ops of one class share a device)
edge ``cost``             ``edge_given_time`` (same for every edge leaving a node)
edge ``size``             ``edge_bytes`` (0 when absent)
``maxSizePerFPGA``        memory of each accelerator ``acc0 .. acc{maxFPGAs-1}``
``maxCPUs``               CPU devices ``cpu0 ..`` with unbounded memory
========================  =====================================================

Times are in the files' own unit, which the authors do not name; graphs carry
``time_unit = "unit"`` (`FILE_TIME_UNIT`) so no table claims milliseconds or seconds.
Device speeds and link bandwidths do not matter, because every op and edge time is given;
`Cluster` still requires positive numbers, so the devices carry the placeholder values
`PLACEHOLDER_FLOPS`, `PLACEHOLDER_BANDWIDTH` and links of `PLACEHOLDER_BANDWIDTH` bytes/s with
zero latency. Do not use such a cluster with an analytic graph.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.cluster import ACCELERATOR, CPU, Cluster, Device
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.io import read_json
from rlplace.limits import MAX_DEVICES, check_count
from rlplace.placement import Placement, as_placement

FORMAT_NAME = "dnn-partitioning"
FILE_TIME_UNIT = "unit"
TIME_CLASSES = (ACCELERATOR, CPU)
#: FLOP/s and bytes/s given to imported devices and links; never used, since times are given.
PLACEHOLDER_FLOPS = 1.0
PLACEHOLDER_BANDWIDTH = 1.0
#: Edges leaving one node must carry the same cost up to this relative difference.
_COST_TOLERANCE = 1e-6

_REQUIRED_TOP = ("maxSizePerFPGA", "maxFPGAs", "maxCPUs", "nodes", "edges")
_REQUIRED_NODE = ("id", "cpuLatency", "fpgaLatency")
_REQUIRED_EDGE = ("sourceId", "destId", "cost")


@dataclass(frozen=True, eq=False)
class DnnPartitioningProblem:
    """A dnn-partitioning file read into rlplace's data model.

    Attributes:
        graph: ops named ``str(id)`` with given times (classes ``accelerator``, ``cpu``).
        cluster: ``maxFPGAs`` accelerators ``acc0..`` then ``maxCPUs`` CPUs ``cpu0..``.
        node_ids: the file's node id -> op index in ``graph``.
    """

    graph: OpGraph
    cluster: Cluster
    node_ids: Mapping[int, int] = field(default_factory=dict)


def is_dnn_partitioning_data(data: Any) -> bool:
    """True when ``data`` (parsed JSON) looks like a dnn-partitioning graph file."""
    return isinstance(data, dict) and "nodes" in data and ("maxSizePerFPGA" in data or "maxFPGAs" in data)


def load_dnn_partitioning(path: str | Path) -> DnnPartitioningProblem:
    """Read a dnn-partitioning graph file; `RlplaceError` names the file and the bad field."""
    return dnn_partitioning_from_json(read_json(path), source=str(path))


def dnn_partitioning_from_json(data: Any, *, source: str = "<json>") -> DnnPartitioningProblem:
    """Build the problem from parsed JSON; ``source`` labels errors and ``graph.meta``."""
    if not isinstance(data, dict):
        raise RlplaceError(f"{source}: a dnn-partitioning file is a JSON object with {', '.join(_REQUIRED_TOP)}")
    for key in _REQUIRED_TOP:
        if key not in data:
            raise RlplaceError(f"{source}: dnn-partitioning file lacks field {key!r} (needs {', '.join(_REQUIRED_TOP)})")
    nodes, edges = data["nodes"], data["edges"]
    if not isinstance(nodes, list) or not isinstance(edges, list):
        raise RlplaceError(f"{source}: 'nodes' and 'edges' must be JSON lists")
    num_accelerators = _count(data["maxFPGAs"], "maxFPGAs", source, minimum=1)
    num_cpus = _count(data["maxCPUs"], "maxCPUs", source, minimum=0)
    check_count(num_accelerators + num_cpus, MAX_DEVICES, "MAX_DEVICES", f"{source}: maxFPGAs + maxCPUs devices")
    accelerator_memory = _number(data["maxSizePerFPGA"], "maxSizePerFPGA", source)
    if not accelerator_memory > 0:
        raise RlplaceError(f"{source}: maxSizePerFPGA must be positive, got {accelerator_memory!r}")

    name = Path(source).stem if source != "<json>" else FORMAT_NAME
    ops = [_node_to_op(node, index, source) for index, node in enumerate(nodes)]
    op_edges = _edges_to_op_edges(edges, source)
    debug_names = {str(node["id"]): str(node["name"]) for node in nodes if isinstance(node, dict) and "name" in node}
    graph = OpGraph.build(
        ops,
        op_edges,
        name=name,
        time_classes=TIME_CLASSES,
        time_unit=FILE_TIME_UNIT,
        meta={"source": source, "format": FORMAT_NAME, "debug_names": debug_names},
    )
    cluster = dnn_partitioning_cluster(num_accelerators, num_cpus, accelerator_memory, name=f"{name}-machine")
    if num_cpus == 0 and np.any(np.isinf(graph.given_times[:, 0])):
        bad = graph.names[int(np.argmax(np.isinf(graph.given_times[:, 0])))]
        raise RlplaceError(f"{source}: node {bad} is not supported on an accelerator and maxCPUs is 0; no device can run it")
    node_ids = {int(op_name): index for index, op_name in enumerate(graph.names)}
    return DnnPartitioningProblem(graph=graph, cluster=cluster, node_ids=node_ids)


def dnn_partitioning_cluster(num_accelerators: int, num_cpus: int, accelerator_memory: float, *, name: str = FORMAT_NAME) -> Cluster:
    """The machine of a dnn-partitioning file: accelerators ``acc0..``, then CPUs ``cpu0..``.

    Speeds and links are placeholders (see the module docstring): every time is given.
    """
    devices = [
        Device(
            name=f"acc{i}",
            kind=FORMAT_NAME,
            category=ACCELERATOR,
            fp32_flops=PLACEHOLDER_FLOPS,
            fp16_flops=PLACEHOLDER_FLOPS,
            memory=float(accelerator_memory),
            memory_bandwidth=PLACEHOLDER_BANDWIDTH,
        )
        for i in range(num_accelerators)
    ]
    devices += [
        Device(
            name=f"cpu{i}",
            kind=FORMAT_NAME,
            category=CPU,
            fp32_flops=PLACEHOLDER_FLOPS,
            fp16_flops=PLACEHOLDER_FLOPS,
            memory=math.inf,
            memory_bandwidth=PLACEHOLDER_BANDWIDTH,
        )
        for i in range(num_cpus)
    ]
    return Cluster.build(name, devices, intra_host=(PLACEHOLDER_BANDWIDTH, 0.0), meta={"format": FORMAT_NAME})


# ----------------------------------------------------------------------------- expert splits
def load_expert_placement(path: str | Path, problem: DnnPartitioningProblem) -> Placement:
    """Read a split in the authors' output format for ``problem``'s graph and cluster."""
    return load_expert_split(path, problem.graph, problem.cluster)


def load_expert_split(path: str | Path, graph: OpGraph, cluster: Cluster) -> Placement:
    """Read a split file (``fpgas[i].nodes``, ``cpus[j].nodes``) for any graph whose op names are the node ids.

    ``fpgas[i]`` goes to the i-th accelerator of ``cluster`` and ``cpus[j]`` to its j-th CPU.
    A node the file does not list goes where the other ops of its colocation class go (so a
    forward-only split applies to a training graph: each backward node follows its forward
    node's ``colorClass``); a node without a listed class-mate is an error that names it.
    """
    return expert_split_from_json(read_json(path), graph, cluster, source=str(path))


def expert_split_from_json(data: Any, graph: OpGraph, cluster: Cluster, *, source: str = "<json>") -> Placement:
    """Placement from a parsed split file; see `load_expert_split`."""
    if not isinstance(data, dict) or not isinstance(data.get("fpgas"), list):
        raise RlplaceError(f"{source}: an expert split is a JSON object with 'fpgas': [{{'nodes': [...]}}, ...] and optional 'cpus'")
    cpus = data.get("cpus", [])
    if not isinstance(cpus, list):
        raise RlplaceError(f"{source}: 'cpus' must be a list of {{'nodes': [...]}}")
    accelerators = [i for i, d in enumerate(cluster.devices) if d.category == ACCELERATOR]
    cpu_devices = [i for i, d in enumerate(cluster.devices) if d.category == CPU]
    devices = np.full(graph.num_ops, -1, dtype=np.int64)
    for label, machines, targets in (("fpgas", data["fpgas"], accelerators), ("cpus", cpus, cpu_devices)):
        for slot, machine in enumerate(machines):
            listed = _machine_nodes(machine, label, slot, source)
            if listed and slot >= len(targets):
                kind = "accelerators" if label == "fpgas" else "CPUs"
                raise RlplaceError(f"{source}: {label}[{slot}] lists nodes but cluster {cluster.name!r} has only {len(targets)} {kind}")
            for node_id in listed:
                op = _op_of_node(node_id, graph, source)
                if devices[op] not in (-1, targets[slot]):
                    raise RlplaceError(f"{source}: node {node_id} is listed on two devices ({cluster.device_names[devices[op]]} and {cluster.device_names[targets[slot]]})")
                devices[op] = targets[slot]
    _fill_from_colocation(devices, graph, cluster, source)
    return as_placement(devices, graph, cluster)


def _fill_from_colocation(devices: np.ndarray, graph: OpGraph, cluster: Cluster, source: str) -> None:
    """Give each unlisted op the device of its colocation class (in place on ``devices``)."""
    class_device: dict[int, int] = {}
    for op in np.flatnonzero((devices >= 0) & (graph.coloc != NO_CLASS)).tolist():
        label = int(graph.coloc[op])
        previous = class_device.setdefault(label, int(devices[op]))
        if previous != devices[op]:
            raise RlplaceError(
                f"{source}: node {graph.names[op]} is on {cluster.device_names[devices[op]]} but a node of its colorClass is on "
                f"{cluster.device_names[previous]}; nodes of one colorClass must share a device"
            )
    for op in np.flatnonzero(devices < 0).tolist():
        label = int(graph.coloc[op])
        if label == NO_CLASS or label not in class_device:
            raise RlplaceError(f"{source}: node {graph.names[op]} is not in the split and no node of its colorClass is; list it under some device")
        devices[op] = class_device[label]


def _machine_nodes(machine: Any, label: str, slot: int, source: str) -> list[int]:
    if not isinstance(machine, dict) or not isinstance(machine.get("nodes", []), list):
        raise RlplaceError(f"{source}: {label}[{slot}] must be an object with a 'nodes' list")
    listed = machine.get("nodes", [])
    for node_id in listed:
        if isinstance(node_id, bool) or not isinstance(node_id, int):
            raise RlplaceError(f"{source}: {label}[{slot}] lists {node_id!r}; node ids are integers")
    return listed


def _op_of_node(node_id: int, graph: OpGraph, source: str) -> int:
    try:
        return graph.index_of(str(node_id))
    except RlplaceError:
        raise RlplaceError(f"{source}: node {node_id} is not in graph {graph.name!r}; is this split for another graph?") from None


# ----------------------------------------------------------------------------- parsing helpers
def _node_to_op(node: Any, index: int, source: str) -> dict[str, Any]:
    if not isinstance(node, dict):
        raise RlplaceError(f"{source}: nodes[{index}] is not a JSON object")
    for key in _REQUIRED_NODE:
        if key not in node:
            raise RlplaceError(f"{source}: nodes[{index}] lacks field {key!r}")
    node_id = node["id"]
    if isinstance(node_id, bool) or not isinstance(node_id, int):
        raise RlplaceError(f"{source}: nodes[{index}] has id {node_id!r}; ids must be integers")
    where = f"node {node_id}"
    supported = node.get("supportedOnFpga", 1)
    accelerator_time = _number(node["fpgaLatency"], f"{where} fpgaLatency", source) if supported else math.inf
    color = node.get("colorClass")
    if color is not None and (isinstance(color, bool) or not isinstance(color, int)):
        raise RlplaceError(f"{source}: {where} has colorClass {color!r}; colorClass must be an integer")
    size = _number(node.get("size", 0.0), f"{where} size", source)
    return {
        "name": str(node_id),
        "kind": "op",
        "param_bytes": size,
        "resident_bytes": size,
        "output_bytes": 0.0,
        "is_backward": bool(node.get("isBackwardNode", False)),
        "coloc": color,
        "times": {ACCELERATOR: accelerator_time, CPU: _number(node["cpuLatency"], f"{where} cpuLatency", source)},
    }


def _edges_to_op_edges(edges: Sequence[Any], source: str) -> list[dict[str, Any]]:
    out_cost: dict[int, float] = {}
    op_edges = []
    for index, edge in enumerate(edges):
        if not isinstance(edge, dict) or any(key not in edge for key in _REQUIRED_EDGE):
            raise RlplaceError(f"{source}: edges[{index}] must be an object with {', '.join(_REQUIRED_EDGE)}")
        src, dst = edge["sourceId"], edge["destId"]
        cost = _number(edge["cost"], f"edge {src} -> {dst} cost", source)
        previous = out_cost.setdefault(src, cost)
        if abs(previous - cost) > _COST_TOLERANCE * max(1.0, abs(previous)):
            raise RlplaceError(f"{source}: edges leaving node {src} have different costs ({previous!r} and {cost!r}); the format needs one cost per node")
        op_edges.append({"src": str(src), "dst": str(dst), "bytes": _number(edge.get("size", 0.0), f"edge {src} -> {dst} size", source), "time": cost})
    return op_edges


def _number(value: Any, what: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RlplaceError(f"{source}: {what} is {value!r}; expected a number")
    return float(value)


def _count(value: Any, what: str, source: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value) or value < minimum:
        raise RlplaceError(f"{source}: {what} is {value!r}; expected an integer >= {minimum}")
    return int(value)


def shared_data_dir() -> Path:
    """Folder of the dnn-partitioning data (``graphs/``, ``human-experts/``).

    ``$RLPLACE_SHARED_DATA`` names the ``shared/data`` folder holding it; by default that is
    ``../shared/data`` beside a source checkout of rlplace.
    """
    override = os.environ.get("RLPLACE_SHARED_DATA")
    base = Path(override) if override else Path(__file__).resolve().parents[3] / "shared" / "data"
    return base / "dnn-partitioning"
