"""Expert iteration: one-move improvements found by simulation, as targets for the `MoveScorer`.

`label` simulates the legal one-move neighbours of a placement (all of them, or a random
``max_moves`` of them plus every move of a critical-path unit) and returns the gain of each,
``(T - T') / T`` (``-1`` where the move makes memory overflow). `target_of` turns gains into a
distribution over moves: a softmax of the positive gains with temperature ``temperature``
times the best gain, or all mass on *stop* when no evaluated move improves.

`collect_states` visits states the way search does: from every classic start of a case, a
steepest-descent trajectory (the best evaluated move each step) of up to ``depth`` moves, then
``perturbations`` random kicks of the best placement, each followed again by a short descent.
With a scorer (later iterations), the trajectory follows the scorer's top move instead, so the
states are those the policy itself reaches (DAgger-style).

`fit` trains the scorer by cross-entropy between its masked logits and the targets.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rlplace.envs.improve_state import MoveProblem, Observation, observe

from .scorer import MoveScorer, collate


@dataclass(frozen=True, eq=False)
class Example:
    """One labelled state: its observation, the gains of its evaluated moves (u, k; NaN = not
    evaluated or illegal) and the target distribution (u * k + 1,), stop last."""

    observation: Observation
    gains: np.ndarray
    target: np.ndarray


def label(problem: MoveProblem, assignment: np.ndarray, obs: Observation, rng: np.random.Generator, max_moves: int = 256) -> np.ndarray:
    """(u, k) gains of the legal moves evaluated (NaN elsewhere); see the module docstring."""
    u, k = problem.num_units, problem.num_devices
    legal = np.flatnonzero(obs.legal.reshape(-1))
    if legal.size > max_moves:
        critical = obs.nodes[:, 2] > 0
        focus = legal[critical[legal // k]]
        rest = np.setdiff1d(legal, focus)
        room = max(max_moves - focus.size, max_moves // 2)
        focus = focus[rng.permutation(focus.size)[: max_moves // 2]] if focus.size > max_moves // 2 else focus
        legal = np.concatenate([focus, rest[rng.permutation(rest.size)[:room]]])
    gains = np.full(u * k, np.nan)
    T, overflow = obs.step_time, obs.overflow
    for move in legal.tolist():
        unit, device = divmod(move, k)
        trial = assignment.copy()
        trial[unit] = device
        trial_overflow, trial_time = problem.score(trial)
        gains[move] = -1.0 if trial_overflow > overflow else (T - trial_time) / T
    return gains.reshape(u, k)


def target_of(gains: np.ndarray, temperature: float = 0.3, threshold: float = 1e-6) -> np.ndarray:
    """(u * k + 1,) target distribution from (u, k) gains (module docstring)."""
    flat = gains.reshape(-1)
    target = np.zeros(flat.size + 1)
    good = np.nan_to_num(flat, nan=-np.inf) > threshold
    if not np.any(good):
        target[-1] = 1.0
        return target
    best = float(np.max(flat[good]))
    weights = np.exp((flat[good] - best) / (temperature * best))
    target[:-1][good] = weights / weights.sum()
    return target


def collect_states(
    problem: MoveProblem,
    starts: list[np.ndarray],
    rng: np.random.Generator,
    *,
    depth: int = 8,
    perturbations: int = 2,
    max_moves: int = 256,
    scorer: MoveScorer | None = None,
    time_limit_s: float | None = None,
) -> list[Example]:
    """Labelled states along descent trajectories from ``starts`` and kicks (module docstring)."""
    from .guided_search import _kick
    from .scorer import move_scores

    began = time.perf_counter()
    examples: list[Example] = []

    def descend(assignment: np.ndarray) -> np.ndarray:
        current = assignment.copy()
        best, best_time = current.copy(), np.inf
        for _ in range(depth):
            if time_limit_s is not None and time.perf_counter() - began > time_limit_s:
                break
            obs = observe(problem, current)
            if not obs.legal.any():
                break
            gains = label(problem, current, obs, rng, max_moves)
            target = target_of(gains)
            examples.append(Example(obs, gains, target))
            if obs.overflow == 0 and obs.step_time < best_time:
                best, best_time = current.copy(), obs.step_time
            if target[-1] == 1.0:
                break
            if scorer is not None:
                scores = np.where(obs.legal, move_scores(scorer, obs), -np.inf)
                move = int(np.argmax(scores))
            else:
                move = int(np.nanargmax(gains.reshape(-1)))
            unit, device = divmod(move, problem.num_devices)
            current[unit] = device
        return best

    for start in starts:
        best = descend(np.asarray(start, np.int64))
        for _ in range(perturbations):
            descend(_kick(problem, best, rng))
    return examples


def ranking_quality(examples: list[Example], scores_of: Callable[[Observation], np.ndarray] | None, *, top: int = 4) -> dict[str, float]:
    """How well a ranking picks moves on labelled states (the expert's simulated gains).

    ``scores_of(observation) -> (u, k)`` scores, higher first; None for a uniform random
    ranking (its expectation, computed exactly). Over the states where some evaluated move
    improves (gain > 0), among the evaluated moves:

    - ``top1_improving``: share of states whose top-ranked move improves;
    - ``topk_improving``: share of states with an improving move among the ``top`` best
      ranked (the guided search simulates its candidates in batches of 4 and takes the best);
    - ``topk_captured``: the best gain among those ``top`` moves over the state's best gain,
      clipped to [0, 1], averaged;
    - ``states``: how many states were judged.
    """
    totals = np.zeros(3)
    judged = 0
    for example in examples:
        gains = example.gains.reshape(-1)
        evaluated = np.flatnonzero(np.isfinite(gains))
        values = gains[evaluated]
        if not np.any(values > 0):
            continue
        best = float(values.max())
        if scores_of is None:
            totals += _random_ranking_quality(values, best, top)
        else:
            scores = np.asarray(scores_of(example.observation), dtype=np.float64).reshape(-1)[evaluated]
            order = np.argsort(-scores, kind="stable")[:top]
            totals += (float(values[order[0]] > 0), float(np.any(values[order] > 0)), min(max(float(values[order].max()) / best, 0.0), 1.0))
        judged += 1
    if judged == 0:
        return {"states": 0.0, "top1_improving": float("nan"), "topk_improving": float("nan"), "topk_captured": float("nan")}
    top1, topk, captured = totals / judged
    return {"states": float(judged), "top1_improving": float(top1), "topk_improving": float(topk), "topk_captured": float(captured)}


def _random_ranking_quality(values: np.ndarray, best: float, top: int) -> np.ndarray:
    """Expected (top-1 improving, top-k improving, top-k captured) of a uniform random order
    of the moves with gains ``values`` (exact: the best of k draws without replacement)."""
    n = values.size
    k = min(top, n)
    ordered = np.sort(values)  # ascending: the i-th smallest is the best of k draws w.p. C(i, k-1) / C(n, k)
    weights = np.array([math.comb(i, k - 1) for i in range(n)], dtype=np.float64) / math.comb(n, k)
    improving = int(np.sum(values > 0))
    top1 = improving / n
    topk = 1.0 - math.comb(n - improving, k) / math.comb(n, k)
    captured = float(np.sum(weights * np.clip(ordered / best, 0.0, 1.0)))
    return np.array([top1, topk, captured])


def fit(
    scorer: MoveScorer,
    examples: list[Example],
    *,
    epochs: int = 10,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    optimizer: torch.optim.Optimizer | None = None,
    log: list[dict[str, float]] | None = None,
) -> torch.optim.Optimizer:
    """Cross-entropy training of ``scorer`` on ``examples`` (masked logits vs targets); returns the optimizer."""
    generator = np.random.default_rng(seed)
    optimizer = optimizer or torch.optim.Adam(scorer.parameters(), lr=learning_rate)
    scorer.train()
    for epoch in range(epochs):
        order = generator.permutation(len(examples))
        total, hits, count = 0.0, 0, 0
        for first in range(0, len(order), batch_size):
            chosen = [examples[i] for i in order[first : first + batch_size]]
            batch = collate([e.observation for e in chosen])
            logits, _ = scorer(batch)
            mask, target = _layout(chosen, batch)
            logits = logits.masked_fill(~mask, -1e9)
            log_probs = torch.log_softmax(logits, dim=1)
            loss = -(target * log_probs).sum(dim=1).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(scorer.parameters(), 1.0)
            optimizer.step()
            total += float(loss.detach()) * len(chosen)
            hits += int((target.gather(1, logits.argmax(dim=1, keepdim=True)).squeeze(1) > 0).sum())
            count += len(chosen)
        if log is not None:
            log.append({"epoch": float(epoch), "loss": total / max(count, 1), "top1_improving": hits / max(count, 1)})
    scorer.eval()
    return optimizer


def _layout(examples: list[Example], batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask, target), both (B, N * D + 1) in the batch's padded layout."""
    b, n, d = batch["pairs"].shape[:3]
    mask = np.zeros((b, n, d), bool)
    target = np.zeros((b, n, d), np.float32)
    stop = np.zeros((b, 1), np.float32)
    for i, example in enumerate(examples):
        u, k = example.gains.shape
        mask[i, :u, :k] = example.observation.legal
        target[i, :u, :k] = example.target[:-1].reshape(u, k)
        stop[i, 0] = example.target[-1]
    flat_mask = np.concatenate([mask.reshape(b, -1), np.ones((b, 1), bool)], axis=1)
    flat_target = np.concatenate([target.reshape(b, -1), stop], axis=1)
    return torch.from_numpy(flat_mask), torch.from_numpy(flat_target)
