"""Turn the MODEL and cluster specs of the command line into graphs and clusters.

MODEL specs:
    ``path/to/file.py:function``  a function returning ``(module, example_inputs)``;
    ``zoo:NAME``                  a named model of ``rlplace.zoo``;
    ``synthetic:FAMILY[:k=v...]`` a seeded synthetic graph of ``rlplace.synthetic``;
    ``FILE.json``                 an rlplace graph or a dnn-partitioning graph (told apart by content).
Cluster specs: a YAML file or a preset name (``rlplace.cluster_spec``); a dnn-partitioning
graph carries its own cluster, used when no cluster is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

DEFAULT_CLUSTER = "4xV100-nvlink"


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model spec resolved into its op graph.

    Attributes:
        spec: the spec as the user wrote it.
        graph: the full op graph (training graph unless inference was asked for).
        cluster: the cluster a dnn-partitioning file carries, else None.
        module: the ``nn.Module`` for PyTorch specs (meta device), else None.
    """

    spec: str
    graph: OpGraph
    cluster: Cluster | None = None
    module: Any = None


def load_model(spec: str, *, inference: bool = False, batch_size: int | None = None, optimizer: str = "adam") -> LoadedModel:
    """Resolve a MODEL spec (see module docstring) into a `LoadedModel`."""
    if spec.startswith("zoo:"):
        from rlplace.capture import capture_model
        from rlplace.zoo import ZOO, zoo_model

        name = spec.removeprefix("zoo:")
        module, inputs = zoo_model(name, batch_size=batch_size)
        batch = batch_size or ZOO[name].batch_size
        graph = capture_model(module, inputs, training=not inference, optimizer=optimizer, batch_size=batch, name=name)
        return LoadedModel(spec=spec, graph=graph, module=module)
    if spec.startswith("synthetic:"):
        from rlplace.synthetic import synthetic_graph

        return LoadedModel(spec=spec, graph=synthetic_graph(spec, training=not inference))
    path_part, _, function = spec.rpartition(":")
    if path_part.endswith(".py") and function:
        from rlplace.capture import capture_model
        from rlplace.modelspec import load_model_function

        module, inputs = load_model_function(spec, batch_size=batch_size)
        graph = capture_model(module, inputs, training=not inference, optimizer=optimizer, name=Path(path_part).stem)
        return LoadedModel(spec=spec, graph=graph, module=module)
    if spec.endswith(".json") or Path(spec).is_file():
        from rlplace.formats import load_graph_file

        graph, cluster = load_graph_file(spec)
        return LoadedModel(spec=spec, graph=graph, cluster=cluster)
    raise RlplaceError(
        f"cannot read model spec {spec!r}: use path/to/file.py:function, zoo:NAME (see `rlplace zoo`), "
        "synthetic:FAMILY, or a .json graph file"
    )


def resolve_cluster(spec: str | None, model: LoadedModel | None = None) -> Cluster:
    """The cluster named by ``spec``, else the model file's own cluster, else the default preset."""
    if spec is None and model is not None and model.cluster is not None:
        return model.cluster
    from rlplace.cluster_spec import load_cluster

    return load_cluster(spec or DEFAULT_CLUSTER)
