"""Steps per second of ``rlplace/Placement-v0`` alone and under SB3's vectorized envs.

Graph: a 256-group graph (``synthetic:layered:n=256``, 256 ops, placed op by op) on
``4xV100-nvlink``, latency objective, both action forms. Actions are random device indices
drawn in advance (the env maps masked-out choices to allowed devices), so the numbers are the
env's own cost: the simulator run, repair checks, masks and observation encoding; one-shot
episodes are one step long, so their rate includes a ``reset`` per step. Rows:

- ``env``: one env in this process (``+ masks``: also calling ``action_masks()`` each step,
  as MaskablePPO does);
- ``DummyVecEnv x8`` and ``SubprocVecEnv x8``: eight envs, steps summed over envs.

``per core`` divides by the cores the run can use (1 for the env alone, min(8, cores) for
SubprocVecEnv). Goal: >= 2,000 steps/s per core for the env alone.

    python benchmarks/bench_env.py [--seconds 3] [--envs 8] [--training]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import numpy as np
from rlplace.envs import PlacementEnv

from rlplace.synthetic import synthetic_graph

CLUSTER = "4xV100-nvlink"
MAX_NODES = 256
MAX_DEVICES = 8


def make_env_factory(form: str, training: bool) -> Callable[[], PlacementEnv]:
    """A picklable factory of the benchmark env (SubprocVecEnv builds it in each worker)."""

    def make() -> PlacementEnv:
        graph = synthetic_graph("layered", n=120, seed=0, training=True) if training else synthetic_graph("layered", n=256, seed=0)
        return PlacementEnv(models=[graph], clusters=[CLUSTER], max_nodes=MAX_NODES, max_devices=MAX_DEVICES, action_form=form)

    return make


def random_actions(form: str, count: int, num_devices: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if form == "one-shot":
        return rng.integers(0, num_devices, size=(count, MAX_NODES))
    return rng.integers(0, num_devices, size=count)


def bench_single(form: str, training: bool, seconds: float, with_masks: bool) -> float:
    env = make_env_factory(form, training)()
    env.reset(seed=0)
    k = env.problem(0, 0).num_devices
    actions = random_actions(form, 4096, k)
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for action in actions[:256]:
            if with_masks:
                env.action_masks()
            _, _, terminated, _, _ = env.step(action)
            if terminated:
                env.reset()
        steps += 256
        actions = np.roll(actions, 1, axis=0)
    return steps / (time.perf_counter() - started)


def bench_vec(form: str, training: bool, seconds: float, num_envs: int, subprocess: bool) -> float:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    factories = [make_env_factory(form, training)] * num_envs
    vec = SubprocVecEnv(factories, start_method="fork") if subprocess else DummyVecEnv(factories)
    vec.seed(0)
    vec.reset()
    k = vec.env_method("problem", 0, 0, indices=[0])[0].num_devices
    actions = random_actions(form, 4096 * num_envs, k).reshape(4096, num_envs, *(() if form == "sequential" else (MAX_NODES,)))
    steps = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for action in actions[:64]:
            vec.step(action)
        steps += 64 * num_envs
        actions = np.roll(actions, 1, axis=0)
    rate = steps / (time.perf_counter() - started)
    vec.close()
    return rate


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measurement (default 3)")
    parser.add_argument("--envs", type=int, default=8, help="envs in the vectorized runs (default 8)")
    parser.add_argument("--training", action="store_true", help="use a coarsened training graph (layered n=120 with backward pass) instead")
    args = parser.parse_args(argv)
    cores = usable_cores()
    probe = make_env_factory("one-shot", args.training)()
    probe.reset(seed=0)
    problem = probe.problem(0, 0)
    print(f"graph {problem.graph.name}: {problem.graph.num_ops} ops -> {problem.num_groups} groups, {problem.graph.num_edges} edges; cluster {CLUSTER}; {cores} usable cores")
    print(f"{'form':<11} {'setting':<18} {'steps/s':>10} {'per core':>10}")
    for form in ("one-shot", "sequential"):
        rows = [
            ("env", bench_single(form, args.training, args.seconds, with_masks=False), 1),
            ("env + masks", bench_single(form, args.training, args.seconds, with_masks=True), 1),
            (f"DummyVecEnv x{args.envs}", bench_vec(form, args.training, args.seconds, args.envs, subprocess=False), 1),
            (f"SubprocVecEnv x{args.envs}", bench_vec(form, args.training, args.seconds, args.envs, subprocess=True), min(args.envs, cores)),
        ]
        for setting, rate, used in rows:
            print(f"{form:<11} {setting:<18} {rate:>10,.0f} {rate / used:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
