"""The method registry (`rlplace.methods`): every name, the same inputs for every method."""

from __future__ import annotations

import importlib
import inspect
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from rlplace.baselines import METHODS, THROUGHPUT_ONLY
from rlplace.cluster_spec import load_cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.formats.dnn_partitioning import shared_data_dir
from rlplace.load import load_model
from rlplace.methods import METHOD_NAMES, check_method_names, run_method
from rlplace.pipeline import decide
from rlplace.synthetic import synthetic_graph

DATA = shared_data_dir()


def test_names_cover_baselines_accelerate_and_policy_and_expert_files() -> None:
    assert set(METHODS) < set(METHOD_NAMES) and {"accelerate", "policy"} <= set(METHOD_NAMES)
    check_method_names(["m-topo", "policy", "expert:anything.json"])
    with pytest.raises(RlplaceError, match=r"unknown method 'nope'; valid methods: .* \(and expert:FILE\)"):
        check_method_names(["m-topo", "nope"])


def _method_function(name: str) -> tuple[ModuleType, str]:
    """(module, attribute) of the function `run_method` calls for method ``name``."""
    if name == "accelerate":
        return importlib.import_module("rlplace.baselines.accelerate_map"), "place_module"
    if name == "policy":
        return importlib.import_module("rlplace.policy_method"), "place"
    from rlplace.baselines import _MODULES

    module = importlib.import_module(f"rlplace.baselines.{_MODULES[name]}")
    return module, "place_with_proof" if hasattr(module, "place_with_proof") else "place"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_takes_microbatches_and_schedule(name: str) -> None:
    module, attribute = _method_function(name)
    parameters = inspect.signature(getattr(module, attribute)).parameters
    if name != "policy":  # the policy swallows the schedule (``**_``) until it scores under it
        assert parameters["microbatches"].default == 1 and parameters["schedule"].default == "gpipe"
    graph, cluster = synthetic_graph("layered", n=6, seed=0), load_cluster("2xV100-pcie")
    prefix = (object(),) if name == "accelerate" else ()
    inspect.signature(getattr(module, attribute)).bind(*prefix, graph, cluster, None, objective="pipelined", seed=0, microbatches=2, schedule="1f1b")


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_the_registry_passes_microbatches_and_schedule_to_every_method(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    graph, cluster = synthetic_graph("layered", n=6, seed=0), load_cluster("2xV100-pcie")
    costs = CostTable.build(graph, cluster)
    module, attribute = _method_function(name)
    seen: dict[str, Any] = {}

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.update(kwargs)
        placement = np.zeros(graph.num_ops, dtype=np.int64)
        return (placement, None) if attribute == "place_with_proof" else placement

    monkeypatch.setattr(module, attribute, spy)
    run_method(name, graph, cluster, costs, objective="pipelined", microbatches=3, schedule="1f1b", seed=5, module=object())
    assert {key: seen[key] for key in ("objective", "seed", "microbatches", "schedule")} == {
        "objective": "pipelined", "seed": 5, "microbatches": 3, "schedule": "1f1b",
    }  # fmt: skip


@pytest.mark.parametrize("name", [name for name in METHODS if name not in THROUGHPUT_ONLY])
def test_every_baseline_places_under_1f1b_through_the_registry(name: str) -> None:
    graph, cluster = synthetic_graph("layered", n=12, seed=3, training=True), load_cluster("2xV100-pcie")
    costs = CostTable.build(graph, cluster)
    options = {"evaluations": 20} if name == "local-search" else {}
    result = run_method(name, graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b", **options)
    direct = METHODS[name](graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b", **options)
    np.testing.assert_array_equal(result.placement, direct)


def test_microbatches_reach_the_methods_that_take_them() -> None:
    graph, cluster = synthetic_graph("layered", n=40, seed=1, training=True), load_cluster("4xT4")
    costs = CostTable.build(graph, cluster)
    for method in ("dp", "random"):
        through_registry = run_method(method, graph, cluster, costs, objective="pipelined", microbatches=8, seed=0)
        direct = METHODS[method](graph, cluster, costs, objective="pipelined", seed=0, microbatches=8)
        np.testing.assert_array_equal(through_registry.placement, direct)
    # The simulator ignores M outside ``pipelined``, so passing it there changes nothing.
    latency = run_method("dp", graph, cluster, costs, objective="latency", microbatches=8)
    np.testing.assert_array_equal(latency.placement, METHODS["dp"](graph, cluster, costs, objective="latency"))


def test_the_schedule_reaches_the_methods_that_score_with_the_simulator() -> None:
    graph, cluster = synthetic_graph("layered", n=40, seed=1, training=True), load_cluster("4xT4")
    costs = CostTable.build(graph, cluster)
    for method in ("dp", "random", "local-search"):
        options = {"evaluations": 30} if method == "local-search" else {}
        through_registry = run_method(method, graph, cluster, costs, objective="pipelined", microbatches=8, schedule="1f1b", seed=0, **options)
        direct = METHODS[method](graph, cluster, costs, objective="pipelined", seed=0, microbatches=8, schedule="1f1b", **options)
        np.testing.assert_array_equal(through_registry.placement, direct)


def test_evaluate_json_rows_carry_the_schedule(capfd: pytest.CaptureFixture[str]) -> None:
    from rlplace.cli import main

    methods = ["single", "m-topo", "dp", "local-search"]
    argv = ["evaluate", "synthetic:layered:n=30", "--cluster", "4xT4", "--objective", "pipelined", "--microbatches", "4", "--schedule", "1f1b", "--max-groups", "12"]
    status = main([*argv, "--methods", ",".join(methods), "--json"])
    captured = capfd.readouterr()
    assert status == 0, captured.err
    rows = json.loads(captured.out)
    assert [row["method"] for row in rows] == methods
    assert all(row["error"] is None and row["schedule"] == "1f1b" for row in rows)
    # A method that fails (accelerate needs a model, not a graph) gets a row with the schedule too.
    main([*argv, "--methods", "single,accelerate", "--json"])
    captured = capfd.readouterr()
    rows = json.loads(captured.out)
    assert [(row["method"], row["schedule"], row["error"] is None) for row in rows] == [("single", "1f1b", True), ("accelerate", "1f1b", False)]


def test_a_baseline_result_says_nothing_about_optimality_unless_it_proves_it() -> None:
    graph, cluster = synthetic_graph("layered", n=30, seed=2), load_cluster("4xT4")
    result = run_method("m-topo", graph, cluster, CostTable.build(graph, cluster), objective="latency")
    assert result.optimal is None


@pytest.mark.skipif(not (DATA / "graphs").is_dir(), reason=f"shared data absent at {DATA}")
def test_expert_splits_go_through_the_registry_uncoarsened() -> None:
    from rlplace.formats import load_placement_spec
    from rlplace.load import resolve_cluster

    model = load_model(str(DATA / "graphs" / "bert24_training__layer.json"))
    spec = f"expert:{DATA / 'human-experts' / 'bert24_training_expert.json'}"
    cluster = resolve_cluster(None, model)
    decision = decide(model, cluster, spec, objective="throughput", max_groups=4)
    assert decision.coarsening is None and decision.optimal is None
    np.testing.assert_array_equal(decision.placement, load_placement_spec(spec, model.graph, cluster))
    assert decision.to_json()["optimal"] is None
