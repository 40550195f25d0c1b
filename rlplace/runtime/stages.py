"""Stage placements -> ``torch.distributed.pipelining`` split specs.

A *stage placement* runs the forward ops of a captured training graph, in graph (topological)
order, as contiguous runs: stage k is one run and sits on one device. ``pipeline()`` splits a
module where a submodule's ``forward`` begins or ends (`SplitPoint.BEGINNING` / ``END``), so
each cut between two runs is moved to the nearest such module boundary, and the placement
torch will actually run (the *snapped* placement) is simulated beside the given one.

Definitions (positions index the forward sequence: forward ops in graph order, model inputs
left out):

- anchor ops: forward ops that compute (not views); stages are runs of anchors on one device.
  Views and inputs carry no cost, so where a placement puts them decides no stage.
- boundary at position p: splitting before forward op p. ``BEGINNING`` of module m is the
  boundary at the first op of m's subtree, ``END`` the one after its last op. Only modules
  whose subtree ops form one unbroken span (called once) qualify; the root cannot be wrapped.
- snapping a cut: the boundary that moves the fewest anchors across the cut, then the
  shallowest module, then ``BEGINNING`` before ``END``, then the earlier position.

Backward ops and optimizer updates run where their forward op runs (colocation classes), as
torch's stages run them; ops outside any class follow `rlplace.measure.assign.executed_placement`.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.objectives import check_schedule

FORMAT = "rlplace-split-spec"
#: kinds that cost nothing and decide no stage
_FREE_KINDS = ("view", "input")
STAGES_HINT = "place with a contiguous-stages method (--method dp --stages, or local-search --stages)"


@dataclass(frozen=True)
class Boundary:
    """A place ``pipeline()`` can split: before forward-sequence position ``position``.

    Attributes:
        position: index into the forward sequence (1 .. len - 1).
        module: fully qualified name of the wrapped submodule.
        point: ``BEGINNING`` or ``END`` (a `torch.distributed.pipelining.SplitPoint` name).
    """

    position: int
    module: str
    point: str

    @property
    def depth(self) -> int:
        return self.module.count(".") + 1


@dataclass(frozen=True)
class SplitSpec:
    """Split points of a stage placement and where every stage runs.

    Attributes:
        split_points: module FQN -> ``"SplitPoint.BEGINNING"`` / ``"SplitPoint.END"``, in stage order.
        stage_devices: (S,) device index of each stage.
        device_names: names of the cluster's devices (``stage_devices`` index them).
        microbatches: micro-batches per step M.
        schedule: ``gpipe``, ``1f1b`` or ``interleaved-1f1b``.
        anchors_moved: compute ops whose stage changed when the cuts were snapped.
        placement: (n,) the snapped placement of every op of the graph (what torch runs).
        step_time, snapped_step_time: simulated seconds per step of the given and the
            snapped placement (pipelined objective with M micro-batches); None if not simulated.
        simulated_schedule: the schedule the simulator ran (``gpipe`` when it knows no other).
    """

    split_points: dict[str, str]
    stage_devices: tuple[int, ...]
    device_names: tuple[str, ...]
    microbatches: int
    schedule: str
    anchors_moved: int
    placement: np.ndarray = field(repr=False)
    step_time: float | None = None
    snapped_step_time: float | None = None
    simulated_schedule: str | None = None

    @property
    def num_stages(self) -> int:
        return len(self.stage_devices)

    @property
    def num_ranks(self) -> int:
        """Processes a run needs: one per distinct device (interleaved stages share ranks)."""
        return len(set(self.stage_devices))

    def torch_split_spec(self) -> dict[str, Any]:
        """``{fqn: SplitPoint}`` as `torch.distributed.pipelining.pipeline` takes it."""
        from torch.distributed.pipelining import SplitPoint

        return {fqn: SplitPoint[name.removeprefix("SplitPoint.")] for fqn, name in self.split_points.items()}

    def to_json(self) -> dict[str, Any]:
        """The ``--split-spec`` file (see the README)."""
        snap_cost = None if self.step_time is None or self.snapped_step_time is None else self.snapped_step_time - self.step_time
        return {
            "format": FORMAT,
            "version": 1,
            "num_stages": self.num_stages,
            "microbatches": self.microbatches,
            "schedule": self.schedule,
            "split_spec": dict(self.split_points),
            "stages": [{"stage": s, "device": d, "device_name": self.device_names[d]} for s, d in enumerate(self.stage_devices)],
            "device_names": list(self.device_names),
            "anchors_moved": self.anchors_moved,
            "step_time": self.step_time,
            "snapped_step_time": self.snapped_step_time,
            "snap_cost_s": snap_cost,
            "simulated_schedule": self.simulated_schedule,
            "placement": [int(d) for d in self.placement],
        }

    @classmethod
    def from_json(cls, data: Any, *, source: str = "<split spec>") -> SplitSpec:
        """Read a split-spec file written by `to_json`; `RlplaceError` naming what is wrong."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise RlplaceError(f"{source}: not an rlplace split spec (no \"format\": \"{FORMAT}\")")
        try:
            points = {str(k): str(v) for k, v in dict(data["split_spec"]).items()}
            stage_devices = tuple(int(s["device"]) for s in data["stages"])
            names = tuple(str(n) for n in data["device_names"])
            microbatches, schedule = int(data["microbatches"]), str(data["schedule"])
            placement = np.array(data.get("placement", []), dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise RlplaceError(f"{source}: malformed split spec ({type(exc).__name__}: {exc})") from None
        bad = [v for v in points.values() if v not in ("SplitPoint.BEGINNING", "SplitPoint.END")]
        if bad or len(points) != len(stage_devices) - 1 or any(not 0 <= d < len(names) for d in stage_devices):
            raise RlplaceError(f"{source}: inconsistent split spec (S stages need S - 1 split points of SplitPoint.BEGINNING/END and devices in range)")
        return cls(points, stage_devices, names, microbatches, schedule, int(data.get("anchors_moved", 0)), placement,
                   data.get("step_time"), data.get("snapped_step_time"), data.get("simulated_schedule"))  # fmt: skip


def forward_sequence(graph: OpGraph) -> np.ndarray:
    """(F,) ids of the forward ops (not inputs), in graph order."""
    is_input = np.array([kind == "input" for kind in graph.kinds], dtype=bool)
    return np.flatnonzero(~graph.is_backward & ~is_input)


def module_paths(graph: OpGraph) -> list[str]:
    """Owning module of every op; `RlplaceError` when the graph was not captured from a module."""
    paths = graph.meta.get("module_paths")
    if not isinstance(paths, Sequence) or len(paths) != graph.num_ops:
        raise RlplaceError(f"graph {graph.name!r} does not record the module of each op; split specs need a PyTorch model (file.py:function or zoo:NAME)")
    return [str(p) for p in paths]


def called_modules(module: Any) -> set[str] | None:
    """FQNs of the submodules of ``module`` that have a ``forward`` (containers such as
    ``nn.ModuleList`` are never called, so wrapping them splits nothing); None for no module."""
    if module is None:
        return None
    from torch import nn

    return {name for name, sub in module.named_modules() if name and type(sub).forward is not nn.Module.forward}


def module_boundaries(graph: OpGraph, module: Any = None) -> list[Boundary]:
    """Every boundary ``pipeline()`` can split at, sorted by position (see the module doc).

    ``module`` (the captured ``nn.Module``) tells called submodules from containers; without
    it only modules that run ops of their own qualify.
    """
    paths = module_paths(graph)
    sequence = forward_sequence(graph)
    spans: dict[str, list[int]] = {}
    for position, op in enumerate(sequence):
        path = paths[op]
        parts = path.split(".") if path else []
        for depth in range(1, len(parts) + 1):
            spans.setdefault(".".join(parts[:depth]), []).append(position)
    callable_names = called_modules(module)
    own = {paths[op] for op in sequence}
    boundaries: list[Boundary] = []
    for name, positions in spans.items():
        if (name not in callable_names) if callable_names is not None else (name not in own):
            continue
        first, last = positions[0], positions[-1]
        if last - first + 1 != len(positions):
            continue  # another module runs inside its span: called twice, or a closure
        if first > 0:
            boundaries.append(Boundary(first, name, "BEGINNING"))
        if last + 1 < len(sequence):
            boundaries.append(Boundary(last + 1, name, "END"))
    return sorted(boundaries, key=lambda b: (b.position, b.depth, b.point != "BEGINNING", b.module))


def stage_runs(graph: OpGraph, placement: np.ndarray, *, interleaved: bool = False) -> list[tuple[int, int, int]]:
    """Stages of a stage placement as ``(first, last, device)`` forward-sequence positions of
    their anchor ops.

    Raises:
        RlplaceError: the forward ops do not form contiguous runs, one device per run, each
            device one run (``interleaved``: device of stage s is ``devices[s % D]`` instead,
            the looped order of interleaved 1F1B).
    """
    sequence = forward_sequence(graph)
    anchors = [p for p, op in enumerate(sequence) if graph.kinds[op] not in _FREE_KINDS]
    if not anchors:
        raise RlplaceError(f"graph {graph.name!r} has no forward compute ops to split into stages")
    runs: list[tuple[int, int, int]] = []
    for position in anchors:
        device = int(placement[sequence[position]])
        if runs and runs[-1][2] == device:
            runs[-1] = (runs[-1][0], position, device)
        else:
            runs.append((position, position, device))
    devices = [run[2] for run in runs]
    if len(set(devices)) == len(devices):
        return runs
    width = len(set(devices))
    looped = len(devices) % width == 0 and all(devices[s] == devices[s % width] for s in range(len(devices)))
    if interleaved and looped:
        return runs
    again = next(s for s in range(len(devices)) if devices[s] in devices[:s])
    op = graph.names[sequence[runs[again][0]]]
    detail = f" (a looped order of {len(devices)} stages: run it with --schedule interleaved-1f1b)" if looped and len(devices) <= 8 * width else ""
    raise RlplaceError(
        f"placement is not a contiguous stage placement: device {devices[again]} runs stage {again} "
        f"(from op {op!r}) after other devices ran ops since its earlier stage{detail}; "
        f"torch.distributed.pipelining needs the forward ops in order as contiguous stages, one device each; {STAGES_HINT}"
    )


def snap_cuts(graph: OpGraph, runs: Sequence[tuple[int, int, int]], module: Any = None) -> tuple[list[Boundary], int]:
    """The module boundary for each cut between consecutive runs and the anchors moved in all."""
    boundaries = module_boundaries(graph, module)
    sequence = forward_sequence(graph)
    anchor_positions = np.array([p for p, op in enumerate(sequence) if graph.kinds[op] not in _FREE_KINDS], dtype=np.int64)
    chosen: list[Boundary] = []
    moved_total = 0
    previous = 0
    for left, right in itertools.pairwise(runs):
        low, high = left[1] + 1, right[0]  # any cut in [low, high] moves no anchor

        def moved(b: Boundary, low: int = low, high: int = high) -> int:
            if b.position < low:
                return int(np.count_nonzero((anchor_positions >= b.position) & (anchor_positions < low)))
            return int(np.count_nonzero((anchor_positions >= high) & (anchor_positions < b.position)))

        candidates = [b for b in boundaries if b.position > previous]
        if not candidates:
            raise RlplaceError(
                f"cannot split graph {graph.name!r} into {len(runs)} stages at module boundaries: no submodule begins or ends after "
                f"forward op {previous}; use fewer stages or a model whose layers are submodules"
            )
        best = min(candidates, key=lambda b: (moved(b), b.depth, b.point != "BEGINNING", b.position))
        chosen.append(best)
        moved_total += moved(best)
        previous = best.position
    return chosen, moved_total


def snapped_placement(graph: OpGraph, positions: Sequence[int], stage_devices: Sequence[int]) -> np.ndarray:
    """(n,) placement torch runs: forward op at sequence position p on the device of the stage
    holding p (cuts before ``positions``); inputs with stage 0; every colocation class with its
    forward op; gradient sums outside classes where their contributions arrive."""
    from rlplace.measure.assign import executed_placement

    sequence = forward_sequence(graph)
    stage_of_position = np.searchsorted(np.asarray(positions, dtype=np.int64), np.arange(len(sequence)), side="right")
    devices = np.asarray(stage_devices, dtype=np.int64)
    placement = np.full(graph.num_ops, devices[0], dtype=np.int64)
    placement[sequence] = devices[stage_of_position]
    class_device: dict[int, int] = {}
    for op in sequence:
        if graph.coloc[op] != NO_CLASS:
            class_device.setdefault(int(graph.coloc[op]), int(placement[op]))
    for op in range(graph.num_ops):
        if graph.is_backward[op] and graph.coloc[op] != NO_CLASS and int(graph.coloc[op]) in class_device:
            placement[op] = class_device[int(graph.coloc[op])]
    # Sums that accumulate a gradient from several users (outside classes): autograd adds the
    # contributions on the stage that received the forward value, where they arrive, before
    # sending one gradient back; so each takes the device of its last backward input (in
    # graph order, so chains of sums follow), else its consumer's (`executed_placement`).
    placement = executed_placement(graph, placement)
    predecessors = graph.predecessors()
    for op in np.flatnonzero(graph.is_backward & (graph.coloc == NO_CLASS)):
        inputs = [int(p) for p in predecessors[op] if graph.is_backward[p]]
        if inputs:
            placement[op] = placement[max(inputs)]
    return placement


def split_spec(
    graph: OpGraph,
    placement: Sequence[int] | np.ndarray,
    cluster: Cluster,
    *,
    microbatches: int = 4,
    schedule: str = "gpipe",
    costs: CostTable | None = None,
    simulate_steps: bool = True,
    module: Any = None,
) -> SplitSpec:
    """The split spec of a stage placement of ``graph`` (see the module doc); ``module`` is
    the captured model (recommended: it tells containers from called modules).

    Shapes: placement (n,) int device per op, in graph order.

    Raises:
        RlplaceError: not a captured model, not a stage placement, or no module boundaries
            for the cuts.
    """
    check_schedule(schedule)
    if microbatches < 1:
        raise RlplaceError(f"microbatches must be at least 1 (got {microbatches})")
    given = np.asarray(placement, dtype=np.int64)
    if given.shape != (graph.num_ops,):
        raise RlplaceError(f"placement has {given.size} entries but graph {graph.name!r} has {graph.num_ops} ops")
    module_paths(graph)
    runs = stage_runs(graph, given, interleaved=schedule == "interleaved-1f1b")
    cuts, moved = snap_cuts(graph, runs, module)
    stage_devices = tuple(run[2] for run in runs)
    snapped = snapped_placement(graph, [b.position for b in cuts], stage_devices)
    points = {b.module: f"SplitPoint.{b.point}" for b in cuts}
    if len(points) != len(cuts):
        raise RlplaceError(f"two cuts of graph {graph.name!r} snap to the same module; use fewer stages")
    step_time = snapped_time = simulated_schedule = None
    if simulate_steps:
        costs = costs if costs is not None else CostTable.build(graph, cluster)
        overhead = stage_overhead(cluster)
        given_costs = with_stage_overhead(costs, stage_action_ops(graph, runs), overhead)
        snapped_costs = with_stage_overhead(costs, stage_action_ops(graph, stage_runs(graph, snapped, interleaved=True)), overhead)
        step_time, simulated_schedule = simulate_pipelined(graph, cluster, given_costs, given, microbatches, schedule)
        snapped_time, _ = simulate_pipelined(graph, cluster, snapped_costs, snapped, microbatches, schedule)
    snapped.setflags(write=False)
    return SplitSpec(points, stage_devices, tuple(cluster.device_names), microbatches, schedule, moved, snapped, step_time, snapped_time, simulated_schedule)


def stage_overhead(cluster: Cluster) -> float:
    """Seconds one stage action costs in torch's pipeline runtime on ``cluster``
    (`rlplace.profile.Profile.stage_overhead_s`, carried in the cluster's meta; 0 without)."""
    from rlplace.profile import STAGE_OVERHEAD_META_KEY

    value = cluster.meta.get(STAGE_OVERHEAD_META_KEY, 0.0) if isinstance(cluster.meta, Mapping) else 0.0
    return float(value) if isinstance(value, (int, float)) else 0.0


def stage_action_ops(graph: OpGraph, runs: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(2S,) op ids: per stage, its first forward anchor op and its first backward op.

    A stage's backward ops are the backward ops of the colocation classes of its forward ops;
    the first in graph order is where its ``backward_one_chunk`` starts. Stages with no
    backward op (inference graphs) give only their forward op.
    """
    sequence = forward_sequence(graph)
    stage_of_class: dict[int, int] = {}
    for stage, (first, last, _) in enumerate(runs):
        for op in sequence[first : last + 1]:
            if graph.coloc[op] != NO_CLASS:
                stage_of_class.setdefault(int(graph.coloc[op]), stage)
    entries = [int(sequence[first]) for first, _, _ in runs]
    first_backward: dict[int, int] = {}
    optimizer = np.array([kind == "optimizer" for kind in graph.kinds], dtype=bool)
    for op in np.flatnonzero(graph.is_backward & ~optimizer & (graph.coloc != NO_CLASS)):
        stage = stage_of_class.get(int(graph.coloc[op]))
        if stage is not None:
            first_backward.setdefault(stage, int(op))
    entries += [first_backward[stage] for stage in sorted(first_backward)]
    return np.asarray(entries, dtype=np.int64)


def with_stage_overhead(costs: CostTable, ops: np.ndarray, overhead_s: float) -> CostTable:
    """``costs`` with ``overhead_s`` added to ``ops`` on every device, as a fixed part (each
    micro-batch pays it in full: one stage action per micro-batch); ``costs`` itself when 0.

    Shapes: ops (a,) op ids.
    """
    if overhead_s <= 0 or ops.size == 0:
        return costs
    op_time = np.array(costs.op_time, dtype=np.float64)
    op_fixed = np.zeros_like(op_time) if costs.op_fixed is None else np.array(costs.op_fixed, dtype=np.float64)
    op_time[ops] += overhead_s
    op_fixed[ops] += overhead_s
    return costs.with_op_times(op_time, op_fixed)


def simulate_pipelined(graph: OpGraph, cluster: Cluster, costs: CostTable, placement: np.ndarray, microbatches: int, schedule: str) -> tuple[float, str]:
    """Simulated step time (s) of ``placement`` under the pipelined objective and ``schedule``,
    and the schedule simulated (always ``schedule``; kept in the spec for readers of old files)."""
    from rlplace.simulate import simulate

    result = simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=microbatches, schedule=schedule)
    return float(result.step_time), schedule
