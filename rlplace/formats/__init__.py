"""Graph and placement files, told apart by content.

Graph files: the project's own graph JSON (``"format": "rlplace-graph"``, written by
`OpGraph.save`) and the dnn-partitioning JSON of Tarnawski et al. (``maxSizePerFPGA``,
``nodes``, ``edges``), which also carries its cluster.
Placement specs: ``expert:FILE`` (a split in the dnn-partitioning output format) or a plain
placement file (``rlplace.placement.load_placement``).
"""

from __future__ import annotations

from pathlib import Path

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import GRAPH_FORMAT, OpGraph
from rlplace.io import read_json
from rlplace.placement import Placement, load_placement

from .dnn_partitioning import (
    DnnPartitioningProblem,
    dnn_partitioning_from_json,
    is_dnn_partitioning_data,
    load_dnn_partitioning,
    load_expert_placement,
    load_expert_split,
)

EXPERT_PREFIX = "expert:"

__all__ = [
    "EXPERT_PREFIX",
    "DnnPartitioningProblem",
    "is_expert_spec",
    "load_dnn_partitioning",
    "load_expert_placement",
    "load_expert_split",
    "load_graph_file",
    "load_placement_spec",
]


def load_graph_file(path: str | Path) -> tuple[OpGraph, Cluster | None]:
    """Read a graph JSON file of either accepted format.

    Returns the graph and, for a dnn-partitioning file, the cluster it describes (else None).
    Anything else is an `RlplaceError` that lists the accepted formats.
    """
    data = read_json(path)
    if isinstance(data, dict) and data.get("format") == GRAPH_FORMAT:
        return OpGraph.from_json_dict(data, source=str(path)), None
    if is_dnn_partitioning_data(data):
        problem = dnn_partitioning_from_json(data, source=str(path))
        return problem.graph, problem.cluster
    raise RlplaceError(
        f"{path}: not a graph file this rlplace reads; accepted are an rlplace graph JSON (\"format\": \"{GRAPH_FORMAT}\", "
        "written by `rlplace graph` / OpGraph.save) and a dnn-partitioning JSON (maxSizePerFPGA, maxFPGAs, maxCPUs, nodes, edges)"
    )


def is_expert_spec(spec: str) -> bool:
    """True for ``expert:FILE`` placement specs."""
    return spec.startswith(EXPERT_PREFIX)


def load_placement_spec(spec: str, graph: OpGraph, cluster: Cluster) -> Placement:
    """Placement from ``expert:FILE`` (a dnn-partitioning split) or a plain placement file."""
    if is_expert_spec(spec):
        path = spec.removeprefix(EXPERT_PREFIX)
        if not path:
            raise RlplaceError("placement spec 'expert:' names no file; write expert:path/to/split.json")
        return load_expert_split(path, graph, cluster)
    return load_placement(spec, graph, cluster)
