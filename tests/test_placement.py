"""Placement helpers: colocation checks and repair, placement files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import colocation_violation, load_placement, respect_colocation


def graph_with_classes() -> OpGraph:
    """a, b, c, d in order; a and d share class "x", b and c share class "y"."""
    ops = [{"name": "a", "coloc": "x"}, {"name": "b", "coloc": "y"}, {"name": "c", "coloc": "y"}, {"name": "d", "coloc": "x"}, {"name": "e"}]
    edges = [{"src": "a", "dst": "b"}, {"src": "b", "dst": "c"}, {"src": "c", "dst": "d"}, {"src": "d", "dst": "e"}]
    return OpGraph.build(ops, edges)


def three_devices() -> Cluster:
    devices = [Device(f"gpu{i}", "custom", "accelerator", 1e12, 1e12, 1e9, 1e11) for i in range(3)]
    return Cluster.build("three", devices, intra_host=(1e10, 0.0))


def test_respect_colocation_moves_classes_to_their_first_ops_device() -> None:
    graph = graph_with_classes()
    fixed = respect_colocation(graph, np.array([2, 1, 0, 0, 1]))
    assert fixed.tolist() == [2, 1, 1, 2, 1]
    assert colocation_violation(graph, fixed) is None
    assert colocation_violation(graph, np.array([2, 1, 0, 0, 1])) == 2
    assert not fixed.flags.writeable


def test_placement_files_by_index_and_by_name(tmp_path: Path) -> None:
    graph, cluster = graph_with_classes(), three_devices()
    (tmp_path / "list.json").write_text("[0, 1, 1, 0, 2]")
    assert load_placement(tmp_path / "list.json", graph, cluster).tolist() == [0, 1, 1, 0, 2]
    (tmp_path / "names.json").write_text(json.dumps({"a": "gpu2", "b": "gpu0", "c": "gpu0", "d": "gpu2", "e": "gpu1"}))
    assert load_placement(tmp_path / "names.json", graph, cluster).tolist() == [2, 0, 0, 2, 1]
    (tmp_path / "missing.json").write_text(json.dumps({"a": "gpu2"}))
    with pytest.raises(RlplaceError, match="'b' has no device"):
        load_placement(tmp_path / "missing.json", graph, cluster)
    (tmp_path / "bad.json").write_text("[0, 1, 1, 0, 7]")
    with pytest.raises(RlplaceError, match="device 7"):
        load_placement(tmp_path / "bad.json", graph, cluster)
