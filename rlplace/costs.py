"""`CostTable`: the time of every op on every device and of every edge between every pair.

Analytic graphs use a roofline model per op:

    time(op, device) = max(FLOPs / (peak(precision) * efficiency[kind]),
                           bytes_accessed / (memory_bandwidth * bandwidth_efficiency))
                       + launch_overhead          (only for ops that do any work)

Efficiencies per op kind are fractions of the data-sheet peak that well-tuned kernels reach
in practice (cuBLAS/cuDNN GEMMs and convolutions ~60-70 %, fused attention ~50 %, memory-bound
kernels reach ~80 % of DRAM bandwidth); a profiled graph's own times replace the model.
Transfers take ``latency + bytes / bandwidth`` of the link, or the graph's given edge time.
The table is computed once per (graph, cluster) and is read-only.

Fixed parts: ``op_fixed`` (the launch or per-class overhead inside ``op_time``) and
``edge_fixed`` (the link latency inside ``edge_time``) do not shrink with the batch, so the
``pipelined`` objective charges them in full to every micro-batch and divides only the rest
by M (`rlplace.simulate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from rlplace.cluster import CPU, Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.limits import check_dense_edge_table, check_edge_table

#: Fraction of peak FLOP/s reached, by op kind. Kinds not listed use ``"other"``.
COMPUTE_EFFICIENCY: dict[str, float] = {
    "matmul": 0.70,
    "conv": 0.60,
    "attention": 0.50,
    "embedding": 0.30,
    "norm": 0.30,
    "elementwise": 0.30,
    "reduction": 0.30,
    "optimizer": 0.30,
    "other": 0.40,
}
#: Fraction of peak memory bandwidth reached by streaming kernels.
BANDWIDTH_EFFICIENCY = 0.80
#: Fixed cost of launching one op, seconds, by device category.
LAUNCH_OVERHEAD_S: dict[str, float] = {"accelerator": 5e-6, CPU: 1e-6}
#: Op kinds that only reinterpret memory (views, reshapes): they cost nothing.
FREE_KINDS = frozenset({"view", "data", "input", "output"})
#: Kinds that are not run at all (graph inputs and outputs), even by a calibrated executor.
ABSENT_KINDS = frozenset({"input", "output"})
#: Classes of ops with their own fixed cost in a calibration (``op_overhead_by_class``).
OVERHEAD_CLASSES = ("forward", "backward", "optimizer", "forward_view", "backward_view", "conv", "norm")


#: Key of ``Cluster.meta`` holding one `DeviceCalibration` (or None) per device.
CALIBRATION_META_KEY = "calibration"
#: Key of ``Cluster.meta`` holding the compute time (s) one message costs each of its two
#: endpoints (`rlplace.simulate.endpoint_time`); absent or 0 on clusters where messages are
#: free for the devices' compute (DMA engines, GPUs).
MESSAGE_CPU_META_KEY = "message_cpu_s"


@dataclass(frozen=True)
class DeviceCalibration:
    """What a calibration (`rlplace.profile.Profile.apply`) measured for one device's ops.

    Attributes:
        kind_efficiency: op kind -> fraction of the device's FP32 FLOP/s (compute-bound
            kinds) and of its memory bandwidth (memory-bound kinds) that ops of the kind reach;
            kinds not listed keep `COMPUTE_EFFICIENCY` / `BANDWIDTH_EFFICIENCY`.
        launch_overhead_s: seconds every op that does work pays (used when
            ``overhead_by_class`` is empty).
        overhead_by_class: `OVERHEAD_CLASSES` entry -> seconds per op of that class, views
            included (replaces ``launch_overhead_s``).
    """

    kind_efficiency: Mapping[str, float] = field(default_factory=dict)
    launch_overhead_s: float = 0.0
    overhead_by_class: Mapping[str, float] = field(default_factory=dict)


def overhead_class(kind: str, is_backward: bool) -> str | None:
    """The `OVERHEAD_CLASSES` entry whose fixed cost an op of ``kind`` pays (None: not run).

    Convolutions and normalizations (both directions) have their own class because their
    CPU kernels carry a large setup cost; views cost only the executor's per-node overhead.
    """
    if kind in ABSENT_KINDS:
        return None
    if kind in FREE_KINDS:
        return "backward_view" if is_backward else "forward_view"
    if kind in ("conv", "norm", "optimizer"):
        return kind
    return "backward" if is_backward else "forward"


@dataclass(frozen=True, eq=False, init=False)
class CostTable:
    """Times of ops and transfers for one (graph, cluster) pair.

    Edge times are factored by link class: a class is one distinct link (latency, bandwidth)
    of an ordered device pair, class 0 being "same device" (time 0). The time of edge e from
    device a to device b is ``edge_class_time[e, link_class[a, b]]``, so the table costs
    O(m * L + k^2) memory for L classes instead of O(m * k^2).

    Shapes (n ops, m edges, k devices, L link classes):
        op_time: (n, k) float64, time of each op on each device in the graph's time unit;
            ``inf`` where the op cannot run on the device.
        link_class: (k, k) int64, class of the ordered pair (a, b); 0 on the diagonal.
        edge_class_time: (m, L) float64, time to move edge e's tensor over a link of class c
            (column 0 is all zero).
        time_unit: the unit of both (``"s"`` for analytic graphs).
        op_fixed: (n, k) float64 or None, the part of ``op_time`` that every run of the op
            pays whatever its batch (launch / per-op overhead); None: none.
        edge_class_fixed: (m, L) float64 or None, the part of ``edge_class_time`` every
            message pays whatever its size (link latency, executor overhead per message).

    The constructor also takes a dense ``edge_time`` (m, k, k) (and ``edge_fixed``), which it
    factors; `edge_time` / `edge_fixed` materialize the dense table on demand for readers
    that want it, refused past `rlplace.limits.MAX_DENSE_EDGE_TABLE_BYTES`.
    """

    op_time: np.ndarray
    time_unit: str
    link_class: np.ndarray
    edge_class_time: np.ndarray
    op_fixed: np.ndarray | None
    edge_class_fixed: np.ndarray | None
    _dense: dict[str, np.ndarray] = field(repr=False)

    def __init__(
        self,
        op_time: np.ndarray,
        edge_time: np.ndarray | None = None,
        time_unit: str = "s",
        op_fixed: np.ndarray | None = None,
        edge_fixed: np.ndarray | None = None,
        *,
        link_class: np.ndarray | None = None,
        edge_class_time: np.ndarray | None = None,
        edge_class_fixed: np.ndarray | None = None,
        dense_cache: dict[str, np.ndarray] | None = None,
    ) -> None:
        if edge_time is not None:
            if link_class is not None or edge_class_time is not None or edge_class_fixed is not None:
                raise RlplaceError("CostTable: give either a dense edge_time or link_class + edge_class_time, not both")
            link_class, edge_class_time, edge_class_fixed = factor_dense(np.asarray(edge_time, dtype=np.float64), edge_fixed)
        elif link_class is None or edge_class_time is None:
            raise RlplaceError("CostTable: needs edge_time (m, k, k) or link_class (k, k) with edge_class_time (m, L)")
        k = int(np.shape(op_time)[1])
        if link_class.shape != (k, k) or edge_class_time.ndim != 2 or (edge_class_fixed is not None and edge_class_fixed.shape != edge_class_time.shape):
            raise RlplaceError(f"CostTable: link_class {link_class.shape} / edge_class_time {edge_class_time.shape} do not fit {k} devices")
        object.__setattr__(self, "op_time", op_time)
        object.__setattr__(self, "time_unit", time_unit)
        object.__setattr__(self, "link_class", link_class)
        object.__setattr__(self, "edge_class_time", edge_class_time)
        object.__setattr__(self, "op_fixed", op_fixed)
        object.__setattr__(self, "edge_class_fixed", edge_class_fixed)
        object.__setattr__(self, "_dense", {} if dense_cache is None else dense_cache)

    def with_op_times(self, op_time: np.ndarray, op_fixed: np.ndarray | None) -> CostTable:
        """The same edge times (and dense cache) with other op times."""
        return CostTable(
            op_time, time_unit=self.time_unit, op_fixed=op_fixed, link_class=self.link_class,
            edge_class_time=self.edge_class_time, edge_class_fixed=self.edge_class_fixed, dense_cache=self._dense,
        )  # fmt: skip

    @property
    def num_edges(self) -> int:
        return int(self.edge_class_time.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.edge_class_time.shape[1])

    def pair_counts(self, *, off_diagonal: bool = True) -> np.ndarray:
        """(L,) int64: how many ordered device pairs (a != b unless ``off_diagonal`` is False) have each class."""
        counts = np.bincount(self.link_class.ravel(), minlength=self.num_classes)
        if off_diagonal:
            counts = counts - np.bincount(np.diagonal(self.link_class), minlength=self.num_classes)
        return counts

    @property
    def edge_time(self) -> np.ndarray:
        """(m, k, k) float64 dense edge times, materialized once; `RlplaceError` past `MAX_DENSE_EDGE_TABLE_BYTES`."""
        return self._materialize("edge_time", self.edge_class_time)

    @property
    def edge_fixed(self) -> np.ndarray | None:
        """(m, k, k) float64 dense fixed parts of `edge_time` (None when there are none)."""
        return None if self.edge_class_fixed is None else self._materialize("edge_fixed", self.edge_class_fixed)

    def _materialize(self, name: str, by_class: np.ndarray) -> np.ndarray:
        dense = self._dense.get(name)
        if dense is None:
            check_dense_edge_table(self.num_edges, self.num_devices, f"the dense {name} table")
            dense = by_class[:, self.link_class]
            dense.setflags(write=False)
            self._dense[name] = dense
        return dense

    def microbatch_scaled(self, microbatches: int) -> tuple[np.ndarray, np.ndarray]:
        """``(op_time, edge_class_time)`` such that dividing by M gives one micro-batch's times.

        One micro-batch of M costs ``fixed + (time - fixed) / M``; the simulator's kernels
        divide by M, so this returns ``time + (M - 1) * fixed`` (the inputs when M = 1 or
        nothing is fixed). Shapes as ``op_time`` and ``edge_class_time`` (index the latter
        with ``link_class``).
        """
        extra = float(microbatches - 1)
        op_time = self.op_time if self.op_fixed is None or extra == 0 else self.op_time + extra * self.op_fixed
        fixed = self.edge_class_fixed
        edge_time = self.edge_class_time if fixed is None or extra == 0 else self.edge_class_time + extra * fixed
        return op_time, edge_time

    def nbytes(self) -> int:
        """Bytes held by the table's arrays (the dense cache excluded)."""
        arrays = (self.op_time, self.link_class, self.edge_class_time, self.op_fixed, self.edge_class_fixed)
        return sum(int(a.nbytes) for a in arrays if a is not None)

    @classmethod
    def build(cls, graph: OpGraph, cluster: Cluster, *, precision: str | None = None) -> CostTable:
        """Cost table for ``graph`` on ``cluster``.

        ``precision`` (fp32, fp16, bf16) picks the peak FLOP/s; it defaults to the graph's
        ``meta["precision"]`` or fp32.
        """
        link_class, edge_time, edge_fixed = _edge_times(graph, cluster)
        op_time, op_fixed = _op_times(graph, cluster, precision or str(graph.meta.get("precision", "fp32")))
        for array in (op_time, link_class, edge_time, op_fixed, edge_fixed):
            array.setflags(write=False)
        return cls(op_time, time_unit=graph.time_unit, op_fixed=op_fixed, link_class=link_class, edge_class_time=edge_time, edge_class_fixed=edge_fixed)

    @classmethod
    def grouped(cls, fine: CostTable, group_of: np.ndarray, coarse: OpGraph, cluster: Cluster) -> CostTable:
        """Cost table of a coarsened graph whose group ``g`` holds the ops with ``group_of == g``.

        A group's time on a device is the sum of its ops' times there (a roofline applied to
        summed FLOPs and bytes would undercount: max(a+b, c+d) <= max(a, c) + max(b, d)), so
        one device running the whole group takes exactly as long as running its ops. Edge
        times come from the coarse graph's edges.

        Shapes: group_of (n,) int64 for the fine graph's n ops; result op_time (groups, k).
        """
        k = fine.op_time.shape[1]
        op_time = np.zeros((coarse.num_ops, k), dtype=np.float64)
        np.add.at(op_time, group_of, fine.op_time)
        op_fixed = np.zeros((coarse.num_ops, k), dtype=np.float64)
        if fine.op_fixed is not None:
            np.add.at(op_fixed, group_of, fine.op_fixed)
        link_class, edge_time, edge_fixed = _edge_times(coarse, cluster)
        for array in (op_time, link_class, edge_time, op_fixed, edge_fixed):
            array.setflags(write=False)
        return cls(op_time, time_unit=fine.time_unit, op_fixed=op_fixed, link_class=link_class, edge_class_time=edge_time, edge_class_fixed=edge_fixed)

    @property
    def num_devices(self) -> int:
        return int(self.op_time.shape[1])


def _op_times(graph: OpGraph, cluster: Cluster, precision: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) op times and (n, k) their fixed parts (zero for given times)."""
    n, k = graph.num_ops, cluster.num_devices
    if graph.given_times is not None:
        columns = []
        for device in cluster.devices:
            if device.category not in graph.time_classes:
                raise RlplaceError(
                    f"graph {graph.name!r} gives times for {list(graph.time_classes)} devices only; "
                    f"device {device.name!r} of cluster {cluster.name!r} is a {device.category}"
                )
            columns.append(graph.given_times[:, graph.time_classes.index(device.category)])
        return np.stack(columns, axis=1).astype(np.float64), np.zeros((n, k), dtype=np.float64)
    efficiency = np.array([COMPUTE_EFFICIENCY.get(kind, COMPUTE_EFFICIENCY["other"]) for kind in graph.kinds])
    free = np.array([kind in FREE_KINDS for kind in graph.kinds])
    times = np.empty((n, k), dtype=np.float64)
    fixed_times = np.zeros((n, k), dtype=np.float64)
    for d, device in enumerate(cluster.devices):
        compute_efficiency, bandwidth_efficiency, launch = efficiency, BANDWIDTH_EFFICIENCY, LAUNCH_OVERHEAD_S[device.category]
        calibrated = _calibration(cluster, d)
        by_class: Mapping[str, float] = {}
        if calibrated is not None:  # measured per-kind efficiencies and op costs (rlplace.profile)
            by_kind, launch, by_class = calibrated.kind_efficiency, calibrated.launch_overhead_s, calibrated.overhead_by_class
            compute_efficiency = np.array([by_kind.get(kind, default) for kind, default in zip(graph.kinds, efficiency, strict=True)])
            bandwidth_efficiency = np.array([by_kind.get(kind, BANDWIDTH_EFFICIENCY) for kind in graph.kinds])
        compute = graph.flops / (device.peak_flops(precision) * compute_efficiency)
        memory = graph.bytes_accessed / (device.memory_bandwidth * bandwidth_efficiency)
        does_work = ((graph.flops > 0) | (graph.bytes_accessed > 0)) & ~free
        if by_class:  # a fixed cost per op class, views included (every executor node costs)
            fixed = np.array([by_class.get(overhead_class(kind, bool(back)) or "", 0.0) for kind, back in zip(graph.kinds, graph.is_backward, strict=True)])
            times[:, d] = np.where(does_work, np.maximum(compute, memory), 0.0) + fixed
            fixed_times[:, d] = fixed
        else:
            times[:, d] = np.where(does_work, np.maximum(compute, memory) + launch, 0.0)
            fixed_times[:, d] = np.where(does_work, launch, 0.0)
    # an optimizer update runs once per step: its M micro-batch instances together are that one run
    fixed_times[np.array([kind == "optimizer" for kind in graph.kinds], dtype=bool)] = 0.0
    return times, fixed_times


def _calibration(cluster: Cluster, device: int) -> DeviceCalibration | None:
    """The `DeviceCalibration` of ``device``, if the cluster carries one
    (``cluster.meta[CALIBRATION_META_KEY]``, a tuple with one entry per device)."""
    entries = cluster.meta.get(CALIBRATION_META_KEY) if isinstance(cluster.meta, Mapping) else None
    if not isinstance(entries, tuple) or device >= len(entries):
        return None
    entry = entries[device]
    return entry if isinstance(entry, DeviceCalibration) else None


def link_classes(cluster: Cluster) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(link_class (k, k) int64, latency (L,), inverse_bandwidth (L,))`` of ``cluster``'s links.

    A class is one distinct (latency s, 1 / bandwidth s/byte) of an ordered pair a != b;
    class 0 is the diagonal (latency 0, inverse bandwidth 0: time 0). An off-diagonal link
    with zero latency and infinite bandwidth shares class 0 (its times are 0 as well).
    """
    k = cluster.num_devices
    off_diagonal = ~np.eye(k, dtype=bool)
    with np.errstate(divide="ignore"):
        inverse_bandwidth = np.where(off_diagonal, 1.0 / cluster.bandwidth, 0.0)
    latency = np.where(off_diagonal, cluster.latency, 0.0).astype(np.float64)
    # +0.0 folds -0.0 into 0.0 so that the zero class is found by value
    keys = np.concatenate([[[0.0, 0.0]], np.stack([latency.ravel(), inverse_bandwidth.ravel()], axis=1) + 0.0])
    unique, link_class = _zero_first_classes(keys, 0, k)
    return link_class, unique[:, 0].copy(), unique[:, 1].copy()


def _zero_first_classes(keys: np.ndarray, axis: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct slices of ``keys`` along ``axis`` and the class of every ordered device pair.

    ``keys`` holds 1 + k·k slices along ``axis``: first the all-zero "same device" key, then one
    per ordered pair (a, b) in row-major order. Returns (distinct keys, renumbered so that the
    zero key is class 0 and the rest keep sorted order; link_class (k, k) int64).
    """
    unique, inverse = np.unique(keys, axis=axis, return_inverse=True)
    inverse = inverse.reshape(-1)
    zero = int(inverse[0])
    order = np.concatenate([[zero], np.delete(np.arange(unique.shape[axis]), zero)])
    renumber = np.empty_like(order)
    renumber[order] = np.arange(order.size)
    return np.take(unique, order, axis=axis), renumber[inverse[1:]].reshape(k, k).astype(np.int64)


def _edge_times(graph: OpGraph, cluster: Cluster) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(link_class (k, k), edge times (m, L), their fixed parts (m, L))``: the link latency;
    zero for a graph's given edge times, which take one class for every pair a != b."""
    k, m = cluster.num_devices, graph.num_edges
    where = f"graph {graph.name!r} on cluster {cluster.name!r}"
    if graph.edge_given_time is not None:
        link_class = np.where(np.eye(k, dtype=bool), 0, 1).astype(np.int64)
        num_classes = 2 if k > 1 else 1
        check_edge_table(m, num_classes, where)
        times = np.zeros((m, num_classes), dtype=np.float64)
        times[:, 1:] = graph.edge_given_time[:, None]
        return link_class, times, np.zeros_like(times)
    link_class, latency, inverse_bandwidth = link_classes(cluster)
    check_edge_table(m, latency.size, where)
    fixed = np.broadcast_to(latency[None, :], (m, latency.size)).astype(np.float64)
    return link_class, fixed + graph.edge_bytes[:, None] * inverse_bandwidth[None, :], fixed


def factor_dense(edge_time: np.ndarray, edge_fixed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``(link_class (k, k), edge_class_time (m, L), edge_class_fixed (m, L) or None)`` of a dense
    (m, k, k) table: one class per distinct (times, fixed parts) column over the pairs, class 0
    the all-zero column (present even if no pair has it)."""
    if edge_time.ndim != 3 or edge_time.shape[1] != edge_time.shape[2]:
        raise RlplaceError(f"CostTable: edge_time must be (edges, devices, devices), got {edge_time.shape}")
    m, k, _ = edge_time.shape
    columns = edge_time.reshape(m, k * k)
    if edge_fixed is not None:
        edge_fixed = np.asarray(edge_fixed, dtype=np.float64)
        if edge_fixed.shape != edge_time.shape:
            raise RlplaceError(f"CostTable: edge_fixed {edge_fixed.shape} does not match edge_time {edge_time.shape}")
        columns = np.concatenate([columns, edge_fixed.reshape(m, k * k)])
    columns = np.concatenate([np.zeros((columns.shape[0], 1)), columns], axis=1) + 0.0
    unique, link_class = _zero_first_classes(columns, 1, k)
    unique = np.ascontiguousarray(unique)
    if edge_fixed is None:
        return link_class, unique, None
    return link_class, np.ascontiguousarray(unique[:m]), np.ascontiguousarray(unique[m:])


def interchangeable_devices(costs: CostTable, cluster: Cluster) -> list[list[int]]:
    """Groups of devices any two of which can swap without changing any placement's cost (the
    max load, and the simulated step time and memory at any M): equal op-time columns (and
    fixed parts, which micro-batching keeps whole), memory and kind, and a link-class matrix the
    swap leaves as it is. (Swapping is an equivalence: (a c) = (a b)(b c)(a b).) Each group
    ascending; every device is in exactly one group."""
    k = cluster.num_devices
    op_time = np.where(np.isfinite(costs.op_time), costs.op_time, -1.0)
    if costs.op_fixed is not None:
        op_time = np.concatenate([op_time, np.asarray(costs.op_fixed, dtype=np.float64)])  # (2n, k): both must match
    link = np.asarray(costs.link_class)
    memory = cluster.memory
    kinds = [device.category for device in cluster.devices]
    groups: list[list[int]] = []
    grouped = np.zeros(k, dtype=bool)
    for a in range(k):
        if grouped[a]:
            continue
        group = [a]
        for b in range(a + 1, k):
            if grouped[b] or kinds[a] != kinds[b] or memory[a] != memory[b] or not np.array_equal(op_time[:, a], op_time[:, b]):
                continue
            swap = np.arange(k)
            swap[a], swap[b] = b, a
            if np.array_equal(link[np.ix_(swap, swap)], link):
                group.append(b)
                grouped[b] = True
        groups.append(group)
    return groups
