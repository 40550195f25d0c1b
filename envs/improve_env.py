"""`ImproveEnv`: ``rlplace/Placement-v0`` with ``action_form="improve"``: improve a placement move by move.

>>> import gymnasium, rlplace.envs
>>> env = gymnasium.make("rlplace/Placement-v0", action_form="improve")

Each `reset` draws one case (graph, cluster, objective, M) with ``self.np_random`` and a start
placement: a classic method's placement (``start_methods``, computed once per case), with
probability ``perturb_probability`` followed by a few random legal moves. A graph with more
colocation units than ``max_nodes`` is coarsened first (as ``rlplace.pipeline.working_graph`` does,
the coarse graph every method sees) and its cost table grouped (``CostTable.grouped``).

Action Space:
    ``Discrete(max_nodes * max_devices + 1)``: action ``unit * max_devices + device`` moves
    every op of colocation unit ``unit`` to ``device``; the last action stops the episode.
    `action_masks` gives the legal moves (``rlplace.envs.improve_state.legal_moves``) and
    always allows stop. An illegal action is treated as stop (``info["invalid_action"]``).

Observation Space:
    ``Dict`` of padded ``Box`` arrays (N = max_nodes, D = max_devices, E = max_edges):
    ``nodes`` (N, 10), ``pairs`` (N, D, 11), ``devices`` (D, 6), ``globals`` (8,) (objective
    one-hot and log2 M among them), ``edge_index`` (2, E) int64, ``edge_attr`` (E, 3) and
    ``counts`` (3,) = (units, devices, edges) present; rows past the counts are zero. A graph
    with more than E unit edges keeps the E heaviest (by bytes). Feature meanings:
    ``rlplace.envs.improve_state``.

Rewards:
    ``(T_before - T_after) / T_before`` of the move, T the simulated objective value (step time
    for latency / pipelined, max device load for throughput) of the working graph. A move that
    makes the simulated peak memory overflow where it did not gets ``-1``. Stop: 0.

Episode:
    Ends (terminated) on stop or when no legal move is left; truncated after ``max_moves`` moves.
    ``info``: ``step_time``, ``start_time``, ``best_time``, ``overflow``, ``case``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

from .improve_state import (
    DEVICE_FEATURES,
    EDGE_FEATURES,
    GLOBAL_FEATURES,
    NODE_FEATURES,
    OBJECTIVES,
    PAIR_FEATURES,
    MoveProblem,
    Observation,
    build_move_problem,
    legal_moves,
    observe,
)

#: Classic methods whose placements start an episode (those that fail on a case are skipped).
START_METHODS = ("m-topo", "m-etf", "heft", "critical-path", "single", "round-robin")
DEFAULT_MODELS = ("synthetic:layered:n=30:seed=100", "synthetic:fork-join:n=40:seed=107")
DEFAULT_CLUSTERS = ("2xV100-pcie", "2xA100+2xT4")


@dataclass(frozen=True, eq=False)
class Case:
    """One training / evaluation case: a working graph on a cluster under an objective."""

    label: str
    graph: OpGraph
    cluster: Cluster
    costs: CostTable
    objective: str
    microbatches: int = 1


def make_case(label: str, graph: OpGraph, cluster: Cluster, *, objective: str, microbatches: int = 1, max_nodes: int | None = None) -> Case:
    """A `Case` of ``graph`` (coarsened to ``max_nodes`` groups when larger, as `rlplace.pipeline` does)."""
    if objective not in OBJECTIVES:
        raise RlplaceError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
    if max_nodes is not None and graph.num_ops > max_nodes and not graph.has_given_times:  # rlplace.pipeline.working_graph's rule
        from rlplace.coarsen import coarsen

        graph = coarsen(graph, max_nodes).graph
    return Case(label, graph, cluster, CostTable.build(graph, cluster), objective, microbatches if objective == "pipelined" else 1)


def pad_observation(obs: Observation, max_nodes: int, max_devices: int, max_edges: int) -> dict[str, np.ndarray]:
    """The padded ``Dict`` observation (module docstring) of one `Observation`."""
    u, k = obs.pairs.shape[:2]
    if u > max_nodes or k > max_devices:
        raise RlplaceError(f"a placement of {u} units on {k} devices does not fit the env's {max_nodes} x {max_devices} slots")
    e = obs.edge_index.shape[1]
    keep = np.arange(e)
    if e > max_edges:
        keep = np.sort(np.argsort(-obs.edge_attr[:, 0], kind="stable")[:max_edges])
    nodes = np.zeros((max_nodes, NODE_FEATURES), np.float32)
    nodes[:u] = obs.nodes
    pairs = np.zeros((max_nodes, max_devices, PAIR_FEATURES), np.float32)
    pairs[:u, :k] = obs.pairs
    devices = np.zeros((max_devices, DEVICE_FEATURES), np.float32)
    devices[:k] = obs.devices
    edge_index = np.zeros((2, max_edges), np.int64)
    edge_index[:, : keep.size] = obs.edge_index[:, keep]
    edge_attr = np.zeros((max_edges, EDGE_FEATURES), np.float32)
    edge_attr[: keep.size] = obs.edge_attr[keep]
    counts = np.array([u, k, keep.size], np.float32)
    return {"nodes": nodes, "pairs": pairs, "devices": devices, "globals": obs.globals.copy(), "edge_index": edge_index, "edge_attr": edge_attr, "counts": counts}


def observation_space(max_nodes: int, max_devices: int, max_edges: int) -> spaces.Dict:
    """The padded observation space (module docstring)."""
    big = np.float32(1e6)

    def box(*shape: int) -> spaces.Box:
        return spaces.Box(-big, big, shape=shape, dtype=np.float32)

    return spaces.Dict(
        {
            "nodes": box(max_nodes, NODE_FEATURES),
            "pairs": box(max_nodes, max_devices, PAIR_FEATURES),
            "devices": box(max_devices, DEVICE_FEATURES),
            "globals": box(GLOBAL_FEATURES),
            "edge_index": spaces.Box(0, max(max_nodes - 1, 0), shape=(2, max_edges), dtype=np.int64),
            "edge_attr": box(max_edges, EDGE_FEATURES),
            "counts": spaces.Box(0, max(max_nodes, max_devices, max_edges), shape=(3,), dtype=np.float32),
        }
    )


class ImproveEnv(gym.Env):
    """Improve a placement by moving one colocation unit per step (module docstring)."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["ansi"]}

    def __init__(
        self,
        models: Sequence[Any] | None = None,
        clusters: Sequence[Any] | None = None,
        *,
        cases: Sequence[Case] | None = None,
        objective: str | Sequence[str] = "latency",
        microbatches: int = 4,
        max_nodes: int = 128,
        max_devices: int = 16,
        max_edges: int = 512,
        max_moves: int = 16,
        start_methods: Sequence[str] = START_METHODS,
        perturb_probability: float = 0.5,
        render_mode: str | None = None,
        action_form: str = "improve",
    ) -> None:
        if action_form != "improve":
            raise RlplaceError(f"ImproveEnv is action_form='improve', not {action_form!r}")
        if max_moves < 1 or max_nodes < 1 or not max_devices >= 2 or max_edges < 1:
            raise RlplaceError("max_moves, max_nodes and max_edges must be >= 1 and max_devices >= 2")
        self.max_nodes, self.max_devices, self.max_edges, self.max_moves = max_nodes, max_devices, max_edges, max_moves
        self.start_methods = tuple(start_methods)
        self.perturb_probability = perturb_probability
        self.render_mode = render_mode
        if cases is None:
            cases = default_cases(models or DEFAULT_MODELS, clusters or DEFAULT_CLUSTERS, objective, microbatches, max_nodes)
        self.cases = list(cases)
        if not self.cases:
            raise RlplaceError("no cases to train on")
        self._problems: dict[int, MoveProblem] = {}
        self._starts: dict[int, list[np.ndarray]] = {}
        self.observation_space = observation_space(max_nodes, max_devices, max_edges)
        self.action_space = spaces.Discrete(max_nodes * max_devices + 1)
        self.problem: MoveProblem | None = None
        self.assignment = np.zeros(0, np.int64)
        self._obs: Observation | None = None

    # --------------------------------------------------------------- cases
    def problem_for(self, index: int) -> MoveProblem:
        """The (cached) `MoveProblem` of case ``index``."""
        if index not in self._problems:
            case = self.cases[index]
            problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
            if problem.num_units > self.max_nodes or problem.num_devices > self.max_devices:
                raise RlplaceError(
                    f"case {case.label!r} has {problem.num_units} units on {problem.num_devices} devices, more than the env's "
                    f"max_nodes={self.max_nodes} / max_devices={self.max_devices}; raise them or coarsen the graph"
                )
            self._problems[index] = problem
        return self._problems[index]

    def starts_for(self, index: int) -> list[np.ndarray]:
        """(u,) start assignments of case ``index`` from the classic ``start_methods``."""
        if index not in self._starts:
            problem = self.problem_for(index)
            self._starts[index] = classic_starts(problem, self.start_methods)
        return self._starts[index]

    # ------------------------------------------------------------------ API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        index = int(options.get("case", self.np_random.integers(len(self.cases))))
        self.case_index = index
        self.problem = self.problem_for(index)
        if "start" in options:
            self.assignment = np.asarray(options["start"], dtype=np.int64).copy()
        else:
            starts = self.starts_for(index)
            self.assignment = starts[int(self.np_random.integers(len(starts)))].copy()
            if self.np_random.random() < self.perturb_probability:
                self.assignment = perturb(self.problem, self.assignment, self.np_random, int(self.np_random.integers(1, 6)))
        self.moves = 0
        self._obs = observe(self.problem, self.assignment, moves_left=1.0)
        self.start_time = self._obs.step_time
        self.best_time = self.start_time
        return self._padded(), self._info()

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        assert self.problem is not None and self._obs is not None, "call reset() first"
        action = int(action)
        stop = self.max_nodes * self.max_devices
        invalid = False
        if action != stop:
            unit, device = divmod(action, self.max_devices)
            if not (unit < self.problem.num_units and device < self.problem.num_devices and self._obs.legal[unit, device]):
                invalid = True
                action = stop
        if action == stop:
            return self._padded(), 0.0, True, False, self._info(invalid_action=invalid, stopped=True)
        before_time, before_overflow = self._obs.step_time, self._obs.overflow
        self.assignment[unit] = device
        self.moves += 1
        self._obs = observe(self.problem, self.assignment, start_time=self.start_time, moves_left=1.0 - self.moves / self.max_moves)
        reward = -1.0 if self._obs.overflow > before_overflow else float((before_time - self._obs.step_time) / before_time)
        if self._obs.overflow == 0:
            self.best_time = min(self.best_time, self._obs.step_time)
        terminated = not bool(self._obs.legal.any())
        truncated = self.moves >= self.max_moves and not terminated
        return self._padded(), reward, terminated, truncated, self._info()

    def action_masks(self) -> np.ndarray:
        """(max_nodes * max_devices + 1,) bool: legal moves and stop."""
        mask = np.zeros(self.max_nodes * self.max_devices + 1, dtype=bool)
        mask[-1] = True
        if self._obs is not None:
            legal = self._obs.legal
            padded = np.zeros((self.max_nodes, self.max_devices), dtype=bool)
            padded[: legal.shape[0], : legal.shape[1]] = legal
            mask[:-1] = padded.reshape(-1)
        return mask

    def render(self) -> str | None:
        if self.render_mode != "ansi" or self.problem is None or self._obs is None:
            return None
        counts = np.bincount(self.assignment, minlength=self.problem.num_devices)
        return f"case {self.cases[self.case_index].label}: T={self._obs.step_time:.6g} (start {self.start_time:.6g}), units per device {counts.tolist()}, moves {self.moves}"

    # ------------------------------------------------------------- helpers
    def _padded(self) -> dict[str, np.ndarray]:
        assert self._obs is not None
        return pad_observation(self._obs, self.max_nodes, self.max_devices, self.max_edges)

    def _info(self, **extra: Any) -> dict[str, Any]:
        assert self._obs is not None
        return {
            "step_time": self._obs.step_time,
            "start_time": self.start_time,
            "best_time": self.best_time,
            "overflow": self._obs.overflow,
            "case": self.cases[self.case_index].label,
            **extra,
        }


def default_cases(models: Sequence[Any], clusters: Sequence[Any], objective: str | Sequence[str], microbatches: int, max_nodes: int) -> list[Case]:
    """Every (model, cluster, objective) combination as a `Case`."""
    from .specs import resolve_cluster, resolve_model

    objectives = (objective,) if isinstance(objective, str) else tuple(objective)
    cases = []
    for model in models:
        entry = resolve_model(model)
        for cluster_spec in clusters:
            cluster = resolve_cluster(cluster_spec)
            for name in objectives:
                cases.append(make_case(f"{entry.label}@{cluster.name}/{name}", entry.graph, cluster, objective=name, microbatches=microbatches, max_nodes=max_nodes))
    return cases


def classic_starts(problem: MoveProblem, methods: Sequence[str]) -> list[np.ndarray]:
    """(u,) assignments of the classic ``methods`` that succeed (at least one: all on the first
    device that can run every unit, else each unit on its first allowed device)."""
    from rlplace.baselines.local_search import start_placements

    found = start_placements(problem.graph, problem.cluster, problem.costs, objective=problem.objective, seed=0, methods=methods)
    starts = [problem.units.contract(p) for p in found.values()]
    if not starts:
        starts = [np.argmax(problem.units.allowed, axis=1).astype(np.int64)]
    return starts


def perturb(problem: MoveProblem, assignment: np.ndarray, rng: np.random.Generator, moves: int) -> np.ndarray:
    """``assignment`` after up to ``moves`` random legal moves."""
    current = assignment.copy()
    for _ in range(moves):
        legal = legal_moves(problem, current)
        options = np.flatnonzero(legal)
        if options.size == 0:
            break
        unit, device = divmod(int(options[rng.integers(options.size)]), problem.num_devices)
        current[unit] = device
    return current
