"""Fit `rlplace.profile.ReceiveCost` to measured split steps (`fit_receive_cost`).

The split calibration patterns of `rlplace.measure.calibrate` (a few hundred microseconds of
compute between messages, every layer boundary a message) cost more per message than the
splits of real models do, so the receive cost is fitted to measured splits of whole models:
``benchmarks/fidelity.py`` fits it on its development half, ``rlplace calibrate
--receive-cost`` on `RECEIVE_CALIBRATION_MODELS` (`calibrate_receive_cost`); neither uses a
model the benchmark reports.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from rlplace.errors import RlplaceError
from rlplace.measure.assign import executor_schedule, simulate_as_executed
from rlplace.measure.receive import charged_simulator, receive_state
from rlplace.profile import ReceiveCost


@dataclasses.dataclass(frozen=True)
class MeasuredSplit:
    """One measured split step of a calibration model, for `fit_receive_cost`.

    Attributes:
        graph, costs: the captured training graph and its cost table (the model's own op
            profile where there is one).
        cluster: the calibrated cluster the costs were built for.
        executed: (n,) int64, the placement as the executor ran it.
        measured_s: its measured step (s).
        measured_one_s, simulated_one_s: the same model's one-device step, measured and
            simulated (s): the fit matches ratios to it, so an error of the model's compute
            time cancels.
    """

    graph: Any
    costs: Any
    cluster: Any
    executed: np.ndarray
    measured_s: float
    measured_one_s: float
    simulated_one_s: float


#: Search box of `fit_receive_cost`: idle_s and busy_s in [0, this] s, idle_time_s in
#: [`MIN_IDLE_TIME_S`, `MAX_IDLE_TIME_S`].
MAX_RECEIVE_S = 0.02
MIN_IDLE_TIME_S = 1e-4
MAX_IDLE_TIME_S = 0.1


def fit_receive_cost(splits: Sequence[MeasuredSplit]) -> ReceiveCost:
    """The `ReceiveCost` whose simulated split/one-device ratios best match the measured
    ones over ``splits`` (least squared log error, Nelder-Mead from the best of a small grid).

    Each split is simulated as measurements are (`rlplace.measure.assign`), the state of
    its receivers taken once from the simulation with the cluster's constant message cost.
    `RlplaceError` without any split that sends a message.
    """
    from scipy.optimize import minimize

    prepared = []
    for split in splits:
        simulator, priority = executor_schedule(split.graph, split.cluster, split.costs, split.executed)
        state = receive_state(split.graph, split.executed, simulator.run(split.executed, record=True, priority=priority))
        if len(state.receiver) == 0 or split.measured_one_s <= 0 or split.measured_s <= 0:
            continue
        target = split.measured_s / split.measured_one_s * split.simulated_one_s
        prepared.append((split, state, priority, target))
    if not prepared:
        raise RlplaceError("fitting the receive cost needs at least one measured split step that sends a message")

    def cost_of(x: Sequence[float]) -> ReceiveCost:
        # x: idle_s and busy_s in us, 100 ln(idle_time_s): a step of one is ~1 us or ~1 %
        return ReceiveCost(
            float(np.clip(x[0], 0.0, MAX_RECEIVE_S * 1e6)) * 1e-6,
            float(np.exp(np.clip(x[1] / 100.0, math.log(MIN_IDLE_TIME_S), math.log(MAX_IDLE_TIME_S)))),
            float(np.clip(x[2], 0.0, MAX_RECEIVE_S * 1e6)) * 1e-6,
        )

    def loss(x: Sequence[float]) -> float:
        cost = cost_of(x)
        total = 0.0
        for split, state, priority, target in prepared:
            step = charged_simulator(split.graph, split.cluster, split.costs, state, cost).step_time(split.executed, priority=priority)
            total += math.log(step / target) ** 2
        return total

    grid = [(idle, 100.0 * math.log(time_s), busy) for idle in (300.0, 1000.0) for time_s in (1e-3, 4e-3) for busy in (300.0, 1200.0)]
    start = min(grid, key=loss)
    result = minimize(loss, np.array(start), method="Nelder-Mead", options={"xatol": 2.0, "fatol": 1e-6, "maxiter": 300})
    return cost_of(result.x)


#: Models whose measured splits `calibrate_receive_cost` fits to by default (in
#: `rlplace.measure.models`): five of the development half of ``benchmarks/fidelity.py``
#: (a chain, a CNN, two parallel models, a transformer), never its held-out half.
RECEIVE_CALIBRATION_MODELS = ("bench_mlp", "bench_cnn", "two_branch", "soft_moe", "deep_transformer")


def module_units(graph: Any) -> np.ndarray:
    """(n,) unit id per op: ops grouped by the first two components of their module path
    (an op without one joins the unit before it)."""
    paths = graph.meta.get("module_paths") or [""] * graph.num_ops
    labels: dict[str, int] = {}
    units = np.empty(graph.num_ops, dtype=np.int64)
    current = ""
    for op in range(graph.num_ops):
        path = str(paths[op])
        if path:
            current = ".".join(path.split(".")[:2])
        units[op] = labels.setdefault(current, len(labels))
    return units


def unit_splits(graph: Any, count: int, seed: int = 0) -> list[np.ndarray]:
    """The unit-level round-robin split over two devices and ``count`` random unit-level
    splits ((n,) int64 each, seeded; not yet legalized)."""
    units = module_units(graph)
    rng = np.random.default_rng(seed)
    splits = [(units % 2).astype(np.int64)]
    splits += [rng.integers(0, 2, size=int(units.max()) + 1)[units].astype(np.int64) for _ in range(count)]
    return splits


def calibrate_receive_cost(
    profile: Any, models: Sequence[str] = RECEIVE_CALIBRATION_MODELS, *, splits: int = 4, seed: int = 0, steps: int = 5, warmup: int = 2, rounds: int = 2,
    timeout_s: float = 300.0, nice: int | None = None,
) -> Any:
    """``profile`` (two or more CPU ranks, gloo) with the `ReceiveCost` fitted to measured
    split steps of ``models`` (names in `rlplace.measure.models`): per model, its one-device
    step and the unit-level round-robin split plus ``splits`` random ones (`unit_splits`),
    measured through the executor on the first two ranks with each model's own op profile
    (`rlplace.measure.session.MeasureSetup.with_op_profile`). About a minute."""
    from rlplace.measure.opprofile import fit_isolation_correction
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import MeasureSetup, local_cpu_cluster, measure
    from rlplace.placement import respect_colocation

    base = dataclasses.replace(profile, receive_cost=None)
    cluster = local_cpu_cluster(len(base.devices), base)
    correction = fit_isolation_correction(cluster)
    measured: list[MeasuredSplit] = []
    for name in models:
        setup = MeasureSetup.prepare(ModelRecipe(f"rlplace.measure.models:{name}"), cluster).with_op_profile(correction=correction)
        one = np.zeros(setup.graph.num_ops, dtype=np.int64)
        candidates, seen = [], {one.tobytes()}
        for split in unit_splits(setup.graph, splits, seed):
            executed = setup.executed(respect_colocation(setup.graph, split))
            if executed.tobytes() not in seen:
                seen.add(executed.tobytes())
                candidates.append(executed)
        results = measure(setup, [one, *candidates], backend="gloo", steps=steps, warmup=warmup, rounds=rounds, threads=base.threads or 1, timeout_s=timeout_s, nice=nice)
        measured += measured_splits(setup, [one, *candidates], [r.measured_step_time for r in results], [r.messages for r in results])
    return dataclasses.replace(base, receive_cost=fit_receive_cost(measured))


def measured_splits(setup: Any, placements: Sequence[np.ndarray], measured_s: Sequence[float], messages: Sequence[int]) -> list[MeasuredSplit]:
    """`MeasuredSplit` of each of ``placements`` (the first one all on one device, its
    measured step the reference) that sent messages, for `fit_receive_cost`."""
    cluster = setup.cluster
    simulated_one = float(simulate_as_executed(setup.graph, cluster, setup.costs, setup.executed(placements[0])).step_time)
    return [
        MeasuredSplit(setup.graph, setup.costs, cluster, setup.executed(placement), float(step), float(measured_s[0]), simulated_one)
        for placement, step, count in zip(placements, measured_s, messages, strict=True)
        if count > 0
    ]
