"""Steps per second of ``rlplace/Placement-v0`` alone and under SB3's vectorized envs.

Graph: a 256-group graph (``synthetic:layered:n=256``, 256 ops, placed op by op) on
``4xV100-nvlink``, latency objective, both action forms. Actions are random device indices
drawn in advance (the env maps masked-out choices to allowed devices), so the numbers are the
env's own cost: the simulator run, repair checks, masks and observation encoding; one-shot
episodes are one step long, so their rate includes a ``reset`` per step. Rows:

- ``env``: one env in this process (``+ masks``: also calling ``action_masks()`` each step,
  as MaskablePPO does);
- ``DummyVecEnv x8`` and ``SubprocVecEnv x8``: eight envs, steps summed over envs.

``steps/s`` is wall-clock; ``per CPU-s`` divides the steps by the CPU seconds this process
and its SubprocVecEnv workers spent (``time.process_time`` and ``RUSAGE_CHILDREN``), which is
the per-core rate and stays meaningful on a machine shared with other jobs.
Goal: >= 2,000 steps per CPU-second for the env alone.

    python benchmarks/bench_env.py [--seconds 3] [--envs 8] [--training]
"""

from __future__ import annotations

import argparse
import os
import resource
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


class Meter:
    """Wall-clock and CPU seconds (this process plus waited-for children) since creation."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time() + children.ru_utime + children.ru_stime

    def elapsed(self) -> float:
        return time.perf_counter() - self.wall

    def rates(self, steps: int) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second)."""
        return steps / self.elapsed(), steps / max(self._cpu() - self.cpu, 1e-9)


def bench_single(form: str, training: bool, seconds: float, with_masks: bool) -> tuple[float, float]:
    env = make_env_factory(form, training)()
    env.reset(seed=0)
    k = env.problem(0, 0).num_devices
    actions = random_actions(form, 4096, k)
    steps = 0
    meter = Meter()
    while meter.elapsed() < seconds:
        for action in actions[:256]:
            if with_masks:
                env.action_masks()
            _, _, terminated, _, _ = env.step(action)
            if terminated:
                env.reset()
        steps += 256
        actions = np.roll(actions, 1, axis=0)
    return meter.rates(steps)


def bench_vec(form: str, training: bool, seconds: float, num_envs: int, subprocess: bool) -> tuple[float, float]:
    from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

    factories = [make_env_factory(form, training)] * num_envs
    vec = SubprocVecEnv(factories, start_method="fork") if subprocess else DummyVecEnv(factories)
    vec.seed(0)
    vec.reset()
    k = vec.env_method("problem", 0, 0, indices=[0])[0].num_devices
    actions = random_actions(form, 4096 * num_envs, k).reshape(4096, num_envs, *(() if form == "sequential" else (MAX_NODES,)))
    for action in actions[:8]:  # warm up (workers' first steps)
        vec.step(action)
    steps = 0
    meter = Meter()
    while meter.elapsed() < seconds:
        for action in actions[:64]:
            vec.step(action)
        steps += 64 * num_envs
        actions = np.roll(actions, 1, axis=0)
    wall_rate = steps / meter.elapsed()
    vec.close()  # joins the workers, so their CPU time is counted
    return wall_rate, meter.rates(steps)[1]


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
    print(f"{'form':<11} {'setting':<18} {'steps/s':>10} {'per CPU-s':>10}")
    for form in ("one-shot", "sequential"):
        rows = [
            ("env", bench_single(form, args.training, args.seconds, with_masks=False)),
            ("env + masks", bench_single(form, args.training, args.seconds, with_masks=True)),
            (f"DummyVecEnv x{args.envs}", bench_vec(form, args.training, args.seconds, args.envs, subprocess=False)),
            (f"SubprocVecEnv x{args.envs}", bench_vec(form, args.training, args.seconds, args.envs, subprocess=True)),
        ]
        for setting, (wall_rate, cpu_rate) in rows:
            print(f"{form:<11} {setting:<18} {wall_rate:>10,.0f} {cpu_rate:>10,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
