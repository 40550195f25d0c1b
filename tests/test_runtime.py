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
from rlplace.runtime.run import run_pipeline
from rlplace.runtime.stages import SplitSpec, forward_sequence, module_boundaries, snapped_placement, split_spec

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
