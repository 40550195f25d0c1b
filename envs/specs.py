"""Resolve the env's MODEL and cluster specs into graphs, clusters and (graph, cluster) pairs.

A MODEL spec is anything ``rlplace.load.load_model`` reads (``path/to/file.py:function``,
``zoo:NAME``, ``synthetic:FAMILY[:k=v...]``, a ``.json`` graph file), or an already built
`OpGraph`, ``(OpGraph, Cluster)`` tuple or ``LoadedModel``. A cluster spec is a YAML file, a
preset name, or a `Cluster`.

Pairing rule: a model that carries its own cluster (a dnn-partitioning file, an
``(OpGraph, Cluster)`` tuple) is placed on that cluster only; every other model is paired
with every given cluster its costs can be computed for (graphs with given times need devices
of their time classes).

With no specs at all the env uses `BUILTIN_MODELS` and `BUILTIN_CLUSTERS`: four small seeded
synthetic graphs (36 to 100 ops) and three preset clusters (2 to 4 devices, homogeneous and
mixed), so ``check_env`` and a first run need nothing else and no file or network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.load import resolve_cluster

__all__ = ["ModelEntry", "builtin_clusters", "builtin_models", "compatible", "pair_table", "resolve_cluster", "resolve_model"]


@dataclass(frozen=True, eq=False)
class ModelEntry:
    """One resolved MODEL spec.

    Attributes:
        label: the spec as written (or the graph's name for objects).
        graph: the full op graph.
        own_cluster: the cluster the model carries (dnn-partitioning files), else None.
    """

    label: str
    graph: OpGraph
    own_cluster: Cluster | None = None


def resolve_model(spec: Any) -> ModelEntry:
    """One MODEL spec (string, path, `OpGraph`, ``(OpGraph, Cluster)`` or ``LoadedModel``) -> `ModelEntry`."""
    if isinstance(spec, ModelEntry):
        return spec
    if isinstance(spec, OpGraph):
        return ModelEntry(spec.name, spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], OpGraph) and isinstance(spec[1], Cluster | None):
        return ModelEntry(spec[0].name, spec[0], spec[1])
    if isinstance(spec, str | Path):
        from rlplace.load import load_model

        loaded = load_model(str(spec))
        return ModelEntry(str(spec), loaded.graph, loaded.cluster)
    graph = getattr(spec, "graph", None)
    if isinstance(graph, OpGraph):  # rlplace.load.LoadedModel
        return ModelEntry(str(getattr(spec, "spec", graph.name)), graph, getattr(spec, "cluster", None))
    raise RlplaceError(f"cannot use {spec!r} as a model: give a MODEL spec string, a .json path, an OpGraph, or an (OpGraph, Cluster) pair")


def compatible(graph: OpGraph, cluster: Cluster) -> bool:
    """Whether costs of ``graph`` can be computed on ``cluster`` (given times need every device's class)."""
    if not graph.has_given_times:
        return True
    return all(device.category in graph.time_classes for device in cluster.devices)


def pair_table(models: Sequence[ModelEntry], clusters: Sequence[Cluster], max_devices: int) -> list[list[Cluster]]:
    """Per model, the clusters it is placed on (see the module docstring's pairing rule).

    Raises `RlplaceError` for a cluster with more than ``max_devices`` devices, or a model
    with no cluster to run on.
    """
    for cluster in [*clusters, *(m.own_cluster for m in models if m.own_cluster is not None)]:
        if cluster.num_devices > max_devices:
            raise RlplaceError(f"cluster {cluster.name!r} has {cluster.num_devices} devices but max_devices={max_devices}; raise max_devices")
    table: list[list[Cluster]] = []
    for model in models:
        if model.own_cluster is not None:
            table.append([model.own_cluster])
            continue
        usable = [c for c in clusters if compatible(model.graph, c)]
        if not usable:
            if not clusters:
                raise RlplaceError(f"model {model.label!r} carries no cluster and no clusters were given; pass clusters=[...]")
            raise RlplaceError(
                f"model {model.label!r} gives op times for {list(model.graph.time_classes)} devices only, "
                "and no given cluster is made of such devices; pass a matching cluster"
            )
        table.append(usable)
    return table


# ----------------------------------------------------------------- built-in set
#: The default models: seeded synthetic graphs of 36 to 100 ops, as (family, parameters) of
#: ``rlplace.synthetic.synthetic_graph`` (three training graphs with colocation classes, one inference graph).
BUILTIN_MODELS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("layered", dict(n=15, seed=0, training=True)),
    ("series-parallel", dict(n=30, seed=1, training=True)),
    ("fork-join", dict(n=40, seed=2, training=True)),
    ("layered", dict(n=100, seed=3, width=6)),
)
#: The default clusters: presets of 2 to 4 devices, homogeneous and mixed.
BUILTIN_CLUSTERS = ("2xV100-pcie", "4xV100-nvlink", "2xA100+2xT4")


def builtin_models() -> list[ModelEntry]:
    """The graphs of `BUILTIN_MODELS` (built in memory, no file or network)."""
    from rlplace.synthetic import synthetic_graph

    return [resolve_model(synthetic_graph(family, **params)) for family, params in BUILTIN_MODELS]


def builtin_clusters() -> list[Cluster]:
    """The clusters of `BUILTIN_CLUSTERS`."""
    return [resolve_cluster(spec) for spec in BUILTIN_CLUSTERS]
