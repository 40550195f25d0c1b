"""The step-time simulator: objectives, memory, lower bounds.

Model (DESIGN.md, "Simulator model"):

- A device runs one op at a time. An op is ready when every input is on its device; among
  ready ops an idle device starts the one of lowest priority value (default: topological
  index; ties by index). All events of one instant are applied before any device picks, so
  ops that become ready together are taken in priority order.
- An op's output is sent once per remote device holding a consumer (two consumers on one
  remote device cost one transfer). The transfer occupies the link ``src -> dst`` (every
  ordered device pair is its own link) for ``costs.edge_time``; when one producer has several
  edges to consumers on the same remote device, the one transfer takes the **largest**
  ``edge_time`` of those edges (the tensor they share is sent once; the largest is the one
  that covers them all). Transfers on one link run one after another, first come first
  served in the order they become ready (producers finishing at the same instant: lower
  instance id first). Computation and communication overlap.
- Message endpoints (``cluster.meta[MESSAGE_CPU_META_KEY]`` = c seconds, default 0): where
  sending and receiving take the devices' own compute (CPU stand-ins: the copy, the
  communication thread's wake-up), each transfer adds c to its producer's time and c to the
  time of its first consumer on the destination (lowest op id), see `endpoint_time`. With
  c = 0 nothing changes, bit for bit.
- ``latency``: the finish time of the last op of one step.
- ``pipelined``: M micro-batches through the same placement; each micro-batch's op and
  transfer times are the step's divided by M, except their fixed parts (`CostTable.op_fixed`:
  launch and per-op overheads; ``edge_fixed``: link latency), which every micro-batch pays in
  full. Micro-batches share no data dependencies
  (weight gradients accumulate). The *schedule* (`rlplace.schedules`, where the model is
  stated in full) orders each device's (chunk, phase, micro-batch) slots: a device prefers
  the ready instance of its earliest slot (priority inside a slot as for ``latency``) and
  *gates* hold a slot back until an earlier one on the device has finished.
  ``gpipe`` (the default): forward ops of micro-batch 0, 1, ..., then backward ops of
  micro-batch 0, 1, ..., no gates. ``1f1b``: stage r (devices ranked by their first forward
  op, p stages) runs ``w = min(M, p - r)`` forwards, then one backward, one forward, ...;
  forward j + w waits for the device's backward of j, so at most w micro-batches are in
  flight. ``interleaved-1f1b``: Megatron-LM's virtual stages, a device's chunks (maximal runs
  of consecutive forward ops on it) scheduled as separate stages; equal to ``1f1b`` on a
  placement where every device holds one block. With M = 1 every schedule is computed
  exactly as ``latency`` (same priorities, no gates), so the two agree bit for bit.
- ``throughput``: the max-load model of Tarnawski et al. (NeurIPS 2020) as the
  dnn-partitioning README defines it: the load of a device is the time of its ops plus, for
  every op u with consumers on other devices, a transfer cost on u's device and on each such
  device; CPUs pay no transfer cost; the objective is the largest load. On general clusters
  the receiving device pays the edge time on its own link (largest over u's edges to it),
  the sender pays the largest of the times on its destination links. Imported
  dnn-partitioning graphs give one cost per producer for every link, which is the paper's
  model exactly. ``microbatches`` does not apply and is ignored.

Memory (``peak_memory``): resident bytes (parameters, gradients, optimizer state) of every
op stay on its device the whole step; an op's output lives on its device from the op's start
until its last local consumer finishes and its transfers have left (its own finish when
nothing reads it), a received copy from its arrival until the last consumer there finishes;
working memory while the op runs (``activation_memory``: the peak of these buffers alone,
without resident bytes; what a pipeline schedule changes). A training graph keeps a forward output for its backward
op through the edge between them, so activations stay until their backward op. At one
instant ends are released before starts are allocated. Under ``pipelined`` every activation
and working buffer is one micro-batch's share (the step's divided by M); resident bytes are
not divided. Under ``throughput`` memory is the static sum of resident bytes per device (the
paper's constraint; imported graphs have no activations, so both models agree there).

Lower bounds (placement-independent, in `lower_bound`):

- work bound: for any weights s_d > 0, ``max_d L_d >= sum_d s_d L_d / sum_d s_d >=
  sum_u min_d(s_d t_ud) / sum_d s_d`` (a weighted mean never exceeds the maximum, and op u on
  device p(u) adds ``s_p t_up >= min_d s_d t_ud`` to the weighted sum), where L_d is device
  d's busy time and t_ud op u's time on d. We take the better of s_d = 1 and s_d = 1 / W_d
  with W_d the time of all ops on d; when op times are proportional across devices (a speed
  per device) the latter is exactly ``1 / sum_d(1 / W_d)``, total work over total speed.
  (``1 / sum_d(1 / W_d)`` itself is not a bound when ops prefer different devices: two ops
  with times (1, 100) and (100, 1) have W = (101, 101), which gives 50.5, while the best
  placement takes 1.) Every objective's step time is at least the largest busy time, so the
  work bound holds for all three; the pipelined total busy time is the step's.
- critical-path bound (``latency``, ``pipelined``): the longest path with every op on its
  fastest device and free communication; under ``pipelined`` one micro-batch's, i.e. divided
  by M. These two alone are `basic_lower_bound`.
- one-op pipeline bound (``latency``, ``pipelined``): every op runs its M instances on one
  device, one after another, so they take at least its fastest whole-step time t_o (fixed
  parts paid M times); the first cannot start before ``head(o)``, one micro-batch's heaviest
  path into o (each op on its fastest device, free communication), and after the last one
  ``tail(o)``, the heaviest path out of o, still has to run. So the step takes at least
  ``max_o head(o) + t_o + tail(o)``: the critical path when M = 1, and under ``pipelined``
  far above path / M where one op (or a chain of heavy ops) dominates.
- colocation bound (all objectives): the ops of a colocation class share a device (every
  placement rlplace accepts keeps them together), which runs their instances one at a time:
  at least ``min_c-head + min_d sum_{o in c} t_od + min_c-tail`` (the least head and least
  tail over the class's ops; both 0 under ``throughput``, where a device's load is at least
  its ops' time). A training graph's layer whose forward and backward ops form one class and
  carry a large share of the work sets the bound this way.
The work bound is taken on the whole-step op times too (M instances, fixed parts M times),
the pipelined busy time. `lower_bound` is the best of all of these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlplace import _simkernel as kernel
from rlplace.cluster import CPU, Cluster
from rlplace.costs import MESSAGE_CPU_META_KEY, CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.objectives import OBJECTIVES as OBJECTIVES
from rlplace.objectives import check_objective, check_schedule
from rlplace.schedules import Order, gpipe_order, pipeline_order


@dataclass(frozen=True, eq=False)
class TransferLog:
    """The transfers of a recorded schedule, in the order they were issued.

    Shapes (x transfers):
        op: (x,) int64, producer op id.
        microbatch: (x,) int64, micro-batch of the producer instance (0 for ``latency``).
        src, dst: (x,) int64, sending and receiving device.
        start, finish: (x,) float64, when the transfer occupies its link, in the time unit.
    """

    op: np.ndarray
    microbatch: np.ndarray
    src: np.ndarray
    dst: np.ndarray
    start: np.ndarray
    finish: np.ndarray

    @property
    def num_transfers(self) -> int:
        return int(self.op.shape[0])


@dataclass(frozen=True, eq=False)
class SimResult:
    """The simulated evidence for one placement.

    Shapes (n ops, k devices, M micro-batches):
        step_time: objective value in ``time_unit`` (seconds for analytic graphs).
        busy_time: (k,) compute time per device (whole step, all micro-batches).
        device_load: (k,) ``throughput``: compute plus transfer load (the max-load model);
            ``latency`` / ``pipelined``: equal to ``busy_time``.
        peak_memory, capacity, overflow_bytes: (k,) bytes; overflow = max(0, peak - capacity).
        oom: any overflow above 0.
        lower_bound: the objective's placement-independent lower bound (see module doc).
        critical_path: op ids on the critical path, first to last. ``latency`` /
            ``pipelined``: walked back from the last-finishing op through whichever dependency
            (data arrival or device/link occupancy) set each start; under ``pipelined`` an op
            appears once per micro-batch it is on the path with (see
            ``critical_path_microbatch``). ``throughput``: the ops of the most loaded device,
            in topological order.
        critical_path_microbatch: micro-batch of each entry of ``critical_path``.
        op_duration: (n,) time of each op on its device for the whole step (the step's time;
            a micro-batch takes ``op_duration / M``).
        op_start, op_finish: (n,) ``latency`` / ``pipelined``: start and finish of micro-batch
            0 of each op; ``throughput``: each device's ops laid back to back in topological
            order (one steady-state period, not a schedule).
        microbatch_start, microbatch_finish: (M, n) every micro-batch's start and finish, only
            when recorded (``record=True``) and the objective has a schedule.
        transfers: the transfers, only when recorded and the objective has a schedule.
        schedule: the pipeline schedule (one of `rlplace.objectives.SCHEDULES`) under
            ``pipelined``, None otherwise.
        activation_memory: (k,) bytes, peak of activations and working memory per device
            (``peak_memory`` less resident bytes); zeros under ``throughput``.
    """

    objective: str
    step_time: float
    busy_time: np.ndarray
    peak_memory: np.ndarray
    capacity: np.ndarray
    overflow_bytes: np.ndarray
    oom: bool
    lower_bound: float
    critical_path: tuple[int, ...]
    op_start: np.ndarray | None
    op_finish: np.ndarray | None
    microbatches: int = 1
    time_unit: str = "s"
    placement: np.ndarray | None = None
    device_load: np.ndarray | None = None
    op_duration: np.ndarray | None = None
    critical_path_microbatch: tuple[int, ...] = ()
    microbatch_start: np.ndarray | None = None
    microbatch_finish: np.ndarray | None = None
    transfers: TransferLog | None = None
    schedule: str | None = None
    activation_memory: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def total_overflow(self) -> float:
        """Bytes over capacity, summed over devices."""
        return float(self.overflow_bytes.sum())

    def to_json_dict(self) -> dict[str, Any]:
        """The scalar and per-device fields as plain JSON values."""
        return {
            "objective": self.objective,
            "step_time": float(self.step_time),
            "time_unit": self.time_unit,
            "microbatches": self.microbatches,
            "schedule": self.schedule,
            "lower_bound": float(self.lower_bound),
            "busy_time": [float(v) for v in self.busy_time],
            "peak_memory_bytes": [float(v) for v in self.peak_memory],
            "peak_activation_bytes": [float(v) for v in self.activation_memory] if self.activation_memory is not None else None,
            "capacity_bytes": [float(v) for v in self.capacity],
            "overflow_bytes": [float(v) for v in self.overflow_bytes],
            "oom": bool(self.oom),
            "critical_path": [int(v) for v in self.critical_path],
        }


def _frozen(array: np.ndarray, dtype: type) -> np.ndarray:
    """A read-only C-contiguous array of ``dtype``; no copy when ``array`` already is one."""
    result = np.ascontiguousarray(array, dtype=dtype)
    if result.flags.writeable:
        result = result.view()
        result.flags.writeable = False
    return result


@dataclass(frozen=True, eq=False)
class MaxLoadTables:
    """What the ``throughput`` (max-load) model of a `Simulator` reads, for searches that score
    moves incrementally (`rlplace.baselines.max_load_tabu`); n ops, m edges, k devices, L link classes.

    Attributes:
        succ_ptr, succ_op, succ_edge: (n+1,), (m,), (m,) int64, each op's consumers and the
            edges to them (CSR, ops in id order).
        pred_ptr, pred_op: (n+1,), (m,) int64, each op's producers (CSR).
        op_time: (n, k) float64, seconds (the graph's time unit) of each op on each device.
        edge_time: (m, L) float64, transfer time of each edge on each link class.
        link_class: (k, k) int64, link class between two devices.
        is_cpu: (k,) bool, devices that pay no transfer cost.
    """

    succ_ptr: np.ndarray
    succ_op: np.ndarray
    succ_edge: np.ndarray
    pred_ptr: np.ndarray
    pred_op: np.ndarray
    op_time: np.ndarray
    edge_time: np.ndarray
    link_class: np.ndarray
    is_cpu: np.ndarray


class Simulator:
    """Precomputes graph structure once for (graph, cluster, costs); evaluates many placements fast.

    Args:
        graph, cluster, costs: the problem; never modified.
        objective: one of `OBJECTIVES`.
        microbatches: M for ``pipelined`` (>= 1); the other objectives ignore it.
        schedule: pipeline schedule for ``pipelined`` (`rlplace.objectives.SCHEDULES`); the
            other objectives ignore it.
        priority: (n,) optional scheduling priority per op, lower first among ready ops on
            one device (default: topological index). Ties go to the lower op id.

    A `Simulator` holds no per-call state, so one instance may serve many placements (and
    threads). `step_time` is the hot path: one call of the compiled event loop.
    """

    def __init__(
        self,
        graph: OpGraph,
        cluster: Cluster,
        costs: CostTable,
        *,
        objective: str = "latency",
        microbatches: int = 1,
        schedule: str = "gpipe",
        priority: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        check_objective(objective)
        check_schedule(schedule)
        if isinstance(microbatches, bool) or not isinstance(microbatches, (int, np.integer)) or microbatches < 1:
            raise RlplaceError(f"microbatches must be a whole number >= 1, got {microbatches!r}")
        n, k, m = graph.num_ops, cluster.num_devices, graph.num_edges
        if costs.op_time.shape != (n, k) or costs.link_class.shape != (k, k) or costs.edge_class_time.shape[0] != m:
            raise RlplaceError(
                f"cost table does not match graph {graph.name!r} ({n} ops, {m} edges) on cluster {cluster.name!r} ({k} devices): "
                f"op_time {costs.op_time.shape}, link_class {costs.link_class.shape}, edge_class_time {costs.edge_class_time.shape}; build it with CostTable.build(graph, cluster)"
            )
        self.graph = graph
        self.cluster = cluster
        self.costs = costs
        self.objective = objective
        self.microbatches = int(microbatches) if objective == "pipelined" else 1
        self.schedule = schedule if objective == "pipelined" else None
        self.num_ops = n
        self.num_devices = k

        succ_ptr, succ_op, succ_edge = graph.successor_table()
        self._succ_ptr = _frozen(succ_ptr, np.int64)
        self._succ_op = _frozen(succ_op, np.int64)
        self._succ_edge = _frozen(succ_edge, np.int64)
        self._indegree = _frozen(np.bincount(graph.edge_dst, minlength=n), np.int64)
        # pipelined: per-op launch costs and link latencies are paid by every micro-batch in full
        op_time, edge_time = costs.microbatch_scaled(self.microbatches)
        self._op_time = _frozen(op_time, np.float64)
        self._edge_time = _frozen(edge_time, np.float64)  # (m, L): index with self._link_class
        self._link_class = _frozen(costs.link_class, np.int64)
        self._output_bytes = _frozen(graph.output_bytes, np.float64)
        self._work_bytes = _frozen(graph.work_bytes, np.float64)
        self._held_bytes = _frozen(graph.work_bytes + graph.output_bytes, np.float64)
        self._resident_bytes = _frozen(graph.resident_bytes, np.float64)
        self._is_cpu = _frozen(np.array([d.category == CPU for d in cluster.devices], dtype=bool), np.bool_)
        self._capacity = _frozen(cluster.memory, np.float64)
        pred_order = np.argsort(graph.edge_dst, kind="stable")
        self._pred_ptr = _frozen(np.searchsorted(graph.edge_dst[pred_order], np.arange(n + 1)), np.int64)
        self._pred_op = _frozen(graph.edge_src[pred_order], np.int64)
        self._is_backward = _frozen(graph.is_backward, np.bool_)
        self._op_rank, self._rank_op = self._ranks(priority)
        self._edge_src = _frozen(graph.edge_src, np.int64)
        self._edge_dst = _frozen(graph.edge_dst, np.int64)
        self.message_cpu = message_cpu(cluster) if objective != "throughput" else 0.0
        # gpipe (and any schedule of one micro-batch) does not depend on the placement
        self._fixed_order = gpipe_order(self._is_backward, self.microbatches, k) if self.schedule in (None, "gpipe") or self.microbatches == 1 else None
        self.lower_bound = lower_bound(graph, cluster, costs, objective=objective, microbatches=self.microbatches)

    # ----------------------------------------------------------------- public API
    def step_time(self, placement: np.ndarray | Sequence[int], *, priority: Sequence[float] | np.ndarray | None = None) -> float:
        """The objective value of ``placement`` ((n,) device per op); ``inf`` where an op cannot run on its device."""
        p = self._placement(placement)
        if self.objective == "throughput":
            load, _ = kernel.max_load(self.num_ops, self.num_devices, self._succ_ptr, self._succ_op, self._succ_edge, self._op_time, self._edge_time, self._link_class, p, self._is_cpu)
            return float(load.max())
        ranks = (self._op_rank, self._rank_op) if priority is None else self._ranks(priority)
        return float(kernel.schedule_makespan(*self._schedule_args(p, ranks)))

    def max_load_tables(self) -> MaxLoadTables:
        """The (read-only) arrays `step_time` reads under ``throughput`` (`MaxLoadTables`)."""
        return MaxLoadTables(
            self._succ_ptr, self._succ_op, self._succ_edge, self._pred_ptr, self._pred_op, self._op_time, self._edge_time, self._link_class, self._is_cpu
        )

    def peak_memory(self, placement: np.ndarray | Sequence[int]) -> np.ndarray:
        """(k,) peak bytes per device (see the module doc for the memory model)."""
        p = self._placement(placement)
        if self.objective == "throughput":
            return self._resident(p)
        return self._memory(p, self._schedule(p, (self._op_rank, self._rank_op)))

    def score(self, placement: np.ndarray | Sequence[int], *, cutoff: float = np.inf) -> tuple[float, float]:
        """(step time, bytes over capacity summed over devices), for search.

        ``cutoff`` (the graph's time unit): a search that only needs to know whether a
        placement that fits in memory beats ``cutoff`` may get ``(inf, 0.0)`` for one that surely
        does not, whether it fits or overflows (the schedule is cut short once a lower bound on
        the step time passes ``cutoff``, see `rlplace._simkernel._schedule`, and its memory is
        then never computed); every finite step time is exact, and so is every score without a
        cutoff and every score of ``throughput``.
        """
        p = self._placement(placement)
        if self.objective == "throughput":
            peak = self._resident(p)
            return self.step_time(p), float(np.maximum(peak - self._capacity, 0.0).sum())
        if self._surely_fits(p):  # the peak cannot pass capacity: the makespan alone, no buffers
            return self._makespan(p, cutoff), 0.0
        if cutoff < np.inf and self._makespan(p, cutoff) == np.inf:
            # Past the cutoff it loses whether it fits or not (an overflow loses too), so its
            # memory, the costly half of a full schedule, is never needed.
            return np.inf, 0.0
        schedule = self._schedule(p, (self._op_rank, self._rank_op))
        peak = self._memory(p, schedule)
        return schedule.makespan, float(np.maximum(peak - self._capacity, 0.0).sum())

    def _makespan(self, p: np.ndarray, cutoff: float) -> float:
        """The makespan of (n,) ``p`` under the default op order, ``inf`` once it surely passes ``cutoff``."""
        return float(kernel.schedule_makespan(*self._schedule_args(p, (self._op_rank, self._rank_op)), float(cutoff)))

    def _surely_fits(self, p: np.ndarray) -> bool:
        """Whether every device holds all its buffers at once: resident bytes, every instance's
        working memory and output, and a received copy per cross-device edge, all micro-batches
        together (each buffer is 1/M of the step's bytes, so M of them sum to one op's bytes).
        The peak of `peak_dynamic_memory` never exceeds that sum, so True means no overflow."""
        return bool(
            kernel.holds_every_buffer(p, self.num_devices, self._resident_bytes, self._held_bytes, self._edge_src, self._edge_dst, self._output_bytes, self._capacity)
        )

    def run(self, placement: np.ndarray | Sequence[int], *, record: bool = False, priority: Sequence[float] | np.ndarray | None = None) -> SimResult:
        """Full evidence for ``placement``; ``record`` keeps every micro-batch's times and the transfers.

        Raises `RlplaceError` when the placement has the wrong length, names a device that
        does not exist, or puts an op on a device it cannot run on.
        """
        p = self._placement(placement)
        op_time = self._times(p)
        durations = op_time[np.arange(self.num_ops), p]
        if np.any(np.isinf(durations)):
            op = int(np.argmax(np.isinf(durations)))
            raise RlplaceError(f"op {self.graph.names[op]!r} cannot run on device {self.cluster.devices[int(p[op])].name!r} (the graph gives it no time there); move it")
        busy = np.bincount(p, weights=durations, minlength=self.num_devices)
        if self.objective == "throughput":
            return self._throughput_result(p, durations, busy)
        ranks = (self._op_rank, self._rank_op) if priority is None else self._ranks(priority)
        s = self._schedule(p, ranks, op_time)
        dynamic = self._dynamic_memory(p, s)
        path = kernel.critical_path(s.start, s.finish, s.ready_time, s.ready_via, s.device_prev, s.x_instance, s.x_ready, s.x_start, s.x_link_prev)
        n, microbatches = self.num_ops, self.microbatches
        starts = s.start.reshape(microbatches, n)
        finishes = s.finish.reshape(microbatches, n)
        transfers = None
        if record:
            ops = s.x_instance % max(n, 1)
            transfers = TransferLog(
                op=_frozen(ops, np.int64),
                microbatch=_frozen(s.x_instance // max(n, 1), np.int64),
                src=_frozen(p[ops], np.int64),
                dst=_frozen(s.x_dst, np.int64),
                start=_frozen(s.x_start, np.float64),
                finish=_frozen(s.x_finish, np.float64),
            )
        return self._result(
            p,
            step_time=float(s.makespan),
            busy=busy,
            load=busy,
            peak=self._resident(p) + dynamic,
            activation=dynamic,
            path=tuple((path % max(n, 1)).tolist()),
            path_microbatch=tuple((path // max(n, 1)).tolist()),
            durations=durations,
            op_start=starts[0].copy(),
            op_finish=finishes[0].copy(),
            microbatch_start=starts.copy() if record else None,
            microbatch_finish=finishes.copy() if record else None,
            transfers=transfers,
        )

    # ------------------------------------------------------------------ internals
    def _ranks(self, priority: Sequence[float] | np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(op_rank, rank_op), both (n,) int64: the order devices prefer ops in within one slot, and its inverse."""
        n = self.num_ops
        if priority is None:
            op_rank = np.arange(n, dtype=np.int64)
        else:
            values = np.asarray(priority, dtype=np.float64)
            if values.shape != (n,) or not np.all(np.isfinite(values)):
                raise RlplaceError(f"priority must hold one finite number per op ({n}), got shape {values.shape}")
            op_rank = np.empty(n, dtype=np.int64)
            op_rank[np.lexsort((np.arange(n), values))] = np.arange(n)
        rank_op = np.empty_like(op_rank)
        rank_op[op_rank] = np.arange(n)
        return _frozen(op_rank, np.int64), _frozen(rank_op, np.int64)

    def _placement(self, placement: np.ndarray | Sequence[int]) -> np.ndarray:
        p = np.asarray(placement)
        if p.shape != (self.num_ops,):
            raise RlplaceError(f"placement has shape {p.shape} but graph {self.graph.name!r} has {self.num_ops} ops; give one device per op in graph order")
        if p.dtype != np.int64:
            if not np.issubdtype(p.dtype, np.integer):
                raise RlplaceError(f"placement must hold integer device indices, got {p.dtype}")
            p = p.astype(np.int64)
        p = _frozen(p, np.int64)
        bad = kernel.first_out_of_range(p, self.num_devices)
        if bad >= 0:
            raise RlplaceError(
                f"placement puts op {self.graph.names[bad]!r} on device {int(p[bad])}, but cluster {self.cluster.name!r} has devices 0..{self.num_devices - 1}"
            )
        return p

    def order(self, placement: np.ndarray | Sequence[int]) -> Order:
        """The schedule's `Order` for ``placement`` (lanes, slots, gates; see `rlplace.schedules`)."""
        return self._order(self._placement(placement))

    def _order(self, p: np.ndarray) -> Order:
        if self._fixed_order is not None:
            return self._fixed_order
        assert self.schedule is not None
        return pipeline_order(self.schedule, p, self._is_backward, self._pred_ptr, self._pred_op, self.microbatches, self.num_devices)

    def _times(self, p: np.ndarray) -> np.ndarray:
        """(n, k) op times under placement ``p``: ``_op_time`` plus, when messages cost their
        endpoints compute, each op's `endpoint_time` (every micro-batch pays it in full)."""
        if self.message_cpu == 0.0:
            return self._op_time
        extra = endpoint_time(self._edge_src, self._edge_dst, p, self.num_ops, self.num_devices, self.message_cpu)
        return _frozen(self._op_time + (self.microbatches * extra)[:, None], np.float64)

    def _schedule_args(self, p: np.ndarray, ranks: tuple[np.ndarray, np.ndarray], op_time: np.ndarray | None = None) -> tuple:
        """Arguments shared by the makespan-only and the recording schedule kernels
        (``op_time``: `_times` of ``p`` when the caller has it already)."""
        order = self._order(p)
        return (
            self.num_ops,
            self.microbatches,
            self.num_devices,
            self._succ_ptr,
            self._succ_op,
            self._succ_edge,
            self._indegree,
            self._times(p) if op_time is None else op_time,
            self._edge_time,
            self._link_class,
            p,
            ranks[0],
            ranks[1],
            *order,
        )

    def _schedule(self, p: np.ndarray, ranks: tuple[np.ndarray, np.ndarray], op_time: np.ndarray | None = None) -> kernel.Schedule:
        return kernel.schedule_full(*self._schedule_args(p, ranks, op_time))

    def _resident(self, p: np.ndarray) -> np.ndarray:
        return np.bincount(p, weights=self._resident_bytes, minlength=self.num_devices)

    def _memory(self, p: np.ndarray, schedule: kernel.Schedule) -> np.ndarray:
        return self._resident(p) + self._dynamic_memory(p, schedule)

    def _dynamic_memory(self, p: np.ndarray, schedule: kernel.Schedule) -> np.ndarray:
        """(k,) peak bytes of activations and working memory per device."""
        return kernel.peak_dynamic_memory(
            self.num_ops,
            self.microbatches,
            self.num_devices,
            self._succ_ptr,
            self._succ_op,
            p,
            self._output_bytes,
            self._work_bytes,
            schedule.start,
            schedule.finish,
            schedule.x_instance,
            schedule.x_dst,
            schedule.x_finish,
        )

    def _throughput_result(self, p: np.ndarray, durations: np.ndarray, busy: np.ndarray) -> SimResult:
        load, _ = kernel.max_load(self.num_ops, self.num_devices, self._succ_ptr, self._succ_op, self._succ_edge, self._op_time, self._edge_time, self._link_class, p, self._is_cpu)
        op_start = np.empty(self.num_ops)
        for d in range(self.num_devices):
            on_device = np.flatnonzero(p == d)
            ends = np.cumsum(durations[on_device])
            op_start[on_device] = ends - durations[on_device]
        bottleneck = int(np.argmax(load)) if self.num_devices else 0
        path = tuple(int(i) for i in np.flatnonzero(p == bottleneck))
        return self._result(
            p,
            step_time=float(load.max()),
            busy=busy,
            load=load,
            peak=self._resident(p),
            activation=np.zeros(self.num_devices),
            path=path,
            path_microbatch=(0,) * len(path),
            durations=durations,
            op_start=op_start,
            op_finish=op_start + durations,
            microbatch_start=None,
            microbatch_finish=None,
            transfers=None,
        )

    def _result(
        self,
        p: np.ndarray,
        *,
        step_time: float,
        busy: np.ndarray,
        load: np.ndarray,
        peak: np.ndarray,
        activation: np.ndarray,
        path: tuple[int, ...],
        path_microbatch: tuple[int, ...],
        durations: np.ndarray,
        op_start: np.ndarray,
        op_finish: np.ndarray,
        microbatch_start: np.ndarray | None,
        microbatch_finish: np.ndarray | None,
        transfers: TransferLog | None,
    ) -> SimResult:
        overflow = np.maximum(peak - self._capacity, 0.0)
        return SimResult(
            objective=self.objective,
            step_time=step_time,
            busy_time=_frozen(busy, np.float64),
            peak_memory=_frozen(peak, np.float64),
            capacity=self._capacity,
            overflow_bytes=_frozen(overflow, np.float64),
            oom=bool(np.any(overflow > 0)),
            lower_bound=self.lower_bound,
            critical_path=path,
            op_start=_frozen(op_start, np.float64),
            op_finish=_frozen(op_finish, np.float64),
            microbatches=self.microbatches,
            time_unit=self.costs.time_unit,
            placement=p,
            device_load=_frozen(load, np.float64),
            op_duration=_frozen(durations, np.float64),
            critical_path_microbatch=path_microbatch,
            microbatch_start=None if microbatch_start is None else _frozen(microbatch_start, np.float64),
            microbatch_finish=None if microbatch_finish is None else _frozen(microbatch_finish, np.float64),
            transfers=transfers,
            schedule=self.schedule,
            activation_memory=_frozen(activation, np.float64),
        )


def message_cpu(cluster: Cluster) -> float:
    """Seconds of compute one message costs each endpoint on ``cluster``
    (``meta[MESSAGE_CPU_META_KEY]``, 0 when absent); `RlplaceError` if not a number >= 0."""
    value = cluster.meta.get(MESSAGE_CPU_META_KEY, 0.0)
    try:
        seconds = float(value or 0.0)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise RlplaceError(f"cluster {cluster.name!r}: meta {MESSAGE_CPU_META_KEY!r} must be a number >= 0, got {value!r}")
    return seconds


def transfer_endpoints(edge_src: np.ndarray, edge_dst: np.ndarray, placement: np.ndarray, num_devices: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The transfers ``placement`` implies and who receives each: one per (producer, remote
    device holding a consumer), as the simulator sends an output once per remote device, and
    received by its consumer of lowest op id there (the receive happens before the first use).

    Shapes: edge_src, edge_dst (m,) int64 op ids; placement (n,) int64 in [0, num_devices);
    returns key (x,) ``producer * num_devices + device`` in increasing order, producer (x,) and
    receiver (x,) op ids.
    """
    remote = placement[edge_src] != placement[edge_dst]
    src, dst = edge_src[remote], edge_dst[remote]
    key = src * num_devices + placement[dst]
    order = np.lexsort((dst, key))
    key, src, dst = key[order], src[order], dst[order]
    first = np.ones(key.shape[0], dtype=bool)
    first[1:] = key[1:] != key[:-1]
    return key[first], src[first], dst[first]


def endpoint_time(edge_src: np.ndarray, edge_dst: np.ndarray, placement: np.ndarray, num_ops: int, num_devices: int, seconds: float) -> np.ndarray:
    """Compute time each op adds for the messages it sends and receives: ``seconds`` to the
    producer and to the receiver of each transfer (`transfer_endpoints`).

    Shapes: edge_src, edge_dst (m,) int64 op ids; placement (n,) int64; returns (n,) float64.
    """
    extra = np.zeros(num_ops)
    if seconds == 0.0:
        return extra
    _, producer, receiver = transfer_endpoints(edge_src, edge_dst, placement, num_devices)
    np.add.at(extra, producer, seconds)
    np.add.at(extra, receiver, seconds)
    return extra


def simulate(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    placement: np.ndarray | Sequence[int],
    *,
    objective: str = "latency",
    microbatches: int = 1,
    schedule: str = "gpipe",
    record: bool = False,
    priority: Sequence[float] | np.ndarray | None = None,
) -> SimResult:
    """Simulate one placement: `Simulator(...).run(placement, record=record)`."""
    return Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, priority=priority).run(placement, record=record)


def lower_bound(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", microbatches: int = 1) -> float:
    """The objective's placement-independent lower bound on the step time (see the module doc):
    the best of the work bound (on the op times as given and on the step's, fixed parts paid
    by every micro-batch), the one-op pipeline bound and the colocation bound. The one-op
    bound is never below `basic_lower_bound`'s critical path, so this is never below it."""
    check_objective(objective)
    m = microbatches if objective == "pipelined" else 1
    given = np.asarray(costs.op_time, dtype=np.float64)
    op_time = np.asarray(costs.microbatch_scaled(m)[0], dtype=np.float64)  # (n, k) one op's M instances
    bound = work_bound(given) if op_time is given else max(work_bound(given), work_bound(op_time))
    n = graph.num_ops
    if n == 0:
        return bound
    fastest = op_time.min(axis=1)
    if objective == "throughput":
        head, tail = np.zeros(n), np.zeros(n)
    else:
        succ_ptr, succ_op, _ = graph.successor_table()
        head, tail = kernel.heads_and_tails(succ_ptr, succ_op, np.ascontiguousarray(fastest / m))
        bound = max(bound, float(np.max(head + fastest + tail)))
    return max(bound, colocation_bound(graph, op_time, head, tail))


def basic_lower_bound(graph: OpGraph, cluster: Cluster, costs: CostTable, *, objective: str = "latency", microbatches: int = 1) -> float:
    """The work bound and the critical-path bound alone, on the op times as given (module doc):
    never above `lower_bound`. The improvement policy's observation carries this one, the
    number its shipped weights were trained with (`rlplace.envs.improve_state.observe`)."""
    check_objective(objective)
    op_time = np.asarray(costs.op_time, dtype=np.float64)
    work = work_bound(op_time)
    if objective == "throughput" or graph.num_ops == 0:
        return work
    succ_ptr, succ_op, _ = graph.successor_table()
    fastest = np.ascontiguousarray(op_time.min(axis=1))
    head, _ = kernel.heads_and_tails(succ_ptr, succ_op, fastest)
    path = float(np.max(head + fastest))
    divisor = microbatches if objective == "pipelined" else 1
    return max(work, path / divisor)


def colocation_bound(graph: OpGraph, op_time: np.ndarray, head: np.ndarray, tail: np.ndarray) -> float:
    """The largest, over colocation classes, of the time the class's ops take together on the
    device where that is least, plus its least ``head`` and least ``tail`` (module doc); 0
    without classes. Shapes: op_time (n, k) one op's M instances, head and tail (n,)."""
    has_class = graph.coloc != NO_CLASS
    if not np.any(has_class):
        return 0.0
    classes, members = np.unique(graph.coloc[has_class], return_inverse=True)
    members = members.reshape(-1)
    together = np.zeros((classes.size, op_time.shape[1]))
    np.add.at(together, members, op_time[has_class])
    least_head = np.full(classes.size, np.inf)
    np.minimum.at(least_head, members, head[has_class])
    least_tail = np.full(classes.size, np.inf)
    np.minimum.at(least_tail, members, tail[has_class])
    return float(np.max(least_head + together.min(axis=1) + least_tail))


def work_bound(op_time: np.ndarray) -> float:
    """Lower bound on the largest device busy time over all placements.

    Shapes:
        op_time: (n, k) time of each op on each device, ``inf`` where it cannot run.

    ``max(bound(1), bound(1 / W))`` with ``bound(s) = sum_u min_d(s_d t_ud) / sum_d s_d``
    and ``W_d`` the finite op times on d summed (proof in the module doc).
    """
    if op_time.size == 0:
        return 0.0
    finite = np.where(np.isfinite(op_time), op_time, 0.0)
    totals = finite.sum(axis=0)
    candidates = [np.ones(op_time.shape[1])]
    if np.all(totals > 0):
        candidates.append(1.0 / totals)
    best = 0.0
    for weights in candidates:
        best = max(best, float(np.min(op_time * weights[None, :], axis=1).sum() / weights.sum()))
    return best
