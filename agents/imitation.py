"""Warm start by imitation: fit the network to the best classic heuristic of each training pair.

PPO from a uniformly random one-shot policy learns slowly here (a placement is 128 joint
choices, one terminal reward; see the learning curves in the README). So training can first
fit the policy to a teacher: for every (graph, cluster) training pair, the best of
`TEACHER_METHODS` (each run on the env's group graph, legalized, memory-repaired and scored on
the full graph by the env's own rules). The loss is the cross-entropy of the teacher's
devices under the masked policy (averaged over real groups) plus the squared error of the
value head against the teacher's reward, so PPO then starts from a policy about as good as
the best heuristic and a critic that knows its scale. PPO takes over from there.

The sequential form imitates step by step: the teacher's placement is replayed through the
env and every step's (observation, mask, teacher device) is one example.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rlplace.errors import RlplaceError

from .network import PlacementNetwork

#: Heuristics the teacher picks from per pair, simplest patterns first (see `teacher_groups`).
TEACHER_METHODS: tuple[str, ...] = ("single", "dp", "m-topo", "critical-path", "m-etf", "heft")
#: A method within this fraction of the best step time counts as tied; ties go to the earlier method.
TEACHER_TOLERANCE = 0.03


@dataclass(frozen=True, eq=False)
class Demonstration:
    """One imitation example.

    Attributes:
        observation: the env observation (padded arrays, as the env returns them).
        mask: the env's flat action mask.
        target: the teacher's action in the env's layout: (N,) devices per group slot
            (one-shot; padding slots 0) or (1,) device (sequential).
        weight: (N,) or (1,) float, 1 for the entries the loss counts.
        reward: the env reward of the teacher's placement (value target).
        label: ``model on cluster: method``.
    """

    observation: dict[str, np.ndarray]
    mask: np.ndarray
    target: np.ndarray
    weight: np.ndarray
    reward: float
    label: str


def teacher_groups(problem: Any, methods: Sequence[str] = TEACHER_METHODS, tolerance: float = TEACHER_TOLERANCE) -> tuple[np.ndarray, str, float, float]:
    """The teacher placement of ``problem``'s groups: among the methods whose placement fits
    memory as well as the best one and whose step time is within ``tolerance`` of the best,
    the first in ``methods`` order. Ties favour simple patterns (everything on one device, a
    contiguous split) over list schedules whose scattered choices a one-shot policy imitates
    poorly, at a cost of at most ``tolerance`` in step time.

    Returns ((G,) int64 legal device per group, method name, step time, overflow bytes).
    Raises `RlplaceError` when no method finds a placement.
    """
    from rlplace.baselines import run_method
    from rlplace.costs import CostTable

    from .infer import score_groups

    group_costs = problem.costs if problem.coarsening is None else CostTable.build(problem.group_graph, problem.cluster)
    found: list[tuple[float, float, np.ndarray, str]] = []
    for method in methods:
        try:
            outcome = run_method(method, problem.group_graph, problem.cluster, group_costs, objective=problem.objective, seed=0)
        except RlplaceError:
            continue
        overflow, step_time, legal = score_groups(problem, "repair", np.asarray(outcome.placement, dtype=np.int64))
        found.append((overflow, step_time, legal, method))
    if not found:
        raise RlplaceError(f"no teacher method of {', '.join(methods)} placed {problem.graph.name!r} on {problem.cluster.name!r}")
    least_overflow = min(f[0] for f in found)
    best_time = min(f[1] for f in found if f[0] == least_overflow)
    for overflow, step_time, legal, method in found:
        if overflow == least_overflow and step_time <= best_time * (1 + tolerance):
            return legal, method, step_time, overflow
    raise AssertionError("unreachable: the best method is within tolerance of itself")


def collect_demonstrations(
    env: Any, methods: Sequence[str] = TEACHER_METHODS, *, progress: Callable[[str], None] | None = None
) -> list[Demonstration]:
    """Teacher examples for every (model, cluster) pair of ``env`` (a `PlacementEnv`)."""
    from rlplace.envs.reward import terminal_reward

    started = time.perf_counter()
    demonstrations: list[Demonstration] = []
    for model, paired in enumerate(env.pairs):
        for cluster in range(len(paired)):
            obs, info = env.reset(options={"model": model, "cluster": cluster})
            problem = env.problem(model, cluster)
            groups, method, step_time, overflow = teacher_groups(problem, methods)
            reward = terminal_reward(step_time, problem.reference_time) if overflow == 0 else -1.0
            label = f"{info['model']} on {info['cluster']}: {method}"
            if env.action_form == "one-shot":
                target = np.zeros(env.max_nodes, dtype=np.int64)
                target[: groups.size] = groups
                weight = np.zeros(env.max_nodes, dtype=np.float32)
                weight[: groups.size] = 1.0
                demonstrations.append(Demonstration(obs, env.action_masks(), target, weight, reward, label))
                continue
            for group in range(problem.num_groups):
                mask = env.action_masks()
                device = int(groups[group]) if mask[int(groups[group])] else int(np.argmax(mask))
                demonstrations.append(Demonstration(obs, mask, np.array([device]), np.ones(1, dtype=np.float32), reward, label))
                obs, _, done, _, _ = env.step(device)
                if done:
                    break
    if progress is not None:
        progress(f"imitation: {len(demonstrations)} examples from {sum(len(p) for p in env.pairs)} pairs in {time.perf_counter() - started:.1f} s")
    return demonstrations


def imitation_loss(network: PlacementNetwork, batch: Sequence[Demonstration], value_weight: float = 0.5) -> tuple[torch.Tensor, float]:
    """(loss, accuracy) of ``network`` on ``batch``: masked cross-entropy of the teacher's
    devices (mean over counted entries) + ``value_weight`` * squared value error."""
    obs = {key: torch.as_tensor(np.stack([d.observation[key] for d in batch])) for key in batch[0].observation}
    logits, value = network.action_logits(obs)
    num_devices = network.config.max_devices
    mask = torch.as_tensor(np.stack([d.mask for d in batch])).view(len(batch), -1, num_devices)
    logits = logits.view(len(batch), -1, num_devices).masked_fill(~mask, -1e9)
    target = torch.as_tensor(np.stack([d.target for d in batch]))
    weight = torch.as_tensor(np.stack([d.weight for d in batch]))
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
    cross_entropy = -(log_probs * weight).sum() / weight.sum().clamp(min=1.0)
    rewards = torch.as_tensor([d.reward for d in batch], dtype=value.dtype)
    loss = cross_entropy + value_weight * torch.mean((value - rewards) ** 2)
    correct = ((logits.argmax(dim=-1) == target).float() * weight).sum() / weight.sum().clamp(min=1.0)
    return loss, float(correct)


def pretrain(
    network: PlacementNetwork,
    demonstrations: Sequence[Demonstration],
    *,
    epochs: int,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> list[list[float]]:
    """Fit ``network`` to the demonstrations; returns [epoch, mean loss, mean accuracy] rows."""
    if not demonstrations:
        raise RlplaceError("no imitation examples; give training models and clusters")
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    rng = np.random.default_rng(seed)
    rows: list[list[float]] = []
    network.train()
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(demonstrations))
        losses, accuracies = [], []
        for start in range(0, len(order), batch_size):
            batch = [demonstrations[i] for i in order[start : start + batch_size]]
            loss, accuracy = imitation_loss(network, batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            accuracies.append(accuracy)
        rows.append([epoch, round(float(np.mean(losses)), 4), round(float(np.mean(accuracies)), 4)])
        if progress is not None and (epoch % 10 == 0 or epoch == epochs):
            progress(f"imitation epoch {epoch:>3d}  loss {rows[-1][1]:.4f}  accuracy {rows[-1][2]:.3f}")
    return rows
