"""Measure placements of one model: capture, assign, run for real, and simulate beside it.

`MeasureSetup.prepare` builds the model from its recipe (real weights), captures its training
graph (what placements index) and traces the executor's forward program once. `measure`
then times any number of placements, either in this process (``backend="local"``, several
torch devices) or with one rank per device (``gloo``/``nccl``, `launch_local`).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlplace.cluster import CPU, Cluster, Device
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.measure.assign import Assignment, assign_devices, executed_placement, schedule_order, simulate_as_executed
from rlplace.measure.launch import launch_local
from rlplace.measure.opprofile import IsolationCorrection
from rlplace.measure.program import ForwardProgram, export_forward
from rlplace.measure.ranks import BACKENDS, MeasureJob
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.timeline import Span
from rlplace.placement import Placement, as_placement, check_constraints
from rlplace.profile import Profile, apply_profile, profile_cluster

#: ``local`` runs every device in this process; the others start one process per device.
ALL_BACKENDS = (*BACKENDS, "local")
#: Links between local CPU ranks when no profile says better (gloo over loopback TCP).
LOOPBACK_LINK = (2e9, 50e-6)


def local_cpu_cluster(num_devices: int, profile: Profile | None = None) -> Cluster:
    """``num_devices`` CPU ranks of this host (``rank0`` ...), calibrated when ``profile`` is given.

    Without a profile the devices are the catalog's generic ``cpu`` and links are loopback
    TCP (`LOOPBACK_LINK`): fine for checking that a measurement runs, not for fidelity.
    """
    if num_devices < 1:
        raise RlplaceError(f"a measurement needs at least one device (got {num_devices})")
    if profile is not None and len(profile.devices) == num_devices:
        return profile_cluster(profile, name=f"local-{num_devices}xcpu")
    from rlplace.catalog import catalog_device

    devices = [catalog_device("cpu", f"rank{rank}") for rank in range(num_devices)]
    devices = [Device(d.name, d.kind, CPU, d.fp32_flops, d.fp16_flops, d.memory, d.memory_bandwidth, 0) for d in devices]
    cluster = Cluster.build(f"local-{num_devices}xcpu", devices, intra_host=LOOPBACK_LINK)
    return apply_profile(cluster, profile) if profile is not None else cluster


@dataclass(frozen=True)
class Measurement:
    """Timed training steps of one placement.

    Attributes:
        step_times: seconds of each timed step (the slowest rank's, in distributed mode).
        loss: loss of the last step.
        segments: forward segments (+1 for the loss) the placement splits into.
        messages: tensors sent between devices per step (activations and gradients).
        backend: ``gloo``, ``nccl`` or ``local``.
        cpu_times: per device, the median CPU time (s) its process's main thread spent in a
            step (distributed backends; load on the host does not inflate it).
        state: parameters, gradients and buffers after the last step (when asked for).
        trace: per rank, the spans of one traced step (`rlplace.measure.timeline`; when asked for).
        cpu_waits: per timed step, the longest time any rank waited for a CPU while ready to
            run (s; Linux, distributed backends): what a loaded host added to the step.
    """

    step_times: tuple[float, ...]
    loss: float
    segments: int
    messages: int
    backend: str
    state: Mapping[str, Any] | None = None
    cpu_times: tuple[float, ...] = ()
    trace: tuple[tuple[Span, ...], ...] | None = None
    cpu_waits: tuple[float, ...] = ()

    @property
    def measured_step_time(self) -> float:
        """Median of the timed steps (seconds)."""
        return float(statistics.median(self.step_times))


@dataclass(frozen=True, eq=False)
class MeasureSetup:
    """A model ready to be measured under many placements.

    Attributes:
        recipe: how every process rebuilds the model.
        module, inputs: the model with real weights and its example inputs.
        graph: the captured training graph; placements index its ops.
        program: the executor's forward program.
        cluster: the devices placements refer to (and the simulator's view of them).
        optimizer: optimizer of the training step.
    """

    recipe: ModelRecipe
    module: torch.nn.Module
    inputs: Any
    graph: OpGraph
    program: ForwardProgram
    cluster: Cluster
    optimizer: str = "adam"

    @classmethod
    def prepare(cls, recipe: ModelRecipe, cluster: Cluster, *, optimizer: str = "adam", graph: OpGraph | None = None) -> MeasureSetup:
        """Build, capture (unless ``graph`` is given) and trace the model."""
        module, inputs = recipe.build()
        if graph is None:
            from rlplace.capture import capture_model

            graph = capture_model(module, inputs, training=True, optimizer=optimizer, name=_graph_name(recipe.spec))
        program = export_forward(module, inputs)
        return cls(recipe, module, inputs, graph, program, cluster, optimizer)

    @property
    def costs(self) -> CostTable:
        cached = self.__dict__.get("_costs")
        if cached is None:
            cached = CostTable.build(self.graph, self.cluster)
            object.__setattr__(self, "_costs", cached)
        return cached

    def with_op_profile(self, *, repeats: int = 9, threads: int = 1, correction: IsolationCorrection | None = None) -> MeasureSetup:
        """The same setup whose cost table takes this model's own per-op times
        (`rlplace.measure.opprofile`): each distinct forward node and its backward timed in
        isolation, mapped to training-step times by ``correction`` (None: fitted now on the
        calibration models, `fit_isolation_correction`, tens of seconds; reuse one across models)."""
        from rlplace.measure.opprofile import fit_isolation_correction, profile_ops, profiled_costs

        if correction is None:
            correction = fit_isolation_correction(self.cluster, repeats=repeats, threads=threads)
        profile = profile_ops(self.program, repeats=repeats, threads=threads)
        profiled = dataclasses.replace(self)
        object.__setattr__(profiled, "_costs", profiled_costs(self.graph, self.costs, profile, correction=correction))
        return profiled

    def check(self, placement: Sequence[int] | np.ndarray) -> Placement:
        """The placement as a checked array; `RlplaceError` when the executor cannot honour it.

        The executor runs a backward op where its forward op ran and an optimizer update
        where its parameter lives, so colocation classes must not be split.
        """
        checked = as_placement(placement, self.graph, self.cluster)
        check_constraints(self.graph, self.costs, checked)
        return checked

    def assignment(self, placement: Sequence[int] | np.ndarray) -> Assignment:
        """Device of every node the executor runs."""
        return assign_devices(self.program, self.graph, self.check(placement))

    def executed(self, placement: Sequence[int] | np.ndarray) -> Placement:
        """The placement as the executor runs it (`rlplace.measure.assign.executed_placement`)."""
        return as_placement(executed_placement(self.graph, self.check(placement), [node.name for node in self.program.nodes]), self.graph, self.cluster)

    def order(self, placement: Sequence[int] | np.ndarray) -> list[str]:
        """The executor's forward nodes in the order the simulator starts them under
        ``placement`` (`rlplace.measure.assign.schedule_order`)."""
        start = self.simulate(placement).op_start
        assert start is not None  # the latency objective always has a schedule
        return schedule_order(self.program, self.graph, start)

    def simulate(self, placement: Sequence[int] | np.ndarray, *, record: bool = False) -> Any:
        """The simulator's `SimResult` for one training step (latency objective) of the
        placement as the executor runs it, ops picked as the executor picks them
        (`rlplace.measure.assign.executor_priority`, from a first simulation's starts)."""
        return simulate_as_executed(self.graph, self.cluster, self.costs, self.executed(placement), record=record)


def measure(
    setup: MeasureSetup,
    placements: Sequence[Sequence[int] | np.ndarray],
    *,
    backend: str = "gloo",
    steps: int = 10,
    warmup: int = 3,
    rounds: int = 1,
    threads: int = 1,
    timeout_s: float = 120.0,
    return_state: bool = False,
    fault: Mapping[str, Any] | None = None,
    nice: int | None = None,
    keep_awake: bool | None = None,
    trace: bool = False,
    simulated_order: bool = True,
) -> list[Measurement]:
    """Time ``steps`` training steps (after ``warmup``) of every placement, ``rounds`` times
    over (each round passes over all placements; the timed steps of all rounds are pooled).

    ``nice`` sets the CPU priority of the rank processes (negative: root only), so other
    processes on a shared host disturb the timings less. ``keep_awake`` keeps idle cores
    from halting during the run (`rlplace.measure.awake`; None: what the cluster's calibration
    profile found helps on this host, else off). ``trace`` records one more step per
    placement span by span on every rank (distributed backends only). ``simulated_order``
    runs each device's forward nodes in the order the simulator starts them
    (`rlplace.measure.assign.schedule_order`; off: the program's order).

    Raises:
        RlplaceError: a bad option or a placement the executor cannot honour.
        MeasureFailure: a rank crashed, hung or ran past ``timeout_s`` (distributed backends).
    """
    if backend not in ALL_BACKENDS:
        raise RlplaceError(f"unknown backend {backend!r}; use one of {', '.join(ALL_BACKENDS)}")
    if steps < 1 or warmup < 0 or rounds < 1:
        raise RlplaceError(f"need at least one timed step and round and no negative warm-up (got steps={steps}, warmup={warmup}, rounds={rounds})")
    if not timeout_s > 0:
        raise RlplaceError(f"timeout must be positive (got {timeout_s})")
    assignments = [setup.assignment(placement).node_device for placement in placements]
    k = setup.cluster.num_devices
    if backend == "local":
        pooled: list[list[Measurement]] = [[] for _ in assignments]
        for round_index in range(rounds):
            for index, assignment in enumerate(assignments):
                pooled[index].append(_measure_in_process(setup, assignment, steps, warmup, threads, return_state and round_index == rounds - 1))
        return [dataclasses.replace(runs[-1], step_times=tuple(t for run in runs for t in run.step_times)) for runs in pooled]
    job = MeasureJob(
        model=setup.recipe.to_json(),
        assignments=assignments,
        num_devices=k,
        backend=backend,
        steps=steps,
        warmup=warmup,
        rounds=rounds,
        threads=threads,
        optimizer=setup.optimizer,
        timeout_s=timeout_s,
        return_state=return_state,
        fault=dict(fault or {}),
        trace=trace,
        orders=[setup.order(placement) for placement in placements] if simulated_order else [],
    )
    if keep_awake is None:
        recorded = setup.cluster.meta.get("profile")
        keep_awake = bool(recorded.get("keep_awake", False)) if isinstance(recorded, Mapping) else False
    result = launch_local(job, nice=nice, keep_awake=keep_awake)
    return [
        Measurement(
            tuple(entry["step_times"]),
            float(entry["loss"]),
            int(entry["segments"]),
            int(entry["messages"]),
            backend,
            entry.get("state"),
            tuple(entry["cpu_times"]),
            tuple(tuple(Span.from_json(span) for span in spans) for spans in entry["trace"]) if "trace" in entry else None,
            tuple(entry.get("cpu_waits", ())),
        )
        for entry in result["results"]
    ]


def _measure_in_process(setup: MeasureSetup, assignment: Mapping[str, int], steps: int, warmup: int, threads: int, return_state: bool) -> Measurement:
    from rlplace.measure.allocator import steady_allocator
    from rlplace.measure.executor import LocalExecutor
    from rlplace.measure.plan import plan_segments

    steady_allocator()
    k = setup.cluster.num_devices
    gpus = torch.cuda.device_count()
    devices = [torch.device("cuda", i) for i in range(k)] if gpus >= k else [torch.device("cpu")] * k
    plan = plan_segments(setup.program, assignment, k)
    executor = LocalExecutor(setup.program, plan, devices, optimizer=setup.optimizer)
    previous_threads = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        times, loss = executor.timed_steps(steps, warmup)
    finally:
        torch.set_num_threads(previous_threads)
    state = None
    if return_state:
        state = {group: {name: tensor.tolist() for name, tensor in tensors.items()} for group, tensors in executor.state().items()}
    return Measurement(tuple(times), loss, len(plan.segments), len(plan.messages), "local", state)


def _graph_name(spec: str) -> str:
    """The graph name `rlplace.load` gives: the zoo name, the file's stem, else the function."""
    if spec.startswith("zoo:"):
        return spec.removeprefix("zoo:")
    location, _, function = spec.rpartition(":")
    return Path(location).stem if location.endswith(".py") else function or spec


def relative_error(simulated: float, measured: float) -> float:
    """``|simulated - measured| / measured`` (inf when nothing was measured)."""
    return abs(simulated - measured) / measured if measured > 0 else math.inf
