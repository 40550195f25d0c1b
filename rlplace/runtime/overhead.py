"""What one stage action of ``torch.distributed.pipelining`` costs beyond the cost model.

A *stage action* is one micro-batch's forward or backward through one ``PipelineStage``
under a ``Schedule*``: ``forward_one_chunk`` / ``backward_one_chunk`` (argument flattening,
detaching, autograd bookkeeping, gradient accumulation into ``.grad``), the P2P ops the
schedule posts for it and the schedule's own Python. None of that is an op of the captured
graph, so the simulator does not charge it; on small CPU micro-batches it is the larger part
of a step.

`measure_stage_overhead` runs a tiny two-stage chain (`calibration_chain`, compute of a few
microseconds per micro-batch) with ``ScheduleGPipe`` on two ranks and takes, per rank, the
main thread's CPU time of a step minus the device busy time the cost model charges for that
rank's ops, divided by the rank's stage actions (2 M): `stage_overhead_from_cpu`. CPU time,
not wall time, so a loaded host (other processes, ranks waiting for each other) does not
enter. `rlplace calibrate` records the result as `rlplace.profile.Profile.stage_overhead_s`;
`rlplace.runtime.stages.split_spec` charges it to every stage action of the prediction.
The models ``rlplace run`` reports are never used to measure it.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from rlplace.costs import CostTable

if TYPE_CHECKING:
    from rlplace.profile import Profile

#: ``rlplace.measure.recipe.ModelRecipe`` spec of the calibration model.
CALIBRATION_MODEL = "rlplace.runtime.overhead:calibration_chain"


def calibration_chain(batch_size: int = 16) -> tuple[Any, tuple[Any, ...]]:
    """4 x (Linear(32, 32), ReLU) on a (batch_size, 32) input: ~4 k parameters, so a stage
    action's compute is microseconds and its CPU time is the runtime's own."""
    import torch
    from torch import nn

    layers: list[nn.Module] = []
    for _ in range(4):
        layers += [nn.Linear(32, 32), nn.ReLU()]
    return nn.Sequential(*layers), (torch.randn(batch_size, 32),)


def modeled_busy(costs: CostTable, placement: np.ndarray, microbatches: int) -> np.ndarray:
    """(k,) seconds each device is busy in one pipelined step of M micro-batches under the
    cost model: every op's M instances, fixed parts paid by each (`CostTable.microbatch_scaled`)."""
    op_time, _ = costs.microbatch_scaled(microbatches)
    p = np.asarray(placement, dtype=np.int64)
    return np.bincount(p, weights=op_time[np.arange(p.size), p], minlength=costs.num_devices)


def stage_overhead_from_cpu(cpu_times: Sequence[float], busy: Sequence[float], actions: Sequence[int]) -> float:
    """Seconds per stage action: the median over ranks of ``(cpu - busy) / actions``, at least 0.

    Args:
        cpu_times: (R,) main-thread CPU seconds of one step per rank.
        busy: (R,) what the cost model charges each rank for the same step (s).
        actions: (R,) stage actions per step per rank (2 M per stage the rank holds).
    """
    if not (len(cpu_times) == len(busy) == len(actions)) or not cpu_times:
        raise ValueError("cpu_times, busy and actions need one entry per rank")
    return max(0.0, float(statistics.median((c - b) / a for c, b, a in zip(cpu_times, busy, actions, strict=True))))


def measure_stage_overhead(
    profile: Profile, *, microbatches: int = 4, steps: int = 20, warmup: int = 3, timeout_s: float = 120.0, keep_awake: bool | None = None
) -> float:
    """`Profile.stage_overhead_s` of this host: the calibration chain on two ranks (see the module doc).

    Raises:
        MeasureFailure: a rank failed or the run timed out.
    """
    from rlplace.capture import capture_model
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import local_cpu_cluster
    from rlplace.runtime.run import run_pipeline
    from rlplace.runtime.stages import forward_sequence, module_boundaries, snapped_placement, split_spec

    recipe = ModelRecipe(CALIBRATION_MODEL)
    module, inputs = recipe.build()
    graph = capture_model(module, inputs, training=True, optimizer="adam", name="calibration_chain")
    cluster = local_cpu_cluster(2, dataclasses.replace(profile, stage_overhead_s=0.0))
    costs = CostTable.build(graph, cluster)
    middle = len(forward_sequence(graph)) / 2
    cut = min((b.position for b in module_boundaries(graph, module)), key=lambda position: abs(position - middle))
    placement = snapped_placement(graph, [cut], [0, 1])
    spec = split_spec(graph, placement, cluster, microbatches=microbatches, schedule="gpipe", costs=costs, module=module, simulate_steps=False)
    run = run_pipeline(recipe, spec, backend=profile.backend, steps=steps, warmup=warmup, threads=max(1, profile.threads), timeout_s=timeout_s, keep_awake=keep_awake)
    busy = modeled_busy(costs, np.asarray(spec.placement), microbatches)
    return stage_overhead_from_cpu(run.cpu_times, busy.tolist(), [2 * microbatches] * len(run.cpu_times))
