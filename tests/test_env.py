"""Tests of the Gymnasium environment ``rlplace/Placement-v0`` (rlplace.envs)."""

from __future__ import annotations

import math
import warnings

import gymnasium as gym
import numpy as np
import pytest

import rlplace.envs
from rlplace.cluster import ACCELERATOR, CPU, Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs import PlacementEnv
from rlplace.envs.ledger import sequential_ledger
from rlplace.envs.observation import EDGE_FEATURES, NODE_FEATURES
from rlplace.errors import RlplaceError
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.graph import OpGraph
from rlplace.simulate import simulate
from rlplace.synthetic import synthetic_graph

FORMS = ("one-shot", "sequential")
GIB = 2.0**30
MIB = 2.0**20


# ------------------------------------------------------------------ helpers
def gpu(name: str, tflops: float = 10.0, memory: float = 16 * GIB, host: int = 0) -> Device:
    return Device(name, "custom", ACCELERATOR, fp32_flops=tflops * 1e12, fp16_flops=8 * tflops * 1e12, memory=memory, memory_bandwidth=900e9, host=host)


def cpu(name: str = "cpu0") -> Device:
    return Device(name, "custom", CPU, fp32_flops=1e12, fp16_flops=1e12, memory=math.inf, memory_bandwidth=100e9)


def cluster_of(*devices: Device, bandwidth: float = 10e9, latency: float = 1e-5, name: str = "test") -> Cluster:
    return Cluster.build(name, list(devices), intra_host=(bandwidth, latency))


def fork_graph(branches: int = 4, flops: float = 4e10, edge_bytes: float = 1e6) -> OpGraph:
    """in -> p0..p{branches-1} -> out: independent heavy matmuls between two tiny ops."""
    ops = [dict(name="in", kind="matmul", flops=1e6, output_bytes=edge_bytes)]
    ops += [dict(name=f"p{i}", kind="matmul", flops=flops, output_bytes=edge_bytes, param_bytes=64 * MIB) for i in range(branches)]
    ops += [dict(name="out", kind="matmul", flops=1e6)]
    edges = [dict(src="in", dst=f"p{i}", bytes=edge_bytes) for i in range(branches)]
    edges += [dict(src=f"p{i}", dst="out", bytes=edge_bytes) for i in range(branches)]
    return OpGraph.build(ops, edges, name="fork")


def training_graph(n: int = 15, seed: int = 0) -> OpGraph:
    return synthetic_graph("layered", n=n, seed=seed, training=True)


def make_env(**kwargs) -> PlacementEnv:
    return PlacementEnv(**kwargs)


def valid_action(env: PlacementEnv, rng: np.random.Generator) -> np.ndarray | int:
    """A random action allowed by the env's mask."""
    mask = env.action_masks()
    if env.action_form == "sequential":
        return int(rng.choice(np.flatnonzero(mask)))
    per_slot = mask.reshape(env.max_nodes, env.max_devices)
    return np.array([rng.choice(np.flatnonzero(row)) for row in per_slot], dtype=np.int64)


def run_episode(env: PlacementEnv, seed: int, action_seed: int) -> tuple[list, list[float], dict]:
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    observations, rewards = [obs], []
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(valid_action(env, rng))
        observations.append(obs)
        rewards.append(reward)
        done = terminated or truncated
    return observations, rewards, info


def pad(placement: np.ndarray, size: int) -> np.ndarray:
    action = np.zeros(size, dtype=np.int64)
    action[: placement.size] = placement
    return action


# ------------------------------------------------------------------ registration, checkers
def test_import_registers_the_env_id():
    assert rlplace.envs.ENV_ID == "rlplace/Placement-v0"
    assert "rlplace/Placement-v0" in gym.registry
    env = gym.make("rlplace/Placement-v0", action_form="sequential")
    assert isinstance(env.unwrapped, PlacementEnv)
    assert env.action_space == gym.spaces.Discrete(8)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("render_mode", [None, "ansi"])
def test_gymnasium_and_sb3_env_checkers_pass(form, render_mode):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("rlplace/Placement-v0", action_form=form, render_mode=render_mode).unwrapped
    with warnings.catch_warnings():
        # graph observations are 2-D by nature; SB3 only recommends flattening them
        warnings.filterwarnings("ignore", message=".*unconventional shape.*")
        check_env(env, skip_render_check=render_mode is None)
        sb3_check_env(env)


@pytest.mark.parametrize("form", FORMS)
def test_spaces_have_the_documented_shapes(form):
    env = make_env(action_form=form, max_nodes=64, max_devices=4, max_edges=100)
    obs, info = env.reset(options={"model": 0, "cluster": 0})
    assert obs["node_features"].shape == (64, len(NODE_FEATURES))
    assert obs["edge_index"].shape == (2, 100) and obs["edge_index"].dtype == np.int64
    assert obs["edge_features"].shape == (100, len(EDGE_FEATURES))
    assert obs["device_features"].shape[0] == 4 and obs["link_time"].shape == (4, 4)
    assert isinstance(env.observation_space["edge_index"], gym.spaces.Box)  # never MultiDiscrete
    assert int(obs["node_mask"].sum()) == info["num_groups"]
    assert int(obs["device_mask"].sum()) == env.pairs[0][0].num_devices
    if form == "one-shot":
        assert env.action_space == gym.spaces.MultiDiscrete([4] * 64)
        assert env.action_masks().shape == (64 * 4,)
        assert "current_node" not in obs
    else:
        assert env.action_space == gym.spaces.Discrete(4)
        assert env.action_masks().shape == (4,)
        assert obs["current_node"].tolist() == [0]


# ------------------------------------------------------------------ determinism
@pytest.mark.parametrize("form", FORMS)
def test_same_seed_gives_the_same_episode(form):
    first = run_episode(make_env(action_form=form), seed=11, action_seed=3)
    second = run_episode(make_env(action_form=form), seed=11, action_seed=3)
    assert first[1] == second[1]
    assert len(first[0]) == len(second[0])
    for a, b in zip(first[0], second[0], strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert np.array_equal(first[2]["placement"], second[2]["placement"])


def test_reset_samples_several_pairs_from_np_random():
    env = make_env()
    pairs = {(info["model"], info["cluster"]) for info in (env.reset(seed=seed)[1] for seed in range(12))}
    assert len(pairs) >= 4
    _, info = env.reset(options={"model": 2, "cluster": 1})
    assert info["model"] == env.models[2].label and info["cluster"] == env.pairs[2][1].name


# ------------------------------------------------------------------ rewards
def test_balanced_split_beats_everything_on_the_slow_device():
    graph = fork_graph()
    cluster = cluster_of(gpu("fast", tflops=20.0), gpu("slow", tflops=5.0))
    env = make_env(models=[graph], clusters=[cluster], max_nodes=8, max_devices=2)
    env.reset(seed=0)
    problem = env.problem(0, 0)
    slow_time = float(problem.costs.op_time[:, 1].sum())  # one device, no transfers: the sum

    _, bad_reward, _, _, bad = env.step(np.ones(8, dtype=np.int64))
    assert bad["step_time"] == pytest.approx(slow_time, rel=1e-12)
    assert bad_reward == pytest.approx((problem.reference_time - slow_time) / problem.reference_time, rel=1e-12)

    env.reset(seed=0)
    balanced = np.array([0, 0, 0, 0, 1, 0, 0, 0])  # three branches on the fast device, one on the slow
    _, good_reward, _, _, good = env.step(balanced)
    assert good["step_time"] < bad["step_time"]
    assert good_reward > bad_reward


def test_custom_reward_source_sets_step_and_reference_times():
    class Constant:
        def __init__(self, graph, cluster, costs, *, objective, microbatches):
            self.calls = 0

        def evaluate(self, placement):
            self.calls += 1
            return 2.0 + float(placement.sum() > 0), 0.0  # 2 for all on device 0, else 3

    env = make_env(models=[fork_graph()], clusters=[cluster_of(gpu("a"), gpu("b"))], max_nodes=8, max_devices=2, reward_source=Constant, reference_method="single")
    env.reset(seed=0)
    assert env.problem(0, 0).reference_time == 2.0
    _, reward, _, _, info = env.step(np.ones(8, dtype=np.int64))
    assert info["step_time"] == 3.0 and reward == pytest.approx(-0.5)


def test_unknown_reference_method_is_a_clear_error():
    with pytest.raises(RlplaceError, match="unknown method"):
        make_env(reference_method="nope")


# ------------------------------------------------------------------ baselines replay
@pytest.mark.parametrize("method", ["m-topo", "heft"])
@pytest.mark.parametrize("form", FORMS)
def test_replaying_a_baseline_reproduces_its_simulated_step_time(method, form):
    from rlplace.baselines import run_method

    graph = training_graph(n=20, seed=4)
    cluster = rlplace.envs.specs.resolve_cluster("4xV100-nvlink")
    costs = CostTable.build(graph, cluster)
    placement = np.asarray(run_method(method, graph, cluster, costs, objective="latency").placement)
    expected = simulate(graph, cluster, costs, placement, objective="latency").step_time

    env = make_env(models=[graph], clusters=[cluster], max_nodes=64, action_form=form)
    env.reset(seed=0)
    if form == "one-shot":
        _, _, terminated, _, info = env.step(pad(placement, 64))
        assert terminated
    else:
        for device in placement:
            assert env.action_masks()[device], "the baseline's device must be allowed"
            _, _, terminated, _, info = env.step(int(device))
        assert terminated
    assert info["invalid_actions"] == 0 and not info["repaired"] and not info["oom"]
    assert np.array_equal(info["placement"], placement)
    assert info["step_time"] == expected


# ------------------------------------------------------------------ masks
def tight_cluster(memory: float) -> Cluster:
    return cluster_of(gpu("g0", memory=memory), gpu("g1", memory=memory), gpu("g2", tflops=5.0, memory=memory))


@pytest.mark.parametrize("objective", ["latency", "throughput", "pipelined"])
def test_sequential_mask_never_offers_a_device_without_room(objective):
    graph = training_graph(n=15)
    total = float(graph.resident_bytes.sum() + graph.output_bytes.sum())
    env = make_env(models=[graph], clusters=[tight_cluster(0.9 * total)], max_nodes=64, action_form="sequential", objective=objective, microbatches=2)
    rng = np.random.default_rng(0)
    outcomes = set()
    for episode in range(25):
        env.reset(seed=episode)
        ledger = env._ledger
        done = False
        while not done:
            mask = env.action_masks()
            assert mask.any() and not mask[env.problem(0, 0).num_devices :].any()
            device = int(rng.choice(np.flatnonzero(mask)))
            _, reward, done, _, info = env.step(device)
            assert info["invalid_actions"] == 0
            bound = ledger.used + ledger.work_peak
            assert np.all(bound <= env.problem(0, 0).capacity)
        outcomes.add(info["dead_end"])
        if not info["dead_end"]:
            problem = env.problem(0, 0)
            peak = problem.peak_memory(info["placement"])
            assert np.all(peak <= problem.capacity) and not info["oom"] and not info["repaired"]
        else:
            assert info["step_time"] == math.inf and reward <= -env.oom_penalty
    assert False in outcomes


def test_one_shot_mask_excludes_absent_devices_incapable_devices_and_pads_only_device_zero():
    ops = [dict(name="a", times={"accelerator": 1.0, "cpu": 5.0}), dict(name="b", times={"cpu": 2.0}), dict(name="c", times={"accelerator": 1.0, "cpu": 4.0})]
    edges = [dict(src="a", dst="b", bytes=10.0, time=0.5), dict(src="b", dst="c", bytes=10.0, time=0.5)]
    graph = OpGraph.build(ops, edges, name="cpu-only-b", time_classes=("accelerator", "cpu"), time_unit="unit")
    env = make_env(models=[graph], clusters=[cluster_of(gpu("g0"), gpu("g1"), cpu())], max_nodes=5, max_devices=4, objective="throughput")
    env.reset(seed=0)
    mask = env.action_masks().reshape(5, 4)
    expected = np.array(
        [
            [True, True, True, False],  # a: both GPUs and the CPU; slot 3 is not a device
            [False, False, True, False],  # b: CPU only
            [True, True, True, False],
            [True, False, False, False],  # padding: device 0 only
            [True, False, False, False],
        ]
    )
    np.testing.assert_array_equal(mask, expected)
    _, _, _, _, info = env.step(np.array([3, 0, 1, 2, 2]))  # 3 is absent, b cannot run on g0
    assert info["invalid_actions"] == 2
    assert info["placement"].tolist() == [0, 2, 1]


def test_colocated_groups_share_a_device_in_both_forms():
    graph = training_graph(n=15)
    classes = graph.coloc[graph.coloc >= 0]
    assert classes.size, "the synthetic training graph has colocation classes"
    cls = int(classes[0])
    members = np.flatnonzero(graph.coloc == cls)
    env = make_env(models=[graph], clusters=["4xV100-nvlink"], max_nodes=64)
    env.reset(seed=0)
    action = np.arange(64) % 4
    _, _, _, _, info = env.step(action)
    assert len(set(info["placement"][members].tolist())) == 1
    assert info["placement"][members[0]] == action[members[0]]

    env = make_env(models=[graph], clusters=["4xV100-nvlink"], max_nodes=64, action_form="sequential")
    env.reset(seed=0)
    for group in range(int(members[-1]) + 1):
        mask = env.action_masks()
        if group in members[1:]:
            assert mask.sum() == 1 and np.flatnonzero(mask)[0] == 3
        env.step(3 if group == members[0] else int(np.flatnonzero(mask)[0]))


# ------------------------------------------------------------------ memory overflow
def test_repair_moves_groups_off_the_overfull_device_and_penalty_mode_does_not():
    graph = fork_graph(branches=6)
    resident = float(graph.resident_bytes.sum())
    cluster = cluster_of(gpu("g0", memory=0.6 * resident), gpu("g1", memory=0.6 * resident))
    all_on_zero = np.zeros(8, dtype=np.int64)

    env = make_env(models=[graph], clusters=[cluster], max_nodes=8, max_devices=2, objective="throughput")
    env.reset(seed=0)
    _, reward, _, _, info = env.step(all_on_zero)
    problem = env.problem(0, 0)
    assert info["repaired"] and not info["oom"] and info["units_moved"] >= 1
    assert np.all(problem.peak_memory(info["placement"]) <= problem.capacity)
    assert set(info["placement"].tolist()) == {0, 1}
    assert reward == pytest.approx((problem.reference_time - info["step_time"]) / problem.reference_time)

    env = make_env(models=[graph], clusters=[cluster], max_nodes=8, max_devices=2, objective="throughput", oom_mode="penalty", oom_penalty=2.0)
    env.reset(seed=0)
    _, reward, _, _, info = env.step(all_on_zero)
    assert info["oom"] and not info["repaired"] and info["oom_mode"] == "penalty"
    overflow = resident - 0.6 * resident
    assert info["overflow_bytes"] == pytest.approx(overflow)
    base = min((problem.reference_time - info["step_time"]) / problem.reference_time, 0.0)
    assert reward == pytest.approx(base - 2.0 * (1 + overflow / (1.2 * resident)))


def test_sequential_dead_end_ends_the_episode_with_the_documented_penalty():
    graph = fork_graph(branches=6)
    resident = float(graph.resident_bytes.sum())
    # room for about four of the six 64 MiB branches in all
    cluster = cluster_of(gpu("g0", memory=0.4 * resident), gpu("g1", memory=0.4 * resident))
    env = make_env(models=[graph], clusters=[cluster], max_nodes=8, max_devices=2, action_form="sequential", objective="throughput")
    env.reset(seed=0)
    rewards, done, steps = [], False, 0
    while not done:
        _, reward, done, _, info = env.step(int(np.flatnonzero(env.action_masks())[0]))
        rewards.append(reward)
        steps += 1
    assert info["dead_end"] and info["step_time"] == math.inf
    assert rewards[:-1] == [0.0] * (steps - 1)
    unplaced = (graph.num_ops - steps) / graph.num_ops
    assert rewards[-1] == pytest.approx(-1.0 * (1 + unplaced))
    assert env.action_masks().any()


def test_resident_memory_mask_is_looser_and_leaves_overflow_to_oom_mode():
    graph = training_graph(n=15)
    total = float(graph.resident_bytes.sum() + graph.output_bytes.sum())
    env = make_env(models=[graph], clusters=[tight_cluster(0.5 * total)], max_nodes=64, action_form="sequential", memory_mask="resident")
    rng = np.random.default_rng(1)
    dead_ends = 0
    for episode in range(10):
        env.reset(seed=episode)
        done = False
        while not done:
            _, _, done, _, info = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
        dead_ends += info["dead_end"]
        assert np.all(env._ledger.used <= env.problem(0, 0).capacity)
        if not info["dead_end"] and not info["oom"]:
            problem = env.problem(0, 0)
            assert np.all(problem.peak_memory(info["placement"]) <= problem.capacity)
    assert dead_ends == 0  # 3 devices of half the graph's bytes hold its resident bytes easily


def test_ledger_bound_covers_the_simulated_peak():
    graph = training_graph(n=15, seed=1)
    env = make_env(models=[graph], clusters=["2xV100-pcie"], max_nodes=64, action_form="sequential")
    env.reset(seed=0)
    problem = env.problem(0, 0)
    rng = np.random.default_rng(5)
    for _ in range(20):
        ledger = sequential_ledger(problem)
        for group in range(problem.num_groups):
            ledger.add(group, int(rng.integers(problem.num_devices)))
        peak = problem.peak_memory(problem.expand(ledger.placement))
        assert np.all(peak <= ledger.used + ledger.work_peak + 1e-6)


# ------------------------------------------------------------------ observation
def test_observation_is_invariant_to_the_time_and_memory_scale():
    def graph_scaled(scale: float) -> OpGraph:
        ops = [dict(name=f"o{i}", times={"accelerator": scale * (1 + i % 3)}, param_bytes=scale * 1e6 * (1 + i)) for i in range(6)]
        edges = [dict(src=f"o{i}", dst=f"o{i + 1}", bytes=scale * 1e3, time=scale * 0.25) for i in range(5)]
        return OpGraph.build(ops, edges, name="chain", time_classes=("accelerator",), time_unit="unit")

    def observe(scale: float) -> dict[str, np.ndarray]:
        cluster = cluster_of(gpu("g0", memory=scale * 1e7), gpu("g1", memory=scale * 1e7))
        env = make_env(models=[graph_scaled(scale)], clusters=[cluster], max_nodes=8, max_devices=2, reference_method="round-robin")
        return env.reset(seed=0)[0]

    small, large = observe(1.0), observe(1000.0)
    for key in small:
        np.testing.assert_allclose(small[key], large[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_sequential_observation_tracks_placed_groups():
    env = make_env(models=[fork_graph()], clusters=[cluster_of(gpu("a"), gpu("b"))], max_nodes=8, max_devices=2, action_form="sequential")
    obs, _ = env.reset(seed=0)
    placed, to_place = NODE_FEATURES.index("placed"), NODE_FEATURES.index("to_place")
    assert obs["node_features"][:, to_place].tolist() == [1, 0, 0, 0, 0, 0, 0, 0]
    obs, *_ = env.step(1)
    obs, *_ = env.step(0)
    assert obs["node_device"].tolist() == [1, 0, -1, -1, -1, -1, -1, -1]
    assert obs["node_features"][:, placed].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert obs["current_node"].tolist() == [2]
    crosses = obs["edge_features"][:, EDGE_FEATURES.index("crosses")]
    src, dst = obs["edge_index"]
    assert crosses[(src == 0) & (dst == 1) & (obs["edge_mask"] == 1)].tolist() == [1.0]
    assert crosses.sum() == 1.0


# ------------------------------------------------------------------ inputs
def test_bad_arguments_are_clear_errors():
    with pytest.raises(RlplaceError, match="action_form"):
        make_env(action_form="greedy")
    with pytest.raises(RlplaceError, match="objective"):
        make_env(objective="fast")
    with pytest.raises(RlplaceError, match="max_devices"):
        make_env(clusters=["8xA100-nvlink"], max_devices=4)
    with pytest.raises(RlplaceError, match="no device"):
        make_env(models=[fork_graph()], clusters=[cluster_of(gpu("tiny", memory=MIB), gpu("tiny2", memory=MIB))]).reset(seed=0)


def test_graphs_over_max_nodes_are_coarsened_and_rewarded_on_the_full_graph():
    pytest.importorskip("rlplace.coarsen")
    graph = synthetic_graph("layered", n=120, seed=2)
    env = make_env(models=[graph], clusters=["2xV100-pcie"], max_nodes=32, max_devices=2)
    _, info = env.reset(seed=0)
    problem = env.problem(0, 0)
    assert problem.coarsening is not None and info["num_groups"] <= 32
    _, _, _, _, info = env.step(np.zeros(32, dtype=np.int64) + (np.arange(32) >= 16))
    assert info["placement"].shape == (graph.num_ops,)
    assert info["step_time"] == simulate(graph, problem.cluster, problem.costs, info["placement"]).step_time


# ------------------------------------------------------------------ render
@pytest.mark.parametrize("form", FORMS)
def test_render_ansi_table_and_rgb_array(form):
    env = make_env(models=[fork_graph()], clusters=[cluster_of(gpu("fast"), gpu("slow", tflops=5.0))], max_nodes=8, max_devices=2, action_form=form, render_mode="ansi")
    env.reset(seed=0)
    if form == "one-shot":
        env.step(np.array([0, 0, 1, 0, 1, 0, 0, 0]))
    else:
        env.step(0)
    text = env.render()
    assert "fast" in text and "slow" in text and "busy" in text
    env.render_mode = "rgb_array"
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[:2] == (350, 1100) and image.min() < 128


# ------------------------------------------------------------------ sb3-contrib
@pytest.mark.parametrize("form", FORMS)
def test_maskable_ppo_learns_for_a_tiny_budget(form):
    from sb3_contrib import MaskablePPO

    env = make_env(models=[training_graph(n=15)], clusters=["2xV100-pcie"], max_nodes=48, max_devices=4, action_form=form)
    model = MaskablePPO("MultiInputPolicy", env, n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(64)
    assert model.num_timesteps == 64
    obs, _ = env.reset(seed=0)
    mask = env.action_masks()
    action, _ = model.predict(obs, action_masks=mask, deterministic=True)
    if form == "one-shot":
        assert mask.reshape(48, 4)[np.arange(48), action].all()
    else:
        assert mask[int(action)]


# ------------------------------------------------------------------ shared dnn-partitioning data
def test_dnn_partitioning_graph_runs_on_its_own_cluster_and_replays_the_expert_split():
    from rlplace.formats.dnn_partitioning import load_expert_split

    data = shared_data_dir()
    graph_file = data / "graphs" / "bert24_training__layer.json"
    expert_file = data / "human-experts" / "bert24_training_expert.json"
    if not (graph_file.is_file() and expert_file.is_file()):
        pytest.skip(f"shared dnn-partitioning data not found under {data}")
    env = make_env(models=[str(graph_file)], clusters=["4xV100-nvlink"], objective="throughput", max_nodes=64)
    _, info = env.reset(seed=0)
    problem = env.problem(0, 0)
    assert problem.cluster.name == env.models[0].own_cluster.name  # the file's cluster, not the given one
    expert = load_expert_split(expert_file, problem.graph, problem.cluster)
    expected = simulate(problem.graph, problem.cluster, problem.costs, expert, objective="throughput").step_time
    _, reward, _, _, info = env.step(pad(np.asarray(expert), 64))
    assert info["invalid_actions"] == 0 and np.array_equal(info["placement"], expert)
    assert info["step_time"] == expected
    assert reward == pytest.approx((problem.reference_time - expected) / problem.reference_time)
