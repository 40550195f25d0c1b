"""Train the GNN placement policy with sb3-contrib's ``MaskablePPO`` (CleanRL style: one
dataclass of settings, logged with the run and stored in the checkpoint).

Recipe (the defaults): imitation warm start on the best heuristic of every training pair
(``rlplace.agents.imitation``), then MaskablePPO on the env's simulator reward. The shipped
``checkpoints/default`` came from ``python train_agent.py --time-limit 900 --timesteps 300000
--imitation-out runs/imitation-only`` (15 minutes on 2 shared CPU cores: 250 imitation epochs,
then 140,904 PPO steps).

>>> from rlplace.agents.train import TrainConfig, train
>>> checkpoint = train(TrainConfig(timesteps=20_000, out="checkpoints/mine"))
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

from rlplace.errors import RlplaceError

from .checkpoint import Checkpoint, package_versions, save_checkpoint
from .data import DEFAULT_GRAPH_CACHE, HELDOUT_CLUSTERS, HELDOUT_MODELS, TRAIN_CLUSTERS, TRAIN_MODELS, load_graphs, resolve_cluster_spec
from .imitation import TEACHER_METHODS, collect_demonstrations, pretrain


@dataclass
class TrainConfig:
    """Every setting of a training run."""

    models: list[str] = field(default_factory=lambda: list(TRAIN_MODELS))
    """MODEL specs trained on (each episode draws one uniformly, then one of its clusters)."""
    clusters: list[str] = field(default_factory=lambda: list(TRAIN_CLUSTERS))
    """Cluster specs trained on: presets, YAML files or ``rlplace.agents.data.GENERATED_CLUSTERS`` names."""
    heldout_models: list[str] = field(default_factory=lambda: list(HELDOUT_MODELS))
    """MODEL specs kept out of training; recorded in the checkpoint for ``benchmarks/bench_policy.py``."""
    heldout_clusters: list[str] = field(default_factory=lambda: list(HELDOUT_CLUSTERS))
    """Cluster specs kept out of training; recorded likewise."""
    out: str = "checkpoints/default"
    """Checkpoint folder to write (``model.safetensors`` + ``config.json``)."""
    timesteps: int = 150_000
    """Env steps to train for (one-shot: placements; sequential: group decisions)."""
    time_limit_s: float | None = None
    """Stop at the first rollout boundary after this many wall-clock seconds (None: no limit)."""
    action_form: str = "one-shot"
    """``one-shot`` (one step places every group) or ``sequential`` (one group per step)."""
    objective: str = "latency"
    """Objective the reward measures: latency, pipelined or throughput."""
    microbatches: int = 1
    """Micro-batches for the pipelined objective."""
    max_nodes: int = 128
    """Group slots: larger graphs are coarsened to at most this many groups."""
    max_devices: int = 8
    """Device slots: the largest cluster the policy can place on."""
    oom_mode: str = "repair"
    """Env memory handling: ``repair`` (move units off overfull devices) or ``penalty``."""
    reference_method: str = "m-topo"
    """Heuristic that sets T_ref, the reward's scale."""
    seed: int = 0
    """Seed of the envs, the network init and PPO's sampling."""
    n_envs: int = 8
    """Envs stepped together (``DummyVecEnv``: one process, batched policy forwards)."""
    n_steps: int = 64
    """Steps per env per rollout (rollout size = n_envs * n_steps)."""
    batch_size: int = 128
    """PPO minibatch size."""
    n_epochs: int = 2
    """PPO epochs per rollout."""
    learning_rate: float = 1e-4
    """Adam learning rate of PPO (constant; low, so PPO refines the imitation policy rather than overwriting it)."""
    gamma: float = 1.0
    """Discount; the reward is terminal, so 1 values a placement by its step time only."""
    gae_lambda: float = 0.95
    """GAE lambda (matters for the sequential form only)."""
    clip_range: float = 0.2
    """PPO ratio clip."""
    ent_coef: float = 0.0
    """Entropy bonus (summed over the group choices of a one-shot action)."""
    vf_coef: float = 0.5
    """Value loss weight."""
    max_grad_norm: float = 0.5
    """Gradient clipping."""
    target_kl: float | None = 0.05
    """Stop an update's epochs early when the approximate KL exceeds this (None: never)."""
    imitation_epochs: int = 250
    """Epochs of imitation warm start before PPO (0: PPO from scratch); see ``rlplace.agents.imitation``."""
    imitation_learning_rate: float = 1e-3
    """Adam learning rate of the imitation warm start."""
    imitation_batch_size: int = 32
    """Minibatch size of the imitation warm start."""
    teacher_methods: list[str] = field(default_factory=lambda: list(TEACHER_METHODS))
    """Heuristics the imitation teacher takes the best of, per training pair (ties to the earlier one)."""
    imitation_out: str | None = None
    """Also write the checkpoint reached after imitation, before PPO, here (None: do not)."""
    hidden: int = 64
    """Width of node and graph embeddings."""
    layers: int = 3
    """Message-passing layers."""
    scorer_hidden: int = 32
    """Width of the pair scorer's hidden layers."""
    torch_threads: int = 1
    """Torch intra-op threads (1 is fastest for these small tensors on a shared 2-core machine)."""
    graph_cache: str | None = DEFAULT_GRAPH_CACHE
    """Folder caching captured zoo graphs as JSON (None: capture every time)."""
    tensorboard_dir: str | None = None
    """SB3 TensorBoard log folder (None: no TensorBoard)."""
    log_every: int = 1
    """Print a progress line every this many rollouts (0: silent)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        """Raise `RlplaceError` for settings that cannot work."""
        if isinstance(self.imitation_epochs, bool) or not isinstance(self.imitation_epochs, int) or self.imitation_epochs < 0:
            raise RlplaceError(f"imitation_epochs must be a whole number >= 0 (got {self.imitation_epochs!r})")
        positive = ("imitation_batch_size", "timesteps", "max_nodes", "max_devices", "n_envs", "n_steps", "batch_size", "n_epochs", "hidden", "layers", "scorer_hidden", "torch_threads", "microbatches")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RlplaceError(f"training setting {name} must be a whole number >= 1 (got {value!r})")
        if not self.learning_rate > 0:
            raise RlplaceError(f"learning_rate must be > 0 (got {self.learning_rate!r})")
        if self.action_form not in ("one-shot", "sequential"):
            raise RlplaceError(f"unknown action form {self.action_form!r}; use one-shot or sequential")
        if not self.models or not self.clusters:
            raise RlplaceError("training needs at least one model and one cluster")

    @classmethod
    def field_docs(cls) -> dict[str, str]:
        """Field name -> its one-line documentation (the string under each field)."""
        import ast
        import inspect

        tree = ast.parse(inspect.getsource(cls))
        body = tree.body[0].body  # type: ignore[attr-defined]
        docs: dict[str, str] = {}
        for statement, following in itertools.pairwise(body):
            if isinstance(statement, ast.AnnAssign) and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                docs[statement.target.id] = str(following.value.value)  # type: ignore[attr-defined]
        return docs


def make_training_envs(config: TrainConfig, models: list[Any], clusters: list[Any]) -> list[Any]:
    """``config.n_envs`` training envs that share one cache of (graph, cluster) problems.

    Building a pair's problem (coarsening, costs, the reference heuristic) takes 20-60 ms and
    the env caches it per instance, so eight independent envs would build every pair eight
    times. Instead one env builds every pair once and the others are shallow copies of it:
    they share the cache dict (filled, then only read) and the encoder, while each episode's
    state lives in attributes that `reset` reassigns, and each copy gets its own seeded
    ``np_random``.
    """
    import copy

    from rlplace.envs import PlacementEnv

    base = PlacementEnv(
        models=models,
        clusters=clusters,
        objective=config.objective,
        microbatches=config.microbatches,
        max_nodes=config.max_nodes,
        max_devices=config.max_devices,
        action_form=config.action_form,
        oom_mode=config.oom_mode,
        reference_method=config.reference_method,
    )
    for model, paired in enumerate(base.pairs):
        for cluster in range(len(paired)):
            base.reset(options={"model": model, "cluster": cluster})
    envs = [base] + [copy.copy(base) for _ in range(config.n_envs - 1)]
    for rank, env in enumerate(envs):
        env.reset(seed=config.seed + rank)
    return envs


def env_settings(config: TrainConfig) -> dict[str, Any]:
    """The env settings a checkpoint records (inference rebuilds the env with them)."""
    return {
        "max_nodes": config.max_nodes,
        "max_devices": config.max_devices,
        "max_edges": 4 * config.max_nodes,
        "action_form": config.action_form,
        "objective": config.objective,
        "microbatches": config.microbatches,
        "oom_mode": config.oom_mode,
        "reference_method": config.reference_method,
    }


def train(config: TrainConfig, *, progress: Callable[[str], None] = print) -> Checkpoint:
    """Run MaskablePPO with the GNN policy and write the checkpoint to ``config.out``."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from .policy import GnnMaskablePolicy

    config.validate()
    torch.set_num_threads(config.torch_threads)
    started = time.perf_counter()
    progress("train config:\n" + describe(config))
    models = load_graphs(config.models, config.graph_cache)
    clusters = [resolve_cluster_spec(spec) for spec in config.clusters]
    envs = make_training_envs(config, models, clusters)
    vec_env = DummyVecEnv([_monitored(env) for env in envs])
    progress(f"{len(models)} models, {len(clusters)} clusters, {sum(len(p) for p in envs[0].pairs)} pairs ready in {time.perf_counter() - started:.1f} s")
    model = MaskablePPO(
        GnnMaskablePolicy,
        vec_env,
        learning_rate=config.learning_rate,
        n_steps=config.n_steps,
        batch_size=config.batch_size,
        n_epochs=config.n_epochs,
        gamma=config.gamma,
        gae_lambda=config.gae_lambda,
        clip_range=config.clip_range,
        ent_coef=config.ent_coef,
        vf_coef=config.vf_coef,
        max_grad_norm=config.max_grad_norm,
        target_kl=config.target_kl,
        policy_kwargs={"network": {"hidden": config.hidden, "layers": config.layers, "scorer_hidden": config.scorer_hidden}},
        tensorboard_log=config.tensorboard_dir,
        seed=config.seed,
        device="cpu",
        verbose=0,
    )
    policy: Any = model.policy
    imitation: dict[str, Any] = {}
    if config.imitation_epochs > 0:
        demonstrations = collect_demonstrations(envs[0], config.teacher_methods, progress=progress)
        rows = pretrain(
            policy.network,
            demonstrations,
            epochs=config.imitation_epochs,
            batch_size=config.imitation_batch_size,
            learning_rate=config.imitation_learning_rate,
            seed=config.seed,
            progress=progress,
        )
        teachers: dict[str, int] = {}
        for demonstration in demonstrations:
            method = demonstration.label.rsplit(": ", 1)[-1]
            teachers[method] = teachers.get(method, 0) + 1
        imitation = {
            "examples": len(demonstrations),
            "teacher_mean_reward": round(float(np.mean([d.reward for d in demonstrations])), 4),
            "teachers": teachers,
            "curve": rows,
            "wall_s": round(time.perf_counter() - started, 1),
        }
        if config.imitation_out:
            save_checkpoint(_checkpoint(config, policy.network, {"timesteps": 0, "wall_s": imitation["wall_s"], "imitation": imitation}), config.imitation_out)
            progress(f"saved the imitation-only policy to {config.imitation_out}")
    curve = _Curve(config, started, progress)
    model.learn(total_timesteps=config.timesteps, callback=curve.callback())
    wall = time.perf_counter() - started
    training = {"timesteps": int(model.num_timesteps), "wall_s": round(wall, 1), "stopped_by_time_limit": curve.stopped, "curve": curve.rows, "imitation": imitation}
    checkpoint = _checkpoint(config, policy.network, training)
    save_checkpoint(checkpoint, config.out)
    progress(f"saved {config.out} after {model.num_timesteps} steps in {wall:.0f} s")
    return checkpoint


def _checkpoint(config: TrainConfig, network: Any, training: dict[str, Any]) -> Checkpoint:
    return Checkpoint(
        network=network,
        env=env_settings(config),
        trained_on={"models": list(config.models), "clusters": list(config.clusters)},
        heldout={"models": list(config.heldout_models), "clusters": list(config.heldout_clusters)},
        train_config=config.to_dict(),
        training=training,
        versions=package_versions(),
    )


def _monitored(env: Any) -> Callable[[], Any]:
    from stable_baselines3.common.monitor import Monitor

    return lambda: Monitor(env)


class _Curve:
    """Learning curve rows [timesteps, mean reward, mean T_ref / T, wall s] per rollout, and the time limit."""

    def __init__(self, config: TrainConfig, started: float, progress: Callable[[str], None]) -> None:
        self.config = config
        self.started = started
        self.progress = progress
        self.rows: list[list[float]] = []
        self.stopped = False

    def callback(self) -> Any:
        """An SB3 callback that records the curve and stops ``learn`` after the time limit."""
        from stable_baselines3.common.callbacks import BaseCallback

        curve = self

        class CurveCallback(BaseCallback):
            def __init__(self) -> None:
                super().__init__()
                self.rewards: list[float] = []
                self.speedups: list[float] = []

            def _on_step(self) -> bool:
                for info in self.locals.get("infos", []):
                    episode = info.get("episode")
                    if episode is not None:
                        self.rewards.append(float(episode["r"]))
                        step_time = float(info.get("step_time", np.inf))
                        if np.isfinite(step_time) and step_time > 0:
                            self.speedups.append(float(info["reference_time"]) / step_time)
                limit = curve.config.time_limit_s
                if limit is not None and time.perf_counter() - curve.started > limit:
                    curve.stopped = True
                    return False
                return True

            def _on_rollout_end(self) -> None:
                if not self.rewards:
                    return
                wall = time.perf_counter() - curve.started
                speedup = float(np.mean(self.speedups)) if self.speedups else 0.0
                row = [int(self.num_timesteps), round(float(np.mean(self.rewards)), 4), round(speedup, 4), round(wall, 1)]
                curve.rows.append(row)
                if curve.config.log_every and len(curve.rows) % curve.config.log_every == 0:
                    curve.progress(f"steps {row[0]:>7d}  mean reward {row[1]:+.4f}  mean T_ref/T {row[2]:.3f}  episodes {len(self.rewards)}  wall {row[3]:.0f} s")
                self.rewards.clear()
                self.speedups.clear()

        return CurveCallback()


def config_from_args(values: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from a dict of overrides (unknown keys are an error)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise RlplaceError(f"unknown training settings {unknown}; see TrainConfig")
    return TrainConfig(**values)


def describe(config: TrainConfig) -> str:
    """The config as aligned ``name = value  # doc`` lines, for logs."""
    docs = TrainConfig.field_docs()
    return "\n".join(f"{name} = {value!r}  # {docs.get(name, '')}" for name, value in config.to_dict().items())
