"""Place a new graph with a trained policy: greedy decoding, K samples, a short local search.

Every candidate is a full placement scored by the simulator (the env's reward source on the
full graph, after the env's legalization and memory repair); the best one (least memory
overflow, then shortest step time) is returned with how long the decision took. The greedy
placement is always a candidate, so the result is never worse than greedy. Nothing here
imports stable-baselines3 or torch_geometric.

>>> decision = place_with_policy(graph, cluster, samples=16)
>>> decision.placement, decision.step_time, decision.decide_s
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

from .checkpoint import Checkpoint, load_checkpoint

#: Environment variable naming the checkpoint folder used when none is given.
CHECKPOINT_ENV = "RLPLACE_CHECKPOINT"
DEFAULT_SAMPLES = 16
#: Simulations of the local search that polishes the best policy placement (0: none).
DEFAULT_SEARCH_EVALUATIONS = 200


@dataclass(frozen=True, eq=False)
class PolicyDecision:
    """A placement decided by the policy, with the evidence of each stage.

    Attributes:
        placement: (n,) int64 device per op of the graph given.
        step_time: simulated step time of ``placement`` (graph time unit).
        overflow_bytes: bytes over capacity summed over devices (0 when it fits).
        greedy_step_time: step time of the greedy (most likely) placement.
        sampled_step_time: best of greedy and the K samples.
        source: which stage produced ``placement``: ``greedy``, ``sample``, ``local-search``,
            or ``reference`` (the env's reference heuristic, used only when every policy
            candidate overflows memory and the reference does not).
        samples: K, the sampled placements scored.
        search_evaluations: simulations the local search was given.
        decide_s: wall-clock seconds of the whole decision (env setup, network, simulations).
        checkpoint: folder of the policy used.
    """

    placement: np.ndarray
    step_time: float
    overflow_bytes: float
    greedy_step_time: float
    sampled_step_time: float
    source: str
    samples: int
    search_evaluations: int
    decide_s: float
    checkpoint: str


def default_checkpoint_dir() -> Path:
    """``$RLPLACE_CHECKPOINT``, else ``checkpoints/default`` next to the ``agents`` package (the repo root)."""
    override = os.environ.get(CHECKPOINT_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[1] / "checkpoints" / "default"


def load_policy(checkpoint: str | Path | Checkpoint | None = None) -> Checkpoint:
    """A checkpoint object, or the checkpoint in a folder (cached per folder and file times)."""
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    folder = Path(checkpoint) if checkpoint is not None else default_checkpoint_dir()
    resolved = folder.resolve()
    stamps = tuple(path.stat().st_mtime_ns if path.exists() else 0 for path in (resolved / "config.json", resolved / "model.safetensors"))
    return _load_cached(str(resolved), stamps)


@lru_cache(maxsize=4)
def _load_cached(folder: str, stamps: tuple[int, ...]) -> Checkpoint:
    return load_checkpoint(folder)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` torch threads (small tensors: one thread avoids contention), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def place_with_policy(
    graph: OpGraph,
    cluster: Cluster,
    *,
    checkpoint: str | Path | Checkpoint | None = None,
    objective: str | None = None,
    microbatches: int = 1,
    samples: int = DEFAULT_SAMPLES,
    search_evaluations: int = DEFAULT_SEARCH_EVALUATIONS,
    seed: int = 0,
) -> PolicyDecision:
    """Place ``graph`` on ``cluster`` with the policy of ``checkpoint`` (default: `default_checkpoint_dir`).

    Args:
        objective: latency, pipelined or throughput (default: the one the policy was trained for).
        samples: K placements sampled from the policy besides the greedy one (0: greedy only).
        search_evaluations: simulations of the local search from the best candidate (0: none).
        seed: seeds the sampling and the local search.
    """
    started = time.perf_counter()
    policy = load_policy(checkpoint)
    if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 0:
        raise RlplaceError(f"samples must be a whole number >= 0 (got {samples!r})")
    if isinstance(search_evaluations, bool) or not isinstance(search_evaluations, int | np.integer) or search_evaluations < 0:
        raise RlplaceError(f"search evaluations must be a whole number >= 0 (got {search_evaluations!r})")
    settings = policy.env
    max_devices = int(settings["max_devices"])
    if cluster.num_devices > max_devices:
        raise RlplaceError(f"cluster {cluster.name!r} has {cluster.num_devices} devices but the policy places on at most {max_devices}; use a baseline method or retrain with --max-devices {cluster.num_devices}")
    objective = objective or str(settings.get("objective", "latency"))
    env = _make_env(graph, cluster, settings, objective, microbatches)
    with _torch_threads(1), torch.no_grad():
        obs, _ = env.reset(seed=seed)
        problem = env.problem(0, 0)
        if settings["action_form"] == "one-shot":
            scored = [_score(problem, env.oom_mode, groups) for groups in _one_shot_candidates(policy, env, obs, samples, seed)]
        else:
            scored = _sequential_candidates(policy, env, obs, samples, seed)
    greedy_time = scored[0][1]
    best_index = min(range(len(scored)), key=lambda i: (scored[i][0], scored[i][1]))
    overflow, step_time, placement = scored[best_index]
    sampled_time = step_time
    source = "greedy" if best_index == 0 else "sample"
    if search_evaluations > 0:
        searched = _local_search(problem, placement, objective, search_evaluations, seed)
        if searched is not None and (searched[0], searched[1]) < (overflow, step_time):
            overflow, step_time, placement = searched
            source = "local-search"
    if overflow > 0:
        reference_time, reference_overflow = problem.reward_source.evaluate(problem.reference_placement)
        if reference_overflow < overflow:
            overflow, step_time, placement, source = float(reference_overflow), float(reference_time), np.array(problem.reference_placement), "reference"
    placement = np.array(placement, dtype=np.int64)
    placement.setflags(write=False)
    return PolicyDecision(
        placement=placement,
        step_time=float(step_time),
        overflow_bytes=float(overflow),
        greedy_step_time=float(greedy_time),
        sampled_step_time=float(sampled_time),
        source=source,
        samples=int(samples),
        search_evaluations=int(search_evaluations),
        decide_s=time.perf_counter() - started,
        checkpoint=str(policy.path) if policy.path is not None else "<in memory>",
    )


def _make_env(graph: OpGraph, cluster: Cluster, settings: dict[str, Any], objective: str, microbatches: int) -> Any:
    from rlplace.envs import PlacementEnv

    return PlacementEnv(
        models=[(graph, cluster)],
        clusters=[],
        objective=objective,
        microbatches=microbatches,
        max_nodes=int(settings["max_nodes"]),
        max_devices=int(settings["max_devices"]),
        max_edges=int(settings.get("max_edges", 4 * int(settings["max_nodes"]))),
        action_form=str(settings["action_form"]),
        oom_mode=str(settings.get("oom_mode", "repair")),
        reference_method=str(settings.get("reference_method", "m-topo")),
    )


def _batch(obs: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(value).unsqueeze(0) for key, value in obs.items()}


def _masked_logits(policy: Checkpoint, obs: dict[str, np.ndarray], mask: np.ndarray) -> torch.Tensor:
    """(action_dim,) logits with the env's mask applied (masked entries -inf)."""
    logits, _ = policy.network.action_logits(_batch(obs))
    return logits[0].masked_fill(~torch.as_tensor(mask, dtype=torch.bool), float("-inf"))


def _one_shot_candidates(policy: Checkpoint, env: Any, obs: dict[str, np.ndarray], samples: int, seed: int) -> list[np.ndarray]:
    """Greedy, then K distinct sampled (G,) group placements (duplicates of earlier ones dropped)."""
    num_groups = env.problem(0, 0).num_groups
    max_devices = env.max_devices
    logits = _masked_logits(policy, obs, env.action_masks()).view(-1, max_devices)[:num_groups]
    candidates = [logits.argmax(dim=-1).numpy().astype(np.int64)]
    if samples:
        generator = torch.Generator().manual_seed(seed)
        probabilities = torch.softmax(logits, dim=-1)
        drawn = torch.multinomial(probabilities, samples, replacement=True, generator=generator).T.numpy().astype(np.int64)  # (K, G)
        seen = {candidates[0].tobytes()}
        for row in drawn:
            key = row.tobytes()
            if key not in seen:
                seen.add(key)
                candidates.append(row)
    return candidates


def _sequential_candidates(policy: Checkpoint, env: Any, obs: dict[str, np.ndarray], samples: int, seed: int) -> list[tuple[float, float, np.ndarray]]:
    """Greedy and K sampled episodes of the sequential env: (overflow bytes, step time, (n,) placement) each.

    An episode that reaches a dead end (no device has room for the next group) scores
    (inf, inf) with the reference placement as a stand-in, so it is never chosen over a
    finished one (and the caller's reference fallback applies when all dead-end).
    """
    generator = torch.Generator().manual_seed(seed)
    scored = []
    for episode in range(samples + 1):
        if episode:
            obs, _ = env.reset(seed=seed)
        done, info = False, {}
        while not done:
            logits = _masked_logits(policy, obs, env.action_masks())
            action = int(logits.argmax()) if episode == 0 else int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
            obs, _, done, _, info = env.step(action)
        if info.get("dead_end"):
            scored.append((np.inf, np.inf, np.asarray(env.problem(0, 0).reference_placement, dtype=np.int64)))
        else:
            scored.append((float(info["overflow_bytes"]), float(info["step_time"]), np.asarray(info["placement"], dtype=np.int64)))
    return scored


def score_groups(problem: Any, oom_mode: str, groups: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(overflow bytes, step time, (G,) legal group placement) of a (G,) group choice, by the
    env's rules: legalize, simulate the full graph, and under ``repair`` move units off
    overfull devices and simulate again."""
    return problem.settle(groups, repair=oom_mode == "repair")


def _score(problem: Any, oom_mode: str, groups: np.ndarray) -> tuple[float, float, np.ndarray]:
    """`score_groups` with the placement expanded to (n,) ops."""
    overflow, step_time, legal = score_groups(problem, oom_mode, groups)
    return overflow, step_time, problem.expand(legal)


def _local_search(problem: Any, start: np.ndarray, objective: str, evaluations: int, seed: int) -> tuple[float, float, np.ndarray] | None:
    """Polish ``start`` with ``rlplace.baselines.local_search`` (moves and swaps of op units)."""
    from rlplace.baselines.local_search import place as local_search

    try:
        improved = local_search(problem.graph, problem.cluster, problem.costs, objective=objective, seed=seed, evaluations=evaluations, start=start)
    except RlplaceError:
        return None
    step_time, overflow = problem.reward_source.evaluate(np.asarray(improved, dtype=np.int64))
    return float(overflow), float(step_time), np.asarray(improved, dtype=np.int64)
