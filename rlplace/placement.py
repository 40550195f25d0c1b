"""Placements: which device runs each op, as a read-only int64 array in graph order.

A placement file is a JSON list of device indices in graph order, or a JSON object
``{op name: device name}`` covering every op. ``expert:FILE`` specs (dnn-partitioning splits)
are read by ``rlplace.formats.dnn_partitioning``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.io import read_json

Placement = np.ndarray
"""(n,) int64 device index per op, in graph order."""


def as_placement(devices: Sequence[int] | np.ndarray, graph: OpGraph, cluster: Cluster) -> Placement:
    """Check shape and range and return a read-only int64 copy."""
    placement = np.array(devices, dtype=np.int64)
    if placement.shape != (graph.num_ops,):
        raise RlplaceError(f"placement has {placement.size} entries but graph {graph.name!r} has {graph.num_ops} ops; give one device per op in graph order")
    bad = (placement < 0) | (placement >= cluster.num_devices)
    if np.any(bad):
        op = int(np.argmax(bad))
        raise RlplaceError(f"placement puts op {graph.names[op]!r} on device {int(placement[op])}, but cluster {cluster.name!r} has devices 0..{cluster.num_devices - 1}")
    placement.setflags(write=False)
    return placement


def check_constraints(graph: OpGraph, costs: CostTable, placement: Placement) -> None:
    """Raise `RlplaceError` if an op sits on a device it cannot run on, or a colocation class is split."""
    times = costs.op_time[np.arange(graph.num_ops), placement]
    if np.any(np.isinf(times)):
        op = int(np.argmax(np.isinf(times)))
        raise RlplaceError(f"op {graph.names[op]!r} cannot run on device {int(placement[op])} (the graph gives it no time there)")
    split = colocation_violation(graph, placement)
    if split is not None:
        raise RlplaceError(f"colocation class of op {graph.names[split]!r} is split across devices; ops of one class must share a device")


def colocation_violation(graph: OpGraph, placement: Placement) -> int | None:
    """Id of an op whose colocation class spans several devices, or None."""
    has_class = graph.coloc != NO_CLASS
    if not np.any(has_class):
        return None
    classes = graph.coloc[has_class]
    devices = placement[has_class]
    first_device = np.full(int(classes.max()) + 1, -1, dtype=np.int64)
    first_device[classes[::-1]] = devices[::-1]
    bad = first_device[classes] != devices
    if np.any(bad):
        return int(np.flatnonzero(has_class)[int(np.argmax(bad))])
    return None


def respect_colocation(graph: OpGraph, placement: Placement) -> Placement:
    """Move every op of a colocation class onto the device of the class's first op (in graph order).

    Shapes: placement (n,) int64; returns a new read-only (n,) int64 array.
    """
    fixed = np.array(placement, dtype=np.int64)
    has_class = graph.coloc != NO_CLASS
    if np.any(has_class):
        classes = graph.coloc[has_class]
        _, first_index = np.unique(classes, return_index=True)
        class_device = np.zeros(int(classes.max()) + 1, dtype=np.int64)
        class_device[classes[first_index]] = fixed[has_class][first_index]
        fixed[has_class] = class_device[classes]
    fixed.setflags(write=False)
    return fixed


def load_placement(path: str | Path, graph: OpGraph, cluster: Cluster) -> Placement:
    """Read a placement file (list of indices, or {op name: device name})."""
    data = read_json(path)
    if isinstance(data, dict) and "placement" in data and isinstance(data["placement"], list):
        data = data["placement"]  # the output of `rlplace place --json` / `--out`
    if isinstance(data, list):
        if not all(isinstance(v, int) and not isinstance(v, bool) and -(2**62) < v < 2**62 for v in data):
            raise RlplaceError(f"{path}: a placement list must hold integer device indices (0 .. devices - 1)")
        return as_placement(data, graph, cluster)
    if isinstance(data, dict):
        devices = np.full(graph.num_ops, -1, dtype=np.int64)
        for op_name, device_name in data.items():
            devices[graph.index_of(str(op_name))] = cluster.index_of(str(device_name))
        if np.any(devices < 0):
            missing = graph.names[int(np.argmax(devices < 0))]
            raise RlplaceError(f"{path}: op {missing!r} has no device; a placement object must name every op")
        return as_placement(devices, graph, cluster)
    raise RlplaceError(f"{path}: a placement is a JSON list of device indices or an object {{op name: device name}}")
