"""The improvement form of ``rlplace/Placement-v0`` (``action_form="improve"``)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rlplace.envs  # noqa: F401  (registers the env)
from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs.improve_env import ImproveEnv, make_case
from rlplace.envs.improve_state import build_move_problem, legal_moves, observe
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph


def small_env(**kwargs) -> ImproveEnv:
    env = gymnasium.make("rlplace/Placement-v0", action_form="improve", max_nodes=64, max_devices=4, max_edges=256, **kwargs)
    return env.unwrapped  # type: ignore[return-value]


def test_improve_form_passes_gymnasium_and_sb3_checkers() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = small_env()
    check_env(env)
    sb3_check_env(env, warn=False)


def test_one_move_changes_exactly_one_colocation_unit_and_reward_is_relative_gain() -> None:
    env = small_env(models=["synthetic:layered:n=30:seed=100"], clusters=["2xA100+2xT4"])
    env.reset(seed=3)
    problem = env.problem
    before_units = env.assignment.copy()
    before_ops = problem.units.expand(before_units)
    before_time = env._obs.step_time
    action = int(np.flatnonzero(env.action_masks()[:-1])[0])
    _, reward, _, _, info = env.step(action)
    unit, device = divmod(action, env.max_devices)
    after_ops = problem.units.expand(env.assignment)
    changed = np.flatnonzero(after_ops != before_ops)
    assert set(problem.units.of_op[changed].tolist()) == {unit}
    assert np.array_equal(np.sort(changed), problem.units.members[unit])
    assert np.all(after_ops[changed] == device)
    expected = problem.simulator.step_time(after_ops)
    assert info["step_time"] == pytest.approx(expected)
    assert reward == pytest.approx((before_time - expected) / before_time)


def test_colocated_ops_move_together() -> None:
    env = small_env(models=["synthetic:layered:n=30:seed=100:training=true"], clusters=["2xV100-pcie"])
    env.reset(seed=0)
    units = env.problem.units
    big = max(range(units.num_units), key=lambda j: len(units.members[j]))
    assert len(units.members[big]) >= 2
    mask = env.action_masks()
    moves = [big * env.max_devices + d for d in range(env.problem.num_devices) if mask[big * env.max_devices + d]]
    if moves:
        env.step(moves[0])
        ops = units.expand(env.assignment)
        assert len(set(ops[units.members[big]].tolist())) == 1


def test_stop_ends_the_episode_with_zero_reward_and_illegal_actions_stop() -> None:
    env = small_env()
    env.reset(seed=1)
    _, reward, terminated, _, _ = env.step(env.action_space.n - 1)
    assert terminated and reward == 0.0
    env.reset(seed=1)
    mask = env.action_masks()
    illegal = int(np.flatnonzero(~mask)[0])
    _, reward, terminated, _, info = env.step(illegal)
    assert terminated and info["invalid_action"] and reward == 0.0


def _two_device_cluster(memory: float) -> Cluster:
    device = Device("d0", "custom", "accelerator", 1e12, 1e12, memory, 1e11)
    other = Device("d1", "custom", "accelerator", 1e12, 1e12, memory, 1e11)
    bandwidth = np.array([[np.inf, 1e9], [1e9, np.inf]])
    return Cluster("two", (device, other), bandwidth, np.zeros((2, 2)))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), share=st.floats(0.55, 2.0), objective=st.sampled_from(["latency", "throughput"]))
def test_masks_never_allow_an_illegal_move(seed: int, share: float, objective: str) -> None:
    from rlplace.synthetic import layered

    graph: OpGraph = layered(12, seed=seed % 50, width=3)
    demand = float(np.sum(graph.resident_bytes + (graph.output_bytes if objective != "throughput" else 0.0)))
    cluster = _two_device_cluster(max(demand * share, float(np.max(graph.resident_bytes + graph.output_bytes + graph.work_bytes)) * 2))
    case = make_case("x", graph, cluster, objective=objective)
    try:
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=objective)
    except RlplaceError:  # the scaled cluster cannot hold the graph at all
        return
    rng = np.random.default_rng(seed)
    assignment = rng.integers(0, 2, size=problem.num_units)
    assignment = np.where(problem.units.allowed[np.arange(problem.num_units), assignment], assignment, np.argmax(problem.units.allowed, axis=1))
    legal = legal_moves(problem, assignment)
    used = problem.used(assignment)
    for unit, device in zip(*np.nonzero(legal), strict=True):
        assert device != assignment[unit]
        assert problem.units.allowed[unit, device]
        assert used[device] + problem.units.demand[unit] <= problem.budget[device]


def test_observation_has_the_objective_and_microbatches() -> None:
    from rlplace.synthetic import synthetic_graph

    graph = synthetic_graph("layered", n=20, seed=1)
    cluster = _two_device_cluster(1e12)
    costs = CostTable.build(graph, cluster)
    problem = build_move_problem(graph, cluster, costs, objective="pipelined", microbatches=8)
    obs = observe(problem, np.zeros(problem.num_units, np.int64))
    assert obs.globals[:3].tolist() == [0.0, 1.0, 0.0]
    assert obs.globals[3] == pytest.approx(3 / 4)
    # everything on device 0: moving a unit to device 1 is legal and cut-free before the move
    assert obs.legal[:, 1].all() and not obs.legal[:, 0].any()
    assert obs.step_time == pytest.approx(problem.simulator.step_time(np.zeros(graph.num_ops, np.int64)))
