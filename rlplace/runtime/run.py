"""``rlplace run``: train a stage placement with ``torch.distributed.pipelining`` and time it.

`prepare_run` builds the model from its recipe, captures its training graph (what placements
index), reads the placement (or a split-spec file) and derives the split spec, simulating the
snapped placement; `run_pipeline` starts one local subprocess per rank (the launcher of
``rlplace measure``: own process groups, a timeout, every rank killed and reaped on failure)
running `rlplace.runtime.worker`.

``run_run_command`` reads from the parsed namespace: ``model``, ``placement``, ``schedule``
(``gpipe``), ``backend`` (``gloo``), ``microbatches`` (None: the split spec's, else 4),
``steps`` (10), ``warmup`` (2), ``cluster`` (None: local CPU ranks), ``profile`` (None),
``threads`` (1), ``timeout`` (120 s), ``batch_size`` (None), ``optimizer`` (``adam``),
``seed`` (0), ``json`` (False).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.objectives import check_schedule
from rlplace.runtime.stages import FORMAT, SplitSpec, split_spec

BACKENDS = ("gloo", "nccl")


@dataclass(frozen=True)
class PipelineRun:
    """Timed training steps of a pipelined placement.

    Attributes:
        step_times: seconds of each timed step (the slowest rank's).
        loss: mean micro-batch loss of the last step.
        num_stages: stages ``pipeline()`` built; world_size: ranks.
        stage_parameters: parameters (elements) of each stage.
        state: parameters and gradients after the last step by FQN (when asked for).
        cpu_waits: per timed step, the longest time (s) any rank's main thread waited for a
            CPU while ready to run (Linux schedstat; empty elsewhere): what other processes
            on the host added to the step.
        cpu_times: per rank, the median main-thread CPU time (s) of a step (load-robust:
            what the rank itself computed, Python included).
    """

    step_times: tuple[float, ...]
    loss: float
    num_stages: int
    world_size: int
    stage_parameters: tuple[int, ...]
    state: dict[str, Any] | None = None
    cpu_waits: tuple[float, ...] = ()
    cpu_times: tuple[float, ...] = ()

    @property
    def measured_step_time(self) -> float:
        """Median of the timed steps (s)."""
        return float(statistics.median(self.step_times))

    @property
    def unloaded_step_time(self) -> float | None:
        """Median over steps of step time minus that step's CPU wait (s): an estimate of the
        step on an idle host, never the headline; None without waits."""
        if len(self.cpu_waits) != len(self.step_times):
            return None
        return float(statistics.median(t - w for t, w in zip(self.step_times, self.cpu_waits, strict=True)))


@dataclass(frozen=True, eq=False)
class RunSetup:
    """A model and the split spec of its placement, ready to run."""

    recipe: Any
    graph: OpGraph
    cluster: Cluster
    spec: SplitSpec


def run_pipeline(
    recipe: Any,
    spec: SplitSpec,
    *,
    backend: str = "gloo",
    steps: int = 10,
    warmup: int = 2,
    threads: int = 1,
    optimizer: str = "adam",
    timeout_s: float = 120.0,
    return_state: bool = False,
    keep_awake: bool | None = None,
) -> PipelineRun:
    """Train ``warmup + steps`` steps of ``spec`` on ``spec.num_ranks`` local ranks.

    Raises:
        RlplaceError: bad options. MeasureFailure: a rank failed or the run timed out (every
            rank is killed and reaped first).
    """
    from rlplace.measure.launch import launch_job

    if backend not in BACKENDS:
        raise RlplaceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if steps < 1 or warmup < 0:
        raise RlplaceError(f"--steps must be at least 1 and --warmup at least 0 (got {steps} and {warmup})")
    if not timeout_s > 0:
        raise RlplaceError(f"--timeout must be positive (got {timeout_s})")
    check_spec_runs(spec)
    job = {
        "kind": "pipeline",
        "model": recipe.to_json(),
        "split_spec": spec.to_json(),
        "schedule": spec.schedule,
        "microbatches": spec.microbatches,
        "backend": backend,
        "steps": steps,
        "warmup": warmup,
        "threads": threads,
        "optimizer": optimizer,
        "timeout_s": timeout_s,
        "return_state": return_state,
    }
    result = launch_job(job, spec.num_ranks, timeout_s=timeout_s, threads=threads, keep_awake=keep_awake, module="rlplace.runtime.worker")
    return PipelineRun(
        tuple(result["step_times"]), float(result["loss"]), int(result["num_stages"]), int(result["world_size"]), tuple(result["stage_parameters"]), result.get("state"),
        tuple(float(w) for w in result.get("cpu_waits") or ()), tuple(float(c) for c in result.get("cpu_times") or ()),
    )  # fmt: skip


def check_spec_runs(spec: SplitSpec) -> None:
    """`RlplaceError` unless the schedule can run the spec's stages on its ranks."""
    check_schedule(spec.schedule)
    if spec.num_stages < 2:
        raise RlplaceError("the placement has one stage: nothing to pipeline; place on at least two devices as contiguous stages")
    if spec.schedule != "interleaved-1f1b" and spec.num_stages != spec.num_ranks:
        raise RlplaceError(f"schedule {spec.schedule} runs one stage per device; the placement has {spec.num_stages} stages on {spec.num_ranks} devices (use interleaved-1f1b)")
    if spec.schedule == "interleaved-1f1b":
        ranks, m = spec.num_ranks, spec.microbatches
        rounds = max(1, m // ranks)
        if m % rounds:
            raise RlplaceError(f"interleaved-1f1b needs the micro-batches ({m}) to be a multiple of max(1, M // ranks) = {rounds}")


def devices_in_file(data: Any) -> int | None:
    """Devices a placement or split-spec file refers to (None when it does not say)."""
    if isinstance(data, dict) and data.get("format") == FORMAT:
        names = data.get("device_names")
        return len(names) if isinstance(names, list) else None
    if isinstance(data, dict) and isinstance(data.get("device_names"), list):
        return len(data["device_names"])
    if isinstance(data, dict) and isinstance(data.get("placement"), list):
        data = data["placement"]
    if isinstance(data, list) and data and all(isinstance(v, int) and not isinstance(v, bool) for v in data):
        return max(data) + 1
    return None


def prepare_run(
    model: str,
    placement_file: str,
    *,
    schedule: str = "gpipe",
    microbatches: int | None = None,
    cluster_spec: str | None = None,
    profile: str | None = None,
    batch_size: int | None = None,
    optimizer: str = "adam",
    seed: int = 0,
) -> RunSetup:
    """Build and capture the model, read the placement, derive and simulate the split spec."""
    from rlplace.capture import capture_model
    from rlplace.costs import CostTable
    from rlplace.io import read_json
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import _graph_name

    check_schedule(schedule)
    if microbatches is not None and microbatches < 1:
        raise RlplaceError(f"--microbatches must be at least 1 (got {microbatches})")
    data = read_json(placement_file) if not placement_file.startswith("expert:") else None
    given_spec = isinstance(data, dict) and data.get("format") == FORMAT
    if given_spec:
        microbatches = microbatches or int(data.get("microbatches", 4))
    microbatches = microbatches or 4
    cluster = _cluster(cluster_spec, profile, devices_in_file(data) or 2)
    recipe = ModelRecipe(model, batch_size, seed)
    module, inputs = recipe.build()
    graph = capture_model(module, inputs, training=True, optimizer=optimizer, name=_graph_name(model))
    if given_spec:
        placement = np.asarray(SplitSpec.from_json(data, source=placement_file).placement, dtype=np.int64)
    else:
        from rlplace.formats import load_placement_spec

        placement = load_placement_spec(placement_file, graph, cluster)
    if placement.shape != (graph.num_ops,) or (placement.size and (placement.min() < 0 or placement.max() >= cluster.num_devices)):
        raise RlplaceError(f"{placement_file}: the placement does not fit graph {graph.name!r} ({graph.num_ops} ops) on {cluster.num_devices} devices")
    spec = split_spec(graph, placement, cluster, microbatches=microbatches, schedule=schedule, costs=CostTable.build(graph, cluster), module=module)
    check_spec_runs(spec)
    return RunSetup(recipe, graph, cluster, spec)


def _cluster(cluster_spec: str | None, profile: str | None, devices: int) -> Cluster:
    from rlplace.measure.session import local_cpu_cluster
    from rlplace.profile import apply_profile, load_profile

    loaded = load_profile(profile) if profile else None
    if cluster_spec:
        from rlplace.cluster_spec import load_cluster

        cluster = load_cluster(cluster_spec)
        return apply_profile(cluster, loaded) if loaded is not None else cluster
    return local_cpu_cluster(devices, loaded)


def _option(args: argparse.Namespace, name: str, default: Any) -> Any:
    value = getattr(args, name, None)
    return default if value is None else value


def run_run_command(args: argparse.Namespace) -> int:
    """``rlplace run``: print measured beside simulated step time (text or ``--json``)."""

    if getattr(args, "inference", False):
        raise RlplaceError("rlplace run trains (forward, backward, optimizer); drop --inference")
    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size < 1:
        raise RlplaceError(f"--batch-size must be at least 1 (got {batch_size})")
    steps, warmup = int(_option(args, "steps", 10)), int(_option(args, "warmup", 2))
    timeout, threads = float(_option(args, "timeout", 120.0)), int(_option(args, "threads", 1))
    backend, schedule = str(_option(args, "backend", "gloo")), str(_option(args, "schedule", "gpipe"))
    if steps < 1 or warmup < 0:
        raise RlplaceError(f"--steps must be at least 1 and --warmup at least 0 (got {steps} and {warmup})")
    if not timeout > 0:
        raise RlplaceError(f"--timeout must be positive (got {timeout})")
    if backend not in BACKENDS:
        raise RlplaceError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    optimizer = str(_option(args, "optimizer", "adam"))
    setup = prepare_run(
        str(args.model), str(args.placement), schedule=schedule, microbatches=getattr(args, "microbatches", None),
        cluster_spec=getattr(args, "cluster", None), profile=getattr(args, "profile", None), batch_size=batch_size,
        optimizer=optimizer, seed=int(_option(args, "seed", 0)),
    )  # fmt: skip
    spec = setup.spec
    profile = getattr(args, "profile", None)
    keep_awake = None
    if profile:  # as rlplace measure: the ranks follow the calibration's keep-awake decision
        from rlplace.profile import load_profile

        keep_awake = load_profile(profile).keep_awake
    run = run_pipeline(setup.recipe, spec, backend=backend, steps=steps, warmup=warmup, threads=threads, optimizer=optimizer, timeout_s=timeout, keep_awake=keep_awake)
    payload = {
        "measured_step_time": run.measured_step_time,
        "simulated_step_time": spec.snapped_step_time,
        "simulated_step_time_given": spec.step_time,
        "simulated_schedule": spec.simulated_schedule,
        "schedule": spec.schedule,
        "microbatches": spec.microbatches,
        "num_stages": run.num_stages,
        "world_size": run.world_size,
        "split_spec": spec.split_points,
        "stage_devices": [spec.device_names[d] for d in spec.stage_devices],
        "stage_parameters": list(run.stage_parameters),
        "anchors_moved": spec.anchors_moved,
        "step_times": list(run.step_times),
        "cpu_waits": list(run.cpu_waits),
        "unloaded_step_time_estimate": run.unloaded_step_time,
        "steps": steps,
        "warmup": warmup,
        "backend": backend,
        "threads": threads,
        "loss": run.loss,
        "model": str(args.model),
        "graph": setup.graph.name,
        "cluster": setup.cluster.name,
    }
    if getattr(args, "json", False):
        from rlplace.io import print_json

        print_json(payload)
        return 0
    note = "" if spec.simulated_schedule == spec.schedule else f"; the simulator has no {spec.schedule} order yet, so this is GPipe order"
    points = ", ".join(f"{fqn} {point.removeprefix('SplitPoint.')}" for fqn, point in spec.split_points.items())
    print(
        f"measured step time   {run.measured_step_time * 1e3:.3f} ms  (median of {steps} steps after {warmup} warm-up, {spec.schedule}, "
        f"{spec.microbatches} micro-batches, {run.num_stages} stages on {run.world_size} {backend} ranks, {threads} thread(s) each)\n"
        f"simulated step time  {(spec.snapped_step_time or float('nan')) * 1e3:.3f} ms  (pipelined objective, cluster {setup.cluster.name}{note})\n"
        f"split points         {points}\n"
        f"loss {run.loss:.6g}; compute ops moved to reach module boundaries: {spec.anchors_moved}"
    )
    return 0
