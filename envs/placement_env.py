"""`PlacementEnv`, registered as ``rlplace/Placement-v0``: place a graph's groups on a cluster."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.objectives import OBJECTIVES, SCHEDULES
from rlplace.rules import MemoryLedger

from .ledger import sequential_ledger
from .observation import ObservationEncoder, StaticObservation
from .problem import FALLBACK_REFERENCE, PlacementProblem, build_problem
from .render import ansi_table, rgb_image
from .repair import legalize, repair_memory
from .reward import RewardSource, SimulatorRewardSource, dead_end_reward, oom_reward, terminal_reward
from .specs import ModelEntry, builtin_clusters, builtin_models, pair_table, resolve_cluster, resolve_model

ACTION_FORMS = ("one-shot", "sequential")
OOM_MODES = ("repair", "penalty")
MEMORY_MASKS = ("bound", "resident")


class PlacementEnv(gym.Env):
    """Place the ops of a training graph on the devices of a cluster.

    Each `reset` draws a (graph, cluster) pair with ``self.np_random`` (a model uniformly, then
    one of its clusters uniformly; ``options={"model": i, "cluster": j}`` picks one). A graph
    with more ops than ``max_nodes`` is coarsened into at most ``max_nodes`` groups
    (``rlplace.coarsen``); the agent places groups, and every reward is the simulated step time
    of the *full* graph. Per pair the env computes once and caches: the coarsening, the cost
    table, the simulator, the reference time T_ref (``reference_method``, ``m-topo`` by default,
    see ``rlplace.envs.problem``) and the static part of the observation.

    Action Space:
        ``one-shot`` (default): ``MultiDiscrete([max_devices] * max_nodes)``, a device per group
        slot; one step places every group and ends the episode. Padding slots are ignored.
        ``sequential``: ``Discrete(max_devices)``, the device of the next group; groups come
        in topological order, one per step. `action_masks` gives the valid actions in the flat
        form sb3-contrib's ``MaskablePPO`` expects (``(max_nodes * max_devices,)`` bool in
        one-shot: padding slots may only take device 0; ``(max_devices,)`` in sequential).
        A device is masked out when it is absent from the cluster, when an op of the group
        (or of a group colocated with it) cannot run there, or when its colocation unit's
        resident bytes exceed the device's memory. In sequential form the mask also removes
        devices without room for the group given what is already placed (a safe upper bound
        of peak memory, see ``rlplace.envs.ledger`` and ``memory_mask``), and a group whose
        colocation class is already placed may only take that class's device. An action
        outside the mask is replaced by the group's lowest allowed device
        (``info["invalid_actions"]`` counts them); in one-shot the groups of a colocation unit
        follow its first group (``rlplace.envs.repair``).

    Observation Space:
        A ``Dict`` of padded arrays: ``node_features`` (max_nodes, 13), ``node_device``,
        ``node_mask``, ``edge_index`` (2, max_edges) int64, ``edge_features`` (max_edges, 3),
        ``edge_mask``, ``device_features`` (max_devices, 7), ``device_mask``, ``link_time``
        (max_devices, max_devices), ``global_features`` (12,), and in sequential form
        ``current_node`` (1,). Every feature, its unit and its normalization is listed in
        ``rlplace.envs.observation``.

    Rewards:
        Terminal only (intermediate sequential steps give 0): ``(T_ref - T) / T_ref`` for the
        step time T of the full placement (0 matches the reference heuristic, 0.5 is twice as
        fast). Memory overflow: with ``oom_mode="repair"`` (default) the placement is first
        repaired by the baselines' exact rule (``rlplace.rules.repair_exact`` on the groups'
        colocation units: a unit moves off the most overfull device onto the device with the
        most simulated slack when the simulator says that lowers the overflow); a placement that still
        overflows, or any overflow under ``oom_mode="penalty"``, earns
        ``min((T_ref - T) / T_ref, 0) - oom_penalty * (1 + overflow / finite capacity)``. A
        sequential episode whose next group fits on no device ends at once with
        ``-oom_penalty * (1 + unplaced fraction)``.

    Episode End:
        one-shot: after the one step. sequential: after the last group, or at a dead end.
        Never truncated.

    Info:
        reset: ``model``, ``cluster``, ``num_groups``, ``reference_time``, ``reference_method``.
        every step: ``reference_time``, ``invalid_actions``. terminal step: ``step_time``
        (graph time unit; ``inf`` at a sequential dead end), ``oom``, ``overflow_bytes``,
        ``repaired``, ``units_moved``, ``oom_mode``, ``dead_end``, ``placement`` ((n,) int64
        device per op of the full graph, after legalization and repair). No wall-clock times.

    Args:
        models: MODEL specs (see ``rlplace.envs.specs``) or one spec; default: the built-in
            synthetic graphs.
        clusters: cluster specs or one spec; default: the built-in presets.
        objective: ``latency``, ``pipelined`` (with ``microbatches`` and ``schedule``, one of
            ``rlplace.objectives.SCHEDULES``: the objective is the step time under that pipeline
            schedule) or ``throughput``.
        max_nodes, max_devices, max_edges: padding sizes (``max_edges`` defaults to 4 * max_nodes;
            a graph with more group edges shows the heaviest ones).
        action_form: ``one-shot`` or ``sequential``.
        reward_source: ``"simulator"`` or a factory ``(graph, cluster, costs, *, objective,
            microbatches) -> RewardSource`` (see ``rlplace.envs.reward``).
        oom_mode: ``repair`` or ``penalty``; oom_penalty: the penalty scale.
        memory_mask: sequential form only. ``bound`` (default): the mask keeps a safe upper
            bound of each device's peak memory, so no offered device can overflow (loose: up
            to 2-3x the simulated peak on training graphs); ``resident``: it checks resident
            bytes only, and a final overflow goes to ``oom_mode``.
        reference_method: the ``rlplace.baselines`` method that sets T_ref, or
            ``"speed-proportional-split"`` (the env's own fallback, see ``rlplace.envs.problem``).
        render_mode: ``ansi`` or ``rgb_array``.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi", "rgb_array"], "render_fps": 1}

    def __init__(
        self,
        models: Sequence[Any] | Any | None = None,
        clusters: Sequence[Any] | Any | None = None,
        *,
        objective: str = "latency",
        microbatches: int = 1,
        schedule: str = "gpipe",
        max_nodes: int = 128,
        max_devices: int = 8,
        max_edges: int | None = None,
        action_form: str = "one-shot",
        reward_source: str | Callable[..., RewardSource] = "simulator",
        oom_mode: str = "repair",
        oom_penalty: float = 1.0,
        memory_mask: str = "bound",
        reference_method: str = "m-topo",
        render_mode: str | None = None,
    ) -> None:
        _check_choice("objective", objective, OBJECTIVES)
        _check_choice("schedule", schedule, SCHEDULES)
        _check_choice("action_form", action_form, ACTION_FORMS)
        _check_choice("oom_mode", oom_mode, OOM_MODES)
        _check_choice("memory_mask", memory_mask, MEMORY_MASKS)
        if render_mode is not None:
            _check_choice("render_mode", render_mode, tuple(self.metadata["render_modes"]))
        for name, value in (("max_nodes", max_nodes), ("max_devices", max_devices), ("microbatches", microbatches)):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
                raise RlplaceError(f"{name} must be a whole number >= 1 (got {value!r})")
        if reference_method != FALLBACK_REFERENCE:
            from rlplace.baselines import check_method_names

            check_method_names([reference_method])
        max_edges = 4 * max_nodes if max_edges is None else max_edges
        if max_edges < 1:
            raise RlplaceError(f"max_edges must be >= 1 (got {max_edges!r})")
        if not oom_penalty >= 0:
            raise RlplaceError(f"oom_penalty must be >= 0 (got {oom_penalty!r})")

        self.models: list[ModelEntry] = builtin_models() if models is None else [resolve_model(m) for m in _as_list(models)]
        self.clusters: list[Cluster] = builtin_clusters() if clusters is None else [resolve_cluster(c) for c in _as_list(clusters)]
        if not self.models:
            raise RlplaceError("models is empty; give at least one MODEL spec (or none for the built-in set)")
        self.pairs: list[list[Cluster]] = pair_table(self.models, self.clusters, max_devices)
        self.objective = objective
        self.microbatches = int(microbatches)
        self.schedule = schedule
        self.max_nodes = int(max_nodes)
        self.max_devices = int(max_devices)
        self.action_form = action_form
        self.reward_source = reward_source
        self.oom_mode = oom_mode
        self.oom_penalty = float(oom_penalty)
        self.memory_mask = memory_mask
        self.reference_method = reference_method
        self.render_mode = render_mode

        self.encoder = ObservationEncoder(self.max_nodes, self.max_devices, int(max_edges), sequential=action_form == "sequential")
        self.observation_space = self.encoder.space
        if action_form == "one-shot":
            self.action_space = spaces.MultiDiscrete(np.full(self.max_nodes, self.max_devices, dtype=np.int64))
        else:
            self.action_space = spaces.Discrete(self.max_devices)
        self._cache: dict[tuple[int, int], tuple[PlacementProblem, StaticObservation, np.ndarray]] = {}
        self._initial_observations: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        self._problem: PlacementProblem | None = None
        self._static: StaticObservation | None = None
        self._one_shot_mask: np.ndarray | None = None
        self._label = ""
        self._placement = np.zeros(0, dtype=np.int64)
        self._ledger: MemoryLedger | None = None
        self._current = 0
        self._mask = np.zeros(self.max_devices, dtype=bool)
        self._done = True

    # ------------------------------------------------------------------ pairs
    def problem(self, model: int, cluster: int) -> PlacementProblem:
        """The precomputed problem of model ``model`` on its ``cluster``-th cluster (cached)."""
        return self._entry(model, cluster)[0]

    def _entry(self, model: int, cluster: int) -> tuple[PlacementProblem, StaticObservation, np.ndarray]:
        key = (model, cluster)
        if key not in self._cache:
            problem = build_problem(
                self.models[model].graph,
                self.pairs[model][cluster],
                objective=self.objective,
                microbatches=self.microbatches,
                schedule=self.schedule,
                max_nodes=self.max_nodes,
                reward_source=self.reward_source,
                reference_method=self.reference_method,
            )
            mask = np.zeros((self.max_nodes, self.max_devices), dtype=bool)
            mask[: problem.num_groups, : problem.num_devices] = problem.allowed
            mask[problem.num_groups :, 0] = True
            mask = mask.reshape(-1)
            mask.setflags(write=False)
            self._cache[key] = (problem, self.encoder.static(problem), mask)
        return self._cache[key]

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        model_draw, cluster_draw = self.np_random.random(2)
        model = int(options.get("model", int(model_draw * len(self.models))))
        if not 0 <= model < len(self.models):
            raise RlplaceError(f"reset option model={model} is out of range; there are {len(self.models)} models")
        cluster = int(options.get("cluster", int(cluster_draw * len(self.pairs[model]))))
        if not 0 <= cluster < len(self.pairs[model]):
            raise RlplaceError(f"reset option cluster={cluster} is out of range; model {model} runs on {len(self.pairs[model])} clusters")
        problem, static, one_shot_mask = self._entry(model, cluster)
        self._problem, self._static, self._one_shot_mask = problem, static, one_shot_mask
        self._label = f"{self.models[model].label} on {problem.cluster.name}"
        self._placement = np.full(problem.num_groups, -1, dtype=np.int64)
        self._done = False
        self._current = 0
        if self.action_form == "sequential":
            self._ledger = sequential_ledger(problem, resident_only=self.memory_mask == "resident")
            self._mask = self._sequential_mask(0)
            if not np.any(self._mask):
                raise RlplaceError(
                    f"{self._label}: the first group's memory bound exceeds every device it may use, so the sequential form cannot start; "
                    "use a cluster with more memory or the one-shot form"
                )
        info = {
            "model": self.models[model].label,
            "cluster": problem.cluster.name,
            "num_groups": problem.num_groups,
            "reference_time": problem.reference_time,
            "reference_method": problem.reference_method,
        }
        key = (model, cluster)
        if key not in self._initial_observations:
            self._initial_observations[key] = self._observation()
        return {name: array.copy() for name, array in self._initial_observations[key].items()}, info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._done or self._problem is None:
            raise RuntimeError("the episode is over; call reset() before step()")
        if self.action_form == "one-shot":
            return self._step_one_shot(np.asarray(action, dtype=np.int64).reshape(-1))
        return self._step_sequential(int(np.asarray(action).reshape(())))

    def action_masks(self) -> np.ndarray:
        """Valid actions as a flat bool array (never all false); see Action Space."""
        if self.action_form == "one-shot":
            if self._one_shot_mask is None:
                raise RuntimeError("call reset() before action_masks()")
            return self._one_shot_mask.copy()
        if self._done:
            mask = np.zeros(self.max_devices, dtype=bool)
            mask[0] = True
            return mask
        return self._mask.copy()

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None or self._problem is None:
            return None
        if self.render_mode == "ansi":
            return ansi_table(self._problem, self._placement, self._label)
        return rgb_image(self._problem, self._placement, self._label)

    # ------------------------------------------------------------------ steps
    def _step_one_shot(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        problem = self._problem
        assert problem is not None
        if action.shape != (self.max_nodes,):
            raise ValueError(f"one-shot action must have shape ({self.max_nodes},), got {action.shape}")
        legal, invalid = legalize(problem, action[: problem.num_groups])
        reward, info = self._finish(legal)
        info["invalid_actions"] = invalid
        return self._observation(), reward, True, False, info

    def _step_sequential(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        problem, ledger = self._problem, self._ledger
        assert problem is not None and ledger is not None
        group = self._current
        invalid = not (0 <= action < self.max_devices and self._mask[action])
        device = int(np.argmax(self._mask)) if invalid else action
        ledger.add(group, device)
        self._placement[group] = device
        self._current = group + 1
        if self._current == problem.num_groups:
            reward, info = self._finish(self._placement.copy())
        else:
            self._mask = self._sequential_mask(self._current)
            if np.any(self._mask):
                reward, info = 0.0, {"reference_time": problem.reference_time}
            else:
                self._done = True
                unplaced = (problem.num_groups - self._current) / problem.num_groups
                reward = dead_end_reward(unplaced, self.oom_penalty)
                info = self._terminal_info(np.inf, 0.0, repaired=False, moves=0, dead_end=True, placement=None)
        info["invalid_actions"] = int(invalid)
        return self._observation(), float(reward), self._done, False, info

    def _sequential_mask(self, group: int) -> np.ndarray:
        problem, ledger = self._problem, self._ledger
        assert problem is not None and ledger is not None
        leader = int(problem.unit_leader[group])
        if leader != group:
            candidates = np.zeros(problem.num_devices, dtype=bool)
            candidates[ledger.placement[leader]] = True
        else:
            candidates = problem.allowed[group]
        mask = np.zeros(self.max_devices, dtype=bool)
        mask[: problem.num_devices] = candidates & ledger.candidates(group)
        return mask

    def _finish(self, group_placement: np.ndarray) -> tuple[float, dict[str, Any]]:
        """Evaluate a complete legal group placement (repairing memory if asked): reward, info."""
        problem = self._problem
        assert problem is not None
        source = problem.reward_source
        repair = self.oom_mode == "repair"
        moves = 0
        if repair and not isinstance(source, SimulatorRewardSource) and np.any(problem.peak_memory(problem.expand(group_placement)) > problem.capacity):
            group_placement, _, moves = repair_memory(problem, group_placement)
        if isinstance(source, SimulatorRewardSource) and problem.surely_fits(group_placement):
            step_time, overflow = float(problem.simulator.step_time(problem.expand(group_placement))), 0.0  # no memory pass needed
        else:
            step_time, overflow = source.evaluate(problem.expand(group_placement))
        if repair and overflow > 0 and isinstance(source, SimulatorRewardSource):
            group_placement, _, moves = repair_memory(problem, group_placement)
            if moves:
                step_time, overflow = source.evaluate(problem.expand(group_placement))
        self._placement = np.asarray(group_placement, dtype=np.int64)
        self._done = True
        if overflow > 0:
            finite = problem.capacity[np.isfinite(problem.capacity)]
            fraction = overflow / float(finite.sum()) if finite.size else 0.0
            reward = oom_reward(step_time, problem.reference_time, fraction, self.oom_penalty)
        else:
            reward = terminal_reward(step_time, problem.reference_time)
        info = self._terminal_info(step_time, overflow, repaired=moves > 0, moves=moves, dead_end=False, placement=problem.expand(self._placement))
        return float(reward), info

    def _terminal_info(self, step_time: float, overflow: float, *, repaired: bool, moves: int, dead_end: bool, placement: np.ndarray | None) -> dict[str, Any]:
        problem = self._problem
        assert problem is not None
        return {
            "step_time": float(step_time),
            "reference_time": problem.reference_time,
            "oom": bool(overflow > 0),
            "overflow_bytes": float(overflow),
            "repaired": repaired,
            "units_moved": moves,
            "oom_mode": self.oom_mode,
            "dead_end": dead_end,
            "placement": placement if placement is not None else np.full(problem.graph.num_ops, -1, dtype=np.int64),
        }

    def _observation(self) -> dict[str, np.ndarray]:
        problem, static = self._problem, self._static
        assert problem is not None and static is not None
        if self._ledger is not None and self.action_form == "sequential":
            used = self._ledger.used + self._ledger.work_peak
            current = -1 if self._done else self._current
        else:
            placed = self._placement >= 0
            used = np.bincount(self._placement[placed], weights=(problem.resident + problem.transient)[placed], minlength=problem.num_devices)
            current = None
        return self.encoder.encode(static, self._placement, used, current)


def _as_list(specs: Any) -> list[Any]:
    if isinstance(specs, list | tuple) and not (isinstance(specs, tuple) and len(specs) == 2 and isinstance(specs[1], Cluster)):
        return list(specs)
    return [specs]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise RlplaceError(f"unknown {name} {value!r}; use one of {', '.join(map(str, choices))}")
