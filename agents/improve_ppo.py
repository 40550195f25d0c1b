"""Phase 2 of `rlplace.agents.improve_train`: MaskablePPO fine-tuning of the warm-started scorer.

Callbacks: SB3's ``CheckpointCallback`` (``work_dir/ppo``, every ``checkpoint_every`` steps;
a rerun loads the newest and continues the step count), `ImproveMetrics` (custom metrics in
SB3's logger: ``improve/episode_gain``, ``improve/stop_rate``; and every ``eval_every`` steps
``heldout/policy_vs_random``, the geometric mean over held-out cases of the policy-guided
search's best step time over the random-order search's at the same simulation budget), and a
wall-clock stop after ``ppo_time_s``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, CheckpointCallback

#: Simulations per search of the held-out evaluation.
EVAL_EVALUATIONS = 150


class ImproveMetrics(BaseCallback):
    """Custom metrics, held-out evaluation and the time limit (module docstring)."""

    def __init__(self, heldout: list[Any], eval_every: int, time_limit_s: float) -> None:
        super().__init__()
        self.heldout = heldout
        self.eval_every = eval_every
        self.time_limit_s = time_limit_s
        self.began = time.perf_counter()
        self.gains: list[float] = []
        self.stops = 0
        self.episodes = 0
        self.history: list[dict[str, float]] = []
        self._episode_gain = 0.0

    def _on_step(self) -> bool:
        for reward, done, info in zip(self.locals["rewards"], self.locals["dones"], self.locals["infos"], strict=True):
            self._episode_gain += float(reward)
            if done:
                self.gains.append(self._episode_gain)
                self.stops += int(bool(info.get("stopped")))
                self.episodes += 1
                self._episode_gain = 0.0
        if self.gains:
            self.logger.record("improve/episode_gain", float(np.mean(self.gains[-50:])))
            self.logger.record("improve/stop_rate", self.stops / max(self.episodes, 1))
        if self.heldout and self.eval_every > 0 and self.num_timesteps % self.eval_every == 0:
            ratio = self.evaluate()
            self.logger.record("heldout/policy_vs_random", ratio)
            self.history.append({"timesteps": float(self.num_timesteps), "heldout_policy_vs_random": ratio, "episode_gain": float(np.mean(self.gains[-50:])) if self.gains else 0.0})
        return not (self.time_limit_s > 0 and time.perf_counter() - self.began > self.time_limit_s)

    def evaluate(self) -> float:
        """Geomean of policy-guided / random-order best step time on the held-out problems."""
        from .guided_search import guided_search, scorer_ranker

        scorer = self.model.policy.scorer
        scorer.eval()
        ratios = []
        for problem, starts in self.heldout:
            _, policy_key, _ = guided_search(problem, starts, scorer_ranker(scorer), evaluations=EVAL_EVALUATIONS, seed=0)
            _, random_key, _ = guided_search(problem, starts, None, evaluations=EVAL_EVALUATIONS, seed=0)
            ratios.append(policy_key[1] / random_key[1])
        scorer.train()
        return float(np.exp(np.mean(np.log(ratios))))


def heldout_problems(count: int = 2) -> list[tuple[Any, list[np.ndarray]]]:
    """A few small held-out (problem, starts) pairs for the evaluation callback."""
    from rlplace.envs.improve_env import classic_starts
    from rlplace.envs.improve_state import build_move_problem

    from . import improve_data as data

    rng = np.random.default_rng(1234)
    found = []
    for case in data.iter_cases(data.HELDOUT_MODELS[:1], (), data.HELDOUT_CLUSTERS[:2], rng):
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        found.append((problem, classic_starts(problem, ("m-topo", "heft"))))
        if len(found) >= count:
            break
    return found


def ppo_env(cases: Any, config: Any) -> Any:
    """The ``improve`` env PPO trains in: the first ``config.ppo_cases`` of ``cases`` (an
    iterable of `Case`) whose move problem builds and has at most ``config.max_units`` units
    and 16 devices."""
    from rlplace.envs.improve_env import ImproveEnv
    from rlplace.envs.improve_state import build_move_problem

    small = []
    for case in cases:
        try:
            problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        except Exception:
            continue
        if problem.num_units <= config.max_units and problem.num_devices <= 16:
            small.append(case)
        if len(small) >= config.ppo_cases:
            break
    return ImproveEnv(cases=small, max_nodes=config.max_units, max_devices=16, max_edges=4 * config.max_units, max_moves=config.max_moves_per_episode)


def new_ppo_model(env: Any, scorer: Any, config: Any, *, seed: int) -> Any:
    """A ``MaskablePPO`` on ``env`` whose policy starts from ``scorer``'s weights (the settings
    of `fine_tune`: rollout ``config.n_steps``, 4 epochs, learning rate 0.3 x ``config.learning_rate``)."""
    from sb3_contrib import MaskablePPO

    from .improve_policy import ImproveMaskablePolicy

    model = MaskablePPO(
        ImproveMaskablePolicy, env, n_steps=config.n_steps, batch_size=min(config.batch_size, config.n_steps), n_epochs=4,
        learning_rate=config.learning_rate * 0.3, gamma=0.95, ent_coef=0.001, seed=seed, verbose=0,
        policy_kwargs={"scorer": scorer.config.to_dict()}, tensorboard_log=config.tensorboard or None,
    )
    model.policy.scorer.load_state_dict(scorer.state_dict())
    return model


def fine_tune(scorer: Any, cases: Any, config: Any, work: Path, *, log: Any = print) -> tuple[Any, dict[str, Any]]:
    """MaskablePPO from ``scorer``'s weights; returns (the fine-tuned scorer, curve and counts)."""
    import torch
    from sb3_contrib import MaskablePPO

    env = ppo_env(cases, config)
    env.reset(seed=config.seed)
    folder = work / "ppo"
    saved = sorted(folder.glob("improve_*_steps.zip"), key=lambda p: int(re.findall(r"(\d+)_steps", p.name)[0])) if folder.is_dir() else []
    if saved:
        model = MaskablePPO.load(saved[-1], env=env)
        log(f"PPO resumed from {saved[-1].name}")
    else:
        model = new_ppo_model(env, scorer, config, seed=config.seed)
    metrics = ImproveMetrics(heldout_problems(), config.eval_every, config.ppo_time_s)
    callbacks = CallbackList([CheckpointCallback(save_freq=max(1, config.checkpoint_every), save_path=str(folder), name_prefix="improve"), metrics])
    remaining = max(0, config.ppo_timesteps - model.num_timesteps)
    began = time.perf_counter()
    if remaining:
        torch.set_num_threads(1)
        model.learn(remaining, callback=callbacks, reset_num_timesteps=not saved)
    model.save(folder / f"improve_{model.num_timesteps}_steps.zip")
    tuned = model.policy.scorer
    tuned.eval()
    info = {"timesteps": int(model.num_timesteps), "wall_s": time.perf_counter() - began, "curve": metrics.history, "cases": [c.label for c in env.cases]}
    log(f"PPO: {model.num_timesteps} steps in {info['wall_s']:.0f} s")
    return tuned, info
