"""The Python API: ``rlplace.place(model, example_inputs, cluster=..., method=...)``.

One call captures (or loads) the model, places it with the same `rlplace.pipeline.decide` the
command line runs, and returns a `PlacementResult` that writes the runtime artifacts::

    import torch, rlplace
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 10))
    result = rlplace.place(model, (torch.randn(32, 512),), cluster={0: "16GiB", 1: "16GiB", "cpu": "64GiB"}, device_kind="T4")
    result.step_time            # simulated seconds of one training step
    result.device_map()         # {"0": 0, "2": 1} style map for accelerate / from_pretrained

``model`` is an ``nn.Module`` (with ``example_inputs``: a tuple of positional tensors or a
dict of keyword tensors), an `OpGraph`, or a MODEL spec string of the command line
(``zoo:gpt2``, ``file.py:function``, ``synthetic:...``, ``graph.json``). ``cluster`` is a
preset name or YAML path, a `Cluster`, or accelerate's ``max_memory`` mapping (integer keys:
accelerators of catalog kind ``device_kind``; ``"cpu"``: the host CPU) joined by
``interconnect`` (a link kind of `rlplace.cluster_spec.LINK_KINDS`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.load import LoadedModel, load_model, resolve_cluster
from rlplace.pipeline import Decision, decide, default_objective

DEFAULT_METHOD = "local-search"


class PlacementResult:
    """A placement and its simulated step, with the files a runtime needs.

    Attributes:
        decision: the `rlplace.pipeline.Decision` (graph, cluster, simulator result).
        module: the placed ``nn.Module`` when one was given (for complete device maps), else None.
    """

    def __init__(self, decision: Decision, module: Any = None) -> None:
        self.decision = decision
        self.module = module

    @property
    def placement(self) -> np.ndarray:
        """(n,) int64 device index per op of ``graph`` (cluster order)."""
        return np.asarray(self.decision.placement)

    @property
    def step_time(self) -> float:
        """Simulated time of one step (latency, pipelined) or of the slowest stage (throughput), in ``time_unit``."""
        return float(self.decision.result.step_time)

    @property
    def time_unit(self) -> str:
        return self.decision.graph.time_unit

    @property
    def graph(self) -> OpGraph:
        return self.decision.graph

    @property
    def cluster(self) -> Cluster:
        return self.decision.cluster

    def devices_used(self) -> list[str]:
        """Names of the devices that run at least one op, in cluster order."""
        used = set(self.placement.tolist())
        return [name for index, name in enumerate(self.cluster.device_names) if index in used]

    def device_map(self) -> dict[str, int | str]:
        """accelerate's ``device_map`` (`rlplace.devicemap.module_device_map`), covering the module's whole ``state_dict``."""
        from rlplace.devicemap import module_device_map

        keys = list(self.module.state_dict()) if self.module is not None else None
        return module_device_map(self.graph, self.placement, self.cluster, state_dict_keys=keys)

    def split_spec(self, *, microbatches: int | None = None, schedule: str | None = None) -> Any:
        """The torch.distributed.pipelining split spec of a stage placement
        (`rlplace.runtime.SplitSpec`: ``.to_json()`` is the ``--split-spec`` file,
        ``.torch_split_spec()`` what ``pipeline()`` takes). Micro-batches and schedule default
        to the decision's; a graph not captured from a module, or a placement that is not
        contiguous stages, is an `RlplaceError`."""
        from rlplace.runtime import split_spec

        result = self.decision.result
        return split_spec(
            self.graph, self.placement, self.cluster,
            microbatches=microbatches or int(getattr(result, "microbatches", 1) or 1),
            schedule=schedule or str(getattr(result, "schedule", None) or "gpipe"),
            module=self.module,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The ``rlplace place --json`` object."""
        return self.decision.to_json()

    def trace(self, path: str | Path) -> None:
        """Write the simulated step as a Chrome trace (chrome://tracing, Perfetto) to ``path``."""
        from rlplace.trace import write_chrome_trace

        write_chrome_trace(self.decision.result, self.graph, self.cluster, path)

    def plot(self, path: str | Path) -> None:
        """Write the timeline and memory plot (`rlplace.plot`) as a PNG to ``path``."""
        from rlplace.io import write_bytes_atomic
        from rlplace.plot import placement_png

        write_bytes_atomic(path, placement_png(self.decision))

    def __repr__(self) -> str:
        return (
            f"PlacementResult({self.decision.method} on {self.cluster.name}, {self.decision.objective}: "
            f"step {self.step_time:.4g} {self.time_unit}, devices {', '.join(self.devices_used())})"
        )


def place(
    model: Any,
    example_inputs: Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    cluster: str | Path | Cluster | Mapping[int | str, Any] | None = None,
    method: str = DEFAULT_METHOD,
    objective: str | None = None,
    microbatches: int = 4,
    device_kind: str = "A100-80GB",
    interconnect: str = "pcie4",
    training: bool = True,
    optimizer: str = "adam",
    batch_size: int | None = None,
    seed: int = 0,
    max_groups: int = 256,
    keep_whole: bool = True,
    method_options: Mapping[str, Any] | None = None,
) -> PlacementResult:
    """Place ``model`` on ``cluster`` with ``method`` and simulate one step (module docstring).

    ``objective`` defaults as on the command line (latency for models, throughput for
    dnn-partitioning graphs); ``microbatches`` counts for ``pipelined`` only; ``keep_whole``
    keeps the model's ``_no_split_modules`` on one device each.
    """
    loaded = _loaded(model, example_inputs, training=training, optimizer=optimizer, batch_size=batch_size)
    target = as_cluster(cluster, loaded, device_kind=device_kind, interconnect=interconnect)
    objective = objective or default_objective(loaded.graph)
    if not isinstance(microbatches, int) or microbatches < 1:
        raise RlplaceError(f"microbatches must be a positive integer, not {microbatches!r}")
    decision = decide(
        loaded, target, method, objective=objective, microbatches=microbatches, seed=seed, max_groups=max_groups,
        record=True, method_options=dict(method_options or {}), keep_whole=keep_whole,
    )  # fmt: skip
    return PlacementResult(decision, loaded.module)


def _loaded(model: Any, example_inputs: Any, *, training: bool, optimizer: str, batch_size: int | None) -> LoadedModel:
    if isinstance(model, OpGraph):
        return LoadedModel(spec=model.name, graph=model)
    if isinstance(model, (str, Path)):
        return load_model(str(model), inference=not training, batch_size=batch_size, optimizer=optimizer)
    if hasattr(model, "named_parameters") and callable(model):
        if example_inputs is None:
            raise RlplaceError("place(module, example_inputs): a module needs example inputs (a tuple of tensors or a dict of keyword tensors)")
        from rlplace.capture import capture_model

        name = type(model).__name__
        graph = capture_model(model, example_inputs, training=training, optimizer=optimizer, batch_size=batch_size, name=name)
        return LoadedModel(spec=name, graph=graph, module=model)
    raise RlplaceError(f"place() takes an nn.Module, an OpGraph or a MODEL spec string, not {type(model).__name__}")


def as_cluster(cluster: Any, loaded: LoadedModel | None = None, *, device_kind: str = "A100-80GB", interconnect: str = "pcie4") -> Cluster:
    """A `Cluster` from a preset name / YAML path, a `Cluster`, or accelerate's ``max_memory`` mapping."""
    if isinstance(cluster, Cluster):
        return cluster
    if isinstance(cluster, Mapping):
        return cluster_from_max_memory(cluster, device_kind=device_kind, interconnect=interconnect)
    if cluster is None or isinstance(cluster, (str, Path)):
        return resolve_cluster(None if cluster is None else str(cluster), loaded)
    raise RlplaceError(f"cluster must be a preset name, a YAML path, a Cluster or a max_memory mapping, not {type(cluster).__name__}")


def cluster_from_max_memory(max_memory: Mapping[int | str, Any], *, device_kind: str = "A100-80GB", interconnect: str = "pcie4") -> Cluster:
    """One host: accelerate's ``max_memory`` (``{0: "16GiB", 1: "16GiB", "cpu": "64GiB"}``) as a cluster.

    Integer keys are accelerators of catalog kind ``device_kind`` named ``gpu<key>`` with the
    given memory (bytes, or a size string as in cluster YAML); ``"cpu"`` is the catalog CPU
    named ``cpu``; all devices are joined by ``interconnect``. ``"disk"`` is not a device here.
    """
    from dataclasses import replace

    from rlplace.catalog import catalog_device, lookup_kind
    from rlplace.cluster_spec import LINK_KINDS
    from rlplace.units import parse_bytes

    link = LINK_KINDS.get(interconnect)
    if link is None:
        raise RlplaceError(f"interconnect: unknown link kind {interconnect!r}; known: {', '.join(LINK_KINDS)}")
    lookup_kind(device_kind, "device_kind")
    accelerators = sorted(key for key in max_memory if isinstance(key, int) and not isinstance(key, bool))
    others = [key for key in max_memory if key not in accelerators]
    if any(key != "cpu" for key in others) or any(key < 0 for key in accelerators):
        bad = next(key for key in [*others, *accelerators] if key != "cpu" and not (isinstance(key, int) and key >= 0))
        raise RlplaceError(f"max_memory: key {bad!r} is not a device; use accelerator indices 0, 1, ... and 'cpu'")
    devices = []
    for key in accelerators:
        memory = parse_bytes(max_memory[key], f"max_memory[{key}]")
        devices.append(replace(catalog_device(device_kind, f"gpu{key}"), memory=memory))
    if "cpu" in max_memory:
        devices.append(replace(catalog_device("cpu", "cpu"), memory=parse_bytes(max_memory["cpu"], "max_memory['cpu']")))
    if not devices:
        raise RlplaceError("max_memory names no device; give e.g. {0: '16GiB', 1: '16GiB', 'cpu': '64GiB'}")
    name = "+".join([f"{len(accelerators)}x{device_kind}"] * bool(accelerators) + ["cpu"] * ("cpu" in max_memory))
    return Cluster.build(name, devices, intra_host=(link.bandwidth, link.latency), meta={"max_memory": {str(k): str(v) for k, v in max_memory.items()}})
