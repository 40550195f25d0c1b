"""Measured step time: executor = unplaced model, segment plan, assignment, profile, reward, failures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import time

import numpy as np
import psutil
import pytest
import torch
from torch import nn

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import NO_CLASS, OpGraph
from rlplace.measure.assign import assign_devices, executed_placement
from rlplace.measure.calibrate import (
    FIT_KINDS,
    DeviceProfile,
    Profile,
    apply_profile,
    load_profile,
    overhead_counts,
    roofline_features,
    solve_step_fit,
    write_profile,
)
from rlplace.measure.executor import LocalExecutor, reference_step
from rlplace.measure.launch import MeasureFailure
from rlplace.measure.plan import Message, plan_segments
from rlplace.measure.program import export_forward, is_getitem
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.reward import MeasuredReward, MeasureOptions
from rlplace.measure.session import MeasureSetup, local_cpu_cluster, measure
from rlplace.placement import respect_colocation

MODELS = ("rlplace.measure.models:mlp", "rlplace.measure.models:cnn", "rlplace.measure.models:tiny_transformer")


class Chain(nn.Module):
    """x -> Linear a -> ReLU -> Linear b."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def assert_same_state(state: dict, reference: dict, *, atol: float = 1e-6) -> None:
    for group in ("grads", "parameters", "buffers"):
        assert set(state[group]) == set(reference[group]), group
        for name, expected in reference[group].items():
            actual = torch.as_tensor(state[group][name], dtype=torch.float64)
            torch.testing.assert_close(actual, expected.double(), atol=atol, rtol=1e-5, msg=f"{group} {name}")


def no_rank_processes() -> bool:
    for child in psutil.Process().children(recursive=True):
        try:
            if "rlplace.measure.distributed" in " ".join(child.cmdline()):
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.fixture(scope="module", params=MODELS)
def built(request: pytest.FixtureRequest):
    module, inputs = ModelRecipe(request.param).build()
    return module, inputs, export_forward(module, inputs)


# ----------------------------------------------------------------------------- executor
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_placed_step_equals_unplaced_step(built, seed: int) -> None:
    module, inputs, program = built
    rng = random.Random(seed)
    assignment = {node.name: rng.randrange(3) for node in program.nodes}
    plan = plan_segments(program, assignment, 3)
    assert len({segment.device for segment in plan.segments}) > 1
    executor = LocalExecutor(program, plan, ["cpu"] * 3)
    loss = executor.step()
    reference_loss, reference = reference_step(module, inputs)
    assert loss == pytest.approx(reference_loss, rel=1e-6, abs=1e-7)
    assert_same_state(executor.state(), reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_placed_step_equals_unplaced_step_in_any_node_order(built, seed: int) -> None:
    from rlplace.measure.assign import order_by_key

    module, inputs, program = built
    rng = random.Random(seed)
    assignment = {node.name: rng.randrange(2) for node in program.nodes}
    order = order_by_key(program, {node.name: rng.random() for node in program.nodes})
    assert order != [node.name for node in program.nodes]
    plan = plan_segments(program, assignment, 2, order)
    executor = LocalExecutor(program, plan, ["cpu"] * 2)
    loss = executor.step()
    reference_loss, reference = reference_step(module, inputs)
    assert loss == pytest.approx(reference_loss, rel=1e-6, abs=1e-7)
    assert_same_state(executor.state(), reference)


def test_message_cpu_fit_is_hand_computed() -> None:
    from rlplace.measure.calibrate import fit_message_cpu

    base = dataclasses.replace(_profile(), message_overhead_s=5e-4)
    # 4 ms more CPU over 10 messages, each with two endpoints: 200 us per endpoint; a chain
    # message keeps its calibrated 500 us, 400 of them now at its endpoints
    fitted = fit_message_cpu(base, {"cpu_single": 0.010, "cpu_split": 0.014, "messages": 10.0})
    assert fitted.message_cpu_s == pytest.approx(2e-4) and fitted.message_overhead_s == pytest.approx(1e-4)
    assert fitted.meta["message_timing"]["chain_message_overhead_s"] == 5e-4
    assert fit_message_cpu(dataclasses.replace(base, message_overhead_s=1e-4), {"cpu_single": 0.010, "cpu_split": 0.014, "messages": 10.0}).message_overhead_s == 0.0
    assert fit_message_cpu(base, {"cpu_single": 0.010, "cpu_split": 0.009, "messages": 10.0}).message_cpu_s == 0.0
    assert fit_message_cpu(base, {}) is base


def test_message_cpu_fit_reproduces_the_measured_wall_ratios() -> None:
    from rlplace.measure.calibrate import MAX_MESSAGE_CPU_S, fit_message_cpu

    base = dataclasses.replace(_profile(), message_overhead_s=5e-4)
    pair_only = {"wall_single": 0.010, "wall_split": 0.008, "cpu_single": 0.010, "cpu_split": 0.011, "messages": 10.0}
    # simulated pair ratio 0.5 + 100 c: the measured 0.8 needs c = 3 ms per endpoint, which
    # takes the whole chain overhead (2 c > 500 us)
    fitted = fit_message_cpu(base, pair_only, lambda c: {"pair": 0.5 + 100.0 * c, "chain": 1.0})
    assert fitted.message_cpu_s == pytest.approx(3e-3, rel=1e-4) and fitted.message_overhead_s == 0.0
    assert fitted.meta["message_timing"]["wall_split"] == 0.008
    assert fit_message_cpu(base, pair_only, lambda c: {"pair": 0.9 + c}).message_cpu_s == 0.0  # too dear already at c = 0
    assert fit_message_cpu(base, pair_only, lambda c: {"pair": 0.1 + c}).message_cpu_s == MAX_MESSAGE_CPU_S  # capped
    assert fit_message_cpu(base, pair_only).message_cpu_s == pytest.approx(5e-5)  # no simulator: the CPU-time formula
    # both patterns: pair wants c = 3 ms (ratio 0.5 + 100 c = 0.8), chain wants c = 1 ms
    # (ratio 1 + 100 c = 1.1); the least squared log error lies between, where its derivative
    # 100 log(pair / 0.8) / pair + 100 log(chain / 1.1) / chain vanishes
    both = pair_only | {"chain_single": 0.010, "chain_split": 0.011}
    fitted = fit_message_cpu(base, both, lambda c: {"pair": 0.5 + 100.0 * c, "chain": 1.0 + 100.0 * c})
    c = fitted.message_cpu_s
    pair, chain = 0.5 + 100 * c, 1.0 + 100 * c
    assert 1e-3 < c < 3e-3
    assert math.log(pair / 0.8) / pair + math.log(chain / 1.1) / chain == pytest.approx(0.0, abs=1e-6)


def test_crossing_split_ratios_grow_with_the_message_cost() -> None:
    from rlplace.measure.calibrate import crossing_split_ratios

    ratios = crossing_split_ratios(_profile())
    values = [ratios(c) for c in (0.0, 1e-4, 5e-4, 2e-3)]
    for pattern in ("pair", "chain"):
        series = [v[pattern] for v in values]
        assert series == sorted(series) and series[-1] > series[0] + 0.3
    assert 0.3 < values[0]["pair"] < 1.2  # two chains on two ranks: about half of one rank's step plus links
    assert values[0]["chain"] >= 1.0  # one chain split layer by layer: nothing runs in parallel


def test_executor_nodes_carry_the_captured_op_names(built) -> None:
    from rlplace.capture import capture_model

    module, inputs, program = built
    names = set(capture_model(module, inputs).names)
    unmatched = [node for node in program.nodes if node.name not in names]
    assert len(unmatched) < len(program.nodes) / 2
    for node in unmatched:  # only what capture folds: tuple unpacking and views of parameters
        assert is_getitem(node) or all(inp.name in program.parameters for inp in node.all_input_nodes), node.name


def test_two_device_chain_plan_is_hand_computed() -> None:
    module = Chain()
    program = export_forward(module, (torch.randn(2, 4),))
    matmuls = [node.name for node in program.nodes if "addmm" in str(node.target)]
    assert len(matmuls) == 2
    first = [node.name for node in program.nodes].index(matmuls[0])
    assignment = {node.name: (0 if index <= first else 1) for index, node in enumerate(program.nodes)}
    plan = plan_segments(program, assignment, 2)
    assert [segment.device for segment in plan.segments] == [0, 1, 1]
    assert plan.segments[-1].is_loss
    assert plan.messages == (Message("value", matmuls[0], 0, 1), Message("grad", matmuls[0], 1, 0))
    assert plan.bytes_moved(program) == 2 * 2 * 4 * 4  # (2, 4) fp32 forward and back
    homes = {program.parameters[p]: plan.home[p] for p in program.parameters}
    assert homes == {"a.weight": 0, "a.bias": 0, "b.weight": 1, "b.bias": 1}


def test_assignment_follows_captured_placement() -> None:
    from rlplace.capture import capture_model

    module = Chain()
    inputs = (torch.randn(2, 4),)
    graph = capture_model(module, inputs, optimizer="sgd")
    program = export_forward(module, inputs)
    placement = respect_colocation(graph, np.array([i % 2 for i in range(graph.num_ops)], dtype=np.int64))
    assignment = assign_devices(program, graph, placement)
    for node in program.nodes:
        if node.name in graph.names and not graph.is_backward[graph.index_of(node.name)]:
            assert assignment.node_device[node.name] == placement[graph.index_of(node.name)]
    for op, names in enumerate(graph.meta["op_params"]):
        for name in names:
            placeholder = next(p for p, fqn in program.parameters.items() if fqn == name)
            assert assignment.node_device[placeholder] == placement[op]
    assert assignment.matched_by_name >= 3  # addmm, relu, addmm_1; the weight transposes are folded by capture


def test_gradient_sums_run_with_the_backward_that_consumes_them() -> None:
    graph = OpGraph.build(
        [
            {"name": "f0", "coloc": "a"},
            {"name": "f1", "coloc": "b"},
            {"name": "g1", "is_backward": True, "coloc": "b"},
            {"name": "sum", "is_backward": True},
            {"name": "g0", "is_backward": True, "coloc": "a"},
        ],
        [{"src": "f0", "dst": "f1"}, {"src": "f1", "dst": "g1"}, {"src": "g1", "dst": "sum"}, {"src": "f0", "dst": "sum"}, {"src": "sum", "dst": "g0"}],
    )
    assert executed_placement(graph, np.array([0, 1, 1, 1, 0])).tolist() == [0, 1, 1, 0, 0]


def test_a_saved_activation_the_executor_does_not_run_stays_with_its_producer() -> None:
    # relu's output is saved for its backward through a detached copy (no node of the
    # executor's program); placing the copy on another device sends no message there
    graph = OpGraph.build(
        [
            {"name": "relu", "coloc": "r"},
            {"name": "detach"},
            {"name": "out", "coloc": "o"},
            {"name": "detach_1", "is_backward": True},
            {"name": "relu_grad", "is_backward": True, "coloc": "r"},
        ],
        [{"src": "relu", "dst": "detach"}, {"src": "relu", "dst": "out"}, {"src": "detach", "dst": "detach_1"}, {"src": "out", "dst": "relu_grad"}, {"src": "detach_1", "dst": "relu_grad"}],
    )
    placement = np.array([0, 1, 1, 1, 0])
    assert executed_placement(graph, placement).tolist() == [0, 1, 1, 0, 0]  # without the program: the copy stays placed
    assert executed_placement(graph, placement, ["relu", "out"]).tolist() == [0, 0, 1, 0, 0]


# ----------------------------------------------------------------------------- profile
def _profile() -> Profile:
    devices = tuple(DeviceProfile(f"rank{r}", "cpu", 1e11, 5e10, 2e10, 5e-6) for r in range(2))
    return Profile(devices, np.array([[math.inf, 1e9], [1e9, math.inf]]), np.array([[0.0, 1e-4], [1e-4, 0.0]]), "gloo", 1)


def test_apply_profile_makes_costs_reproduce_measured_rates() -> None:
    cluster = apply_profile(local_cpu_cluster(2), _profile())
    assert isinstance(cluster, Cluster) and cluster.num_devices == 2
    graph = OpGraph.build(
        [{"name": "mm", "kind": "matmul", "flops": 1e9, "bytes_accessed": 1e3, "output_bytes": 1e6}, {"name": "add", "kind": "elementwise", "bytes_accessed": 2e7}],
        [{"src": "mm", "dst": "add", "bytes": 1e6}],
    )
    costs = CostTable.build(graph, cluster)
    launch = 1e-6  # rlplace.costs.LAUNCH_OVERHEAD_S["cpu"]
    np.testing.assert_allclose(costs.op_time[0], [1e9 / 1e11 + launch] * 2)
    np.testing.assert_allclose(costs.op_time[1], [2e7 / 2e10 + launch] * 2)
    np.testing.assert_allclose(costs.edge_time[0, 0, 1], 1e-4 + 1e6 / 1e9)


def test_fitted_profile_sets_kind_efficiency_launch_and_message_costs() -> None:
    import dataclasses

    fitted = tuple(dataclasses.replace(d, kind_efficiency={"matmul": 0.5, "elementwise": 0.25}, launch_overhead_s=2e-5) for d in _profile().devices)
    profile = dataclasses.replace(_profile(), devices=fitted, message_overhead_s=1e-4)
    cluster = apply_profile(local_cpu_cluster(2), profile)
    assert cluster.devices[0].fp32_flops == 1e11 and cluster.devices[0].memory_bandwidth == 2e10
    graph = OpGraph.build(
        [{"name": "mm", "kind": "matmul", "flops": 1e9, "bytes_accessed": 1e3}, {"name": "add", "kind": "elementwise", "bytes_accessed": 2e7}, {"name": "v", "kind": "view"}],
        [{"src": "mm", "dst": "add", "bytes": 1e6}, {"src": "add", "dst": "v", "bytes": 0.0}],
    )
    costs = CostTable.build(graph, cluster)
    np.testing.assert_allclose(costs.op_time[:, 0], [1e9 / (1e11 * 0.5) + 2e-5, 2e7 / (2e10 * 0.25) + 2e-5, 0.0])
    np.testing.assert_allclose(costs.edge_time[0, 0, 1], 1e-4 + 1e-4 + 1e6 / 1e9)
    features, working = roofline_features(graph, 1e11, 2e10)
    assert working == 2
    assert features[FIT_KINDS.index("matmul")] == pytest.approx(1e9 / 1e11)
    assert features[FIT_KINDS.index("elementwise")] == pytest.approx(2e7 / 2e10)


def test_per_class_op_costs_price_every_executor_node_views_included() -> None:
    import dataclasses

    by_class = {"forward": 1e-5, "backward": 2e-5, "optimizer": 3e-5, "forward_view": 4e-6, "backward_view": 5e-6, "conv": 1e-4, "norm": 6e-5}
    fitted = tuple(dataclasses.replace(d, kind_efficiency={"matmul": 0.5}, launch_overhead_s=1e-5, op_overhead_by_class=by_class) for d in _profile().devices)
    cluster = apply_profile(local_cpu_cluster(2), dataclasses.replace(_profile(), devices=fitted))
    graph = OpGraph.build(
        [
            {"name": "x", "kind": "input"},
            {"name": "mm", "kind": "matmul", "flops": 1e9, "coloc": "a"},
            {"name": "v", "kind": "view"},
            {"name": "conv", "kind": "conv", "flops": 0.0},
            {"name": "gv", "kind": "view", "is_backward": True},
            {"name": "gmm", "kind": "matmul", "flops": 2e9, "is_backward": True, "coloc": "a"},
            {"name": "adam", "kind": "optimizer", "bytes_accessed": 2e7, "is_backward": True, "coloc": "a"},
        ],
        [{"src": "x", "dst": "mm"}, {"src": "mm", "dst": "v"}, {"src": "v", "dst": "conv"}, {"src": "conv", "dst": "gv"}, {"src": "gv", "dst": "gmm"}, {"src": "gmm", "dst": "adam"}],
    )
    costs = CostTable.build(graph, cluster)
    # matmul at 0.5 x 1e11 FLOP/s; optimizer has no fitted efficiency: the default 0.8 of 2e10 B/s
    expected = [0.0, 1e9 / 5e10 + 1e-5, 4e-6, 1e-4, 5e-6, 2e9 / 5e10 + 2e-5, 2e7 / (2e10 * 0.8) + 3e-5]
    np.testing.assert_allclose(costs.op_time[:, 1], expected)
    np.testing.assert_array_equal(overhead_counts(graph), [1, 1, 1, 1, 1, 1, 0])


def test_step_fit_recovers_known_efficiencies_and_op_costs() -> None:
    from rlplace.costs import OVERHEAD_CLASSES

    rng = np.random.default_rng(0)
    models = 40
    rooflines = np.zeros((models, len(FIT_KINDS)))
    rooflines[:, [FIT_KINDS.index("matmul"), FIT_KINDS.index("elementwise")]] = rng.uniform(1e-4, 1e-3, size=(models, 2))
    counts = rng.integers(0, 60, size=(models, len(OVERHEAD_CLASSES))).astype(float)
    true_overheads = np.array([2e-5, 1e-5, 3e-5, 8e-6, 6e-6, 9e-5, 7e-5])
    measured = rooflines[:, FIT_KINDS.index("matmul")] / 0.8 + rooflines[:, FIT_KINDS.index("elementwise")] / 0.4 + counts @ true_overheads
    fit = solve_step_fit(rooflines, counts, measured, prior_overhead_s=1e-5, names=[f"m{i}" for i in range(models)])
    assert set(fit.efficiency) == {"matmul", "elementwise"}  # only kinds the models contain
    assert fit.efficiency["matmul"] == pytest.approx(0.8, rel=0.1)
    assert fit.efficiency["elementwise"] == pytest.approx(0.4, rel=0.1)
    np.testing.assert_allclose([fit.overhead_by_class[name] for name in OVERHEAD_CLASSES], true_overheads, rtol=0.25, atol=5e-6)  # the weak prior pulls classes with a small share of the time
    assert all(f == pytest.approx(m, rel=0.1) for m, f in fit.fit.values())


def test_step_fit_keeps_a_measured_efficiency_and_fits_the_rest() -> None:
    from rlplace.costs import OVERHEAD_CLASSES

    rng = np.random.default_rng(1)
    models = 40
    rooflines = np.zeros((models, len(FIT_KINDS)))
    columns = [FIT_KINDS.index("matmul"), FIT_KINDS.index("optimizer")]
    rooflines[:, columns] = rng.uniform(1e-4, 1e-3, size=(models, 2))
    counts = np.zeros((models, len(OVERHEAD_CLASSES)))
    measured = rooflines[:, columns[0]] / 0.8 + rooflines[:, columns[1]] / 0.5
    # told the optimizer runs at 0.5, the fit finds matmul's 0.8 from what is left
    fit = solve_step_fit(rooflines, counts, measured, prior_overhead_s=1e-5, names=[f"m{i}" for i in range(models)], fixed={"optimizer": 0.5})
    assert fit.efficiency["optimizer"] == 0.5
    assert fit.efficiency["matmul"] == pytest.approx(0.8, rel=0.02)
    # a wrong measured value is kept, not refitted
    assert solve_step_fit(rooflines, counts, measured, prior_overhead_s=1e-5, names=[f"m{i}" for i in range(models)], fixed={"optimizer": 0.25}).efficiency["optimizer"] == 0.25


def test_profile_round_trips_and_bad_files_fail_clearly(tmp_path) -> None:
    import dataclasses

    path = tmp_path / "profile.json"
    fitted = tuple(dataclasses.replace(d, kind_efficiency={"conv": 0.4}, launch_overhead_s=1e-5, op_overhead_by_class={"conv": 9e-5}) for d in _profile().devices)
    original = dataclasses.replace(_profile(), devices=fitted, message_overhead_s=3e-4)
    write_profile(original, path)
    loaded = load_profile(path)
    assert loaded.devices == original.devices and loaded.message_overhead_s == 3e-4
    np.testing.assert_array_equal(loaded.bandwidth, _profile().bandwidth)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(RlplaceError, match="not an rlplace profile"):
        load_profile(bad)
    with pytest.raises(RlplaceError, match="calibrates 2 devices"):
        apply_profile(local_cpu_cluster(3), _profile())


# ----------------------------------------------------------------------------- commands
def test_measure_command_prints_the_contract_fields(tmp_path, capsys) -> None:
    from rlplace.measure.cli import run_measure_command

    setup = MeasureSetup.prepare(ModelRecipe(MODELS[0]), local_cpu_cluster(2))
    placement = respect_colocation(setup.graph, (np.arange(setup.graph.num_ops) * 2 >= setup.graph.num_ops).astype(np.int64))
    path = tmp_path / "placement.json"
    path.write_text(json.dumps([int(d) for d in placement]))
    args = argparse.Namespace(model=MODELS[0], placement=str(path), backend="local", steps=2, warmup=1, json=True)
    assert run_measure_command(args) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["steps"] == 2 and payload["backend"] == "local" and payload["world_size"] == 2
    assert payload["measured_step_time"] > 0 and payload["simulated_step_time"] > 0
    assert len(payload["step_times"]) == 2 and payload["placement"] == [int(d) for d in placement]


def test_rounds_pool_the_timed_steps_of_every_round() -> None:
    setup = MeasureSetup.prepare(ModelRecipe(MODELS[0]), local_cpu_cluster(2))
    placements = [np.zeros(setup.graph.num_ops, dtype=np.int64), np.ones(setup.graph.num_ops, dtype=np.int64)]
    measured = measure(setup, placements, backend="local", steps=2, warmup=0, rounds=3)
    assert [len(m.step_times) for m in measured] == [6, 6]
    with pytest.raises(RlplaceError, match="rounds=0"):
        measure(setup, placements, backend="local", rounds=0)


def test_measure_command_rejects_graph_files(tmp_path) -> None:
    from rlplace.measure.cli import run_measure_command

    path = tmp_path / "p.json"
    path.write_text("[0]")
    with pytest.raises(RlplaceError, match="measurement runs PyTorch code"):
        run_measure_command(argparse.Namespace(model="graph.json", placement=str(path)))


# ----------------------------------------------------------------------------- reward
def test_measured_reward_caches_and_penalizes_bad_placements() -> None:
    setup = MeasureSetup.prepare(ModelRecipe(MODELS[0]), local_cpu_cluster(2))
    reward = MeasuredReward(setup, MeasureOptions(backend="local", steps=1, warmup=0, failure_factor=7.0))
    placement = np.zeros(setup.graph.num_ops, dtype=np.int64)
    first = reward.evaluate(placement)
    assert reward.evaluate(placement) == first
    assert (reward.measurements, reward.cache_hits) == (1, 1)
    assert first[0] > 0 and first[1] == 0.0
    split = placement.copy()
    classes = setup.graph.coloc
    op = int(np.flatnonzero(classes != NO_CLASS)[-1])  # a backward or optimizer op away from its class
    split[op] = 1
    step_time, _ = reward.evaluate(split)
    assert step_time == pytest.approx(7.0 * reward.single_device_time)
    assert "colocation" in reward.failures[-1]


# ----------------------------------------------------------------------------- distributed
def test_two_gloo_ranks_equal_unplaced_step() -> None:
    recipe = ModelRecipe(MODELS[1])
    setup = MeasureSetup.prepare(recipe, local_cpu_cluster(2), optimizer="sgd")
    forward = np.flatnonzero(~setup.graph.is_backward)
    placement = np.zeros(setup.graph.num_ops, dtype=np.int64)
    placement[forward[len(forward) // 2 :]] = 1
    placement = respect_colocation(setup.graph, placement)
    (measurement,) = measure(setup, [placement], backend="gloo", steps=1, warmup=0, rounds=2, timeout_s=120, return_state=True)
    reference_loss, reference = reference_step(setup.module, setup.inputs, optimizer="sgd")
    assert len(measurement.step_times) == 2  # one step in each of two rounds; each round starts from the model's weights
    assert measurement.messages > 0 and measurement.segments >= 3
    assert measurement.loss == pytest.approx(reference_loss, rel=1e-6)
    assert_same_state(measurement.state, reference, atol=1e-5)
    assert no_rank_processes()


@pytest.mark.parametrize(("fault", "timeout", "message"), [("exit", 120.0, "rank 1 exited with status 3"), ("hang", 4.0, "timed out after 4 s")])
def test_dead_or_hung_rank_fails_within_timeout_and_leaves_nothing(fault: str, timeout: float, message: str) -> None:
    setup = MeasureSetup.prepare(ModelRecipe(MODELS[0]), local_cpu_cluster(2))
    placement = respect_colocation(setup.graph, (np.arange(setup.graph.num_ops) % 2).astype(np.int64))
    started = time.monotonic()
    with pytest.raises(MeasureFailure, match=message):
        measure(setup, [placement], backend="gloo", steps=2, warmup=1, timeout_s=timeout, fault={"rank": 1, "kind": fault})
    assert time.monotonic() - started < timeout + 15.0
    assert no_rank_processes()


# ----------------------------------------------------------------------------- per-op profile
def test_op_profile_times_each_distinct_signature_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlplace.measure.opprofile as opprofile
    from rlplace.measure.opprofile import profile_ops

    # A clock whose every reading advances by more than the last, so no two timed calls take
    # the same time: two signatures can then only share a time by sharing their timings
    # (on the real clock, two tiny ops timed apart could tie at nanosecond resolution).
    readings = {"now": 0.0, "step": 0.0}

    def fake_clock() -> float:
        readings["step"] += 1e-9
        readings["now"] += readings["step"]
        return readings["now"]

    monkeypatch.setattr(opprofile, "op_clock", lambda device: fake_clock)

    class Twins(nn.Module):
        """Three equal Linear layers: the last two have the same signatures (the first's input needs no gradient)."""

        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 8)
            self.b = nn.Linear(8, 8)
            self.c = nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.relu(self.b(torch.relu(self.a(x)))))

    program = export_forward(Twins(), (torch.randn(4, 8),))
    profile = profile_ops(program, repeats=3)
    names = [node.name for node in program.nodes]
    assert set(profile.forward_s) == set(names) == set(profile.backward_s)
    assert profile.signatures < len(names)
    assert all(t > 0 for t in profile.forward_s.values())
    addmms = [node.name for node in program.nodes if "addmm" in str(node.target)]
    assert len(addmms) == 3 and profile.forward_s[addmms[1]] == profile.forward_s[addmms[2]] != profile.forward_s[addmms[0]]
    assert all(profile.backward_s[name] > 0 for name in addmms)  # weights need gradients


def test_robust_time_leaves_out_preempted_calls_unless_most_were() -> None:
    from rlplace.measure.opprofile import robust_time

    # Clean calls 1, 2, 3 (median 2); the preempted 50 and 60 are left out.
    assert robust_time([(1.0, False), (50.0, True), (3.0, False), (60.0, True), (2.0, False)]) == 2.0
    # Only one of three ran clean: the median of all of them.
    assert robust_time([(1.0, False), (5.0, True), (7.0, True)]) == 5.0
    # Half clean is enough: median of the clean two.
    assert robust_time([(1.0, False), (3.0, False), (9.0, True), (9.0, True)]) == 2.0


def test_op_profile_keeps_the_fastest_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlplace.measure import opprofile

    # Each signature's forward and forward+backward, per pass: pass 2 is slow, pass 3 fastest.
    times = {"forward": [3.0, 6.0, 2.0], "both": [8.0, 16.0, 7.0]}
    calls: dict[object, int] = {}

    def fake_sample(run: object, repeats: int) -> float:
        calls[run] = calls.get(run, 0) + 1
        return times[run.__name__][calls[run] - 1]  # type: ignore[attr-defined]

    monkeypatch.setattr(opprofile, "_sample", fake_sample)

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(x)

    program = export_forward(One(), (torch.randn(2, 4),))
    profile = opprofile.profile_ops(program, repeats=1, passes=3)
    (name,) = [node.name for node in program.nodes if "addmm" in str(node.target)]
    assert all(count == 3 for count in calls.values())
    assert profile.forward_s[name] == 2.0 and profile.backward_s[name] == 7.0 - 2.0


def _profiled_graph() -> OpGraph:
    return OpGraph.build(
        [
            {"name": "x", "kind": "input"},
            {"name": "mm", "kind": "matmul", "flops": 1e9, "coloc": "a"},
            {"name": "other", "kind": "elementwise", "bytes_accessed": 1e6},
            {"name": "g1", "kind": "matmul", "flops": 1e9, "is_backward": True, "coloc": "a"},
            {"name": "g2", "kind": "matmul", "flops": 3e9, "is_backward": True, "coloc": "a"},
            {"name": "adam", "kind": "optimizer", "bytes_accessed": 1e6, "is_backward": True, "coloc": "a"},
        ],
        [{"src": "x", "dst": "mm"}, {"src": "mm", "dst": "other"}, {"src": "other", "dst": "g1"}, {"src": "g1", "dst": "g2"}, {"src": "g2", "dst": "adam"}],
    )


def test_profiled_costs_replace_forward_and_share_backward_by_class() -> None:
    from rlplace.measure.opprofile import IsolationCorrection, OpProfile, profiled_costs

    graph = _profiled_graph()
    costs = CostTable.build(graph, local_cpu_cluster(2))
    profile = OpProfile(forward_s={"mm": 1e-3, "x": 5.0}, backward_s={"mm": 4e-3, "x": 5.0}, signatures=1)
    profiled = profiled_costs(graph, costs, profile, correction=IsolationCorrection(scale=2.0, forward_s=1e-5, backward_s=2e-5))
    # mm: 2 x measured + 10 us; g1, g2 share 4 ms like their modelled times (~1:3, plus launch costs), each
    # scaled and + 20 us; the input, the unprofiled op and the optimizer update as modelled
    g1_share = costs.op_time[3, 0] / (costs.op_time[3, 0] + costs.op_time[4, 0])
    assert 0.25 <= g1_share < 0.26
    expected = [costs.op_time[0, 0], 2e-3 + 1e-5, costs.op_time[2, 0], 8e-3 * g1_share + 2e-5, 8e-3 * (1 - g1_share) + 2e-5, costs.op_time[5, 0]]
    for device in range(2):
        np.testing.assert_allclose(profiled.op_time[:, device], expected)
    assert profiled.edge_time is costs.edge_time and not profiled.op_time.flags.writeable
    # a per-node cost below minus the op's own time leaves zero, never a negative time
    clamped = profiled_costs(graph, costs, profile, correction=IsolationCorrection(forward_s=-1.0))
    assert clamped.op_time[1, 0] == 0.0 and clamped.op_time[3, 0] == pytest.approx(4e-3 * g1_share)


def test_isolation_correction_recovers_a_known_scale_and_node_costs() -> None:
    from rlplace.measure.opprofile import solve_isolation_correction

    rng = np.random.default_rng(3)
    rows = []
    for _ in range(8):
        rest, isolated, n_forward, n_backward = rng.uniform(1e-4, 1e-3), rng.uniform(1e-3, 2e-2), rng.integers(2, 60), rng.integers(2, 60)
        rows.append((rest + 1.3 * isolated + 6e-6 * n_forward - 9e-6 * n_backward, rest, isolated, n_forward, n_backward))
    correction = solve_isolation_correction(rows, [f"m{i}" for i in range(8)])
    assert correction.scale == pytest.approx(1.3, rel=1e-6)
    assert correction.forward_s == pytest.approx(6e-6, rel=1e-5) and correction.backward_s == pytest.approx(-9e-6, rel=1e-5)
    assert all(f == pytest.approx(m, rel=1e-6) for m, f, _ in correction.fit.values())


def test_fitted_isolation_correction_fits_calibration_steps_no_worse_than_none() -> None:
    from rlplace.measure.opprofile import fit_isolation_correction

    models = ("linear-narrow", "tiny-ops", "views", "tiny-linear")
    correction = fit_isolation_correction(local_cpu_cluster(2, _profile()), models=models, repeats=5)
    assert set(correction.fit) == set(models) and 0.1 <= correction.scale <= 10.0
    measured, corrected, uncorrected = (np.array(column) for column in zip(*correction.fit.values(), strict=True))
    assert np.all(measured > 0) and np.all(np.isfinite(corrected))
    # scale 1 with no per-node cost is one candidate of the least squares, so the fit is at least as good
    assert np.sum(((corrected - measured) / measured) ** 2) <= np.sum(((uncorrected - measured) / measured) ** 2) * (1 + 1e-9)


def test_setup_with_op_profile_prices_captured_forward_ops_as_measured() -> None:
    setup = MeasureSetup.prepare(ModelRecipe("rlplace.measure.models:mlp"), local_cpu_cluster(2, _profile()))
    from rlplace.measure.opprofile import IsolationCorrection

    profiled = setup.with_op_profile(repeats=3, correction=IsolationCorrection())
    forward = [i for i, name in enumerate(setup.graph.names) if not setup.graph.is_backward[i] and name in {n.name for n in setup.program.nodes}]
    assert forward and profiled.graph is setup.graph
    changed = profiled.costs.op_time[forward, 0] != setup.costs.op_time[forward, 0]
    assert changed.all()
    optimizer = np.flatnonzero(np.array(setup.graph.kinds) == "optimizer")
    np.testing.assert_array_equal(profiled.costs.op_time[optimizer], setup.costs.op_time[optimizer])
    assert profiled.simulate(np.zeros(setup.graph.num_ops, dtype=np.int64)).step_time > 0
