"""``accelerate``: Hugging Face accelerate's ``infer_auto_device_map``, expanded to ops.

accelerate fills devices in order with the model's modules by parameter and buffer size
only (no compute, no activations): a memory-only baseline. This module

1. calls ``accelerate.infer_auto_device_map(module, max_memory=..., no_split_module_classes=...)``
   on the (meta-device) model, with one entry per accelerator of the cluster (integer keys in
   cluster order) and ``"cpu"`` for the cluster's first CPU if it has one. accelerate counts
   parameter bytes only, while a training step keeps gradients and optimizer state too, so
   each device's memory is scaled by ``param_bytes / resident_bytes`` of the graph;
   ``no_split_module_classes`` defaults to the model's ``_no_split_modules`` (transformers
   models declare their decoder layers there);
2. maps every op to the device of the longest module path in the map that owns it, reading
   each op's module path from ``graph.meta["module_paths"]`` (written by ``rlplace.capture``:
   a list in graph order, or a mapping op name -> path; ``""`` is the root module). An op
   that no entry owns takes the device of its first producer that has one, else of its first
   consumer that has one, else the first device of the map;
3. keeps colocation classes together (the class follows its first op), then moves units off
   devices that cannot run them or lack memory (`rlplace.rules.repair_estimate`).

Graphs without a PyTorch module (graph files, dnn-partitioning data) cannot use it: `place`
raises `RlplaceError`; `place_module` is the entry point, and ``run_method`` passes the module.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rlplace.baselines.adjacency import EdgeIndex
from rlplace.cluster import CPU, Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize, prepare, repair_estimate

NO_MODULE_ERROR = "accelerate needs a PyTorch model (MODEL as file.py:function or zoo:NAME); graph files carry no nn.Module"


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", seed: int = 0, microbatches: int = 1, schedule: str = "gpipe") -> Placement:
    """Always raises: the method needs the model's ``nn.Module`` (use `place_module`)."""
    del graph, cluster, costs, objective, seed, microbatches, schedule
    raise RlplaceError(NO_MODULE_ERROR)


def place_module(
    module: Any,
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    no_split_module_classes: Sequence[str] | None = None,
) -> Placement:
    """accelerate's device map of ``module`` expanded to the ops of ``graph`` (module docstring);
    ``microbatches`` and ``schedule`` set the memory estimate of the repair and the final check."""
    del seed
    if module is None:
        raise RlplaceError(NO_MODULE_ERROR)
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    device_map = infer_device_map(module, graph, cluster, no_split_module_classes=no_split_module_classes)
    placement = expand_device_map(device_map, module_paths(graph), graph)
    assignment = repair_estimate(graph, cluster, units, units.contract(placement), budget)
    return finalize(
        graph, cluster, costs, units.expand(assignment), objective=objective, method="accelerate", microbatches=microbatches, schedule=schedule
    )


def infer_device_map(module: Any, graph: OpGraph, cluster: Cluster, *, no_split_module_classes: Sequence[str] | None = None) -> dict[str, int]:
    """accelerate's map module path -> cluster device index (``"disk"`` offload is an error)."""
    from accelerate import infer_auto_device_map

    accelerators = [i for i, d in enumerate(cluster.devices) if d.category != CPU]
    cpus = [i for i, d in enumerate(cluster.devices) if d.category == CPU]
    resident = float(np.sum(graph.resident_bytes))
    share = float(np.sum(graph.param_bytes)) / resident if resident > 0 else 1.0
    max_memory: dict[int | str, int] = {slot: _memory_bytes(cluster.devices[d].memory * share) for slot, d in enumerate(accelerators)}
    if cpus:
        max_memory["cpu"] = _memory_bytes(cluster.devices[cpus[0]].memory * share)
    if no_split_module_classes is None:
        no_split_module_classes = list(getattr(module, "_no_split_modules", None) or [])
    modeling_logger = logging.getLogger("accelerate.utils.modeling")
    level = modeling_logger.level
    modeling_logger.setLevel(logging.ERROR)  # it warns that cluster GPUs are absent from this machine
    try:
        raw = infer_auto_device_map(module, max_memory=max_memory, no_split_module_classes=list(no_split_module_classes))
    finally:
        modeling_logger.setLevel(level)
    device_map: dict[str, int] = {}
    for path, slot in raw.items():
        if isinstance(slot, int) and not isinstance(slot, bool):
            device_map[path] = accelerators[slot]
        elif slot == "cpu" and cpus:
            device_map[path] = cpus[0]
        else:
            where = repr(path) if path else "the whole model"
            raise RlplaceError(
                f"accelerate could not fit {where} on the devices of cluster {cluster.name!r} (it offloaded it to {slot}); "
                "use devices with more memory"
            )
    return device_map


def module_paths(graph: OpGraph) -> list[str]:
    """Module path of each op in graph order, from ``graph.meta["module_paths"]``."""
    raw = graph.meta.get("module_paths")
    if isinstance(raw, Mapping):
        return [str(raw.get(name, "")) for name in graph.names]
    if isinstance(raw, Sequence) and not isinstance(raw, str) and len(raw) == graph.num_ops:
        return [str(path) for path in raw]
    raise RlplaceError(
        f"graph {graph.name!r} does not record which module owns each op (meta['module_paths']); "
        "accelerate needs a graph captured from the model by rlplace.capture"
    )


def expand_device_map(device_map: Mapping[str, int], paths: Sequence[str], graph: OpGraph) -> np.ndarray:
    """(n,) device per op: the device of the longest map entry owning the op's module (module docstring)."""
    n = graph.num_ops
    devices = np.full(n, -1, dtype=np.int64)
    for op, path in enumerate(paths):
        owner = _owner(device_map, path)
        if owner is not None:
            devices[op] = device_map[owner]
    if np.all(devices >= 0):
        return devices
    edges = EdgeIndex.build(graph)
    for op in range(n):
        if devices[op] < 0:
            sources = devices[graph.edge_src[edges.incoming(op)]]
            sources = sources[sources >= 0]
            if sources.size:
                devices[op] = sources[0]
    for op in range(n - 1, -1, -1):
        if devices[op] < 0:
            targets = devices[graph.edge_dst[edges.outgoing(op)]]
            targets = targets[targets >= 0]
            if targets.size:
                devices[op] = targets[0]
    default = next(iter(device_map.values()), 0)
    devices[devices < 0] = default
    return devices


def _owner(device_map: Mapping[str, int], path: str) -> str | None:
    """Longest key of ``device_map`` that is ``path`` or an ancestor module of it."""
    candidate = path
    while True:
        if candidate in device_map:
            return candidate
        if not candidate:
            return None
        candidate = candidate.rpartition(".")[0]


def _memory_bytes(value: float) -> int:
    return int(min(value, 2**62)) if np.isfinite(value) else 2**62
