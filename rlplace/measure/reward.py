"""The ``measured`` reward source: step times of placements run on real devices.

`MeasuredReward` implements the environment's ``RewardSource`` protocol
(``evaluate(placement) -> (step_time, overflow_bytes)``): it runs warm-up and timed training
steps of the placement with one process per device (`rlplace.measure.session.measure`) and
returns the median step time. Results are cached by placement. A measurement that crashes,
hangs or exceeds its timeout never blocks the caller: every rank is killed and reaped, the
failure is recorded (`failures`), and the placement scores a penalty step time. Placements
the simulator says overflow memory are not run (they would fail on real accelerators); they
score the penalty and their overflow.

Plug it into the environment with a factory::

    factory = measured_reward_factory(ModelRecipe("path/to/model.py:build"), backend="gloo")
    env = gymnasium.make("rlplace/Placement-v0", models=["path/to/model.py:build"], reward_source=factory)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.measure.launch import MeasureFailure
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.session import MeasureSetup, measure


@dataclass(frozen=True)
class MeasureOptions:
    """How each placement is measured.

    Attributes:
        backend: ``gloo`` (CPU ranks), ``nccl`` (GPU ranks) or ``local`` (one process; no
            timeout protection, for debugging only).
        steps: timed steps per placement; warmup: untimed steps before them.
        threads: torch threads per rank.
        timeout_s: limit of one measurement, process start-up included.
        failure_factor: a failed or overflowing placement scores this many times the
            larger of its simulated step time and the simulated single-device step time.
        cache_size: placements remembered (least recently used dropped first).
        skip_overflow: do not run placements the simulator says overflow memory.
    """

    backend: str = "gloo"
    steps: int = 5
    warmup: int = 2
    threads: int = 1
    timeout_s: float = 120.0
    failure_factor: float = 10.0
    cache_size: int = 4096
    skip_overflow: bool = True


class MeasuredReward:
    """Measured step time of placements of one model on one cluster (a ``RewardSource``).

    Shapes: ``placement`` is (n,) int64, one device per op of ``setup.graph``.
    """

    def __init__(self, setup: MeasureSetup, options: MeasureOptions | None = None) -> None:
        self.setup = setup
        self.options = options or MeasureOptions()
        self.cache: OrderedDict[bytes, tuple[float, float]] = OrderedDict()
        self.failures: list[str] = []
        self.measurements = 0
        self.cache_hits = 0
        self.seconds_measuring = 0.0
        single = np.zeros(setup.graph.num_ops, dtype=np.int64)
        self.single_device_time = float(setup.simulate(single).step_time)

    def evaluate(self, placement: np.ndarray) -> tuple[float, float]:
        """(median measured step time in seconds, bytes over capacity summed over devices)."""
        checked = np.asarray(placement, dtype=np.int64)
        key = checked.tobytes()
        if key in self.cache:
            self.cache_hits += 1
            self.cache.move_to_end(key)
            return self.cache[key]
        result = self._measure(checked)
        self.cache[key] = result
        if len(self.cache) > self.options.cache_size:
            self.cache.popitem(last=False)
        return result

    def _measure(self, placement: np.ndarray) -> tuple[float, float]:
        options = self.options
        try:
            simulated = self.setup.simulate(placement)
        except RlplaceError as exc:
            self.failures.append(f"placement rejected: {exc}")
            return self._penalty(self.single_device_time), 0.0
        overflow = float(np.sum(simulated.overflow_bytes))
        penalty = self._penalty(float(simulated.step_time))
        if overflow > 0 and options.skip_overflow:
            return penalty, overflow
        started = time.perf_counter()
        try:
            (measurement,) = measure(
                self.setup, [placement], backend=options.backend, steps=options.steps, warmup=options.warmup, threads=options.threads, timeout_s=options.timeout_s
            )
        except (MeasureFailure, RlplaceError) as exc:
            self.failures.append(str(exc))
            return penalty, overflow
        finally:
            self.measurements += 1
            self.seconds_measuring += time.perf_counter() - started
        return measurement.measured_step_time, overflow

    def _penalty(self, simulated_time: float) -> float:
        return self.options.failure_factor * max(simulated_time, self.single_device_time)


def measured_reward_factory(
    recipes: ModelRecipe | Mapping[str, ModelRecipe], options: MeasureOptions | None = None
) -> Callable[..., MeasuredReward]:
    """A ``reward_source`` factory for the environment.

    ``recipes`` is one recipe, or a mapping graph name -> recipe when the environment samples
    several models. The factory is called as ``factory(graph, cluster, costs, *, objective,
    microbatches)``; measured steps are plain training steps, so only the ``latency``
    objective is supported.
    """

    def factory(graph: OpGraph, cluster: Cluster, costs: Any = None, *, objective: str = "latency", microbatches: int = 1) -> MeasuredReward:
        if objective != "latency":
            raise RlplaceError(f"the measured reward times plain training steps; use objective 'latency', not {objective!r}")
        if isinstance(recipes, ModelRecipe):
            recipe = recipes
        elif graph.name in recipes:
            recipe = recipes[graph.name]
        else:
            raise RlplaceError(f"no model recipe for graph {graph.name!r}; give measured_reward_factory a recipe per model ({', '.join(recipes)})")
        setup = MeasureSetup.prepare(recipe, cluster, graph=graph, optimizer=str(graph.meta.get("optimizer") or "adam"))
        assignment = setup.assignment(np.zeros(graph.num_ops, dtype=np.int64))
        if assignment.matched_fraction < 0.5:
            raise RlplaceError(f"graph {graph.name!r} does not come from model {recipe.spec!r} (only {assignment.matched_by_name} of {assignment.num_nodes} ops match)")
        return MeasuredReward(setup, options)

    return factory
