"""Tests of rlplace.coarsen: exact sums, DAG quotient, colocation, expand and device maps."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.cluster import Cluster, Device
from rlplace.coarsen import METHODS, Coarsening, coarsen, module_device_map
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.placement import colocation_violation
from rlplace.synthetic import synthetic_graph

SUMMED = ("flops", "bytes_accessed", "param_bytes", "resident_bytes", "work_bytes")


def cluster(k: int = 2) -> Cluster:
    devices = [Device(f"gpu{i}", "custom", "accelerator", 1e12, 1e12, 1e9, 1e11) for i in range(k)]
    return Cluster.build("test", devices, intra_host=(1e10, 1e-6))


# ----------------------------------------------------------------------------------- checks
def reference_edges(graph: OpGraph, group_of: np.ndarray) -> dict[tuple[int, int], float]:
    """Coarse edges the slow way: each producer's tensor once per consumer group (its largest edge)."""
    sent: dict[tuple[int, int], float] = {}
    for src, dst, size in zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), graph.edge_bytes.tolist(), strict=True):
        a, b = int(group_of[src]), int(group_of[dst])
        if a != b:
            sent[(src, b)] = max(sent.get((src, b), 0.0), size)
    edges: dict[tuple[int, int], float] = {}
    for (src, b), size in sent.items():
        key = (int(group_of[src]), b)
        edges[key] = edges.get(key, 0.0) + size
    return edges


def check_coarsening(graph: OpGraph, result: Coarsening, max_groups: int) -> None:
    """Every invariant a coarsening promises, checked against the fine graph."""
    coarse, group_of = result.graph, result.group_of
    g = coarse.num_ops
    assert 1 <= g <= max_groups
    assert group_of.shape == (graph.num_ops,) and group_of.dtype == np.int64
    assert set(group_of.tolist()) == set(range(g)), "every group holds at least one op"
    # Costs and sizes add up exactly (the test graphs hold integers, so sums are exact).
    for attr in SUMMED:
        fine, summed = getattr(graph, attr), getattr(coarse, attr)
        assert summed.sum() == np.sum(fine), attr
        np.testing.assert_array_equal(summed, [np.sum(fine[group_of == i]) for i in range(g)], err_msg=attr)
    if graph.given_times is not None:
        for i in range(g):
            np.testing.assert_array_equal(coarse.given_times[i], graph.given_times[group_of == i].sum(axis=0))
    # Groups are numbered in a topological order: no fine edge goes backwards, so no cycle.
    assert np.all(group_of[graph.edge_src] <= group_of[graph.edge_dst])
    expected_edges = reference_edges(graph, group_of)
    got_edges = {(int(s), int(d)): float(b) for s, d, b in zip(coarse.edge_src, coarse.edge_dst, coarse.edge_bytes, strict=True)}
    assert got_edges == expected_edges
    # Output bytes: outputs read outside the group or by nobody.
    consumers_outside = np.zeros(graph.num_ops, dtype=bool)
    consumers_outside[graph.edge_src[group_of[graph.edge_src] != group_of[graph.edge_dst]]] = True
    sinks = np.bincount(graph.edge_src, minlength=graph.num_ops) == 0
    leaves = consumers_outside | sinks
    for i in range(g):
        members = group_of == i
        assert coarse.output_bytes[i] == np.sum(graph.output_bytes[members & leaves])
        assert bool(coarse.is_backward[i]) == bool(np.all(graph.is_backward[members]))
    check_colocation(graph, result)


def check_colocation(graph: OpGraph, result: Coarsening) -> None:
    """A class is inside one group, or all its groups share one coarse class; placements keep classes whole."""
    coarse, group_of = result.graph, result.group_of
    for label in set(graph.coloc[graph.coloc != NO_CLASS].tolist()):
        groups = set(group_of[graph.coloc == label].tolist())
        if len(groups) > 1:
            classes = {int(coarse.coloc[i]) for i in groups}
            assert len(classes) == 1 and NO_CLASS not in classes, f"class {label} split over groups {groups} without a shared coarse class"
    # A coarse placement that honours the coarse classes expands to one that honours the fine ones.
    rng = np.random.default_rng(0)
    group_device = rng.integers(0, 3, size=coarse.num_ops)
    for label in set(coarse.coloc[coarse.coloc != NO_CLASS].tolist()):
        members = np.flatnonzero(coarse.coloc == label)
        group_device[members] = group_device[members[0]]
    placement = result.expand(group_device)
    assert colocation_violation(graph, placement) is None
    np.testing.assert_array_equal(placement, group_device[group_of])


# ----------------------------------------------------------------------------------- hand-made graphs
def layered_modules(*, coloc: dict[str, Any] | None = None, backward: Sequence[str] = ()) -> OpGraph:
    """a -> b -> d, a -> c -> d, a -> d; a, b in module "layer0", c, d in "layer1"."""
    coloc = coloc or {}
    ops = [
        {"name": "a", "flops": 1, "bytes_accessed": 10, "output_bytes": 10, "param_bytes": 4, "resident_bytes": 16},
        {"name": "b", "flops": 2, "bytes_accessed": 20, "output_bytes": 20},
        {"name": "c", "flops": 4, "bytes_accessed": 30, "output_bytes": 30, "work_bytes": 5},
        {"name": "d", "flops": 8, "bytes_accessed": 40, "output_bytes": 40},
    ]
    for op in ops:
        op["coloc"] = coloc.get(op["name"])
        op["is_backward"] = op["name"] in backward
    edges = [
        {"src": "a", "dst": "b", "bytes": 10},
        {"src": "a", "dst": "c", "bytes": 10},
        {"src": "a", "dst": "d", "bytes": 10},
        {"src": "b", "dst": "d", "bytes": 20},
        {"src": "c", "dst": "d", "bytes": 30},
    ]
    meta = {"module_paths": ["layer0", "layer0.fc", "layer1", "layer1.fc"]}
    return OpGraph.build(ops, edges, name="tiny", meta=meta)


def test_module_groups_with_hand_computed_sums_edges_and_outputs() -> None:
    graph = layered_modules()
    result = coarsen(graph, 2, method="module")
    assert result.method == "module"
    np.testing.assert_array_equal(result.group_of, [0, 0, 1, 1])
    coarse = result.graph
    assert coarse.names == ("layer0", "layer1")
    np.testing.assert_array_equal(coarse.flops, [3, 12])
    np.testing.assert_array_equal(coarse.bytes_accessed, [30, 70])
    np.testing.assert_array_equal(coarse.param_bytes, [4, 0])
    np.testing.assert_array_equal(coarse.resident_bytes, [16, 0])
    np.testing.assert_array_equal(coarse.work_bytes, [0, 5])
    # a's tensor goes to group 1 once (a -> c and a -> d), plus b's: 10 + 20.
    np.testing.assert_array_equal(coarse.edge_src, [0])
    np.testing.assert_array_equal(coarse.edge_dst, [1])
    np.testing.assert_array_equal(coarse.edge_bytes, [30])
    # Group 0's outputs a and b leave it; group 1's only output leaving is d's (a sink).
    np.testing.assert_array_equal(coarse.output_bytes, [30, 40])
    assert coarse.meta["module_paths"] == ["layer0", "layer1"]
    assert coarse.meta["group_sizes"] == [2, 2]
    check_coarsening(graph, result, 2)


def test_one_group_holds_everything() -> None:
    graph = layered_modules()
    for method in ("module", "chain", "topo", "metis"):
        result = coarsen(graph, 1, method=method)
        np.testing.assert_array_equal(result.group_of, [0, 0, 0, 0])
        assert result.graph.num_edges == 0
        assert result.graph.output_bytes[0] == 40  # only the sink's output leaves


def test_graph_that_fits_keeps_one_op_per_group() -> None:
    graph = layered_modules()
    result = coarsen(graph, 8)
    assert result.method == "atoms"
    np.testing.assert_array_equal(result.group_of, [0, 1, 2, 3])
    assert result.graph.names == ("layer0", "layer0.fc", "layer1", "layer1.fc")
    check_coarsening(graph, result, 8)


def test_parallel_colocation_class_becomes_one_group() -> None:
    # b and c are parallel: contracting them keeps a DAG, so they share a group.
    graph = layered_modules(coloc={"b": "x", "c": "x"})
    result = coarsen(graph, 8)
    assert result.group_of[1] == result.group_of[2]
    assert result.num_groups == 3
    assert np.all(result.graph.coloc == NO_CLASS)
    check_coarsening(graph, result, 8)


def test_class_that_would_close_a_cycle_is_tied_instead() -> None:
    # a -> b -> d with a and d in one class: one group {a, d} would form a cycle with b.
    graph = layered_modules(coloc={"a": "x", "d": "x"})
    result = coarsen(graph, 8)
    assert result.group_of[0] != result.group_of[3]
    tied = result.graph.coloc[[result.group_of[0], result.group_of[3]]]
    assert tied[0] == tied[1] != NO_CLASS
    assert result.graph.coloc[result.group_of[1]] == NO_CLASS
    check_coarsening(graph, result, 8)


def test_forward_and_backward_halves_of_a_class_contract_separately() -> None:
    # f1 -> f2 -> f3 -> loss -> b3 -> b2 -> b1 with class X = {f1, f2, b2, b1}, Y = {f3, b3}:
    # a whole class would close a cycle, each half is convex.
    names = ["f1", "f2", "f3", "loss", "b3", "b2", "b1"]
    coloc = {"f1": "X", "f2": "X", "b2": "X", "b1": "X", "f3": "Y", "b3": "Y"}
    ops = [{"name": name, "flops": 1, "coloc": coloc.get(name), "is_backward": name.startswith("b")} for name in names]
    edges = [{"src": a, "dst": b, "bytes": 1} for a, b in itertools.pairwise(names)]
    edges += [{"src": "f1", "dst": "b1", "bytes": 1}, {"src": "f2", "dst": "b2", "bytes": 1}]
    graph = OpGraph.build(ops, edges)
    result = coarsen(graph, 8)
    np.testing.assert_array_equal(result.group_of, [0, 0, 1, 2, 3, 4, 4])
    coloc_of = result.graph.coloc
    assert coloc_of[0] == coloc_of[4] != coloc_of[1] == coloc_of[3] != NO_CLASS
    assert coloc_of[2] == NO_CLASS
    check_coarsening(graph, result, 8)


def test_forward_backward_classes_mirror_into_paired_groups() -> None:
    graph = synthetic_graph("synthetic:layered:n=400:seed=5", training=True)
    for method in ("chain", "topo", "auto"):
        result = coarsen(graph, 40, method=method)
        check_coarsening(graph, result, 40)
        coloc = result.graph.coloc
        classes = np.bincount(coloc[coloc != NO_CLASS])
        # Forward group i and the backward group mirroring it form a small class: the
        # classes must not collapse into one that would pin the whole graph to one device.
        assert classes.size >= 10, (method, classes)
        assert classes.max() <= 6, (method, classes)


def test_module_paths_split_forward_and_backward() -> None:
    # Forward a, b in "enc", c in "dec"; backward c', then b', a' mirror them.
    ops = [
        {"name": "a", "flops": 1, "coloc": "A"},
        {"name": "b", "flops": 2, "coloc": "B"},
        {"name": "c", "flops": 4, "coloc": "C"},
        {"name": "c'", "flops": 8, "coloc": "C", "is_backward": True},
        {"name": "b'", "flops": 16, "coloc": "B", "is_backward": True},
        {"name": "a'", "flops": 32, "coloc": "A", "is_backward": True},
    ]
    edges = [{"src": s, "dst": d, "bytes": 1} for s, d in (("a", "b"), ("b", "c"), ("c", "c'"), ("c'", "b'"), ("b'", "a'"), ("a", "a'"), ("b", "b'"))]
    paths = ["enc.0", "enc.1", "dec", "dec", "enc.1", "enc.0"]
    graph = OpGraph.build(ops, edges, name="fb", meta={"module_paths": paths})
    result = coarsen(graph, 4, method="module")
    check_coarsening(graph, result, 4)
    assert result.graph.names == ("enc.0-1", "dec", "dec (bwd)", "enc.0-1 (bwd)")
    np.testing.assert_array_equal(result.group_of, [0, 0, 1, 2, 3, 3])
    np.testing.assert_array_equal(result.graph.is_backward, [False, False, True, True])
    assert result.graph.coloc[0] == result.graph.coloc[3] != result.graph.coloc[1] == result.graph.coloc[2]


def test_numbered_children_split_into_runs_and_loose_ops_join_neighbours() -> None:
    # input -> layers.0 -> act0 -> layers.1 -> act1 ... -> layers.7 -> act7; the input and
    # the activations sit directly in the root module (functional calls).
    names = ["input"]
    paths = [""]
    for i in range(8):
        names += [f"linear{i}", f"act{i}"]
        paths += [f"layers.{i}", ""]
    ops = [{"name": name, "flops": 10 if name.startswith("linear") else 1} for name in names]
    edges = [{"src": a, "dst": b, "bytes": 1} for a, b in itertools.pairwise(names)]
    graph = OpGraph.build(ops, edges, meta={"module_paths": paths})
    result = coarsen(graph, 4, method="module")
    assert result.graph.names == ("layers.0-1", "layers.2-3", "layers.4-5", "layers.6-7")
    # Each activation joins the layer that feeds it; the input joins the first layer.
    np.testing.assert_array_equal(result.group_of, [0] + [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4)
    check_coarsening(graph, result, 4)


def test_given_times_and_edge_times_are_summed() -> None:
    ops = [{"name": f"o{i}", "times": {"gpu": float(i + 1), "cpu": 10.0 * (i + 1)}} for i in range(4)]
    ops[3]["times"] = {"gpu": float("inf"), "cpu": 40.0}
    edges = [
        {"src": "o0", "dst": "o1", "bytes": 1, "time": 0.5},
        {"src": "o1", "dst": "o2", "bytes": 1, "time": 0.25},
        {"src": "o2", "dst": "o3", "bytes": 1, "time": 2.0},
    ]
    graph = OpGraph.build(ops, edges, time_classes=("gpu", "cpu"), time_unit="ms")
    result = coarsen(graph, 2, method="topo")
    coarse = result.graph
    assert coarse.time_classes == ("gpu", "cpu") and coarse.time_unit == "ms"
    assert coarse.given_times.sum(axis=0)[1] == 100.0
    assert np.isinf(coarse.given_times[result.group_of[3], 0])
    boundary = int(np.flatnonzero(np.diff(result.group_of))[0])
    np.testing.assert_array_equal(coarse.edge_given_time, [[0.5, 0.25, 2.0][boundary]])


def test_bad_arguments_raise_clear_errors() -> None:
    graph = layered_modules()
    with pytest.raises(RlplaceError, match="unknown coarsening method 'kmeans'"):
        coarsen(graph, 4, method="kmeans")
    with pytest.raises(RlplaceError, match="max_groups must be a positive integer"):
        coarsen(graph, 0)
    bare = OpGraph.build([{"name": "x"}], [])
    with pytest.raises(RlplaceError, match="has no module paths"):
        coarsen(bare, 4, method="module")
    result = coarsen(graph, 2, method="module")
    with pytest.raises(RlplaceError, match="one device per group"):
        result.expand([0, 1, 0])
    with pytest.raises(RlplaceError, match="non-negative integer"):
        result.expand([0, -1])


# ----------------------------------------------------------------------------------- property tests
@st.composite
def random_graphs(draw: st.DrawFn) -> tuple[OpGraph, int, str]:
    n = draw(st.integers(1, 40))
    pairs = [(i, j) for j in range(n) for i in range(j)]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=3 * n, unique=True)) if pairs else []
    classes = draw(st.integers(0, 5))
    ints = st.integers(0, 2**30)
    ops = []
    for i in range(n):
        param = draw(ints)
        ops.append(
            {
                "name": f"op{i}",
                "kind": draw(st.sampled_from(["matmul", "elementwise", "norm"])),
                "flops": draw(ints),
                "bytes_accessed": draw(ints),
                "output_bytes": draw(ints),
                "param_bytes": param,
                "resident_bytes": param + draw(ints),
                "work_bytes": draw(ints),
                "is_backward": draw(st.booleans()),
                "coloc": draw(st.one_of(st.none(), st.integers(0, classes))) if classes else None,
            }
        )
    edges = [{"src": f"op{i}", "dst": f"op{j}", "bytes": draw(ints)} for i, j in chosen]
    use_paths = draw(st.booleans())
    meta: dict[str, Any] = {}
    if use_paths:
        meta["module_paths"] = [draw(st.sampled_from(["", "a", "a.x", "a.y", "b", "b.x.0", "b.x.1", "c"])) for _ in range(n)]
        use_paths = any(meta["module_paths"])
    graph = OpGraph.build(ops, edges, name="random", meta=meta)
    max_groups = draw(st.integers(1, max(1, n)))
    method = draw(st.sampled_from([m for m in METHODS if use_paths or m != "module"]))
    return graph, max_groups, method


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_graphs())
def test_random_graphs_keep_every_invariant(case: tuple[OpGraph, int, str]) -> None:
    graph, max_groups, method = case
    result = coarsen(graph, max_groups, method=method)
    check_coarsening(graph, result, max_groups)


@settings(max_examples=25, deadline=None)
@given(
    family=st.sampled_from(["layered", "series-parallel", "fork-join"]),
    n=st.integers(1, 300),
    seed=st.integers(0, 1000),
    training=st.booleans(),
    max_groups=st.integers(1, 80),
    method=st.sampled_from(["auto", "chain", "metis", "topo"]),
)
def test_synthetic_graphs_keep_every_invariant(family: str, n: int, seed: int, training: bool, max_groups: int, method: str) -> None:
    graph = synthetic_graph(f"synthetic:{family}:n={n}:seed={seed}", training=training)
    result = coarsen(graph, max_groups, method=method)
    check_coarsening(graph, result, max_groups)


# ----------------------------------------------------------------------------------- device maps
def params_graph() -> OpGraph:
    ops = [{"name": f"op{i}", "param_bytes": 4 if i < 4 else 0} for i in range(5)]
    edges = [{"src": f"op{i}", "dst": f"op{i + 1}", "bytes": 1} for i in range(4)]
    op_params = [
        ["embed.weight"],
        ["layers.0.fc.weight", "layers.0.fc.bias"],
        ["layers.1.fc.weight", "layers.1.norm.weight"],
        ["head.weight", "scale"],
        ["embed.weight"],  # a later user of a tied weight does not own it
    ]
    return OpGraph.build(ops, edges, name="params", meta={"op_params": op_params})


def test_device_map_collapses_modules_and_names_split_ones_exactly() -> None:
    graph = params_graph()
    two = cluster(2)
    assert module_device_map(graph, [0, 0, 0, 0, 1], two) == {"": 0}
    got = module_device_map(graph, [0, 0, 1, 1, 1], two)
    assert got == {"embed": 0, "head": 1, "layers.0": 0, "layers.1": 1, "scale": 1}
    got = module_device_map(graph, [1, 1, 1, 0, 0], two)
    assert got == {"embed": 1, "head": 0, "layers": 1, "scale": 0}


def test_device_map_through_a_coarsening_and_errors() -> None:
    graph = params_graph()
    result = coarsen(graph, 2, method="topo")
    placement = result.expand([0, 1])
    mapping = result.device_map(placement, cluster(2))
    for name in ("embed.weight", "layers.0.fc.weight", "layers.0.fc.bias", "layers.1.fc.weight", "layers.1.norm.weight", "head.weight", "scale"):
        assert covering_key(mapping, name) is not None, name
    with pytest.raises(RlplaceError, match="does not record which op owns which parameter"):
        module_device_map(layered_modules(), [0, 0, 0, 0], cluster(2))
    with pytest.raises(RlplaceError, match=r"outside 0\.\.1"):
        module_device_map(graph, [0, 0, 0, 0, 2], cluster(2))


def covering_key(mapping: dict[str, str], param: str) -> str | None:
    for key in mapping:
        if key == "" or param == key or param.startswith(key + "."):
            return key
    return None


def test_captured_gpt2_coarsened_device_map_covers_every_parameter() -> None:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    capture = pytest.importorskip("rlplace.capture")
    with torch.device("meta"):
        config = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=2, vocab_size=128, n_positions=64, use_cache=False, attn_implementation="sdpa")
        model = transformers.GPT2LMHeadModel(config)
        ids = torch.zeros(2, 16, dtype=torch.long)
    graph = capture.capture_model(model, {"input_ids": ids, "labels": ids}, training=True, name="gpt2-tiny")
    result = coarsen(graph, 12)
    assert result.method == "module"
    check_coarsening_sums_close(graph, result)
    assert np.all(result.group_of[graph.edge_src] <= result.group_of[graph.edge_dst])
    check_colocation(graph, result)
    # Put the first half of the groups on gpu0, the rest on gpu1 (respecting coarse classes).
    coarse = result.graph
    group_device = (np.arange(coarse.num_ops) >= coarse.num_ops // 2).astype(np.int64)
    for label in set(coarse.coloc[coarse.coloc != NO_CLASS].tolist()):
        members = np.flatnonzero(coarse.coloc == label)
        group_device[members] = group_device[members[0]]
    mapping = result.device_map(result.expand(group_device), cluster(2))
    names = [name for name, _ in model.named_parameters()]
    for name in names:
        assert covering_key(mapping, name) is not None, f"{name} not covered by {mapping}"
    from accelerate.utils import check_device_map

    check_device_map(model, mapping)
    assert set(mapping.values()) <= {0, 1}


def check_coarsening_sums_close(graph: OpGraph, result: Coarsening) -> None:
    """Captured graphs hold non-integer floats: sums agree to rounding."""
    assert result.graph.num_ops <= 12
    for attr in SUMMED:
        assert getattr(result.graph, attr).sum() == pytest.approx(np.sum(getattr(graph, attr)), rel=1e-12), attr
