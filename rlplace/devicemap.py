"""accelerate device maps of an op placement, and the modules a model keeps whole.

`module_device_map` turns a placement of a captured graph into the ``device_map`` that
``transformers``' ``from_pretrained(device_map=...)`` and ``accelerate.dispatch_model`` take:
keys are module paths (``""`` is the whole model) or parameter names, values are what
accelerate accepts: the index of an accelerator among the cluster's accelerators (in cluster
order: ``0`` is the first GPU of the cluster, whatever its kind) or ``"cpu"`` for every CPU
device. Tied parameters (GPT-2's ``lm_head.weight`` is ``transformer.wte.weight``) follow the
parameter capture recorded, so the map covers every key of the model's ``state_dict``.

`keep_modules_whole` adds the colocation constraint that models declaring
``_no_split_modules`` ask for (transformers lists its decoder layers there): every op owned by
one instance of such a class, forward, backward and optimizer ops alike, joins one colocation
class, so no method splits the instance over devices and the device map names it whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rlplace.cluster import CPU, Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph

DeviceMapValue = int | str


def accelerate_devices(cluster: Cluster) -> list[DeviceMapValue]:
    """Per cluster device, its accelerate value: accelerator index in cluster order, or ``"cpu"``."""
    values: list[DeviceMapValue] = []
    accelerators = 0
    for device in cluster.devices:
        if device.category == CPU:
            values.append("cpu")
        else:
            values.append(accelerators)
            accelerators += 1
    return values


def module_device_map(
    graph: OpGraph, op_placement: Sequence[int] | np.ndarray, cluster: Cluster, *, state_dict_keys: Iterable[str] | None = None
) -> dict[str, DeviceMapValue]:
    """accelerate ``device_map`` ``{module path or parameter name: device}`` of a placement.

    A parameter goes where the op that owns it runs (the first op listing it in
    ``graph.meta["op_params"]`` with parameter bytes, else the first op listing it); buffers
    (``op_buffers``) likewise; the other names of a tied parameter (``meta["param_aliases"]``)
    go with it. ``state_dict_keys`` (the model's, when known) adds names no op uses, each on
    the device of the parameter sharing the longest module prefix with it. A module's own
    tensors share one value (`_whole_modules`). A module whose tensors all share one value is
    one key (``""`` for the whole model); a module split across values is replaced by its
    children (and its own tensors by full name, which happens only for the root's own tensors).
    """
    op_params = graph.meta.get("op_params")
    if not isinstance(op_params, Sequence) or len(op_params) != graph.num_ops:
        raise RlplaceError(
            f"graph {graph.name!r} does not record which op owns which parameter (meta['op_params']); device maps need a graph captured from a module"
        )
    placement = np.asarray(op_placement)
    if placement.shape != (graph.num_ops,):
        raise RlplaceError(f"placement has {placement.size} entries but graph {graph.name!r} has {graph.num_ops} ops; give one device per op")
    if placement.size and (placement.min() < 0 or placement.max() >= cluster.num_devices):
        raise RlplaceError(f"placement uses device indices outside 0..{cluster.num_devices - 1} of cluster {cluster.name!r}")
    values = accelerate_devices(cluster)
    device_of = _tensor_devices(graph, placement)
    owned = set(device_of)
    for canonical, aliases in (graph.meta.get("param_aliases") or {}).items():
        if canonical in device_of:
            for alias in aliases:
                device_of.setdefault(str(alias), device_of[canonical])
    if state_dict_keys is not None and device_of:
        for name in state_dict_keys:
            if name not in device_of:
                device_of[name] = device_of[_nearest(name, device_of)]
    if not device_of:
        return {}
    return _collapse(_whole_modules({name: values[device] for name, device in device_of.items()}, owned))


def _tensor_devices(graph: OpGraph, placement: np.ndarray) -> dict[str, int]:
    """Tensor name -> device index of the op that owns it (module_device_map's rule)."""
    device_of: dict[str, int] = {}
    weak: dict[str, int] = {}
    for key in ("op_params", "op_buffers"):
        per_op = graph.meta.get(key) or ()
        if len(per_op) != graph.num_ops:
            continue
        for op, names in enumerate(per_op):
            for name in names or ():
                target = device_of if key == "op_params" and graph.param_bytes[op] > 0 else weak
                target.setdefault(str(name), int(placement[op]))
    for name, device in weak.items():
        device_of.setdefault(name, device)
    return device_of


def _whole_modules(value_of: Mapping[str, DeviceMapValue], owned: set[str]) -> dict[str, DeviceMapValue]:
    """Every module's own tensors on one value, so that map keys are module paths only.

    The value is that of the module's first own tensor an op owns (tied aliases and unused
    tensors follow it), else of its first own tensor. accelerate's ``check_device_map`` warns
    about keys that are not modules, and a module's hook runs it on one device.
    """
    by_module: dict[str, list[str]] = {}
    for name in value_of:
        by_module.setdefault(name.rpartition(".")[0], []).append(name)
    result: dict[str, DeviceMapValue] = {}
    for names in by_module.values():
        lead = next((name for name in names if name in owned), names[0])
        for name in names:
            result[name] = value_of[lead]
    return result


def _nearest(name: str, known: Mapping[str, int]) -> str:
    """The key of ``known`` sharing the longest leading module path with ``name``."""
    parts = name.split(".")

    def shared(other: str) -> int:
        count = 0
        for a, b in zip(parts, other.split("."), strict=False):
            if a != b:
                break
            count += 1
        return count

    return max(known, key=shared)


def _collapse(value_of: Mapping[str, DeviceMapValue]) -> dict[str, DeviceMapValue]:
    """Fewest keys: a module whose tensors share one value is one key (see module_device_map)."""
    children: dict[str, set[str]] = {"": set()}
    own: dict[str, list[str]] = {"": []}
    for name in value_of:
        module = name.rpartition(".")[0]
        own.setdefault(module, []).append(name)
        node = module
        while node:
            parent = node.rpartition(".")[0]
            children.setdefault(node, set())
            own.setdefault(node, [])
            if node in children.setdefault(parent, set()):
                break
            children[parent].add(node)
            node = parent
    found: dict[str, set[DeviceMapValue]] = {}

    def subtree(node: str) -> set[DeviceMapValue]:
        values = {value_of[name] for name in own.get(node, [])}
        for child in children.get(node, ()):
            values |= subtree(child)
        found[node] = values
        return values

    subtree("")
    result: dict[str, DeviceMapValue] = {}
    stack = [""]
    while stack:
        node = stack.pop()
        if len(found[node]) == 1:
            result[node] = next(iter(found[node]))
            continue
        for name in own.get(node, []):
            result[name] = value_of[name]
        stack.extend(sorted(children.get(node, ()), reverse=True))
    return dict(sorted(result.items(), key=lambda item: _natural_key(item[0])))


def _natural_key(path: str) -> list[tuple[int, int | str]]:
    return [(0, int(part)) if part.isdigit() else (1, part) for part in path.split(".")]


# --------------------------------------------------------------------------- modules kept whole
def no_split_classes(module: Any) -> list[str]:
    """The class names ``module`` declares in ``_no_split_modules`` (transformers models), sorted."""
    declared = getattr(module, "_no_split_modules", None) or ()
    return sorted(str(name) for name in declared)


def no_split_paths(module: Any, classes: Iterable[str] | None = None) -> list[str]:
    """Module paths of the outermost instances of ``classes`` (default: the model's own list)."""
    wanted = set(no_split_classes(module) if classes is None else classes)
    if not wanted or not hasattr(module, "named_modules"):
        return []
    paths: list[str] = []
    for path, sub in module.named_modules():
        if type(sub).__name__ in wanted and not any(_within(path, outer) for outer in paths):
            paths.append(path)
    return paths


def _within(path: str, outer: str) -> bool:
    return outer == "" or path == outer or path.startswith(outer + ".")


def keep_modules_whole(graph: OpGraph, paths: Sequence[str]) -> OpGraph:
    """``graph`` with the ops of each module in ``paths`` merged into one colocation class.

    An op belongs to a module when its ``meta["module_paths"]`` entry is the module's path or
    below it (capture gives backward ops their forward op's module). Existing classes that
    touch one module merge with it (union of classes), so forward/backward/optimizer ties hold.
    Returns ``graph`` itself when no op falls in any of the modules.
    """
    owners = graph.meta.get("module_paths")
    if not paths or not isinstance(owners, Sequence) or len(owners) != graph.num_ops:
        return graph
    n = graph.num_ops
    parent = np.arange(n, dtype=np.int64)

    def find(i: int) -> int:
        root = i
        while parent[root] != root:
            root = int(parent[root])
        while parent[i] != root:
            parent[i], i = root, int(parent[i])
        return root

    def union(a: int, b: int) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    touched = np.zeros(n, dtype=bool)
    for path in paths:
        members = [op for op, owner in enumerate(owners) if _within(str(owner), path)]
        touched[members] = True
        for op in members[1:]:
            union(members[0], op)
    if not touched.any():
        return graph
    first_of_class: dict[int, int] = {}
    for op, label in enumerate(graph.coloc.tolist()):
        if label != NO_CLASS:
            union(first_of_class.setdefault(label, op), op)
    roots = np.array([find(op) for op in range(n)], dtype=np.int64)
    in_class = (graph.coloc != NO_CLASS) | touched
    coloc = np.full(n, NO_CLASS, dtype=np.int64)
    _, labels = np.unique(roots[in_class], return_inverse=True)
    coloc[in_class] = labels
    meta = {**graph.meta, "kept_whole": list(paths)}
    return dataclasses.replace(graph, coloc=coloc, meta=meta)
