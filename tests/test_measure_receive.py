"""What a message costs its receiver (`rlplace.measure.receive`, `rlplace.profile.ReceiveCost`):
hand-computed states and step times on tiny graphs, the fit recovering costs it was built
from, and the profile carrying the cost through JSON."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from rlplace.cluster import Cluster, Device
from rlplace.costs import MESSAGE_CPU_META_KEY, CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.measure.assign import simulate_as_executed
from rlplace.measure.receive import receive_state, receiver_states, receivers
from rlplace.measure.receive_fit import MeasuredSplit, fit_receive_cost, module_units, unit_splits
from rlplace.profile import RECEIVE_COST_META_KEY, DeviceProfile, Profile, ReceiveCost


def two_devices(meta: dict[str, object] | None = None) -> Cluster:
    devices = [Device(f"d{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(2)]
    cluster = Cluster.build("pair", devices, intra_host=(1e9, 0.0))
    return dataclasses.replace(cluster, meta=dict(cluster.meta) | (meta or {}))


def toy_graph(times: dict[str, float], edges: list[tuple[str, str, float]]) -> OpGraph:
    ops = [{"name": name, "times": {"accelerator": t}} for name, t in times.items()]
    return OpGraph.build(ops, [{"src": s, "dst": d, "bytes": 0.0, "time": t} for s, d, t in edges], time_classes=("accelerator",))


def step(graph: OpGraph, cluster: Cluster, placement: list[int]) -> float:
    return float(simulate_as_executed(graph, cluster, CostTable.build(graph, cluster), np.array(placement, dtype=np.int64)).step_time)


def test_each_transfer_is_received_by_its_first_consumer_on_the_destination():
    graph = toy_graph({"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}, [("a", "b", 0.1), ("a", "c", 0.1), ("b", "d", 0.1)])
    placement = np.array([0, 1, 1, 0], dtype=np.int64)
    got = receivers(graph.edge_src, graph.edge_dst, placement, 2, np.array([0, 1]), np.array([1, 0]))
    assert list(got) == [1, 3]  # a's output reaches b before c; b's reaches d
    with pytest.raises(RlplaceError, match="no consumer"):
        receivers(graph.edge_src, graph.edge_dst, placement, 2, np.array([2]), np.array([0]))


def test_a_receiver_is_busy_or_has_waited_since_its_last_op_or_the_step_start():
    placement = np.array([1, 1, 0], dtype=np.int64)
    start, finish = np.array([0.0, 3.0, 1.0]), np.array([1.0, 4.0, 2.0])
    busy, waited = receiver_states(placement, start, finish, np.array([1, 1, 1, 1, 0]), np.array([0.5, 2.0, 3.0, 5.0, 0.7]))
    # device 1 runs [0, 1] and [3, 4]; an op starting right at the arrival does not count as busy
    assert list(busy) == [True, False, False, False, False]
    np.testing.assert_allclose(waited, [0.0, 1.0, 2.0, 1.0, 0.7])


def test_an_idle_receiver_pays_for_its_wait_instead_of_the_constant_cost():
    graph = toy_graph({"a": 1.0, "b": 2.0}, [("a", "b", 0.5)])
    cost = ReceiveCost(idle_s=1.0, idle_time_s=1.0, busy_s=0.3)
    cluster = two_devices({MESSAGE_CPU_META_KEY: 0.125, RECEIVE_COST_META_KEY: cost.to_json()})
    # the constant cost's schedule: a [0, 1.125], transfer to 1.625, so b waited 1.625 idle;
    # without the constant: a [0, 1], transfer [1, 1.5], b [1.5, 3.5 + 1 - e^-1.625]
    assert step(graph, cluster, [0, 1]) == pytest.approx(4.5 - math.exp(-1.625))
    assert step(graph, two_devices({MESSAGE_CPU_META_KEY: 0.125}), [0, 1]) == pytest.approx(3.75)


def test_a_busy_receiver_pays_the_busy_cost_whatever_it_waited():
    graph = toy_graph({"a": 1.0, "x": 3.0, "c": 1.0}, [("a", "c", 0.5), ("x", "c", 0.0)])
    cluster = two_devices({RECEIVE_COST_META_KEY: ReceiveCost(idle_s=5.0, idle_time_s=1.0, busy_s=0.3).to_json()})
    # a [0, 1] on d0, its output arrives at 1.5 while x runs [0, 3] on d1; c [3, 4.3]
    assert step(graph, cluster, [0, 1, 1]) == pytest.approx(4.3)
    state = receive_state(graph, np.array([0, 1, 1]), simulate_as_executed(graph, cluster, CostTable.build(graph, cluster), np.array([0, 1, 1]), record=True))
    assert list(state.receiver) == [2] and list(state.busy) == [True]


def test_the_fit_reproduces_steps_simulated_with_a_known_receive_cost():
    ms = 1e-3  # graphs in milliseconds, as the fit's search box expects
    known = ReceiveCost(idle_s=0.4 * ms, idle_time_s=0.8 * ms, busy_s=0.25 * ms)
    plain = two_devices()
    charged = two_devices({RECEIVE_COST_META_KEY: known.to_json()})

    def scaled(times: dict[str, float], edges: list[tuple[str, str, float]]) -> OpGraph:
        return toy_graph({k: v * ms for k, v in times.items()}, [(a, b, t * ms) for a, b, t in edges])

    cases = [
        (scaled({"a": 1.0, "b": 2.0}, [("a", "b", 0.1)]), [0, 1]),
        (scaled({"a": 0.2, "b": 3.0, "c": 1.0}, [("a", "b", 0.1), ("a", "c", 0.1), ("b", "c", 0.0)]), [0, 0, 1]),
        (scaled({"a": 1.0, "x": 3.0, "c": 1.0}, [("a", "c", 0.5), ("x", "c", 0.0)]), [0, 1, 1]),
        (scaled({"a": 4.0, "b": 1.0, "c": 1.0}, [("a", "b", 0.1), ("b", "c", 0.1)]), [0, 1, 0]),
    ]
    splits = []
    for graph, placement in cases:
        executed = np.array(placement, dtype=np.int64)
        one = step(graph, plain, [0] * graph.num_ops)
        splits.append(MeasuredSplit(graph, CostTable.build(graph, plain), plain, executed, step(graph, charged, placement), one, one))
    fitted = fit_receive_cost(splits)
    refit = two_devices({RECEIVE_COST_META_KEY: fitted.to_json()})
    for split in splits:
        assert step(split.graph, refit, list(split.executed)) == pytest.approx(split.measured_s, rel=0.01)
    assert fitted.busy_s == pytest.approx(known.busy_s, rel=0.05)
    with pytest.raises(RlplaceError, match="at least one measured split"):
        fit_receive_cost([dataclasses.replace(splits[0], executed=np.zeros(2, dtype=np.int64))])


def test_module_units_group_ops_by_their_first_two_path_components():
    paths = ["a.0.x", "a.0.y", "", "a.1", "b"]
    graph = OpGraph.build([{"name": f"op{i}", "kind": "matmul", "flops": 1.0} for i in range(5)], [], meta={"module_paths": paths})
    assert module_units(graph).tolist() == [0, 0, 0, 1, 2]  # the op without a path joins the unit before it


def test_unit_splits_start_with_the_round_robin_one_and_are_seeded():
    graph = OpGraph.build([{"name": f"op{i}", "kind": "matmul", "flops": 1.0} for i in range(6)], [], meta={"module_paths": [f"layers.{i // 2}" for i in range(6)]})
    first, again = unit_splits(graph, 2, seed=3), unit_splits(graph, 2, seed=3)
    assert first[0].tolist() == [0, 0, 1, 1, 0, 0]  # units layers.0, layers.1, layers.2 alternate
    assert len(first) == 3 and all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))


def test_the_profile_carries_the_receive_cost_through_json_and_into_the_cluster():
    devices = tuple(DeviceProfile(f"rank{r}", "cpu", 1e11, 5e10, 2e10, 5e-6) for r in range(2))
    profile = Profile(devices, np.array([[math.inf, 1e9], [1e9, math.inf]]), np.array([[0.0, 1e-4], [1e-4, 0.0]]), "gloo", 1)
    assert Profile.from_json(profile.to_json()).receive_cost is None  # older profiles have none
    with_cost = dataclasses.replace(profile, receive_cost=ReceiveCost(8e-4, 2.5e-3, 1.2e-3))
    assert Profile.from_json(with_cost.to_json()).receive_cost == with_cost.receive_cost
    assert with_cost.cluster().meta[RECEIVE_COST_META_KEY] == {"idle_s": 8e-4, "idle_time_s": 2.5e-3, "busy_s": 1.2e-3}
    assert any("while computing" in line for line in with_cost.summary())
    bad = with_cost.to_json()
    bad["links"]["receive_cost"]["idle_time_s"] = 0.0
    with pytest.raises(RlplaceError, match="recalibrate"):
        Profile.from_json(bad)
    bad["links"]["receive_cost"] = {"idle_s": "x"}
    with pytest.raises(RlplaceError, match="receive_cost"):
        Profile.from_json(bad)


@pytest.mark.slow
def test_calibrate_receive_cost_fits_measured_gloo_splits_into_the_profile(tmp_path):
    """End to end on two gloo CPU ranks (about 25 s): measured splits of two development
    models give a receive cost; everything else in the profile stays as it was."""
    from rlplace.measure.receive_fit import calibrate_receive_cost
    from rlplace.profile import load_profile

    devices = tuple(DeviceProfile(f"rank{r}", "cpu", 1e11, 5e10, 2e10, 5e-6) for r in range(2))
    profile = Profile(devices, np.array([[math.inf, 1e9], [1e9, math.inf]]), np.array([[0.0, 1e-4], [1e-4, 0.0]]), "gloo", 1)
    fitted = calibrate_receive_cost(profile, models=("two_branch", "bench_mlp"), splits=2, steps=2, warmup=1, rounds=1, timeout_s=120)
    cost = fitted.receive_cost
    assert cost is not None
    for value in (cost.idle_s, cost.idle_time_s, cost.busy_s):
        assert math.isfinite(value) and value >= 0.0
    assert cost.idle_s > 0.0 or cost.busy_s > 0.0  # messages cost something on real ranks
    assert dataclasses.replace(fitted, receive_cost=None).to_json() == profile.to_json()
    fitted.save(tmp_path / "p.json")
    assert load_profile(tmp_path / "p.json").receive_cost == cost
