"""Tests of the learned placer: network, SB3 policy, checkpoints, training, inference, `policy` method."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from rlplace.agents.checkpoint import CONFIG_FILE, FORMAT_VERSION, WEIGHTS_FILE, Checkpoint, load_checkpoint, save_checkpoint
from rlplace.agents.gnn import flatten_observation
from rlplace.agents.network import MASKED_LOGIT, NetworkConfig, PlacementNetwork, pair_features
from rlplace.costs import CostTable
from rlplace.envs import PlacementEnv
from rlplace.errors import RlplaceError
from rlplace.placement import check_constraints
from rlplace.synthetic import synthetic_graph

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "default"
MODELS = ["synthetic:layered:n=10:seed=1", "synthetic:fork-join:n=12:seed=2:training=false"]
CLUSTERS = ["2xV100-pcie", "2xA100+2xT4"]
MAX_NODES, MAX_DEVICES = 32, 4
TINY = {"hidden": 16, "layers": 2, "scorer_hidden": 8}


def make_env(form: str = "one-shot") -> PlacementEnv:
    return PlacementEnv(models=MODELS, clusters=CLUSTERS, max_nodes=MAX_NODES, max_devices=MAX_DEVICES, action_form=form)


def env_settings(form: str) -> dict:
    return {"max_nodes": MAX_NODES, "max_devices": MAX_DEVICES, "max_edges": 4 * MAX_NODES, "action_form": form, "objective": "latency", "microbatches": 1, "oom_mode": "repair", "reference_method": "m-topo"}


def tiny_checkpoint(form: str = "one-shot", seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    config = NetworkConfig.for_spaces(make_env(form).observation_space, form, **TINY)
    return Checkpoint(network=PlacementNetwork(config).eval(), env=env_settings(form), trained_on={"models": MODELS, "clusters": CLUSTERS})


def batch(*observations: dict) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.stack([o[key] for o in observations])).float() for key in observations[0]}


# ------------------------------------------------------------------ message passing
@pytest.mark.slow  # importing torch_geometric alone takes 5-15 s
def test_encoder_layers_are_torch_geometric_gineconv_with_mean_aggregation() -> None:
    from torch_geometric.nn import GINEConv

    from rlplace.agents.gnn import GraphEncoder

    encoder = GraphEncoder(node_input_dim=4, edge_dim=3, global_dim=2, hidden=8, layers=2)
    assert all(isinstance(conv, GINEConv) and conv.aggr == "mean" for conv in encoder.convs)
    # the earlier hand-written layer's parameter names, which shipped checkpoints carry
    assert {name.split(".", 2)[2] for name in encoder.state_dict() if name.startswith("convs.")} >= {"eps", "lin.weight", "nn.0.weight", "nn.2.bias"}


def test_flatten_observation_offsets_edges_per_graph_and_drops_padding() -> None:
    obs = {
        "node_features": torch.zeros(2, 3, 2),
        "node_device": torch.full((2, 3), -1.0),
        "node_mask": torch.tensor([[1, 1, 0], [1, 1, 1]]),
        "edge_index": torch.tensor([[[0, 0], [1, 0]], [[0, 1], [2, 2]]]).float(),  # graph 0: 0->1 + padding; graph 1: 0->2, 1->2
        "edge_features": torch.tensor([[[1.0], [9.0]], [[2.0], [3.0]]]),
        "edge_mask": torch.tensor([[1, 0], [1, 1]]),
        "global_features": torch.zeros(2, 1),
    }
    graph = flatten_observation(obs, max_devices=2)
    # forward edges 0->1, 3->5, 4->5, then the same reversed; direction one-hot appended
    assert graph.src.tolist() == [0, 3, 4, 1, 5, 5]
    assert graph.dst.tolist() == [1, 5, 5, 0, 3, 4]
    assert graph.edge_attr.tolist() == [[1, 1, 0], [2, 1, 0], [3, 1, 0], [1, 0, 1], [2, 0, 1], [3, 0, 1]]
    assert graph.node_inputs.shape == (6, 2 + 2 + 1)


def test_pair_features_count_communication_with_placed_neighbours() -> None:
    # 0 -> 1 (comm 2), 1 -> 2 (comm 3); group 0 on device 1, group 2 on device 0, group 1 not placed
    obs = {
        "node_device": torch.tensor([[1.0, -1.0, 0.0]]),
        "edge_index": torch.tensor([[[0, 1, 0], [1, 2, 0]]]).float(),
        "edge_features": torch.tensor([[[2.0, 0, 0], [3.0, 0, 0], [7.0, 0, 0]]]),
        "edge_mask": torch.tensor([[1, 1, 0]]),
    }
    pairs = pair_features(obs, max_devices=2)
    expected = torch.zeros(1, 3, 2, 2)
    expected[0, 1, 1, 0] = 2.0  # group 1 receives from device 1
    expected[0, 1, 0, 1] = 3.0  # group 1 sends to device 0
    expected[0, 2, 1, 0] = 0.0  # group 2's producer (1) is not placed
    expected[0, 0, 0, 0] = 0.0
    torch.testing.assert_close(pairs, expected)


# ------------------------------------------------------------------ network and policy
@pytest.mark.parametrize("form", ["one-shot", "sequential"])
def test_network_logits_have_the_action_layout_and_rule_out_absent_devices(form: str) -> None:
    env = make_env(form)
    observations = [env.reset(options={"model": m, "cluster": 0})[0] for m in range(2)]  # 2-device cluster
    network = tiny_checkpoint(form).network
    with torch.no_grad():
        logits, value = network.action_logits(batch(*observations))
    expected = (2, MAX_NODES * MAX_DEVICES) if form == "one-shot" else (2, MAX_DEVICES)
    assert logits.shape == expected and value.shape == (2,)
    per_device = logits.view(2, -1, MAX_DEVICES)
    assert torch.all(per_device[..., 2:] == MASKED_LOGIT)  # devices 2 and 3 do not exist
    if form == "one-shot":
        groups = int(observations[0]["node_mask"].sum())
        assert torch.all(per_device[0, :groups, :2] > MASKED_LOGIT / 2)
    else:
        assert torch.all(per_device[..., :2] > MASKED_LOGIT / 2)


def test_logits_of_a_graph_do_not_depend_on_the_rest_of_the_batch() -> None:
    env = make_env()
    small = env.reset(options={"model": 1, "cluster": 1})[0]
    large = env.reset(options={"model": 0, "cluster": 1})[0]
    assert small["node_mask"].sum() != large["node_mask"].sum()  # so the padding trim differs
    network = tiny_checkpoint().network
    with torch.no_grad():
        alone, value_alone = network(batch(small))
        together, value_together = network(batch(small, large))
    torch.testing.assert_close(alone[0], together[0])
    torch.testing.assert_close(value_alone[0], value_together[0])
    padding = int(small["node_mask"].sum())
    assert torch.all(alone[0, padding:, 0] == 0) and torch.all(alone[0, padding:, 1:] == MASKED_LOGIT)


@pytest.mark.parametrize("form", ["one-shot", "sequential"])
def test_policy_distribution_gives_masked_actions_zero_probability(form: str) -> None:
    from sb3_contrib import MaskablePPO

    from rlplace.agents.policy import GnnMaskablePolicy

    env = make_env(form)
    model = MaskablePPO(GnnMaskablePolicy, env, n_steps=16, batch_size=16, policy_kwargs={"network": TINY}, seed=0, device="cpu")
    obs, _ = env.reset(options={"model": 0, "cluster": 1})
    mask = env.action_masks()
    mask[1::MAX_DEVICES] = False  # also forbid device 1 everywhere
    mask[0::MAX_DEVICES] = True
    obs_tensor, _ = model.policy.obs_to_tensor(obs)
    distribution = model.policy.get_distribution(obs_tensor, action_masks=mask[None])
    probs = (distribution.categorical if form == "one-shot" else distribution.distribution).probs.reshape(-1).detach()
    assert torch.all(probs[torch.as_tensor(~mask)] == 0)
    assert torch.all(probs[torch.as_tensor(mask)] > 0)
    for _ in range(5):
        action, _ = model.predict(obs, action_masks=mask, deterministic=False)
        chosen = np.asarray(action).reshape(-1)
        flat = chosen if form == "sequential" else np.arange(chosen.size) * MAX_DEVICES + chosen
        assert mask[flat].all()


@pytest.mark.parametrize("form", ["one-shot", "sequential"])
def test_maskable_ppo_learns_64_steps_with_the_gnn_policy(form: str) -> None:
    from sb3_contrib import MaskablePPO

    from rlplace.agents.policy import GnnMaskablePolicy

    env = make_env(form)
    model = MaskablePPO(GnnMaskablePolicy, env, n_steps=32, batch_size=16, n_epochs=1, policy_kwargs={"network": TINY}, seed=0, device="cpu")
    before = {name: value.clone() for name, value in model.policy.network.state_dict().items()}
    model.learn(64)
    assert model.num_timesteps >= 64
    after = model.policy.network.state_dict()
    assert any(not torch.equal(before[name], after[name]) for name in before)
    # the network holds every trainable parameter of the policy (action_net and value_net are identities)
    assert {id(p) for p in model.policy.parameters()} == {id(p) for p in model.policy.network.parameters()}


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_is_exact(tmp_path: Path) -> None:
    original = tiny_checkpoint(seed=3)
    save_checkpoint(original, tmp_path / "ck")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.network_config == original.network_config
    assert loaded.env == original.env and loaded.trained_on == original.trained_on
    state, restored = original.network.state_dict(), loaded.network.state_dict()
    assert state.keys() == restored.keys()
    assert all(torch.equal(state[name], restored[name]) for name in state)
    document = json.loads((tmp_path / "ck" / CONFIG_FILE).read_text())
    assert document["format_version"] == FORMAT_VERSION and document["weights"]["file"] == WEIGHTS_FILE
    assert {"torch", "sb3-contrib", "rlplace", "python"} <= set(document["versions"])


def test_checkpoint_of_another_format_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    save_checkpoint(tiny_checkpoint(), tmp_path)
    document = json.loads((tmp_path / CONFIG_FILE).read_text())
    document["format_version"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(document))
    with pytest.raises(RlplaceError, match=r"format version 99.*reads format version 1.*train_agent\.py"):
        load_checkpoint(tmp_path)


def test_checkpoint_with_swapped_weights_or_missing_files_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tiny_checkpoint(seed=1), tmp_path / "a")
    save_checkpoint(tiny_checkpoint(seed=2), tmp_path / "b")
    (tmp_path / "a" / WEIGHTS_FILE).write_bytes((tmp_path / "b" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(RlplaceError, match="SHA-256"):
        load_checkpoint(tmp_path / "a")
    (tmp_path / "b" / WEIGHTS_FILE).unlink()
    with pytest.raises(RlplaceError, match=r"has no model\.safetensors"):
        load_checkpoint(tmp_path / "b")
    with pytest.raises(RlplaceError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def test_loading_a_checkpoint_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tiny_checkpoint(), tmp_path)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("pickle used while loading a checkpoint")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    loaded = load_checkpoint(tmp_path)
    assert loaded.network_config.hidden == TINY["hidden"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_FILE, WEIGHTS_FILE]


# ------------------------------------------------------------------ training and imitation
def test_train_writes_a_loadable_checkpoint_with_its_settings(tmp_path: Path) -> None:
    from rlplace.agents.train import TrainConfig, train

    config = TrainConfig(
        models=MODELS, clusters=CLUSTERS, heldout_models=[], heldout_clusters=["4xT4"], out=str(tmp_path / "run"), timesteps=64,
        max_nodes=MAX_NODES, max_devices=MAX_DEVICES, n_envs=2, n_steps=16, batch_size=16, n_epochs=1, graph_cache=None,
        imitation_epochs=1, teacher_methods=["single", "m-topo"], log_every=0, **TINY,
    )  # fmt: skip
    lines: list[str] = []
    train(config, progress=lines.append)
    loaded = load_checkpoint(tmp_path / "run")
    assert loaded.train_config == json.loads(json.dumps(config.to_dict()))
    assert loaded.env["max_nodes"] == MAX_NODES and loaded.env["action_form"] == "one-shot"
    assert loaded.heldout == {"models": [], "clusters": ["4xT4"]}
    assert loaded.training["timesteps"] >= 64 and loaded.training["imitation"]["examples"] == 4
    assert lines[0].startswith("train config:") and "timesteps = 64" in lines[0]


def test_every_training_setting_is_documented() -> None:
    from dataclasses import fields

    from rlplace.agents.train import TrainConfig

    docs = TrainConfig.field_docs()
    assert {f.name for f in fields(TrainConfig)} == set(docs)
    assert all(len(text) > 10 for text in docs.values())


def test_imitation_fits_the_teacher_placement() -> None:
    from rlplace.agents.imitation import collect_demonstrations, imitation_loss, pretrain

    env = PlacementEnv(models=MODELS[:1], clusters=CLUSTERS[1:], max_nodes=MAX_NODES, max_devices=MAX_DEVICES)
    demonstrations = collect_demonstrations(env, ["m-topo"])
    assert len(demonstrations) == 1 and demonstrations[0].label.endswith(": m-topo")
    assert demonstrations[0].reward == pytest.approx(0.0, abs=1e-9)  # the teacher is the reference itself
    network = tiny_checkpoint(seed=4).network
    _, accuracy_before = imitation_loss(network, demonstrations)
    rows = pretrain(network, demonstrations, epochs=200, learning_rate=1e-2)
    _, accuracy = imitation_loss(network, demonstrations)
    assert rows[-1][1] < rows[0][1] / 2
    assert accuracy_before < 0.5 and accuracy >= 0.8  # 26 groups on 4 devices (m-topo's split, mirrored for backward)


# ------------------------------------------------------------------ inference
@pytest.mark.parametrize("form", ["one-shot", "sequential"])
def test_inference_returns_a_feasible_placement_no_worse_than_greedy(form: str) -> None:
    from rlplace.agents.infer import place_with_policy
    from rlplace.cluster_spec import load_cluster
    from rlplace.simulate import simulate

    graph, cluster = synthetic_graph("layered", n=12, seed=5, training=True), load_cluster("2xA100+2xT4")
    policy = tiny_checkpoint(form)
    greedy = place_with_policy(graph, cluster, checkpoint=policy, samples=0, search_evaluations=0)
    best = place_with_policy(graph, cluster, checkpoint=policy, samples=4, search_evaluations=30)
    assert greedy.source == "greedy" and greedy.step_time == greedy.greedy_step_time
    assert best.greedy_step_time == greedy.step_time
    assert best.step_time <= best.sampled_step_time <= best.greedy_step_time
    costs = CostTable.build(graph, cluster)
    check_constraints(graph, costs, best.placement)
    result = simulate(graph, cluster, costs, best.placement, objective="latency")
    assert not result.oom and result.step_time == pytest.approx(best.step_time)
    assert best.decide_s > 0 and best.placement.shape == (graph.num_ops,)


def test_inference_refuses_a_cluster_larger_than_the_policy() -> None:
    from rlplace.agents.infer import place_with_policy
    from rlplace.cluster_spec import load_cluster

    with pytest.raises(RlplaceError, match="at most 4"):
        place_with_policy(synthetic_graph("layered", n=8, seed=0), load_cluster("8xA100-nvlink"), checkpoint=tiny_checkpoint())


@pytest.mark.skipif(not (SHIPPED / CONFIG_FILE).is_file(), reason="no shipped checkpoint")
def test_policy_method_runs_the_shipped_checkpoint_through_run_method() -> None:
    """The shipped checkpoint is the improvement policy; the policy method searches with it."""
    from rlplace.cluster_spec import load_cluster
    from rlplace.methods import run_method

    graph, cluster = synthetic_graph("series-parallel", n=40, seed=7, training=True), load_cluster("4xV100-nvlink")
    costs = CostTable.build(graph, cluster)
    outcome = run_method("policy", graph, cluster, costs, objective="latency", seed=0, checkpoint=str(SHIPPED), evaluations=30)
    again = run_method("policy", graph, cluster, costs, objective="latency", seed=0, checkpoint=str(SHIPPED), evaluations=30)
    assert outcome.method == "policy" and outcome.decide_s > 0
    np.testing.assert_array_equal(outcome.placement, again.placement)
    check_constraints(graph, costs, outcome.placement)
