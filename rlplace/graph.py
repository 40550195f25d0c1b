"""`OpGraph`: a computation graph as flat arrays, ops in topological order.

Every op is an integer id ``0..n-1``; every edge ``src -> dst`` satisfies ``src < dst``.
Costs are either *analytic* (FLOPs and bytes accessed, turned into times by the cost model
of ``rlplace.costs``) or *given* (a time per device class, as profiled graphs bring them).
Op names appear only here and at IO boundaries; everything else works on ids.

The graph is immutable: arrays are read-only views, so a simulator or a baseline that tried
to write into one fails loudly instead of corrupting a shared graph.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.errors import RlplaceError
from rlplace.limits import MAX_EDGES, MAX_OPS, MAX_QUANTITY, check_count

GRAPH_FORMAT = "rlplace-graph"
GRAPH_FORMAT_VERSION = 1
NO_CLASS = -1

_FLOAT_FIELDS = ("flops", "bytes_accessed", "output_bytes", "param_bytes", "resident_bytes", "work_bytes")


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class OpGraph:
    """A DAG of ops with per-op costs and sizes and per-edge tensor sizes.

    Shapes (n ops, m edges, c given device classes):
        names: n unique op names.
        kinds: n op kinds (``"matmul"``, ``"conv"``, ``"elementwise"``, aten target ...).
        flops: (n,) float64, floating-point operations of the op.
        bytes_accessed: (n,) float64, bytes read and written by the op (roofline memory term).
        output_bytes: (n,) float64, bytes of the op's output tensor(s).
        param_bytes: (n,) float64, bytes of parameters owned by the op (each parameter counted
            once, on one op).
        resident_bytes: (n,) float64, bytes resident on the op's device for the whole step:
            parameters plus, for training, gradients and optimizer state (>= param_bytes).
        work_bytes: (n,) float64, temporary working memory while the op runs.
        is_backward: (n,) bool, op belongs to the backward pass (or optimizer update).
        coloc: (n,) int64, colocation class (ops of one class share a device), -1 for none.
        edge_src, edge_dst: (m,) int64, ``edge_src < edge_dst``.
        edge_bytes: (m,) float64, bytes of the tensor the edge carries.
        given_times: (n, c) float64 or None, time in ``time_unit`` of each op on each device
            class named by ``time_classes``; ``inf`` means the op cannot run on that class.
        edge_given_time: (m,) float64 or None, transfer time of the edge between two different
            devices, in ``time_unit``; when set it replaces latency + bytes / bandwidth.
        time_unit: unit of every time derived from this graph (``"s"`` for analytic graphs).
        name: a label for tables and errors.
        meta: free-form JSON-serializable provenance (source file, model spec, batch size ...).
    """

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    flops: np.ndarray
    bytes_accessed: np.ndarray
    output_bytes: np.ndarray
    param_bytes: np.ndarray
    resident_bytes: np.ndarray
    work_bytes: np.ndarray
    is_backward: np.ndarray
    coloc: np.ndarray
    edge_src: np.ndarray
    edge_dst: np.ndarray
    edge_bytes: np.ndarray
    given_times: np.ndarray | None = None
    time_classes: tuple[str, ...] = ()
    edge_given_time: np.ndarray | None = None
    time_unit: str = "s"
    name: str = "graph"
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for attr in (*_FLOAT_FIELDS, "edge_bytes"):
            object.__setattr__(self, attr, _readonly(np.asarray(getattr(self, attr), dtype=np.float64)))
        object.__setattr__(self, "is_backward", _readonly(np.asarray(self.is_backward, dtype=bool)))
        for attr in ("coloc", "edge_src", "edge_dst"):
            object.__setattr__(self, attr, _readonly(np.asarray(getattr(self, attr), dtype=np.int64)))
        if self.given_times is not None:
            given = np.asarray(self.given_times, dtype=np.float64)
            object.__setattr__(self, "given_times", _readonly(given.reshape(len(self.names), len(self.time_classes) or -1)))
        if self.edge_given_time is not None:
            object.__setattr__(self, "edge_given_time", _readonly(np.asarray(self.edge_given_time, dtype=np.float64)))
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "kinds", tuple(self.kinds))
        object.__setattr__(self, "time_classes", tuple(self.time_classes))
        self.validate()

    # ------------------------------------------------------------------ sizes
    @property
    def num_ops(self) -> int:
        return len(self.names)

    @property
    def num_edges(self) -> int:
        return int(self.edge_src.shape[0])

    @property
    def has_given_times(self) -> bool:
        return self.given_times is not None

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise `RlplaceError` naming the first op or edge that breaks an invariant."""
        n = self.num_ops
        where = f"graph {self.name!r}"
        check_graph_size(n, self.num_edges, where)
        if len(self.kinds) != n:
            raise RlplaceError(f"{where}: {len(self.kinds)} kinds for {n} ops")
        seen: dict[str, int] = {}
        for index, op_name in enumerate(self.names):
            if op_name in seen:
                raise RlplaceError(f"{where}: duplicate op id {op_name!r} (ops {seen[op_name]} and {index}); op ids must be unique")
            seen[op_name] = index
        for attr in _FLOAT_FIELDS:
            values = getattr(self, attr)
            if values.shape != (n,):
                raise RlplaceError(f"{where}: field {attr} has shape {values.shape}, expected ({n},)")
            _check_finite_nonnegative(values, attr, self.names, where)
        if self.is_backward.shape != (n,) or self.coloc.shape != (n,):
            raise RlplaceError(f"{where}: is_backward/coloc must have one entry per op")
        if np.any(self.resident_bytes < self.param_bytes):
            bad = int(np.argmax(self.resident_bytes < self.param_bytes))
            raise RlplaceError(f"{where}: op {self.names[bad]!r} has resident_bytes below its param_bytes")
        m = self.edge_src.shape[0]
        if self.edge_dst.shape != (m,) or self.edge_bytes.shape != (m,):
            raise RlplaceError(f"{where}: edge arrays disagree in length")
        for k in range(m):
            src, dst = int(self.edge_src[k]), int(self.edge_dst[k])
            if not (0 <= src < n and 0 <= dst < n):
                raise RlplaceError(f"{where}: edge {k} ({src} -> {dst}) points at an op that does not exist (dangling edge)")
            if src >= dst:
                raise RlplaceError(
                    f"{where}: edge {self.names[src]!r} -> {self.names[dst]!r} goes against the topological order; "
                    "list ops in topological order (OpGraph.build sorts them)"
                )
        if m:
            keys = self.edge_src * n + self.edge_dst
            if np.unique(keys).shape[0] != m:
                dup = _first_duplicate(keys)
                raise RlplaceError(f"{where}: duplicate edge {self.names[dup // n]!r} -> {self.names[dup % n]!r}")
        _check_finite_nonnegative(self.edge_bytes, "edge bytes", None, where)
        if self.given_times is not None:
            if self.given_times.shape != (n, len(self.time_classes)) or not self.time_classes:
                raise RlplaceError(f"{where}: given_times must be (ops, time_classes)")
            if np.any(np.isnan(self.given_times)) or np.any(self.given_times < 0):
                bad = int(np.argwhere(~(self.given_times >= 0))[0, 0])
                raise RlplaceError(f"{where}: op {self.names[bad]!r} has a negative or NaN given time")
            if np.any(np.all(np.isinf(self.given_times), axis=1)):
                bad = int(np.argmax(np.all(np.isinf(self.given_times), axis=1)))
                raise RlplaceError(f"{where}: op {self.names[bad]!r} can run on no device class")
            _check_at_most_quantity(self.given_times.max(axis=1, where=np.isfinite(self.given_times), initial=0.0), "given time", self.names, where)
        if self.edge_given_time is not None:
            if self.edge_given_time.shape != (m,):
                raise RlplaceError(f"{where}: edge_given_time must have one entry per edge")
            _check_finite_nonnegative(self.edge_given_time, "edge transfer time", None, where)

    # ----------------------------------------------------------- derived views
    def predecessors(self) -> list[np.ndarray]:
        """Per op, the ids of its producers (int64 arrays)."""
        order = np.argsort(self.edge_dst, kind="stable")
        bounds = np.searchsorted(self.edge_dst[order], np.arange(self.num_ops + 1))
        src = self.edge_src[order]
        return [src[bounds[i] : bounds[i + 1]] for i in range(self.num_ops)]

    def successors(self) -> list[np.ndarray]:
        """Per op, the ids of its consumers (int64 arrays)."""
        bounds, dst, _ = self.successor_table()
        return [dst[bounds[i] : bounds[i + 1]] for i in range(self.num_ops)]

    def successor_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The consumers in compressed form, for kernels: (ptr (n + 1,), op (m,), edge (m,)),
        all int64; the consumers of op i are ``op[ptr[i]:ptr[i + 1]]``, reached through edges
        ``edge[ptr[i]:ptr[i + 1]]``, in edge order."""
        order = np.argsort(self.edge_src, kind="stable").astype(np.int64)
        ptr = np.searchsorted(self.edge_src[order], np.arange(self.num_ops + 1)).astype(np.int64)
        return ptr, np.ascontiguousarray(self.edge_dst[order], dtype=np.int64), order

    def index_of(self, op_name: str) -> int:
        """Id of the op called ``op_name``; `RlplaceError` when there is none."""
        try:
            return self._name_index()[op_name]
        except KeyError:
            raise RlplaceError(f"graph {self.name!r} has no op named {op_name!r}") from None

    def _name_index(self) -> dict[str, int]:
        cached = self.__dict__.get("_names_cache")
        if cached is None:
            cached = {op_name: i for i, op_name in enumerate(self.names)}
            object.__setattr__(self, "_names_cache", cached)
        return cached

    # -------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        ops: Sequence[Mapping[str, Any]],
        edges: Sequence[Mapping[str, Any]],
        *,
        name: str = "graph",
        time_classes: Sequence[str] = (),
        time_unit: str = "s",
        meta: Mapping[str, Any] | None = None,
    ) -> OpGraph:
        """Build a graph from ops and edges in any order: sort topologically, reject cycles.

        Each op is a mapping with ``name`` and optional ``kind``, ``flops``, ``bytes_accessed``,
        ``output_bytes``, ``param_bytes``, ``resident_bytes`` (defaults to ``param_bytes``),
        ``work_bytes``, ``is_backward``, ``coloc`` (any hashable label, or None) and, when
        ``time_classes`` is given, ``times`` (a mapping class -> time). Each edge is a mapping
        with ``src``, ``dst`` (op names), ``bytes`` and optional ``time``.
        Ties in the topological order keep the input order (Kahn's algorithm with a heap).
        """
        check_graph_size(len(ops), len(edges), f"graph {name!r}")
        names = [str(op["name"]) for op in ops]
        position: dict[str, int] = {}
        for index, op_name in enumerate(names):
            if op_name in position:
                raise RlplaceError(f"graph {name!r}: duplicate op id {op_name!r}; op ids must be unique")
            position[op_name] = index
        n = len(names)
        src_in = np.empty(len(edges), dtype=np.int64)
        dst_in = np.empty(len(edges), dtype=np.int64)
        for k, edge in enumerate(edges):
            for end, target in (("src", src_in), ("dst", dst_in)):
                label = str(edge[end])
                if label not in position:
                    raise RlplaceError(f"graph {name!r}: edge {edge['src']!r} -> {edge['dst']!r} names op {label!r}, which does not exist (dangling edge)")
                target[k] = position[label]
            if src_in[k] == dst_in[k]:
                raise RlplaceError(f"graph {name!r}: op {names[src_in[k]]!r} feeds itself (a cycle)")
        order = _topological_order(n, src_in, dst_in, names, name)
        new_id = np.empty(n, dtype=np.int64)
        new_id[order] = np.arange(n)

        def column(key: str, default: float = 0.0) -> np.ndarray:
            return np.array([float(ops[i].get(key, default) or 0.0) for i in order], dtype=np.float64)

        param = column("param_bytes")
        resident = np.array(
            [float(ops[i]["resident_bytes"]) if ops[i].get("resident_bytes") is not None else param[j] for j, i in enumerate(order)],
            dtype=np.float64,
        )
        class_ids: dict[Any, int] = {}
        coloc = np.full(n, NO_CLASS, dtype=np.int64)
        for j, i in enumerate(order):
            label = ops[i].get("coloc")
            if label is not None:
                coloc[j] = class_ids.setdefault(label, len(class_ids))
        given = None
        if time_classes:
            given = np.empty((n, len(time_classes)), dtype=np.float64)
            for j, i in enumerate(order):
                times = ops[i].get("times")
                if times is None:
                    raise RlplaceError(f"graph {name!r}: op {names[i]!r} has no times for classes {list(time_classes)}")
                for c, time_class in enumerate(time_classes):
                    given[j, c] = float(times.get(time_class, math.inf))
        edge_src = new_id[src_in]
        edge_dst = new_id[dst_in]
        edge_order = np.lexsort((edge_dst, edge_src))
        edge_bytes = np.array([float(edges[k].get("bytes", 0.0) or 0.0) for k in edge_order], dtype=np.float64)
        edge_time = None
        if edges and any(edge.get("time") is not None for edge in edges):
            edge_time = np.array([float(edges[k].get("time") or 0.0) for k in edge_order], dtype=np.float64)
        return cls(
            names=tuple(names[i] for i in order),
            kinds=tuple(str(ops[i].get("kind", "op")) for i in order),
            flops=column("flops"),
            bytes_accessed=column("bytes_accessed"),
            output_bytes=column("output_bytes"),
            param_bytes=param,
            resident_bytes=resident,
            work_bytes=column("work_bytes"),
            is_backward=np.array([bool(ops[i].get("is_backward", False)) for i in order]),
            coloc=coloc,
            edge_src=edge_src[edge_order],
            edge_dst=edge_dst[edge_order],
            edge_bytes=edge_bytes,
            given_times=given,
            time_classes=tuple(time_classes),
            edge_given_time=edge_time,
            time_unit=time_unit,
            name=name,
            meta=dict(meta or {}),
        )

    # ------------------------------------------------------------------ JSON
    def to_json_dict(self) -> dict[str, Any]:
        """The versioned JSON form (``format``, ``version``); `from_json_dict` inverts it exactly."""
        ops = []
        for i in range(self.num_ops):
            op: dict[str, Any] = {"name": self.names[i], "kind": self.kinds[i]}
            for attr in _FLOAT_FIELDS:
                op[attr] = float(getattr(self, attr)[i])
            op["is_backward"] = bool(self.is_backward[i])
            op["coloc"] = int(self.coloc[i])
            if self.given_times is not None:
                op["times"] = [_float_to_json(t) for t in self.given_times[i]]
            ops.append(op)
        edges = []
        for k in range(self.num_edges):
            edge: dict[str, Any] = {"src": int(self.edge_src[k]), "dst": int(self.edge_dst[k]), "bytes": float(self.edge_bytes[k])}
            if self.edge_given_time is not None:
                edge["time"] = float(self.edge_given_time[k])
            edges.append(edge)
        return {
            "format": GRAPH_FORMAT,
            "version": GRAPH_FORMAT_VERSION,
            "name": self.name,
            "time_unit": self.time_unit,
            "time_classes": list(self.time_classes),
            "meta": dict(self.meta),
            "ops": ops,
            "edges": edges,
        }

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any], *, source: str = "<json>") -> OpGraph:
        """Read the versioned JSON form; errors name ``source`` and the offending field."""
        if data.get("format") != GRAPH_FORMAT:
            raise RlplaceError(f"{source}: not an rlplace graph (format is {data.get('format')!r}, expected {GRAPH_FORMAT!r})")
        version = data.get("version")
        if version != GRAPH_FORMAT_VERSION:
            raise RlplaceError(f"{source}: graph format version {version!r} is not supported (this rlplace reads version {GRAPH_FORMAT_VERSION}); re-export the graph with this version")
        try:
            ops = data["ops"]
            edges = data["edges"]
            if not isinstance(ops, list) or not isinstance(edges, list):
                raise TypeError("'ops' and 'edges' must be JSON lists")
            check_graph_size(len(ops), len(edges), f"graph {data.get('name', source)!r}")
            time_classes = tuple(data.get("time_classes", ()))
            n = len(ops)
            given = None
            if time_classes:
                given = np.array([[_float_from_json(t) for t in op["times"]] for op in ops], dtype=np.float64).reshape(n, len(time_classes))
            edge_time = None
            if edges and "time" in edges[0]:
                edge_time = np.array([float(e["time"]) for e in edges], dtype=np.float64)
            names = tuple(str(op["name"]) for op in ops)
            edge_src = np.array([_json_int(e["src"], "edge src") for e in edges], dtype=np.int64)
            edge_dst = np.array([_json_int(e["dst"], "edge dst") for e in edges], dtype=np.int64)
            in_range = np.all((edge_src >= 0) & (edge_src < n) & (edge_dst >= 0) & (edge_dst < n))
            if in_range and np.any(edge_src >= edge_dst):
                # Name a cycle if there is one; an acyclic but unsorted graph fails validation below.
                _topological_order(n, edge_src, edge_dst, names, str(data.get("name", source)))
            return cls(
                names=names,
                kinds=tuple(str(op.get("kind", "op")) for op in ops),
                **{attr: np.array([float(op.get(attr, 0.0)) for op in ops], dtype=np.float64) for attr in _FLOAT_FIELDS},
                is_backward=np.array([bool(op.get("is_backward", False)) for op in ops], dtype=bool),
                coloc=np.array([_json_int(op.get("coloc", NO_CLASS), "coloc") for op in ops], dtype=np.int64),
                edge_src=edge_src,
                edge_dst=edge_dst,
                edge_bytes=np.array([float(e.get("bytes", 0.0)) for e in edges], dtype=np.float64),
                given_times=given,
                time_classes=time_classes,
                edge_given_time=edge_time,
                time_unit=str(data.get("time_unit", "s")),
                name=str(data.get("name", source)),
                meta=dict(data.get("meta", {})),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            raise RlplaceError(f"{source}: malformed rlplace graph ({type(exc).__name__}: {exc})") from None
        except RlplaceError as exc:
            raise RlplaceError(f"{source}: {exc}") from None

    def save(self, path: str | Path) -> None:
        """Write the JSON form atomically (a temporary file renamed into place)."""
        from rlplace.io import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_json_dict()))

    @classmethod
    def load(cls, path: str | Path) -> OpGraph:
        """Read a graph written by `save`."""
        from rlplace.io import read_json

        return cls.from_json_dict(read_json(path), source=str(path))


def check_graph_size(num_ops: int, num_edges: int, where: str) -> None:
    """A graph has at most `MAX_OPS` ops and `MAX_EDGES` edges (an empty graph is valid in
    memory; `rlplace.load` refuses one as a MODEL)."""
    check_count(num_ops, MAX_OPS, "MAX_OPS", f"{where}: ops")
    check_count(num_edges, MAX_EDGES, "MAX_EDGES", f"{where}: edges")


def _json_int(value: Any, what: str) -> int:
    """An integer read from JSON (an op index or class label): a float that is not a whole
    number, like 0.7, is an error, never truncated; so is one beyond the int64 range."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{what} {value!r} is not an integer")
    if not -(2**62) < value < 2**62:
        raise ValueError(f"{what} {value!r} is out of range")
    return int(value)


def _topological_order(n: int, src: np.ndarray, dst: np.ndarray, names: Sequence[str], graph_name: str) -> np.ndarray:
    indegree = np.bincount(dst, minlength=n).astype(np.int64)
    out: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        out[s].append(d)
    heap = [i for i in range(n) if indegree[i] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        op = heapq.heappop(heap)
        order.append(op)
        for consumer in out[op]:
            indegree[consumer] -= 1
            if indegree[consumer] == 0:
                heapq.heappush(heap, consumer)
    if len(order) != n:
        stuck = next(i for i in range(n) if indegree[i] > 0)
        cycle = _find_cycle(stuck, out, indegree)
        shown = " -> ".join(repr(names[i]) for i in cycle)
        raise RlplaceError(f"graph {graph_name!r} has a cycle: {shown}; a computation graph must be acyclic")
    return np.array(order, dtype=np.int64)


def _find_cycle(start: int, out: list[list[int]], indegree: np.ndarray) -> list[int]:
    """A cycle among the ops Kahn's algorithm could not order, as ids in edge direction.

    Every such op has a producer that is also unordered, so walking producers from ``start``
    must revisit an op; the revisited stretch, reversed, is a cycle.
    """
    producers: dict[int, list[int]] = {}
    for producer, consumers in enumerate(out):
        if indegree[producer] > 0:
            for consumer in consumers:
                producers.setdefault(consumer, []).append(producer)
    path: list[int] = []
    index_in_path: dict[int, int] = {}
    node = start
    while node not in index_in_path:
        index_in_path[node] = len(path)
        path.append(node)
        node = producers[node][0]
    cycle = path[index_in_path[node] :][::-1]
    return [*cycle, cycle[0]]


def _check_finite_nonnegative(values: np.ndarray, what: str, names: Sequence[str] | None, where: str) -> None:
    bad = ~np.isfinite(values) | (values < 0)
    if np.any(bad):
        index = int(np.argmax(bad))
        owner = f"op {names[index]!r}" if names is not None else f"entry {index}"
        raise RlplaceError(f"{where}: {owner} has {what} = {float(values[index])!r}; sizes and costs must be finite and non-negative")
    _check_at_most_quantity(values, what, names, where)


def _check_at_most_quantity(values: np.ndarray, what: str, names: Sequence[str] | None, where: str) -> None:
    """No finite size, FLOP count or time above `MAX_QUANTITY`, so that sums of them stay finite."""
    big = np.isfinite(values) & (values > MAX_QUANTITY)
    if np.any(big):
        index = int(np.argmax(big))
        owner = f"op {names[index]!r}" if names is not None else f"entry {index}"
        raise RlplaceError(f"{where}: {owner} has {what} = {float(values[index]):.4g}, more than the limit MAX_QUANTITY = {MAX_QUANTITY:.0e}")


def _first_duplicate(keys: np.ndarray) -> int:
    seen: set[int] = set()
    for key in keys.tolist():
        if key in seen:
            return key
        seen.add(key)
    raise AssertionError("no duplicate")


def _float_to_json(value: float) -> float | str:
    return "inf" if math.isinf(value) else float(value)


def _float_from_json(value: float | str) -> float:
    return math.inf if value == "inf" else float(value)
