"""Fine-tune the improvement policy on one model with step times measured on the real cluster.

DOPPLER's last stage, on rlplace's parts:

1. **Simulator stage.** Policy-guided search (`rlplace.agents.guided_search`) under the
   simulator, from the fast baselines' placements; every placement it simulates is recorded,
   and the ``candidates`` best distinct ones that fit in memory (the search's best first) are
   the policy's best candidates.
2. **Measure the candidates.** They run for real (one launch for all of them), the
   simulator's best first, so its measured step time is always known.
3. **MaskablePPO on measured rewards.** `MeasuredImproveEnv` is the ``improve`` env of this one
   model whose reward is the relative *measured* step-time gain of a move,
   ``(T_before - T_after) / T_before``; every episode starts from the best measured placement
   so far. PPO (sb3-contrib ``MaskablePPO`` with the checkpoint's `MoveScorer`) learns until
   the measurement budget or the time is spent (the rollout under way is finished, so its
   update happens) or after ``ppo_timesteps`` steps.
4. **Search with the tuned policy.** With budget left, a guided search with the fine-tuned
   scorer proposes more candidates, measured likewise.

Every measurement goes through one `MeasurementCache`: keyed by placement (the placement as
the executor runs it), a placement is never measured twice, and only distinct placements
count against the budget. A crash, hang or timeout scores a penalty step time (as
`rlplace.measure.reward.MeasuredReward` does) and is recorded. The result is the placement
with the smallest measured step time in the cache; the simulator's best is in the cache
(measured first, same settings), so the result is never worse than it measured the same way.

Times are seconds. Assignments are (u,) device per colocation unit of the working graph;
placements are (n,) device per op of the measured model's full training graph.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from rlplace.envs.improve_env import Case, ImproveEnv
from rlplace.envs.improve_state import MoveProblem
from rlplace.errors import RlplaceError

#: Step time of a failed measurement = this factor x the larger of its simulated step time and
#: the simulated one-device step time (`rlplace.measure.reward.MeasureOptions.failure_factor`).
FAILURE_FACTOR = 10.0


# ----------------------------------------------------------------------------- measuring
class Measurer(Protocol):
    """Runs placements for real."""

    def measure(self, placements: Sequence[np.ndarray], timeout_s: float) -> list[float]:
        """Measured step time (s) of each (n,) placement; a failed run scores a penalty, never raises."""
        ...

    def compare(self, placements: Sequence[np.ndarray], rounds: int, timeout_s: float) -> list[list[float]] | None:
        """Per placement, the median step time of each of ``rounds`` interleaved rounds, all
        measured side by side in one launch (so drift of the host's speed favours none); None
        when the run fails."""
        ...


class SessionMeasurer:
    """A `Measurer` on real ranks: `rlplace.measure.session.measure` of a `MeasureSetup`.

    A batch runs in one launch (the ranks start once); when a batch fails, its placements are
    retried one by one so one bad placement does not cost the others.
    """

    def __init__(
        self, setup: Any, *, backend: str = "gloo", steps: int = 5, warmup: int = 2, threads: int = 1, keep_awake: bool | None = None, fault: dict[str, Any] | None = None
    ) -> None:
        self.setup = setup
        self.fault = fault  # a rank fault to inject (tests: {"rank": 1, "kind": "hang"})
        self.backend, self.steps, self.warmup, self.threads, self.keep_awake = backend, steps, warmup, threads, keep_awake
        self.failures: list[str] = []
        self.launches = 0
        self.single_device_time = float(setup.simulate(np.zeros(setup.graph.num_ops, dtype=np.int64)).step_time)

    def measure(self, placements: Sequence[np.ndarray], timeout_s: float) -> list[float]:
        from rlplace.measure.distributed import MeasureFailure
        from rlplace.measure.session import measure

        try:
            self.launches += 1
            found = measure(
                self.setup, list(placements), backend=self.backend, steps=self.steps, warmup=self.warmup, threads=self.threads,
                timeout_s=timeout_s * len(placements), keep_awake=self.keep_awake, fault=self.fault,
            )  # fmt: skip
            return [m.measured_step_time for m in found]
        except (MeasureFailure, RlplaceError) as error:
            if len(placements) > 1:
                return [self.measure([p], timeout_s)[0] for p in placements]
            self.failures.append(str(error))
            return [self.penalty(placements[0])]

    def compare(self, placements: Sequence[np.ndarray], rounds: int, timeout_s: float) -> list[list[float]] | None:
        import statistics

        from rlplace.measure.distributed import MeasureFailure
        from rlplace.measure.session import measure

        try:
            self.launches += 1
            found = measure(
                self.setup, list(placements), backend=self.backend, steps=self.steps, warmup=self.warmup, rounds=rounds, threads=self.threads,
                timeout_s=timeout_s * len(placements) * rounds, keep_awake=self.keep_awake, fault=self.fault,
            )  # fmt: skip
        except (MeasureFailure, RlplaceError) as error:
            self.failures.append(f"side-by-side confirmation: {error}")
            return None
        steps = self.steps  # step times are pooled round by round, `steps` per round
        return [[statistics.median(m.step_times[r * steps : (r + 1) * steps]) for r in range(rounds)] for m in found]

    def penalty(self, placement: np.ndarray) -> float:
        try:
            simulated = float(self.setup.simulate(placement).step_time)
        except RlplaceError:
            simulated = self.single_device_time
        return FAILURE_FACTOR * max(simulated, self.single_device_time)

    def key(self, placement: np.ndarray) -> bytes:
        """Cache key: the placement as the executor runs it (two placements it runs alike share one)."""
        try:
            return np.asarray(self.setup.executed(placement), dtype=np.int64).tobytes()
        except RlplaceError:
            return np.asarray(placement, dtype=np.int64).tobytes()


@dataclass
class MeasurementCache:
    """Measured step time per placement under a budget of distinct measurements and a deadline.

    Attributes:
        measurer: runs the placements.
        budget: distinct placements that may be measured.
        timeout_s: limit of one measurement (cut to the time left before ``deadline``).
        deadline: ``time.perf_counter()`` value after which nothing new is measured (None: none).
        key: placement -> cache key (default: its bytes).
        times: key -> measured step time; placements: key -> the (n,) placement; order: keys
            in measuring order; hits: lookups answered from the cache.
    """

    measurer: Measurer
    budget: int
    timeout_s: float
    deadline: float | None = None
    key: Callable[[np.ndarray], bytes] | None = None
    times: dict[bytes, float] = field(default_factory=dict)
    placements: dict[bytes, np.ndarray] = field(default_factory=dict)
    order: list[bytes] = field(default_factory=list)
    hits: int = 0

    @property
    def measurements(self) -> int:
        return len(self.order)

    def _key(self, placement: np.ndarray) -> bytes:
        return self.key(placement) if self.key is not None else np.asarray(placement, dtype=np.int64).tobytes()

    def time_left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.perf_counter()

    @property
    def exhausted(self) -> bool:
        """No new placement can be measured (budget spent or past the deadline)."""
        return self.measurements >= self.budget or self.time_left() <= 0

    def lookup(self, placement: np.ndarray) -> float | None:
        return self.times.get(self._key(placement))

    def get(self, placement: np.ndarray) -> float | None:
        return self.get_many([placement])[0]

    def get_many(self, placements: Sequence[np.ndarray]) -> list[float | None]:
        """Step time of each placement: cached, else measured while budget and time last, else None."""
        keys = [self._key(p) for p in placements]
        new: list[bytes] = []
        for key, placement in zip(keys, placements, strict=True):
            if key in self.times or key in new:
                self.hits += 1
            elif self.measurements + len(new) < self.budget and self.time_left() > 0:
                new.append(key)
                self.placements[key] = np.asarray(placement, dtype=np.int64).copy()
        if new:
            timeout = min(self.timeout_s, max(self.time_left() / len(new), 1.0))
            found = self.measurer.measure([self.placements[k] for k in new], timeout)
            for key, step_time in zip(new, found, strict=True):
                self.times[key] = float(step_time)
                self.order.append(key)
        return [self.times.get(key) for key in keys]

    def best(self) -> tuple[np.ndarray, float]:
        """(placement, step time) with the smallest measured step time (the earliest on a tie)."""
        if not self.order:
            raise RlplaceError("nothing was measured")
        key = min(self.order, key=lambda k: self.times[k])
        return self.placements[key], self.times[key]


# ------------------------------------------------------------------------ simulator stage
class _RecordingSimulator:
    """Proxies a `Simulator` and records every scored placement (bytes -> (overflow, step time))."""

    def __init__(self, simulator: Any) -> None:
        self._simulator = simulator
        self.seen: dict[bytes, tuple[float, float, np.ndarray]] = {}

    def score(self, placement: np.ndarray, *, cutoff: float = np.inf) -> tuple[float, float]:
        """The simulator's score, always in full (``cutoff`` is ignored): the record keeps exact step times."""
        step_time, overflow = self._simulator.score(placement)
        array = np.asarray(placement, dtype=np.int64)
        self.seen.setdefault(array.tobytes(), (float(overflow), float(step_time), array.copy()))
        return step_time, overflow

    def __getattr__(self, name: str) -> Any:
        return getattr(self._simulator, name)


def search_candidates(
    problem: MoveProblem, starts: Sequence[np.ndarray], scorer: Any, *, count: int, evaluations: int, seed: int, budget_s: float | None = None
) -> list[tuple[np.ndarray, float]]:
    """The policy's best candidates: up to ``count`` (assignment (u,), simulated step time) pairs,
    the guided search's best first, then the best other distinct fitting placements it simulated."""
    import torch

    from .guided_search import guided_search, scorer_ranker

    recorder = _RecordingSimulator(problem.simulator)
    recording = dataclasses.replace(problem, simulator=recorder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        best, best_key, _ = guided_search(recording, starts, scorer_ranker(scorer), evaluations=evaluations, budget_s=budget_s, seed=seed)
    finally:
        torch.set_num_threads(threads)
    first = problem.units.expand(best)
    found = [(np.asarray(best, dtype=np.int64), float(best_key[1]))]
    others = sorted((v for k, v in recorder.seen.items() if v[0] == 0 and k != first.tobytes()), key=lambda v: v[1])
    for _, step_time, placement in others[: max(count - 1, 0)]:
        found.append((problem.units.contract(placement), step_time))
    return found


# --------------------------------------------------------------------------- the env
class MeasuredImproveEnv(ImproveEnv):
    """`ImproveEnv` of one problem whose reward is the relative measured step-time gain of a move.

    Observations and legal moves come from the simulator as in `ImproveEnv`; the reward of a
    move is ``(T_before - T_after) / T_before`` with T the measured step time (from ``cache``;
    a placement already measured costs nothing). A move the simulator says overflows memory is
    not run and gets ``-1``. When the cache can measure nothing new, a move to an unmeasured
    placement gets 0 and truncates the episode (``info["budget_exhausted"]``). Each reset
    starts from ``start()`` (the best measured assignment so far).
    """

    def __init__(self, problem: MoveProblem, cache: MeasurementCache, expand: Callable[[np.ndarray], np.ndarray], start: Callable[[], np.ndarray], *, max_moves: int = 4) -> None:
        case = Case("tune", problem.graph, problem.cluster, problem.costs, problem.objective, problem.microbatches)
        edges = max(int(problem.edge_src.size), 1)
        super().__init__(cases=[case], max_nodes=max(problem.num_units, 1), max_devices=max(problem.num_devices, 2), max_edges=edges, max_moves=max_moves, perturb_probability=0.0)
        self._problems[0] = problem
        self.cache, self.expand, self.start = cache, expand, start
        self.measured_time = float("nan")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        start = np.asarray(self.start(), dtype=np.int64)
        obs, info = super().reset(seed=seed, options={"case": 0, "start": start})
        measured = self.cache.get(self.expand(start))
        self.measured_time = float(measured) if measured is not None else float("nan")
        return obs, {**info, "measured_time": self.measured_time}

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        overflow_before = self._obs.overflow if self._obs is not None else 0.0
        obs, reward, terminated, truncated, info = super().step(action)
        if info.get("stopped"):
            return obs, 0.0, terminated, truncated, info
        if self._obs is not None and self._obs.overflow > overflow_before:
            return obs, -1.0, terminated, truncated, info
        measured = self.cache.get(self.expand(self.assignment))
        if measured is None or not np.isfinite(self.measured_time):
            return obs, 0.0, terminated, True, {**info, "budget_exhausted": True}
        reward = (self.measured_time - measured) / self.measured_time
        self.measured_time = measured
        return obs, float(np.clip(reward, -1.0, 1.0)), terminated, truncated, {**info, "measured_time": measured}


# --------------------------------------------------------------------------- tuning
@dataclass(frozen=True)
class TuneConfig:
    """Settings of one tuning run.

    Attributes:
        budget: distinct placements measured at most (>= 1).
        timeout_s: limit of one measurement in seconds (rank start-up included).
        total_timeout_s: limit of the whole run in seconds (None: none); nothing new is
            measured after it, and PPO stops at its next rollout end.
        candidates: the policy's best simulated candidates measured first (the simulator's best among them).
        search_evaluations: simulations of each policy-guided search.
        ppo_timesteps: env steps of PPO at most (0: no fine-tuning).
        n_steps: PPO rollout length (one update per rollout).
        n_epochs: PPO epochs per update.
        learning_rate: Adam learning rate of PPO.
        max_moves: moves per PPO episode.
        seed: seed of the searches and of PPO.
        confirm_rounds: when the best measured placement is not the simulator's best, both are
            measured again side by side in one launch with this many interleaved rounds; it
            stays the result only if it is faster in every round, else the simulator's best is
            (0: no confirmation). Single measurements on a loaded host are noisy; the minimum
            over several of them favours the luckiest, and the confirmation undoes that bias.
    """

    budget: int = 12
    timeout_s: float = 120.0
    total_timeout_s: float | None = 900.0
    candidates: int = 3
    search_evaluations: int = 600
    ppo_timesteps: int = 256
    n_steps: int = 16
    n_epochs: int = 4
    learning_rate: float = 3e-4
    max_moves: int = 4
    seed: int = 0
    confirm_rounds: int = 3

    def validate(self) -> None:
        if self.budget < 1:
            raise RlplaceError(f"the measurement budget must be at least 1 (got {self.budget})")
        if not self.timeout_s > 0 or (self.total_timeout_s is not None and not self.total_timeout_s > 0):
            raise RlplaceError(f"timeouts must be positive seconds (got {self.timeout_s} and {self.total_timeout_s})")
        if self.candidates < 1 or self.search_evaluations < 1 or self.ppo_timesteps < 0 or self.n_steps < 2 or self.n_epochs < 1 or self.max_moves < 1 or self.confirm_rounds < 0:
            raise RlplaceError("candidates, search_evaluations, n_epochs and max_moves must be >= 1, n_steps >= 2, ppo_timesteps and confirm_rounds >= 0")


@dataclass
class TuneResult:
    """What a tuning run found. Placements are (n,) per op of the measured graph; times in seconds.

    Attributes:
        simulator_best: the simulator's best placement (policy-guided search).
        simulator_best_simulated, simulator_best_measured: its simulated and measured step time.
        best: the placement with the smallest measured step time seen (never worse than
            ``simulator_best`` as measured: that is in the same cache).
        best_measured, best_simulated: its measured and simulated step time.
        best_source: ``simulator``, ``candidate``, ``ppo`` or ``tuned-search``.
        measurements: distinct placements measured; cache_hits: repeats answered by the cache.
        ppo_timesteps, ppo_updates: PPO env steps and gradient updates done.
        scorer: the fine-tuned `MoveScorer` (the input scorer when PPO made no update).
        history: per measurement, in order: source, measured and simulated step time.
        confirmed: whether the two reported measured times come from the side-by-side
            confirmation (``TuneConfig.confirm_rounds``) rather than from the cache.
        searched_best_measured: the best step time in the cache (before any confirmation).
        wall_s: seconds of the whole run.
    """

    simulator_best: np.ndarray
    simulator_best_simulated: float
    simulator_best_measured: float
    best: np.ndarray
    best_measured: float
    best_simulated: float
    best_source: str
    measurements: int
    cache_hits: int
    ppo_timesteps: int
    ppo_updates: int
    scorer: Any
    history: list[dict[str, Any]]
    wall_s: float
    confirmed: bool = False
    searched_best_measured: float = float("nan")

    def summary(self) -> dict[str, Any]:
        """JSON-ready numbers (no scorer, no placements)."""
        gain = (self.simulator_best_measured - self.best_measured) / self.simulator_best_measured if self.simulator_best_measured > 0 else 0.0
        return {
            "simulator_best_simulated_step_time": self.simulator_best_simulated,
            "simulator_best_measured_step_time": self.simulator_best_measured,
            "tuned_measured_step_time": self.best_measured,
            "tuned_simulated_step_time": self.best_simulated,
            "tuned_source": self.best_source,
            "measured_gain": gain,
            "measurements": self.measurements,
            "cache_hits": self.cache_hits,
            "ppo_timesteps": self.ppo_timesteps,
            "ppo_updates": self.ppo_updates,
            "confirmed_side_by_side": self.confirmed,
            "searched_best_measured_step_time": self.searched_best_measured,
            "wall_s": self.wall_s,
        }


def tune_problem(
    problem: MoveProblem,
    starts: Sequence[np.ndarray],
    scorer: Any,
    cache: MeasurementCache,
    config: TuneConfig,
    *,
    expand: Callable[[np.ndarray], np.ndarray] | None = None,
    simulate: Callable[[np.ndarray], float] | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> TuneResult:
    """Stages 1-4 of the module docstring on one `MoveProblem`; ``cache`` measures.

    ``expand``: (u,) assignment -> (n,) placement the cache measures (default: the problem's
    units expanded to its graph); ``simulate``: (n,) placement -> simulated step time for the
    report (default: the problem's simulator on the expanded assignment).
    """
    config.validate()
    began = time.perf_counter()
    expand = expand or problem.units.expand
    sources: dict[bytes, str] = {}
    simulated_of: dict[bytes, float] = {}

    def measure_all(assignments: Sequence[np.ndarray], source: str, simulated: Sequence[float]) -> list[float | None]:
        placements = [expand(a) for a in assignments]
        for placement, step_time in zip(placements, simulated, strict=True):
            key = cache._key(placement)
            if key not in sources:
                sources[key] = source
                simulated_of[key] = float(step_time)
        return cache.get_many(placements)

    def simulated_time(assignment: np.ndarray) -> float:
        return float(problem.score(np.asarray(assignment, dtype=np.int64))[1])

    # 1-2: the policy's best candidates under the simulator, measured (the simulator's best first)
    def search_time() -> float | None:
        left = cache.time_left()
        return None if not np.isfinite(left) else max(left / 4, 0.5)

    candidates = search_candidates(
        problem, starts, scorer, count=min(config.candidates, config.budget), evaluations=config.search_evaluations, seed=config.seed, budget_s=search_time()
    )
    sim_best_assignment, sim_best_simulated = candidates[0]
    sim_best_placement = expand(sim_best_assignment)
    found = measure_all([sim_best_assignment], "simulator", [sim_best_simulated])
    if found[0] is None:
        raise RlplaceError("the simulator's best placement could not be measured (no time left); raise --timeout or the total timeout")
    sim_best_measured = float(found[0])
    log(f"simulator's best: simulated {sim_best_simulated * 1e3:.3f} ms, measured {sim_best_measured * 1e3:.3f} ms")
    if len(candidates) > 1:
        measure_all([a for a, _ in candidates[1:]], "candidate", [t for _, t in candidates[1:]])

    # 3: MaskablePPO on measured rewards
    assignment_of: dict[bytes, np.ndarray] = {cache._key(expand(a)): np.asarray(a, dtype=np.int64) for a, _ in candidates}

    def best_assignment() -> np.ndarray:
        key = cache._key(cache.best()[0])
        return assignment_of.get(key, sim_best_assignment)

    def remember(assignment: np.ndarray, source: str) -> None:
        key = cache._key(expand(assignment))
        assignment_of.setdefault(key, np.asarray(assignment, dtype=np.int64).copy())
        if key not in sources:
            sources[key] = source
            simulated_of[key] = simulated_time(assignment)

    tuned, timesteps, updates = scorer, 0, 0
    if config.ppo_timesteps > 0 and not cache.exhausted:
        tuned, timesteps, updates = _ppo(problem, scorer, cache, config, expand, best_assignment, remember)
        log(f"PPO: {timesteps} steps, {updates} updates, {cache.measurements} measurements so far")

    # 4: search with the tuned policy, its candidates measured with what budget is left
    if not cache.exhausted:
        found = search_candidates(problem, [best_assignment(), *starts], tuned, count=config.budget, evaluations=config.search_evaluations, seed=config.seed + 1, budget_s=search_time())
        more = [(a, t) for a, t in found if cache.lookup(expand(a)) is None][: config.budget - cache.measurements]  # measured ones cost nothing and add nothing
        for assignment, _ in more:
            assignment_of.setdefault(cache._key(expand(assignment)), assignment)
        measure_all([a for a, _ in more], "tuned-search", [t for _, t in more])

    best_placement, best_measured = cache.best()
    searched_best = float(best_measured)
    key = cache._key(best_placement)
    if best_measured > sim_best_measured:  # impossible: the simulator's best is in the cache
        raise AssertionError("tuned result measured slower than the simulator's best")
    confirmed = False
    if config.confirm_rounds > 0 and key != cache._key(sim_best_placement) and cache.time_left() > 0:
        timeout = min(config.timeout_s, max(cache.time_left(), 1.0))
        again = cache.measurer.compare([sim_best_placement, best_placement], config.confirm_rounds, timeout)
        if again is not None:
            confirmed = True
            sim_rounds, best_rounds = again
            sim_best_measured, best_measured = float(np.median(sim_rounds)), float(np.median(best_rounds))
            wins = sum(b < a for a, b in zip(sim_rounds, best_rounds, strict=True))
            log(f"side by side: simulator's best {sim_best_measured * 1e3:.3f} ms, tuned {best_measured * 1e3:.3f} ms (faster in {wins} of {len(sim_rounds)} rounds)")
            if wins < len(sim_rounds) or best_measured >= sim_best_measured:  # the search's winner may be luck: keep the simulator's best
                best_placement, best_measured, key = sim_best_placement, sim_best_measured, cache._key(sim_best_placement)
    history = [{"source": sources.get(k, "ppo"), "measured": cache.times[k], "simulated": simulated_of.get(k)} for k in cache.order]
    best_simulated = simulated_of.get(key)
    if simulate is not None:
        best_simulated = simulate(best_placement)
    return TuneResult(
        simulator_best=sim_best_placement,
        simulator_best_simulated=float(sim_best_simulated),
        simulator_best_measured=sim_best_measured,
        best=best_placement,
        best_measured=float(best_measured),
        best_simulated=float(best_simulated) if best_simulated is not None else float("nan"),
        best_source=sources.get(key, "ppo"),
        measurements=cache.measurements,
        cache_hits=cache.hits,
        ppo_timesteps=timesteps,
        ppo_updates=updates,
        scorer=tuned,
        history=history,
        wall_s=time.perf_counter() - began,
        confirmed=confirmed,
        searched_best_measured=searched_best,
    )


def _ppo(
    problem: MoveProblem, scorer: Any, cache: MeasurementCache, config: TuneConfig, expand: Callable[[np.ndarray], np.ndarray],
    start: Callable[[], np.ndarray], remember: Callable[[np.ndarray, str], None],
) -> tuple[Any, int, int]:
    """(fine-tuned scorer, env steps, updates) of MaskablePPO on `MeasuredImproveEnv`."""
    import copy

    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.callbacks import BaseCallback

    from .improve_policy import ImproveMaskablePolicy

    class _Env(MeasuredImproveEnv):
        def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
            out = super().step(action)
            if not out[4].get("stopped"):
                remember(self.assignment, "ppo")
            return out

    class _StopWhenSpent(BaseCallback):
        """Stops at the first step after a rollout that ended with nothing left to measure, so
        the rollout's update still happens."""

        def __init__(self) -> None:
            super().__init__()
            self.spent = False

        def _on_rollout_end(self) -> None:
            self.spent = cache.exhausted

        def _on_step(self) -> bool:
            return not self.spent

    env = _Env(problem, cache, expand, start, max_moves=config.max_moves)
    env.reset(seed=config.seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = MaskablePPO(
            ImproveMaskablePolicy, env, n_steps=config.n_steps, batch_size=config.n_steps, n_epochs=config.n_epochs, learning_rate=config.learning_rate,
            gamma=0.95, ent_coef=0.001, seed=config.seed, verbose=0, policy_kwargs={"scorer": scorer.config.to_dict()},
        )  # fmt: skip
        model.policy.scorer.load_state_dict(scorer.state_dict())
        model.learn(config.ppo_timesteps, callback=_StopWhenSpent())
    finally:
        torch.set_num_threads(threads)
    updates = int(getattr(model, "_n_updates", 0)) // max(config.n_epochs, 1)
    tuned = copy.deepcopy(model.policy.scorer) if updates else scorer
    tuned.eval()
    return tuned, int(model.num_timesteps), updates


# ----------------------------------------------------------------- a model, for real
@dataclass
class TunedModel:
    """`tune_model`'s result: the run, and what the report and the files need."""

    result: TuneResult
    graph: Any
    cluster: Any
    failures: list[str]
    base_checkpoint: str


def tune_model(
    recipe: Any, cluster: Any, config: TuneConfig, *, checkpoint: str | None = None, backend: str = "gloo", steps: int = 5, warmup: int = 2,
    threads: int = 1, optimizer: str = "adam", max_groups: int = 256, keep_awake: bool | None = None, measurer: Measurer | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> TunedModel:
    """Build ``recipe`` (a `rlplace.measure.recipe.ModelRecipe`), place it with the policy under
    the simulator, and tune on measured step times on ``cluster`` (one rank per device)."""
    from rlplace.baselines.local_search import START_METHODS, start_placements
    from rlplace.costs import CostTable
    from rlplace.envs.improve_state import build_move_problem
    from rlplace.measure.session import MeasureSetup

    from .improve_checkpoint import default_checkpoint_dir, load_scorer

    config.validate()
    began = time.perf_counter()
    deadline = None if config.total_timeout_s is None else began + config.total_timeout_s
    base = str(checkpoint) if checkpoint is not None else str(default_checkpoint_dir())
    scorer, _ = load_scorer(base)
    setup = MeasureSetup.prepare(recipe, cluster, optimizer=optimizer)
    graph, coarsening = setup.graph, None
    if graph.num_ops > max_groups:  # as rlplace.pipeline.working_graph (captured graphs)
        from rlplace.coarsen import coarsen

        coarsening = coarsen(graph, max_groups)
        graph = coarsening.graph
    costs = setup.costs if coarsening is None else CostTable.build(graph, cluster)
    problem = build_move_problem(graph, cluster, costs, objective="latency")
    found = start_placements(graph, cluster, costs, objective="latency", seed=config.seed, methods=START_METHODS)
    if not found:
        raise RlplaceError(f"no fast baseline found a start placement for {recipe.spec!r} on {cluster.name!r}")
    starts = [problem.units.contract(p) for p in found.values()]

    def expand(assignment: np.ndarray) -> np.ndarray:
        placement = problem.units.expand(assignment)
        return np.asarray(coarsening.expand(placement) if coarsening is not None else placement, dtype=np.int64)

    session = SessionMeasurer(setup, backend=backend, steps=steps, warmup=warmup, threads=threads, keep_awake=keep_awake) if measurer is None else None
    cache = MeasurementCache(measurer or session, budget=config.budget, timeout_s=config.timeout_s, deadline=deadline, key=session.key if session is not None else None)  # type: ignore[arg-type]
    result = tune_problem(problem, starts, scorer, cache, config, expand=expand, simulate=lambda p: float(setup.simulate(p).step_time), log=log)
    result.simulator_best_simulated = float(setup.simulate(result.simulator_best).step_time)
    result.wall_s = time.perf_counter() - began
    return TunedModel(result, setup.graph, cluster, list(session.failures) if session is not None else [], base)


# ------------------------------------------------------------------- ``rlplace tune``
def check_out_dir(out: str) -> None:
    """`RlplaceError` unless ``out`` can become the output folder (checked before any work)."""
    import os
    from pathlib import Path

    target = Path(out)
    if str(out) == "" or (target.exists() and not target.is_dir()):
        raise RlplaceError(f"cannot write --out {out}: it is a file; give a folder")
    parent = target.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise RlplaceError(f"cannot write --out {out}: folder {parent} does not exist or is not writable")
    if target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
        raise RlplaceError(f"cannot write --out {out}: the folder is not writable")


def output_files(tuned: TunedModel, out: str, meta: dict[str, Any]) -> dict[str, bytes | str]:
    """The files of ``--out`` as {path: content}: the checkpoint (``model.safetensors`` and
    ``config.json`` of `rlplace.agents.improve_checkpoint`, ``meta`` recording the tuning) and
    ``placement.json`` (the best measured placement, readable by ``--placement``)."""
    import json
    import tempfile
    from pathlib import Path

    from .improve_checkpoint import CONFIG_FILE, WEIGHTS_FILE, save_scorer

    result = tuned.result
    with tempfile.TemporaryDirectory(prefix=".tune-") as scratch:
        save_scorer(result.scorer, scratch, meta)
        weights = (Path(scratch) / WEIGHTS_FILE).read_bytes()
        config = (Path(scratch) / CONFIG_FILE).read_text()
    placement = {
        "method": "tune",
        "placement": [int(d) for d in result.best],
        "device_names": list(tuned.cluster.device_names),
        "measured_step_time": result.best_measured,
        "simulated_step_time": result.best_simulated,
        "simulator_best": {"placement": [int(d) for d in result.simulator_best], "measured_step_time": result.simulator_best_measured, "simulated_step_time": result.simulator_best_simulated},
        **{k: v for k, v in result.summary().items() if k in ("measurements", "cache_hits", "measured_gain", "tuned_source")},
    }
    folder = Path(out)
    return {folder / WEIGHTS_FILE: weights, folder / CONFIG_FILE: config, folder / "placement.json": json.dumps(placement, indent=1) + "\n"}


def run_tune_command(args: Any) -> int:
    """``rlplace tune MODEL``: the handler (options in ``rlplace.cli``); prints and writes the result."""
    import sys
    from pathlib import Path

    from rlplace.io import dumps_finite, write_outputs, write_stdout
    from rlplace.limits import MAX_THREADS, check_count, check_seed
    from rlplace.load import is_module_spec
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.modelspec import is_dotted_spec

    if not (is_module_spec(str(args.model)) or is_dotted_spec(str(args.model))):
        raise RlplaceError(f"cannot tune on model spec {args.model!r}: measurement runs PyTorch code; use zoo:NAME, path/to/file.py:function or package.module:function")
    if getattr(args, "inference", False):
        raise RlplaceError("rlplace tune measures training steps; drop --inference")
    check_seed(args.seed)
    if args.threads < 1:
        raise RlplaceError(f"--threads must be at least 1 (got {args.threads})")
    check_count(args.threads, MAX_THREADS, "MAX_THREADS", "--threads")
    if args.steps < 1 or args.warmup < 0:
        raise RlplaceError(f"--steps must be at least 1 and --warmup at least 0 (got {args.steps} and {args.warmup})")
    config = TuneConfig(
        budget=args.budget, timeout_s=args.timeout, total_timeout_s=args.total_timeout, candidates=args.candidates,
        search_evaluations=args.evaluations, ppo_timesteps=args.ppo_steps, seed=args.seed, confirm_rounds=args.confirm_rounds,
    )  # fmt: skip
    config.validate()
    check_out_dir(args.out)
    cluster = _tune_cluster(args)
    recipe = ModelRecipe(str(args.model), args.batch_size, int(args.seed))

    def log(line: str) -> None:
        if not args.json:
            print(line, file=sys.stderr, flush=True)

    tuned = tune_model(
        recipe, cluster, config, checkpoint=args.checkpoint, backend=args.backend, steps=args.steps, warmup=args.warmup, threads=args.threads,
        optimizer=args.optimizer, max_groups=args.max_groups, keep_awake=getattr(args, "keep_awake", None), log=log,
    )  # fmt: skip
    result = tuned.result
    meta = {
        "tuned": {
            "model": str(args.model), "batch_size": args.batch_size, "seed": args.seed, "cluster": cluster.name, "device_names": list(cluster.device_names),
            "reward": "measured", "backend": args.backend, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
            "base_checkpoint": tuned.base_checkpoint, "config": dataclasses.asdict(config), **result.summary(), "failures": tuned.failures[:10],
        }
    }  # fmt: skip
    payload = {"model": str(args.model), "cluster": cluster.name, "backend": args.backend, "budget": config.budget, **result.summary(), "failures": len(tuned.failures), "out": str(args.out)}
    printed = dumps_finite(payload, "the result") if args.json else None
    files = output_files(tuned, args.out, meta)
    Path(args.out).mkdir(exist_ok=True)
    write_outputs(files)
    if printed is not None:
        write_stdout(printed + "\n")
    else:
        gain = result.summary()["measured_gain"]
        how = f"side by side, {config.confirm_rounds} interleaved rounds" if result.confirmed else "each measured once"
        print(
            f"({how}; best in the search {result.searched_best_measured * 1e3:.3f} ms)\n"
            f"simulator's best   measured {result.simulator_best_measured * 1e3:.3f} ms  (simulated {result.simulator_best_simulated * 1e3:.3f} ms)\n"
            f"measured-refined   measured {result.best_measured * 1e3:.3f} ms  (simulated {result.best_simulated * 1e3:.3f} ms, from {result.best_source}), "
            f"{gain * 100:.1f} % faster\n"
            f"measurements       {result.measurements} of {config.budget} ({result.cache_hits} repeats from the cache, {len(tuned.failures)} failed), "
            f"PPO {result.ppo_timesteps} steps / {result.ppo_updates} updates, {result.wall_s:.0f} s\n"
            f"wrote {args.out}/ (model.safetensors, config.json: the tuned policy; placement.json: the best measured placement)"
        )
    return 0


def _tune_cluster(args: Any) -> Any:
    """``--cluster`` (with ``--profile`` applied), else the local CPU stand-in: 2 ranks or the profile's."""
    from rlplace.measure.calibrate import apply_profile, load_profile
    from rlplace.measure.session import local_cpu_cluster

    profile = load_profile(args.profile) if getattr(args, "profile", None) else None
    if args.cluster:
        from rlplace.load import resolve_cluster

        cluster = resolve_cluster(args.cluster)
        return apply_profile(cluster, profile) if profile is not None else cluster
    return local_cpu_cluster(len(profile.devices) if profile is not None else 2, profile)


def train_with_reward(argv: list[str], train_main: Callable[[list[str]], int]) -> int:
    """``train_agent.py --reward simulator|measured ...`` (``rlplace.agents.train_cli.main``):
    ``simulator`` trains as without the option (``train_main`` on the other arguments);
    ``measured`` needs ``--model MODEL`` and runs ``rlplace tune MODEL`` with the other
    arguments (the options of `rlplace.agents.tune_options`, ``--batch-size``, ``--optimizer``,
    ``--max-groups``, ``--[no-]keep-awake``). Bad input: one ``error:`` line, status 2."""
    import argparse
    import sys

    from .tune_options import add_tune_arguments

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # one line, status 2, as the rlplace command
            self.exit(2, f"error: train_agent.py: {message}\n")

    parser = _Parser(prog="train_agent.py --reward measured", add_help=False)
    parser.add_argument("--reward", choices=("simulator", "measured"), required=True)
    parser.add_argument("--model", default=None)
    known, rest = parser.parse_known_args(argv)
    if known.reward == "simulator":
        return train_main(rest + (["--model", known.model] if known.model else []))
    if not known.model:
        print("error: --reward measured needs --model MODEL (the model whose measured step times tune the policy)", file=sys.stderr)
        return 2
    tune = _Parser(prog="train_agent.py --reward measured")
    tune.add_argument("--batch-size", type=int, default=None)
    tune.add_argument("--optimizer", choices=("adam", "sgd", "sgd-momentum"), default="adam")
    tune.add_argument("--max-groups", type=int, default=256)
    tune.add_argument("--keep-awake", action=argparse.BooleanOptionalAction, default=None)
    add_tune_arguments(tune)
    args = tune.parse_args(rest)
    args.model, args.inference = known.model, False
    try:
        return run_tune_command(args)
    except RlplaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
