"""Split specs of stage placements and ``rlplace run`` with torch.distributed.pipelining (gloo, CPU)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from rlplace.cli import main
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.measure.executor import reference_step
from rlplace.measure.launch import MeasureFailure
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.session import local_cpu_cluster
from rlplace.runtime.overhead import modeled_busy, stage_overhead_from_cpu
from rlplace.runtime.run import run_pipeline
from rlplace.runtime.stages import (
    SplitSpec,
    forward_sequence,
    module_boundaries,
    snapped_placement,
    split_spec,
    stage_action_ops,
    stage_overhead,
    stage_runs,
    with_stage_overhead,
)

MODELS = Path(__file__).parent / "fixtures" / "pipe_models.py"
MLP = f"{MODELS}:mlp"
TRANSFORMER = f"{MODELS}:transformer"


@cache
def captured(spec: str) -> tuple[ModelRecipe, torch.nn.Module, Any, OpGraph]:
    from rlplace.capture import capture_model

    recipe = ModelRecipe(spec)
    module, inputs = recipe.build()
    return recipe, module, inputs, capture_model(module, inputs, training=True, optimizer="sgd", name=spec.rpartition(":")[2])


def boundary(graph: OpGraph, module: torch.nn.Module, fqn: str, point: str) -> int:
    """Forward-sequence position of ``point`` of module ``fqn``."""
    return next(b.position for b in module_boundaries(graph, module) if b.module == fqn and b.point == point)


def by_module(graph: OpGraph, second: tuple[str, ...]) -> np.ndarray:
    """Ops (forward, backward, update) of modules in ``second`` on device 1, the rest on 0."""
    paths = graph.meta["module_paths"]
    return np.array([1 if paths[op].startswith(second) else 0 for op in range(graph.num_ops)], dtype=np.int64)


def no_children_left() -> bool:
    return not psutil.Process().children(recursive=True)


# ------------------------------------------------------------------ split specs (no ranks)
def test_split_spec_of_mlp_is_exact() -> None:
    _, module, _, graph = captured(MLP)
    spec = split_spec(graph, by_module(graph, ("2", "3", "4")), local_cpu_cluster(2), microbatches=2, module=module)
    data = spec.to_json()
    assert data["split_spec"] == {"2": "SplitPoint.BEGINNING"}
    assert data["stages"] == [{"stage": 0, "device": 0, "device_name": "rank0"}, {"stage": 1, "device": 1, "device_name": "rank1"}]
    assert (data["num_stages"], data["microbatches"], data["anchors_moved"]) == (2, 2, 0)
    # the placement was already what torch runs: snapping costs nothing
    assert data["snapped_step_time"] == pytest.approx(data["step_time"])
    assert SplitSpec.from_json(json.loads(json.dumps(data))).split_points == spec.split_points


def test_split_spec_of_transformer_names_its_blocks() -> None:
    _, module, _, graph = captured(TRANSFORMER)
    cuts = [boundary(graph, module, "layers.0.proj", "BEGINNING"), boundary(graph, module, "layers.1", "BEGINNING"), boundary(graph, module, "norm", "BEGINNING")]
    placement = snapped_placement(graph, cuts, [0, 1, 2, 3])
    spec = split_spec(graph, placement, local_cpu_cluster(4), module=module, simulate_steps=False)
    assert spec.split_points == {"layers.0.proj": "SplitPoint.BEGINNING", "layers.1": "SplitPoint.BEGINNING", "norm": "SplitPoint.BEGINNING"}
    assert spec.stage_devices == (0, 1, 2, 3)
    assert spec.anchors_moved == 0
    assert np.array_equal(spec.placement, placement)


def test_containers_are_not_split_points() -> None:
    _, module, _, graph = captured(TRANSFORMER)
    names = {b.module for b in module_boundaries(graph, module)}
    assert "layers" not in names  # an nn.ModuleList: never called, wrapping it splits nothing
    assert {"embed", "scale", "layers.0", "layers.1.fc2", "head"} <= names


def test_cut_inside_a_leaf_module_snaps_to_its_boundary_and_is_simulated() -> None:
    _, module, _, graph = captured(TRANSFORMER)
    sequence = forward_sequence(graph)
    assert [graph.names[op] for op in sequence[:3]] == ["embedding", "mul", "add"]  # ScaleShift runs mul, add
    placement = snapped_placement(graph, [2], [0, 1])  # cut between mul and add
    spec = split_spec(graph, placement, local_cpu_cluster(2), microbatches=2, module=module)
    # both boundaries of `scale` move one op; the tie goes to BEGINNING
    assert spec.split_points == {"scale": "SplitPoint.BEGINNING"}
    assert spec.anchors_moved == 1
    assert spec.placement[sequence[1]] == 1 and placement[sequence[1]] == 0
    assert spec.step_time is not None and spec.snapped_step_time is not None and spec.snapped_step_time != spec.step_time


def test_non_contiguous_placement_is_one_clear_error() -> None:
    _, module, _, graph = captured(MLP)
    placement = by_module(graph, ("2", "3"))  # devices 0, 1, 0 along the forward pass
    with pytest.raises(RlplaceError, match=r"not a contiguous stage placement.*--stages"):
        split_spec(graph, placement, local_cpu_cluster(2), module=module)


def test_looped_placement_needs_interleaved() -> None:
    _, module, _, graph = captured(TRANSFORMER)
    cuts = [boundary(graph, module, "layers.0", "BEGINNING"), boundary(graph, module, "layers.1", "BEGINNING"), boundary(graph, module, "norm", "BEGINNING")]
    placement = snapped_placement(graph, cuts, [0, 1, 0, 1])
    with pytest.raises(RlplaceError, match="interleaved-1f1b"):
        split_spec(graph, placement, local_cpu_cluster(2), module=module, simulate_steps=False)
    spec = split_spec(graph, placement, local_cpu_cluster(2), module=module, schedule="interleaved-1f1b", simulate_steps=False)
    assert (spec.num_stages, spec.num_ranks, spec.stage_devices) == (4, 2, (0, 1, 0, 1))


def test_run_rejects_non_contiguous_placement_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, _, graph = captured(MLP)
    placement_file = tmp_path / "placement.json"
    placement_file.write_text(json.dumps(by_module(graph, ("2", "3")).tolist()))
    assert main(["run", MLP, "--placement", str(placement_file), "--optimizer", "sgd"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: placement is not a contiguous stage placement")
    assert no_children_left()


# ------------------------------------------------------------------ real pipelines on gloo ranks
def assert_matches_unpipelined(spec_name: str, spec: SplitSpec, schedule_run: Any) -> None:
    _, module, inputs, _ = captured(spec_name)
    loss, state = reference_step(module, inputs, optimizer="sgd")
    assert schedule_run.loss == pytest.approx(loss, rel=1e-5, abs=1e-7)
    assert sorted(schedule_run.state["grads"]) == sorted(state["grads"])
    for name, grad in state["grads"].items():
        np.testing.assert_allclose(np.array(schedule_run.state["grads"][name]), grad.double().numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


def test_gpipe_mlp_on_two_gloo_ranks_matches_the_unpipelined_step() -> None:
    recipe, module, _, graph = captured(MLP)
    spec = split_spec(graph, by_module(graph, ("2", "3", "4")), local_cpu_cluster(2), microbatches=2, module=module, simulate_steps=False)
    run = run_pipeline(recipe, spec, steps=1, warmup=0, optimizer="sgd", return_state=True, timeout_s=90)
    assert (run.num_stages, run.world_size) == (2, 2)
    assert run.stage_parameters == (4 * 8 + 8, 8 * 8 + 8 + 8 * 3 + 3)
    assert_matches_unpipelined(MLP, spec, run)
    assert no_children_left()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "schedule"),
    [(MLP, "1f1b"), (TRANSFORMER, "gpipe"), (TRANSFORMER, "1f1b"), (TRANSFORMER, "interleaved-1f1b")],
    ids=["mlp-1f1b", "transformer-gpipe", "transformer-1f1b", "transformer-interleaved-1f1b"],
)
def test_schedules_match_the_unpipelined_step(model: str, schedule: str) -> None:
    recipe, module, _, graph = captured(model)
    if model == MLP:
        placement = by_module(graph, ("2", "3", "4"))
    else:
        cuts = [boundary(graph, module, name, "BEGINNING") for name in ("layers.0.proj", "layers.1", "norm")]
        placement = snapped_placement(graph, cuts if schedule == "interleaved-1f1b" else cuts[1:2], [0, 1, 0, 1] if schedule == "interleaved-1f1b" else [0, 1])
    spec = split_spec(graph, placement, local_cpu_cluster(2), microbatches=4, schedule=schedule, module=module, simulate_steps=False)
    run = run_pipeline(recipe, spec, steps=1, warmup=0, optimizer="sgd", return_state=True, timeout_s=120)
    assert run.num_stages == spec.num_stages
    assert_matches_unpipelined(model, spec, run)
    assert no_children_left()


def test_a_failing_rank_is_one_error_and_leaves_no_process() -> None:
    recipe, module, _, graph = captured(MLP)
    spec = split_spec(graph, by_module(graph, ("2", "3", "4")), local_cpu_cluster(2), microbatches=2, module=module, simulate_steps=False)
    broken = SplitSpec({"no_such_module": "SplitPoint.BEGINNING"}, spec.stage_devices, spec.device_names, 2, "gpipe", 0, spec.placement)
    with pytest.raises(MeasureFailure, match=r"rank [01] failed: AttributeError"):
        run_pipeline(recipe, broken, steps=1, warmup=0, optimizer="sgd", timeout_s=90)
    assert no_children_left()


@pytest.mark.slow
def test_cli_run_prints_measured_beside_simulated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, module, _, graph = captured(MLP)
    spec = split_spec(graph, by_module(graph, ("2", "3", "4")), local_cpu_cluster(2), microbatches=2, module=module)
    spec_file = tmp_path / "split.json"
    spec_file.write_text(json.dumps(spec.to_json()))
    assert main(["run", MLP, "--placement", str(spec_file), "--schedule", "1f1b", "--steps", "2", "--warmup", "1", "--optimizer", "sgd", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["split_spec"] == {"2": "SplitPoint.BEGINNING"}
    assert (payload["schedule"], payload["microbatches"], payload["num_stages"], payload["world_size"], payload["backend"]) == ("1f1b", 2, 2, 2, "gloo")
    assert len(payload["step_times"]) == 2 and payload["measured_step_time"] > 0
    assert payload["simulated_step_time"] == pytest.approx(spec.snapped_step_time)
    assert no_children_left()


# ------------------------------------------------------------------ rlplace place --split-spec
def test_place_writes_the_split_spec_of_a_dp_placement(tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    assert main(["place", MLP, "--cluster", "2xV100-pcie", "--method", "dp", "--objective", "pipelined", "--microbatches", "2", "--split-spec", str(out), "--json"]) == 0
    data = json.loads(out.read_text())
    assert data["format"] == "rlplace-split-spec" and data["microbatches"] == 2 and data["schedule"] == "gpipe"
    assert data["num_stages"] == len(data["split_spec"]) + 1 == len(data["stages"])
    assert set(data["split_spec"].values()) <= {"SplitPoint.BEGINNING", "SplitPoint.END"}
    assert [stage["device_name"] for stage in data["stages"]] == [data["device_names"][stage["device"]] for stage in data["stages"]]


def test_place_split_spec_of_a_non_contiguous_method_is_exit_2_and_no_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "split.json"
    assert main(["place", MLP, "--cluster", "2xV100-pcie", "--method", "round-robin", "--split-spec", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a contiguous stage placement" in err[0]
    assert not out.exists()


def test_python_api_result_gives_the_split_spec() -> None:
    import rlplace

    _, module, inputs, _ = captured(MLP)
    result = rlplace.place(module, inputs, cluster="2xV100-pcie", method="dp", objective="pipelined", microbatches=2)
    spec = result.split_spec()
    assert spec.microbatches == 2 and spec.num_stages == len(spec.split_points) + 1
    assert spec.placement.shape == result.placement.shape and spec.device_names == tuple(result.cluster.device_names)


# ------------------------------------------------- the prediction: torch's cost per stage action
def chain_with_backward() -> tuple[OpGraph, np.ndarray]:
    """f0 (device 0) -> f1 (device 1) -> b1 (device 1) -> b0 (device 0), f0 -> b0; per
    micro-batch of M = 4: forward 1, backward 2, each cross-device transfer 1 (step values
    M times that); colocation classes pair f0 with b0 and f1 with b1."""
    ops = [
        {"name": "f0", "times": {"cpu": 4.0}, "coloc": "a"},
        {"name": "f1", "times": {"cpu": 4.0}, "coloc": "b"},
        {"name": "b1", "times": {"cpu": 8.0}, "coloc": "b", "is_backward": True},
        {"name": "b0", "times": {"cpu": 8.0}, "coloc": "a", "is_backward": True},
    ]
    edges = [{"src": "f0", "dst": "f1", "bytes": 0.0, "time": 4.0}, {"src": "f1", "dst": "b1", "bytes": 0.0, "time": 0.0}, {"src": "b1", "dst": "b0", "bytes": 0.0, "time": 4.0}, {"src": "f0", "dst": "b0", "bytes": 0.0, "time": 0.0}]
    return OpGraph.build(ops, edges, time_classes=("cpu",)), np.array([0, 1, 1, 0], dtype=np.int64)


def test_stage_actions_are_each_stages_first_forward_and_first_backward_op() -> None:
    graph, placement = chain_with_backward()
    runs = stage_runs(graph, placement)
    assert runs == [(0, 0, 0), (1, 1, 1)]
    assert stage_action_ops(graph, runs).tolist() == [0, 1, 3, 2]  # f0, f1, then stage 0's b0, stage 1's b1


def test_stage_overhead_is_paid_by_every_stage_action_of_every_microbatch() -> None:
    # GPipe, M = 4, h = 0.5 on f0, f1, b1, b0: per micro-batch forward 1.5, backward 2.5, transfers 1.
    # d0: f0 at 0, 1.5, 3, 4.5; link 0->1 [1.5,2.5], [3,4], [4.5,5.5], [6,7]; d1: f1 at 2.5, 4, 5.5, 7
    # (each arrives as the previous ends), b1 at 8.5, 11, 13.5, 16; link 1->0 [11,12], [13.5,14.5],
    # [16,17], [18.5,19.5]; d0: b0 at 12, 14.5, 17, 19.5 -> 22 (17 without the overhead).
    from rlplace.cluster import Cluster, Device
    from rlplace.costs import CostTable
    from rlplace.simulate import simulate

    graph, placement = chain_with_backward()
    cluster = Cluster.build("two", [Device(f"d{i}", "cpu", "cpu", 1.0, 1.0, 1e12, 1.0) for i in range(2)], intra_host=(1e9, 0.0))
    costs = CostTable.build(graph, cluster)
    assert simulate(graph, cluster, costs, placement, objective="pipelined", microbatches=4).step_time == 17.0
    charged = with_stage_overhead(costs, stage_action_ops(graph, stage_runs(graph, placement)), 0.5)
    result = simulate(graph, cluster, charged, placement, objective="pipelined", microbatches=4, schedule="gpipe", record=True)
    assert result.microbatch_start.T.tolist() == [[0, 1.5, 3, 4.5], [2.5, 4, 5.5, 7], [8.5, 11, 13.5, 16], [12, 14.5, 17, 19.5]]
    assert result.step_time == 22.0
    assert with_stage_overhead(costs, np.array([0]), 0.0) is costs


def test_stage_overhead_from_cpu_is_the_median_rank_excess_per_action() -> None:
    # rank 0: (10 - 4) ms / 8 actions = 0.75 ms; rank 1: (12 - 8) / 8 = 0.5 ms -> median 0.625 ms
    assert stage_overhead_from_cpu([0.010, 0.012], [0.004, 0.008], [8, 8]) == pytest.approx(0.000625, rel=1e-12)
    assert stage_overhead_from_cpu([0.001], [0.002], [8]) == 0.0  # never negative
    with pytest.raises(ValueError):
        stage_overhead_from_cpu([0.01, 0.01], [0.0], [8, 8])


def test_modeled_busy_counts_every_microbatch_and_its_fixed_part() -> None:
    from rlplace.costs import CostTable

    costs = CostTable(np.array([[4.0, 4.0], [8.0, 8.0]]), np.zeros((0, 2, 2)), "s", op_fixed=np.array([[1.0, 1.0], [0.0, 0.0]]))
    # op 0 on device 1: 4 + 3 x 1 = 7; op 1 on device 0: 8
    assert modeled_busy(costs, np.array([1, 0]), 4).tolist() == [8.0, 7.0]


def test_profile_carries_the_stage_overhead_to_the_split_spec_prediction(tmp_path: Path) -> None:
    import dataclasses

    from rlplace.profile import STAGE_OVERHEAD_META_KEY, Profile

    _, module, _, graph = captured(MLP)
    base = local_cpu_cluster(2)
    placement = by_module(graph, ("2", "3", "4"))
    plain = split_spec(graph, placement, base, microbatches=2, module=module)
    profile_path = tmp_path / "p.json"
    cluster = base
    assert stage_overhead(cluster) == 0.0
    charged_cluster = dataclasses.replace(cluster, meta={**cluster.meta, STAGE_OVERHEAD_META_KEY: 1e-3})
    assert stage_overhead(charged_cluster) == 1e-3
    charged = split_spec(graph, placement, charged_cluster, microbatches=2, module=module)
    # 2 stages x 2 micro-batches x (forward, backward) = 8 actions of 1 ms: device 0 runs its 4
    # (its forwards and backwards bracket the step), so the step grows by at least 4 ms and by
    # at most all 8.
    assert 4e-3 - 1e-12 <= charged.snapped_step_time - plain.snapped_step_time <= 8e-3 + 1e-12
    assert 4e-3 - 1e-12 <= charged.step_time - plain.step_time <= 8e-3 + 1e-12
    # a version 2 profile file (before the field) loads with 0; version 3 round-trips it
    saved = Profile.from_json(json.loads(json.dumps({**_minimal_profile_json(), "version": 2})))
    assert saved.stage_overhead_s == 0.0
    again = dataclasses.replace(saved, stage_overhead_s=2.5e-4)
    again.save(profile_path)
    loaded = Profile.load(profile_path)
    assert loaded.stage_overhead_s == 2.5e-4
    assert loaded.apply(cluster).meta[STAGE_OVERHEAD_META_KEY] == 2.5e-4
    assert STAGE_OVERHEAD_META_KEY not in saved.apply(cluster).meta


def _minimal_profile_json() -> dict[str, Any]:
    device = {"name": "rank0", "device": "cpu", "matmul_flops": 1e10, "conv_flops": 1e10, "memory_bandwidth": 1e10, "op_overhead_s": 1e-6}
    return {
        "format": "rlplace-profile", "backend": "gloo", "threads": 1, "devices": [device, {**device, "name": "rank1"}],
        "links": {"bandwidth": [[None, 1e9], [1e9, None]], "latency": [[None, 1e-4], [1e-4, None]], "message_overhead_s": 0.0},
    }  # fmt: skip
