"""Tests of rlplace.graph: building, validation errors, and the exact JSON round trip."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.errors import RlplaceError
from rlplace.graph import GRAPH_FORMAT, NO_CLASS, OpGraph

FLOAT_FIELDS = ("flops", "bytes_accessed", "output_bytes", "param_bytes", "resident_bytes", "work_bytes")


def diamond(**op_overrides: dict) -> OpGraph:
    """a -> b, a -> c, b -> d, c -> d, given in a shuffled order."""
    ops = [
        {"name": "d", "flops": 4.0},
        {"name": "b", "flops": 2.0, "param_bytes": 8.0, "coloc": "x"},
        {"name": "a", "flops": 1.0, "output_bytes": 16.0},
        {"name": "c", "flops": 3.0, "coloc": "x", "is_backward": True},
    ]
    for op in ops:
        op.update(op_overrides.get(op["name"], {}))
    edges = [
        {"src": "b", "dst": "d", "bytes": 1.0},
        {"src": "a", "dst": "c", "bytes": 2.0},
        {"src": "a", "dst": "b", "bytes": 3.0},
        {"src": "c", "dst": "d", "bytes": 4.0},
    ]
    return OpGraph.build(ops, edges, name="diamond")


def assert_graphs_identical(left: OpGraph, right: OpGraph) -> None:
    assert left.names == right.names
    assert left.kinds == right.kinds
    for attr in (*FLOAT_FIELDS, "is_backward", "coloc", "edge_src", "edge_dst", "edge_bytes"):
        np.testing.assert_array_equal(getattr(left, attr), getattr(right, attr), err_msg=attr)
        assert getattr(left, attr).dtype == getattr(right, attr).dtype, attr
    for attr in ("given_times", "edge_given_time"):
        a, b = getattr(left, attr), getattr(right, attr)
        assert (a is None) == (b is None), attr
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=attr)
    assert left.time_classes == right.time_classes
    assert left.time_unit == right.time_unit
    assert left.name == right.name
    assert dict(left.meta) == dict(right.meta)


# ----------------------------------------------------------------------------------- build
def test_build_sorts_topologically_and_keeps_input_order_on_ties() -> None:
    graph = diamond()
    # a is the only source; b and c tie, b came first in the input; d last.
    assert graph.names == ("a", "b", "c", "d")
    np.testing.assert_array_equal(graph.flops, [1.0, 2.0, 3.0, 4.0])
    assert list(zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), strict=True)) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    np.testing.assert_array_equal(graph.edge_bytes, [3.0, 2.0, 1.0, 4.0])
    np.testing.assert_array_equal(graph.resident_bytes, [0.0, 8.0, 0.0, 0.0])  # defaults to param_bytes
    np.testing.assert_array_equal(graph.is_backward, [False, False, True, False])
    assert graph.coloc[0] == NO_CLASS and graph.coloc[1] == graph.coloc[2] != NO_CLASS
    assert [p.tolist() for p in graph.predecessors()] == [[], [0], [0], [1, 2]]
    assert [s.tolist() for s in graph.successors()] == [[1, 2], [3], [3], []]
    assert graph.index_of("c") == 2


def test_arrays_are_read_only() -> None:
    graph = diamond()
    with pytest.raises(ValueError):
        graph.flops[0] = 10.0
    with pytest.raises(ValueError):
        graph.edge_src[0] = 3


def test_given_times_with_missing_class_are_inf() -> None:
    ops = [{"name": "x", "times": {"accelerator": 1.0, "cpu": 5.0}}, {"name": "y", "times": {"cpu": 2.0}}]
    graph = OpGraph.build(ops, [{"src": "x", "dst": "y", "bytes": 0, "time": 0.5}], time_classes=("accelerator", "cpu"))
    np.testing.assert_array_equal(graph.given_times, [[1.0, 5.0], [math.inf, 2.0]])
    np.testing.assert_array_equal(graph.edge_given_time, [0.5])


# ------------------------------------------------------------------------------ validation
def test_cycle_is_reported_with_its_ops() -> None:
    ops = [{"name": n} for n in ("p", "q", "r", "s")]
    edges = [{"src": "p", "dst": "q"}, {"src": "q", "dst": "r"}, {"src": "r", "dst": "s"}, {"src": "s", "dst": "q"}]
    with pytest.raises(RlplaceError, match="graph 'loopy' has a cycle: ") as caught:
        OpGraph.build(ops, edges, name="loopy")
    shown = str(caught.value).split("cycle: ")[1].split(";")[0].split(" -> ")
    assert shown[0] == shown[-1] and sorted(shown[:-1]) == ["'q'", "'r'", "'s'"]


def test_self_loop_is_a_cycle() -> None:
    with pytest.raises(RlplaceError, match="op 'p' feeds itself"):
        OpGraph.build([{"name": "p"}], [{"src": "p", "dst": "p"}])


def test_dangling_edge_names_the_missing_op() -> None:
    with pytest.raises(RlplaceError, match="names op 'ghost', which does not exist"):
        OpGraph.build([{"name": "p"}], [{"src": "p", "dst": "ghost"}])
    data = diamond().to_json_dict()
    data["edges"][0]["dst"] = 9
    with pytest.raises(RlplaceError, match="dangling edge"):
        OpGraph.from_json_dict(data)


def test_duplicate_ids_are_named() -> None:
    with pytest.raises(RlplaceError, match="duplicate op id 'p'"):
        OpGraph.build([{"name": "p"}, {"name": "p"}], [])
    data = diamond().to_json_dict()
    data["ops"][3]["name"] = "b"
    with pytest.raises(RlplaceError, match="duplicate op id 'b'"):
        OpGraph.from_json_dict(data)


def test_duplicate_edge_is_named() -> None:
    data = diamond().to_json_dict()
    data["edges"].append(dict(data["edges"][0]))
    with pytest.raises(RlplaceError, match="duplicate edge 'a' -> 'b'"):
        OpGraph.from_json_dict(data)


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [-1.0, math.nan, math.inf])
def test_bad_op_value_names_the_op(field: str, value: float) -> None:
    overrides = {"c": {field: value}}
    if field == "param_bytes":
        overrides["c"]["resident_bytes"] = 100.0
    with pytest.raises(RlplaceError, match=f"op 'c' has {field} = {value!r}; "):
        diamond(**overrides)


@pytest.mark.parametrize("value", [-1.0, math.nan])
def test_bad_given_time_names_the_op(value: float) -> None:
    ops = [{"name": "x", "times": {"accelerator": 1.0}}, {"name": "y", "times": {"accelerator": value}}]
    with pytest.raises(RlplaceError, match="op 'y' has a negative or NaN given time"):
        OpGraph.build(ops, [], time_classes=("accelerator",))


def test_op_that_runs_nowhere_is_named() -> None:
    ops = [{"name": "x", "times": {"accelerator": math.inf, "cpu": math.inf}}]
    with pytest.raises(RlplaceError, match="op 'x' can run on no device class"):
        OpGraph.build(ops, [], time_classes=("accelerator", "cpu"))


def test_resident_below_param_is_named() -> None:
    with pytest.raises(RlplaceError, match="op 'b' has resident_bytes below its param_bytes"):
        diamond(b={"resident_bytes": 1.0})


def test_negative_edge_bytes_rejected() -> None:
    data = diamond().to_json_dict()
    data["edges"][1]["bytes"] = -5.0
    with pytest.raises(RlplaceError, match=r"entry 1 has edge bytes = -5\.0;"):
        OpGraph.from_json_dict(data)


def test_edge_against_topological_order_is_rejected() -> None:
    data = diamond().to_json_dict()
    data["edges"][0] = {"src": 1, "dst": 0, "bytes": 0.0}
    with pytest.raises(RlplaceError, match="topological order"):
        OpGraph.from_json_dict(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, "not an rlplace graph"),
        ({"version": 99}, "version 99 is not supported"),
        ({"ops": None}, "malformed rlplace graph"),
    ],
)
def test_bad_json_header(change: dict, message: str) -> None:
    data = diamond().to_json_dict()
    data.update(change)
    with pytest.raises(RlplaceError, match=message):
        OpGraph.from_json_dict(data, source="g.json")


# ------------------------------------------------------------------------------ round trip
def test_json_round_trip_through_a_file(tmp_path: Path) -> None:
    ops = [
        {"name": "x", "kind": "matmul", "flops": 0.1, "times": {"accelerator": 1 / 3, "cpu": math.inf}, "coloc": 5},
        {"name": "y", "kind": "conv", "bytes_accessed": 1.2345678901234567e29, "times": {"accelerator": 2.0, "cpu": 7.0}, "is_backward": True},
    ]
    graph = OpGraph.build(
        ops, [{"src": "x", "dst": "y", "bytes": 3.5, "time": 1e-9}], name="g", time_classes=("accelerator", "cpu"), time_unit="ms", meta={"k": [1, "v"]}
    )
    path = tmp_path / "g.json"
    graph.save(path)
    assert json.loads(path.read_text())["format"] == GRAPH_FORMAT
    assert_graphs_identical(graph, OpGraph.load(path))
    assert not list(tmp_path.glob(".g.json.*")), "atomic write left a temporary file"


sizes = st.floats(min_value=0.0, max_value=1e18, allow_nan=False, allow_infinity=False)


@st.composite
def random_graphs(draw: st.DrawFn) -> OpGraph:
    n = draw(st.integers(min_value=0, max_value=12))
    names = draw(st.lists(st.text(min_size=1, max_size=6), min_size=n, max_size=n, unique=True))
    with_times = draw(st.booleans())
    classes = ("accelerator", "cpu") if with_times else ()
    ops = []
    for op_name in names:
        param = draw(sizes)
        op = {
            "name": op_name,
            "kind": draw(st.sampled_from(["matmul", "conv", "op", "aten.add.Tensor"])),
            "flops": draw(sizes),
            "bytes_accessed": draw(sizes),
            "output_bytes": draw(sizes),
            "param_bytes": param,
            "resident_bytes": param + draw(sizes),
            "work_bytes": draw(sizes),
            "is_backward": draw(st.booleans()),
            "coloc": draw(st.one_of(st.none(), st.integers(0, 3))),
        }
        if with_times:
            accelerator = draw(st.one_of(sizes, st.just(math.inf)))
            op["times"] = {"accelerator": accelerator, "cpu": draw(sizes) if math.isinf(accelerator) else draw(st.one_of(sizes, st.just(math.inf)))}
        ops.append(op)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    chosen = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=20)) if pairs else []
    edges = [{"src": names[i], "dst": names[j], "bytes": draw(sizes), **({"time": draw(sizes)} if with_times else {})} for i, j in chosen]
    return OpGraph.build(ops, edges, name=draw(st.text(max_size=8)), time_classes=classes, time_unit=draw(st.sampled_from(["s", "ms", "unit"])))


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_json_round_trip_is_exact(graph: OpGraph) -> None:
    text = json.dumps(graph.to_json_dict())
    assert_graphs_identical(graph, OpGraph.from_json_dict(json.loads(text)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.json"
        graph.save(path)
        assert_graphs_identical(graph, OpGraph.load(path))


@settings(max_examples=60, deadline=None)
@given(random_graphs())
def test_built_graphs_are_topologically_ordered(graph: OpGraph) -> None:
    assert np.all(graph.edge_src < graph.edge_dst)
    keys = graph.edge_src * max(graph.num_ops, 1) + graph.edge_dst
    assert np.all(np.diff(keys) > 0), "edges sorted by (src, dst) without duplicates"
