"""The one owner of MODEL, graph and cluster specs: each spec of the command line, the env,
the agents and the benchmarks becomes a `LoadedModel` or a `Cluster` here.

MODEL specs:
    ``path/to/file.py:function``  a function returning ``(module, example_inputs)``; importing
                                  the file runs its top-level code, like any Python entry point;
    ``zoo:NAME``                  a named model of ``rlplace.zoo``;
    ``synthetic:FAMILY[:k=v...]`` a seeded synthetic graph of ``rlplace.synthetic``;
    ``FILE.json``                 an rlplace graph or a dnn-partitioning graph (told apart by content).
Cluster specs: a `Cluster`, a YAML file, a preset name (``rlplace.cluster_spec``) or a name of
a caller's own table of cluster dicts; a dnn-partitioning graph carries its own cluster, used
when no cluster is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

DEFAULT_CLUSTER = "4xV100-nvlink"
ZOO_PREFIX = "zoo:"
SYNTHETIC_PREFIX = "synthetic:"

#: ``(module, example_inputs)``: an ``nn.Module`` and a tuple of positional or a dict of keyword inputs.
ModelAndInputs = tuple[Any, Any]


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


def is_python_spec(spec: str) -> bool:
    """True for ``something.py:function`` (the file need not exist)."""
    path, sep, function = spec.rpartition(":")
    return bool(sep) and path.endswith(".py") and bool(function)


def is_module_spec(spec: str) -> bool:
    """True for the specs that name PyTorch code: ``zoo:NAME`` and ``path/to/file.py:function``."""
    return spec.startswith(ZOO_PREFIX) or is_python_spec(spec)


def model_and_inputs(spec: str, *, batch_size: int | None = None, importable: bool = False) -> ModelAndInputs:
    """``(module, example_inputs)`` of a ``zoo:NAME`` or ``path/to/file.py:function`` spec, uncaptured;
    with ``importable``, also of ``package.module:function`` (the module imported by name, as
    ``rlplace measure`` and the calibration models use).

    Raises:
        RlplaceError: any other spec, or a model the spec cannot build (see `rlplace.modelspec`).
    """
    if spec.startswith(ZOO_PREFIX):
        from rlplace.modelspec import check_model_result
        from rlplace.zoo import zoo_model

        return check_model_result(zoo_model(spec.removeprefix(ZOO_PREFIX), batch_size=batch_size), spec, "zoo_model")
    if is_python_spec(spec):
        from rlplace.modelspec import call_model_function

        return call_model_function(spec, batch_size=batch_size)
    from rlplace.modelspec import call_module_function, is_dotted_spec

    if importable and is_dotted_spec(spec):
        return call_module_function(spec, batch_size=batch_size)
    also = ", or package.module:function" if importable else ""
    raise RlplaceError(f"model spec {spec!r} names no PyTorch code: use zoo:NAME, path/to/file.py:function{also}")


def load_model(
    spec: str, *, inference: bool = False, batch_size: int | None = None, optimizer: str = "adam", backward: str = "auto"
) -> LoadedModel:
    """Resolve a MODEL spec (see module docstring) into a `LoadedModel` whose graph has ops.

    ``batch_size`` goes to the model function or zoo entry; ``optimizer`` and ``backward`` to
    `rlplace.capture.capture_model` (captured specs only).
    """
    loaded = _load_model(spec, inference=inference, batch_size=batch_size, optimizer=optimizer, backward=backward)
    if loaded.graph.num_ops == 0:
        raise RlplaceError(f"model spec {spec!r} gives a graph with no ops; there is nothing to place")
    return loaded


def _load_model(spec: str, *, inference: bool, batch_size: int | None, optimizer: str, backward: str) -> LoadedModel:
    if spec.startswith(SYNTHETIC_PREFIX):
        from rlplace.synthetic import synthetic_graph

        return LoadedModel(spec=spec, graph=synthetic_graph(spec, training=not inference))
    if is_module_spec(spec):
        from rlplace.capture import capture_model

        module, inputs = model_and_inputs(spec, batch_size=batch_size)
        if spec.startswith(ZOO_PREFIX):
            from rlplace.zoo import ZOO

            name = spec.removeprefix(ZOO_PREFIX)
            batch = batch_size or ZOO[name].batch_size
        else:
            name, batch = Path(spec.rpartition(":")[0]).stem, batch_size
        graph = capture_model(module, inputs, training=not inference, optimizer=optimizer, batch_size=batch, name=name, backward=backward)
        return LoadedModel(spec=spec, graph=graph, module=module)
    if spec.endswith(".json") or Path(spec).is_file():
        from rlplace.formats import load_graph_file

        graph, cluster = load_graph_file(spec)
        return LoadedModel(spec=spec, graph=graph, cluster=cluster)
    raise RlplaceError(
        f"cannot read model spec {spec!r}: use path/to/file.py:function, zoo:NAME (see `rlplace zoo`), "
        "synthetic:FAMILY, or a .json graph file"
    )


def resolve_cluster(spec: Any, model: LoadedModel | None = None, *, named: Mapping[str, Mapping[str, Any]] | None = None) -> Cluster:
    """The one cluster resolver: a `Cluster`, a YAML path or preset name, or a key of ``named``.

    With ``spec`` None: the model file's own cluster, else `DEFAULT_CLUSTER`. ``named`` maps
    extra names to cluster dicts of ``rlplace.cluster_spec.cluster_from_dict`` (the agents'
    generated clusters).
    """
    if isinstance(spec, Cluster):
        return spec
    if spec is None:
        if model is not None and model.cluster is not None:
            return model.cluster
        spec = DEFAULT_CLUSTER
    if not isinstance(spec, str | Path):
        raise RlplaceError(f"cannot use {spec!r} as a cluster: give a preset name, a cluster YAML path, or a Cluster")
    from rlplace.cluster_spec import cluster_from_dict, load_cluster

    if named is not None and str(spec) in named:
        return cluster_from_dict({"name": str(spec), **named[str(spec)]}, source=f"cluster {spec}")
    return load_cluster(str(spec))
