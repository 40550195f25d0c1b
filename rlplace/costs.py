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
from rlplace.limits import check_edge_table

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


@dataclass(frozen=True, eq=False)
class CostTable:
    """Times of ops and transfers for one (graph, cluster) pair.

    Shapes (n ops, m edges, k devices):
        op_time: (n, k) float64, time of each op on each device in the graph's time unit;
            ``inf`` where the op cannot run on the device.
        edge_time: (m, k, k) float64, time to move edge e's tensor from device a to device b
            (0 when a == b).
        time_unit: the unit of both (``"s"`` for analytic graphs).
        op_fixed: (n, k) float64 or None, the part of ``op_time`` that every run of the op
            pays whatever its batch (launch / per-op overhead); None: none.
        edge_fixed: (m, k, k) float64 or None, the part of ``edge_time`` every message pays
            whatever its size (link latency, executor overhead per message); None: none.
    """

    op_time: np.ndarray
    edge_time: np.ndarray
    time_unit: str
    op_fixed: np.ndarray | None = None
    edge_fixed: np.ndarray | None = None

    def microbatch_scaled(self, microbatches: int) -> tuple[np.ndarray, np.ndarray]:
        """``(op_time, edge_time)`` such that dividing by M gives one micro-batch's times.

        One micro-batch of M costs ``fixed + (time - fixed) / M``; the simulator's kernels
        divide by M, so this returns ``time + (M - 1) * fixed`` (the inputs when M = 1 or
        nothing is fixed). Shapes as ``op_time`` and ``edge_time``.
        """
        extra = float(microbatches - 1)
        op_time = self.op_time if self.op_fixed is None or extra == 0 else self.op_time + extra * self.op_fixed
        edge_time = self.edge_time if self.edge_fixed is None or extra == 0 else self.edge_time + extra * self.edge_fixed
        return op_time, edge_time

    @classmethod
    def build(cls, graph: OpGraph, cluster: Cluster, *, precision: str | None = None) -> CostTable:
        """Cost table for ``graph`` on ``cluster``.

        ``precision`` (fp32, fp16, bf16) picks the peak FLOP/s; it defaults to the graph's
        ``meta["precision"]`` or fp32.
        """
        check_edge_table(graph.num_edges, cluster.num_devices, f"graph {graph.name!r} on cluster {cluster.name!r}")
        op_time, op_fixed = _op_times(graph, cluster, precision or str(graph.meta.get("precision", "fp32")))
        edge_time, edge_fixed = _edge_times(graph, cluster)
        for array in (op_time, edge_time, op_fixed, edge_fixed):
            array.setflags(write=False)
        return cls(op_time=op_time, edge_time=edge_time, time_unit=graph.time_unit, op_fixed=op_fixed, edge_fixed=edge_fixed)

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
        edge_time, edge_fixed = _edge_times(coarse, cluster)
        for array in (op_time, edge_time, op_fixed, edge_fixed):
            array.setflags(write=False)
        return cls(op_time=op_time, edge_time=edge_time, time_unit=fine.time_unit, op_fixed=op_fixed, edge_fixed=edge_fixed)

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


def _edge_times(graph: OpGraph, cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """(m, k, k) edge times and (m, k, k) their fixed parts (the link latency; zero for given times)."""
    k = cluster.num_devices
    off_diagonal = ~np.eye(k, dtype=bool)
    if graph.edge_given_time is not None:
        times = graph.edge_given_time[:, None, None] * off_diagonal[None, :, :]
        return times, np.zeros_like(times, dtype=np.float64)
    with np.errstate(divide="ignore"):
        inverse_bandwidth = np.where(off_diagonal, 1.0 / cluster.bandwidth, 0.0)
    fixed = np.broadcast_to(cluster.latency[None, :, :] * off_diagonal[None], (graph.num_edges, k, k)).astype(np.float64)
    return fixed + graph.edge_bytes[:, None, None] * inverse_bandwidth[None], fixed
