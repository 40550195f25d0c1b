"""Tests of the ``dp`` baseline: blocks, ideals, brute force on tiny graphs, the paper's numbers."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlplace.baselines import dp, local_search
from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.formats import load_dnn_partitioning
from rlplace.formats.dnn_partitioning import dnn_partitioning_cluster, shared_data_dir
from rlplace.graph import OpGraph
from rlplace.simulate import Simulator

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(not (DATA / "graphs").is_dir(), reason=f"shared data absent at {DATA}")

#: graph file stem, README "dp (contiguous optimum)" max-load.
REFERENCE = [
    ("bert24_inference__layer", 17.7899),
    ("bert24_training__layer", 41.7458),
    ("resnet50_inference__layer", 33.7747),
    ("resnet50_training__layer", 78.6318),
    ("bert_l-3_inference__operator", 27.9186),
    ("bert_l-3_training__operator", 65.3031),
    ("bert_l-6_inference__operator", 29.5795),
    ("resnet50_inference__operator", 124.349),
]


def profiled_graph(ops: list[dict], edges: list[tuple[str, str, float]], name: str = "tiny") -> OpGraph:
    """Graph with given accelerator/CPU times; edges are (src, dst, transfer time)."""
    return OpGraph.build(
        ops,
        [{"src": s, "dst": d, "bytes": 0.0, "time": t} for s, d, t in edges],
        name=name,
        time_classes=("accelerator", "cpu"),
    )


def op(name: str, accelerator: float, cpu: float | None = None, **extra: object) -> dict:
    return {"name": name, "times": {"accelerator": accelerator, "cpu": accelerator * 10 if cpu is None else cpu}, **extra}


# -------------------------------------------------------------------------------- blocks
def test_cycle_through_a_colocation_class_becomes_one_block() -> None:
    # a -> b -> c with a and c colocated: the class graph has A -> b -> A, one block in all.
    graph = profiled_graph([op("a", 1, coloc=0), op("b", 1), op("c", 1, coloc=0), op("d", 1)], [("a", "b", 1), ("b", "c", 1), ("c", "d", 1)])
    blocks = dp.contract_blocks(graph, CostTable.build(graph, dnn_partitioning_cluster(2, 0, 1e9)))
    assert blocks.of_op.tolist() == [0, 0, 0, 1]
    assert blocks.predecessors == (0, 0b1)


def test_zero_leaf_joins_its_only_neighbour_but_a_weighty_one_does_not() -> None:
    graph = profiled_graph(
        [op("input", 0, 0), op("weight", 0, 0, param_bytes=8.0), op("x", 2), op("y", 3)],
        [("input", "x", 1), ("weight", "x", 1), ("x", "y", 1)],
    )
    blocks = dp.contract_blocks(graph, CostTable.build(graph, dnn_partitioning_cluster(2, 0, 1e9)))
    of = dict(zip(graph.names, blocks.of_op.tolist(), strict=True))
    assert of["input"] == of["x"]
    assert len({of["weight"], of["x"], of["y"]}) == 3


def test_orphan_backward_ops_are_mirrored() -> None:
    # forward a -> b; backward gb -> ga without classes: forward graph gets ga -> gb.
    graph = profiled_graph(
        [op("a", 1), op("b", 1), op("gb", 1, is_backward=True), op("ga", 1, is_backward=True)],
        [("a", "b", 1), ("b", "gb", 1), ("gb", "ga", 1)],
    )
    blocks = dp.contract_blocks(graph, CostTable.build(graph, dnn_partitioning_cluster(2, 0, 1e9)))
    of = dict(zip(graph.names, blocks.of_op.tolist(), strict=True))
    assert blocks.num_blocks == 4
    assert blocks.predecessors[of["b"]] == 1 << of["a"]
    assert blocks.predecessors[of["gb"]] == 1 << of["ga"]


def test_ideals_of_a_diamond() -> None:
    graph = profiled_graph([op("a", 1), op("b", 1), op("c", 1), op("d", 1)], [("a", "b", 1), ("a", "c", 1), ("b", "d", 1), ("c", "d", 1)])
    blocks = dp.contract_blocks(graph, CostTable.build(graph, dnn_partitioning_cluster(2, 0, 1e9)))
    lattice = dp.enumerate_ideals(blocks)
    assert lattice is not None and not lattice.linearized
    assert sorted(int(w) for w in lattice.words[:, 0]) == [0b0, 0b1, 0b11, 0b101, 0b111, 0b1111]
    assert lattice.down_ptr[-1] == 6  # Hasse edges: {a}-{}, {ab}-{a}, {ac}-{a}, {abc}-{ab}, {abc}-{ac}, {abcd}-{abc}
    assert dp.enumerate_ideals(blocks, limit=4) is None
    chain = dp.chain_ideals(4)
    assert chain.linearized and [int(w) for w in chain.words[:, 0]] == [0, 1, 3, 7, 15]


# --------------------------------------------------------------------- throughput, exact
def test_training_pair_split_by_hand() -> None:
    # Classes A = {a, ga}, B = {b, gb}. On one accelerator: 3 + 2 + 4 + 5 = 14.
    # Split A | B: A pays 3 + 4, a -> b (1) out, gb -> ga (2) in: 10; B pays 2 + 5 + 2 + 1 = 10.
    graph = profiled_graph(
        [op("a", 3, coloc=0), op("b", 2, coloc=1), op("gb", 5, coloc=1, is_backward=True), op("ga", 4, coloc=0, is_backward=True)],
        [("a", "b", 1), ("b", "gb", 1), ("gb", "ga", 2), ("a", "ga", 1)],
    )
    cluster = dnn_partitioning_cluster(2, 0, 1e9)
    solution = dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="throughput")
    assert solution.model_value == pytest.approx(10.0)
    assert solution.step_time == pytest.approx(10.0)
    assert solution.placement.tolist() == [0, 1, 1, 0]


def test_memory_cap_forces_a_split_and_infeasible_caps_are_reported() -> None:
    graph = profiled_graph([op("a", 1, param_bytes=6.0), op("b", 1, param_bytes=6.0)], [("a", "b", 5)])
    roomy = dnn_partitioning_cluster(2, 0, 100.0)
    assert dp.place(graph, roomy, CostTable.build(graph, roomy), objective="throughput").tolist() == [0, 0]
    tight = dnn_partitioning_cluster(2, 0, 10.0)
    assert dp.place(graph, tight, CostTable.build(graph, tight), objective="throughput").tolist() == [0, 1]
    tiny = dnn_partitioning_cluster(2, 0, 5.0)
    with pytest.raises(RlplaceError, match="no contiguous split"):
        dp.place(graph, tiny, CostTable.build(graph, tiny), objective="throughput")


def test_cpu_only_op_goes_to_the_cpu() -> None:
    graph = profiled_graph([op("a", 1), op("b", math.inf, 2.0), op("c", 1)], [("a", "b", 0.5), ("b", "c", 0.5)])
    cluster = dnn_partitioning_cluster(2, 1, 1e9)
    placement = dp.place(graph, cluster, CostTable.build(graph, cluster), objective="throughput")
    assert placement[1] == 2


def random_problem(seed: int) -> tuple[OpGraph, Cluster]:
    """At most 8 ops, inference only, some colocation, zero-cost leaves and CPU-only ops; 2-3 devices (at most one CPU)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    ops = []
    for i in range(n):
        accelerator = float(rng.choice([0.0, *rng.uniform(0.5, 5.0, 4)]))
        cpu = float(rng.uniform(1.0, 20.0)) if accelerator else 0.0
        if rng.random() < 0.1:
            accelerator = math.inf
        size = 0.0 if accelerator == 0.0 else float(rng.integers(0, 5))
        ops.append(op(f"o{i}", accelerator, cpu, param_bytes=size, coloc=int(rng.integers(0, 2)) if rng.random() < 0.25 else None))
    edges = []
    for j in range(1, n):
        for i in rng.choice(j, size=min(j, int(rng.integers(1, 3))), replace=False):
            edges.append((f"o{int(i)}", f"o{j}", float(rng.uniform(0.0, 2.0))))
    graph = profiled_graph(ops, edges, name=f"random{seed}")
    cpus = 1 if np.any(np.isinf(graph.given_times[:, 0])) else int(rng.integers(0, 2))
    accelerators = int(rng.integers(1, 4 - cpus)) if cpus else int(rng.integers(2, 4))
    memory = float(rng.choice([6.0, 10.0, 1e9]))
    return graph, dnn_partitioning_cluster(accelerators, cpus, memory)


def contiguous(graph: OpGraph, placement: tuple[int, ...], k: int) -> bool:
    """Devices can be ordered so that every edge goes forward or stays: the device quotient is acyclic."""
    quotient = {(placement[s], placement[d]) for s, d in zip(graph.edge_src.tolist(), graph.edge_dst.tolist(), strict=True) if placement[s] != placement[d]}
    remaining = set(range(k))
    while remaining:
        source = next((d for d in remaining if not any(b == d and a in remaining for a, b in quotient)), None)
        if source is None:
            return False
        remaining.remove(source)
    return True


def brute_force_throughput(graph: OpGraph, cluster: Cluster, costs: CostTable) -> float:
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    k = cluster.num_devices
    best = math.inf
    for placement in itertools.product(range(k), repeat=graph.num_ops):
        array = np.array(placement)
        if np.any(np.isinf(costs.op_time[np.arange(graph.num_ops), array])):
            continue
        classes = graph.coloc >= 0
        if any(len(set(array[classes & (graph.coloc == c)].tolist())) > 1 for c in (0, 1)):
            continue
        if np.any(np.bincount(array, weights=graph.resident_bytes, minlength=k) > cluster.memory):
            continue
        if contiguous(graph, placement, k):
            best = min(best, simulator.step_time(array))
    return best


@pytest.mark.parametrize("seed", range(40))
def test_throughput_equals_brute_force_over_contiguous_splits(seed: int) -> None:
    graph, cluster = random_problem(seed)
    costs = CostTable.build(graph, cluster)
    expected = brute_force_throughput(graph, cluster, costs)
    if math.isinf(expected):
        with pytest.raises(RlplaceError, match="no contiguous split"):
            dp.solve(graph, cluster, costs, objective="throughput")
        return
    solution = dp.solve(graph, cluster, costs, objective="throughput")
    assert solution.step_time == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert solution.model_value == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert contiguous(graph, tuple(solution.placement.tolist()), cluster.num_devices)


# ---------------------------------------------------------------------- latency, pipelined
def brute_force_stage_model(graph: OpGraph, cluster: Cluster, costs: CostTable, stages: int) -> float:
    """Min over cuts of the op order into <= ``stages`` consecutive runs (run j on device j) of the max-load."""
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    n = graph.num_ops
    best = math.inf
    for cuts in range(stages):
        for bounds in itertools.combinations(range(1, n), cuts):
            placement = np.searchsorted(np.array(bounds, dtype=np.int64), np.arange(n), side="right")
            best = min(best, simulator.step_time(placement))
    return best


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("objective", ["latency", "pipelined"])
def test_stage_candidates_are_the_best_consecutive_splits(seed: int, objective: str) -> None:
    rng = np.random.default_rng(100 + seed)
    n = int(rng.integers(2, 8))
    ops = [op(f"o{i}", float(rng.uniform(0.5, 5.0))) for i in range(n)]
    edges = [(f"o{i}", f"o{j}", float(rng.uniform(0.0, 2.0))) for j in range(1, n) for i in range(j) if j == i + 1 or rng.random() < 0.3]
    graph = profiled_graph(ops, edges)
    cluster = dnn_partitioning_cluster(int(rng.integers(2, 4)), 0, 1e9)
    costs = CostTable.build(graph, cluster)
    solution = dp.solve(graph, cluster, costs, objective=objective, microbatches=4)
    assert solution.candidates, "at least the one-stage split"
    for stages, margin, model_value, simulated, overflow in solution.candidates:
        assert margin == 1.0 and overflow == 0.0
        assert model_value == pytest.approx(brute_force_stage_model(graph, cluster, costs, stages), rel=1e-9)
        assert simulated >= solution.step_time - 1e-12
    one_device = Simulator(graph, cluster, costs, objective=objective, microbatches=4).step_time(np.zeros(n, dtype=np.int64))
    assert solution.step_time <= one_device + 1e-12


def test_pipelined_chain_is_cut_in_the_middle() -> None:
    graph = profiled_graph([op(f"o{i}", 1.0) for i in range(4)], [(f"o{i}", f"o{i + 1}", 0.01) for i in range(3)])
    cluster = dnn_partitioning_cluster(2, 0, 1e9)
    solution = dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="pipelined", microbatches=8)
    assert solution.placement.tolist() == [0, 0, 1, 1]
    assert [c[0] for c in solution.candidates] == [1, 2]


def test_place_is_deterministic_and_read_only() -> None:
    graph, cluster = random_problem(3)
    costs = CostTable.build(graph, cluster)
    first = dp.place(graph, cluster, costs, objective="latency", seed=0)
    assert not first.flags.writeable
    assert first.tolist() == dp.place(graph, cluster, costs, objective="latency", seed=7).tolist()


def test_too_many_ideals_fall_back_to_a_chain() -> None:
    # 24 independent ops: 2^24 ideals, far past the limit.
    graph = profiled_graph([op(f"o{i}", 1.0 + i) for i in range(24)], [])
    cluster = dnn_partitioning_cluster(3, 0, 1e9)
    solution = dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="throughput")
    assert solution.linearized and solution.num_ideals == 25
    assert solution.step_time == pytest.approx(solution.model_value)
    assert solution.step_time < sum(1.0 + i for i in range(24)) / 2
    assert not solution.optimal and "60000 ideals" in solution.why_not_optimal


def test_a_work_limit_linearizes_the_throughput_program_and_says_so() -> None:
    # 10 independent ops: 2^10 = 1 024 ideals and ~3^10 nested pairs, over a limit of 1 000.
    graph = profiled_graph([op(f"o{i}", 1.0 + i) for i in range(10)], [])
    cluster = dnn_partitioning_cluster(3, 0, 1e9)
    costs = CostTable.build(graph, cluster)
    exact = dp.solve(graph, cluster, costs, objective="throughput")
    capped = dp.solve(graph, cluster, costs, objective="throughput", work_limit=1000)
    assert not exact.linearized and exact.optimal and exact.num_ideals == 2**10
    assert exact.ideal_pairs * 4 > 1000  # 4 device states: 0-3 identical devices used
    assert capped.linearized and capped.num_ideals == 11 and not capped.optimal
    assert "pairs of ideals x device states" in capped.why_not_optimal
    assert capped.step_time == pytest.approx(capped.model_value)
    assert exact.step_time <= capped.step_time < sum(1.0 + i for i in range(10))
    roomy = dp.solve(graph, cluster, costs, objective="throughput", work_limit=exact.ideal_pairs * 4 + 4 * 2**10)
    assert not roomy.linearized and roomy.placement.tolist() == exact.placement.tolist()


def test_local_search_starts_give_dp_its_start_work_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = profiled_graph([op(f"o{i}", 1.0 + i) for i in range(10)], [])
    cluster = dnn_partitioning_cluster(3, 0, 1e9)
    costs = CostTable.build(graph, cluster)
    monkeypatch.setattr(local_search, "DP_START_WORK_LIMIT", 1000)
    found = local_search.start_placements(graph, cluster, costs, objective="throughput", seed=0, methods=("dp",))
    capped = dp.solve(graph, cluster, costs, objective="throughput", work_limit=1000)
    assert found["dp"].tolist() == capped.placement.tolist()
    exact = dp.solve(graph, cluster, costs, objective="throughput")
    assert exact.placement.tolist() != capped.placement.tolist()  # the limit changed the start
    # dp_limit overrides the budget-scaled limit; timings holds each method's seconds
    timings: dict[str, float] = {}
    roomy = local_search.start_placements(
        graph, cluster, costs, objective="throughput", seed=0, methods=("dp", "m-topo"), dp_limit=exact.ideal_pairs * 4 + 4 * 2**10, timings=timings
    )
    assert roomy["dp"].tolist() == exact.placement.tolist()
    assert set(timings) == {"dp", "m-topo"} and all(seconds > 0 for seconds in timings.values())


def test_a_shorter_time_budget_scales_dp_start_work_limit_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below `DP_START_REFERENCE_S` the start's work limit shrinks in proportion (an uncapped
    start had made a 0.3 s decision last 1.5 s); at or above it, and without a time budget, it
    is `DP_START_WORK_LIMIT` (the default decisions are unchanged)."""
    graph = profiled_graph([op(f"o{i}", 1.0 + i) for i in range(10)], [])
    cluster = dnn_partitioning_cluster(3, 0, 1e9)
    costs = CostTable.build(graph, cluster)
    monkeypatch.setattr(local_search, "DP_START_WORK_LIMIT", 2000)
    monkeypatch.setattr(local_search, "DP_START_REFERENCE_S", 2.0)
    assert [local_search.dp_work_limit(b) for b in (None, 4.0, 2.0, 1.0, 0.5)] == [2000, 2000, 2000, 1000, 500]
    limits: list[float] = []
    real_solve = dp.solve

    def recording_solve(*args, work_limit: float = math.inf, **kwargs):  # type: ignore[no-untyped-def]
        limits.append(work_limit)
        return real_solve(*args, work_limit=work_limit, **kwargs)

    monkeypatch.setattr(dp, "solve", recording_solve)
    for budget_s in (None, 1.0, 0.5):
        local_search.start_placements(graph, cluster, costs, objective="throughput", seed=0, methods=("dp",), budget_s=budget_s)
    local_search.place(graph, cluster, costs, objective="throughput", budget_s=1.0, start_methods=("dp",))
    assert limits == [2000, 1000, 500, 1000]
    from rlplace import policy_method

    policy_method.search(graph, cluster, costs, objective="throughput", budget_s=0.9, random_order=True, workers=1)
    assert limits[4] == 900  # the policy's starts too


OLD_IDEAL_LIMIT = 4472  # isqrt(2 * 10_000_000): where dp used to linearize


def brute_force_pairs(times_a: np.ndarray, times_b: np.ndarray, cost: np.ndarray, size: np.ndarray, memory: float) -> float:
    """Max-load optimum over contiguous splits of independent pairs a_i -> b_i onto two identical devices.

    An assignment is a bit per op (a_i: bit i, b_i: bit p + i). A split pair pays its edge
    time on both devices. Two devices are contiguous unless some edge goes 0 -> 1 and another 1 -> 0.
    """
    p = times_a.shape[0]
    masks = np.arange(1 << (2 * p), dtype=np.int64)
    bits = (masks[:, None] >> np.arange(2 * p)) & 1
    on_a, on_b = bits[:, :p], bits[:, p:]
    times = np.concatenate([times_a, times_b])
    sizes = np.concatenate([size, size])
    split = on_a != on_b
    comm = split @ cost
    load1 = bits @ times + comm
    load0 = (1 - bits) @ times + comm
    fits = (bits @ sizes <= memory) & ((1 - bits) @ sizes <= memory)
    forward = np.any(on_a < on_b, axis=1)
    backward = np.any(on_a > on_b, axis=1)
    ok = fits & ~(forward & backward)
    return float(np.min(np.maximum(load0, load1)[ok]))


def test_past_the_old_linearization_limit_dp_is_exact_and_says_so() -> None:
    # 8 independent pairs a_i -> b_i: 3^8 = 6 561 ideals, past the old limit; 2^16 assignments to brute-force.
    rng = np.random.default_rng(7)
    p = 8
    times_a, times_b = rng.uniform(1.0, 9.0, p), rng.uniform(1.0, 9.0, p)
    cost, size = rng.uniform(0.1, 3.0, p), rng.integers(1, 5, p).astype(float)
    ops = [op(f"a{i}", float(times_a[i]), param_bytes=float(size[i])) for i in range(p)]
    ops += [op(f"b{i}", float(times_b[i]), param_bytes=float(size[i])) for i in range(p)]
    graph = profiled_graph(ops, [(f"a{i}", f"b{i}", float(cost[i])) for i in range(p)])
    memory = float(size.sum())  # tight: a device cannot hold everything
    cluster = dnn_partitioning_cluster(2, 0, memory)
    solution = dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="throughput")
    assert solution.num_ideals == 3**p > OLD_IDEAL_LIMIT
    assert not solution.linearized
    assert solution.optimal and solution.why_not_optimal == ""
    assert solution.step_time == pytest.approx(brute_force_pairs(times_a, times_b, cost, size, memory), rel=1e-9)


def test_latency_answers_are_not_claimed_optimal() -> None:
    graph, cluster = random_problem(1)
    solution = dp.solve(graph, cluster, CostTable.build(graph, cluster), objective="latency")
    assert not solution.optimal and "proxy" in solution.why_not_optimal


def test_long_chains_are_cut_into_balanced_runs() -> None:
    graph = profiled_graph([op(f"o{i}", 1.0) for i in range(10)], [(f"o{i}", f"o{i + 1}", 0.1) for i in range(9)])
    costs = CostTable.build(graph, dnn_partitioning_cluster(2, 0, 1e9))
    runs = dp.chain_segments(dp.contract_blocks(graph, costs), costs, limit=4)
    assert runs.num_blocks == 4
    assert runs.of_op.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]
    assert runs.predecessors == (0, 0b1, 0b10, 0b100)
    assert dp.chain_segments(dp.contract_blocks(graph, costs), costs, limit=20).of_op.tolist() == list(range(10))


def test_bad_objective() -> None:
    graph, cluster = random_problem(0)
    with pytest.raises(RlplaceError, match="unknown objective"):
        dp.place(graph, cluster, CostTable.build(graph, cluster), objective="fastest")


# ------------------------------------------------------------------------- shared data
@needs_data
@pytest.mark.parametrize(("stem", "reference"), REFERENCE)
def test_reference_contiguous_optimum(stem: str, reference: float) -> None:
    problem = load_dnn_partitioning(DATA / "graphs" / f"{stem}.json")
    costs = CostTable.build(problem.graph, problem.cluster)
    solution = dp.solve(problem.graph, problem.cluster, costs, objective="throughput")
    assert not solution.linearized
    assert solution.optimal, solution.why_not_optimal
    assert abs(solution.step_time - reference) / reference <= 1e-3
    assert solution.step_time == pytest.approx(solution.model_value, rel=1e-9)
    assert np.all(np.bincount(solution.placement, weights=problem.graph.resident_bytes, minlength=problem.cluster.num_devices) <= problem.cluster.memory)


@needs_data
def test_place_json_says_optimal() -> None:
    from rlplace.load import load_model
    from rlplace.pipeline import decide

    model = load_model(str(DATA / "graphs" / "bert24_inference__layer.json"))
    problem = load_dnn_partitioning(DATA / "graphs" / "bert24_inference__layer.json")
    assert decide(model, problem.cluster, "dp", objective="throughput").to_json()["optimal"] is True
    assert decide(model, problem.cluster, "m-topo", objective="throughput").to_json()["optimal"] is None


# ------------------------------------------------------------------------- local search
def search_problem(seed: int) -> tuple[OpGraph, Cluster]:
    """A small training-like chain with skips, colocated forward/backward pairs, 2-3 devices."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 7))
    ops = [op(f"f{i}", float(rng.uniform(0.5, 5.0)), coloc=i, param_bytes=float(rng.integers(0, 4))) for i in range(n)]
    ops += [op(f"g{i}", float(rng.uniform(0.5, 8.0)), coloc=i, is_backward=True) for i in range(n)]
    edges = [(f"f{i}", f"f{i + 1}", float(rng.uniform(0.0, 2.0))) for i in range(n - 1)]
    edges += [(f"f{i}", f"f{i + 2}", float(rng.uniform(0.0, 2.0))) for i in range(n - 2) if rng.random() < 0.4]
    edges += [(f"f{n - 1}", f"g{n - 1}", 0.5)] + [(f"g{i + 1}", f"g{i}", float(rng.uniform(0.0, 2.0))) for i in range(n - 1)]
    graph = profiled_graph(ops, edges, name=f"search{seed}")
    return graph, dnn_partitioning_cluster(int(rng.integers(2, 4)), 0, 1e9)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("objective", "schedule"), [("latency", "gpipe"), ("pipelined", "gpipe"), ("pipelined", "1f1b"), ("throughput", "gpipe")])
def test_local_search_never_ends_worse_than_its_best_start(seed: int, objective: str, schedule: str) -> None:
    graph, cluster = search_problem(seed)
    costs = CostTable.build(graph, cluster)
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=4 if objective == "pipelined" else 1, schedule=schedule)
    starts = local_search.start_placements(graph, cluster, costs, objective=objective, seed=seed, microbatches=4, schedule=schedule)
    assert "dp" in starts
    best_start = min((float(o), float(t)) for t, o in (simulator.score(p) for p in starts.values()))
    found = local_search.place(graph, cluster, costs, objective=objective, seed=seed, microbatches=4, schedule=schedule, evaluations=40)
    step, over = simulator.score(found)
    assert (float(over), float(step)) <= (best_start[0], best_start[1] + 1e-12)
    # dp as the user calls it (same microbatches and schedule) is among the starts
    direct = dp.place(graph, cluster, costs, objective=objective, microbatches=4, schedule=schedule)
    assert simulator.step_time(found) <= simulator.step_time(direct) + 1e-12


def test_a_referee_that_prefers_a_start_gets_the_start() -> None:
    graph, cluster = search_problem(0)
    costs = CostTable.build(graph, cluster)
    start = np.zeros(graph.num_ops, dtype=np.int64)

    def referee(placement: np.ndarray) -> tuple[float, float]:
        return 0.0, float(np.count_nonzero(placement))  # the all-on-device-0 start wins every time

    found = local_search.place(graph, cluster, costs, objective="latency", start=start, evaluations=30, referee=referee)
    assert found.tolist() == start.tolist()


# ----------------------------------------------------------------------------- stages
@st.composite
def random_dags(draw: st.DrawFn) -> tuple[OpGraph, Cluster]:
    n = draw(st.integers(2, 9))
    times = draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n))
    ops = [op(f"o{i}", t, param_bytes=float(i % 3)) for i, t in enumerate(times)]
    pairs = [(i, j) for j in range(1, n) for i in range(j)]
    chosen = draw(st.lists(st.sampled_from(pairs), max_size=2 * n, unique=True)) if pairs else []
    edges = [(f"o{i}", f"o{j}", draw(st.floats(0.0, 2.0))) for i, j in chosen]
    k = draw(st.integers(2, 4))
    return profiled_graph(ops, edges, name="dag"), dnn_partitioning_cluster(k, 0, 1e9)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=random_dags(), objective=st.sampled_from(["latency", "pipelined", "throughput"]))
def test_stages_mode_yields_contiguous_splits(problem: tuple[OpGraph, Cluster], objective: str) -> None:
    graph, cluster = problem
    costs = CostTable.build(graph, cluster)
    split = dp.place(graph, cluster, costs, objective=objective, microbatches=3, stages=True)
    order = dp.stage_order(graph, split)
    assert order is not None and len(set(order)) == len(order)
    assert contiguous(graph, tuple(split.tolist()), cluster.num_devices)
    moved = local_search.place(graph, cluster, costs, objective=objective, microbatches=3, stages=True, evaluations=25)
    assert dp.stage_order(graph, moved) is not None
    assert contiguous(graph, tuple(moved.tolist()), cluster.num_devices)
    simulator = Simulator(graph, cluster, costs, objective=objective, microbatches=3 if objective == "pipelined" else 1)
    assert simulator.step_time(moved) <= simulator.step_time(split) + 1e-12


def test_stage_order_by_hand() -> None:
    graph = profiled_graph([op("a", 1), op("b", 1), op("c", 1)], [("a", "b", 1), ("b", "c", 1)])
    assert dp.stage_order(graph, np.array([2, 0, 0])) == [2, 0]
    assert dp.stage_order(graph, np.array([0, 1, 0])) is None


def test_stage_search_moves_the_boundary_of_a_chain() -> None:
    # Four equal ops on a chain, start with the cut after the first op: the best cut is in the middle.
    graph = profiled_graph([op(f"o{i}", 1.0) for i in range(4)], [(f"o{i}", f"o{i + 1}", 0.01) for i in range(3)])
    cluster = dnn_partitioning_cluster(2, 0, 1e9)
    costs = CostTable.build(graph, cluster)
    moved = local_search.place(graph, cluster, costs, objective="throughput", stages=True, start=np.array([0, 1, 1, 1]), evaluations=20)
    assert moved.tolist() == [0, 0, 1, 1]
    with pytest.raises(RlplaceError, match="not a contiguous split"):
        local_search.place(graph, cluster, costs, objective="throughput", stages=True, start=np.array([0, 1, 0, 1]), evaluations=5)


def test_two_searches_split_dp_the_second_runs_the_exact_program_the_shared_starts_cut_short(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under ``throughput`` with two searches side by side, the shared starts give dp a small work
    limit; when that cuts the exact program short, the second search (a forked child, so the calls
    are written to a file) runs it again with the larger limit that fits its time
    (`second_dp_limit`, replaced here by the limit the program needs), and reports its cut flag;
    the first does not. With one search, when the shared limit suffices, or when the limit that
    fits is below `DP_SPLIT_MIN_GAIN` times the shared one, dp runs once."""
    from rlplace import policy_method

    graph = profiled_graph([op(f"o{i}", 1.0 + i) for i in range(10)], [])
    cluster = dnn_partitioning_cluster(3, 0, 1e9)
    costs = CostTable.build(graph, cluster)
    exact = dp.solve(graph, cluster, costs, objective="throughput")
    needed = exact.ideal_pairs * 4 + 4 * 2**10  # enough for the exact program (test above)
    monkeypatch.setattr(local_search, "DP_START_WORK_LIMIT", needed)
    monkeypatch.setattr(policy_method, "DP_SPLIT_SHARED_REFERENCE_S", 1000.0)  # shared limit: needed / 1000, cut short
    fitting = {"limit": float(needed)}
    monkeypatch.setattr(policy_method, "second_dp_limit", lambda shared_s, shared_limit, left_s: fitting["limit"])
    log = tmp_path / "dp_calls.txt"
    real_solve = dp.solve

    def recording_solve(*args, work_limit: float = math.inf, **kwargs):  # type: ignore[no-untyped-def]
        solution = real_solve(*args, work_limit=work_limit, **kwargs)
        with log.open("a") as out:
            out.write(f"{os.getpid()} {work_limit} {solution.over_work_limit}\n")
        return solution

    monkeypatch.setattr(dp, "solve", recording_solve)
    policy_method.search(graph, cluster, costs, objective="throughput", budget_s=0.5, random_order=True, workers=2)
    calls = [line.split() for line in log.read_text().splitlines()]
    assert [(float(limit), cut) for _, limit, cut in calls] == [(needed * 0.5 / 1000.0, "True"), (needed, "False")]
    assert calls[0][0] == str(os.getpid()) and calls[1][0] != str(os.getpid())  # the second search ran it
    log.unlink()
    policy_method.search(graph, cluster, costs, objective="throughput", budget_s=0.5, random_order=True, workers=1)
    assert len(log.read_text().splitlines()) == 1  # one search: the shared starts only
    log.unlink()
    monkeypatch.setattr(policy_method, "DP_SPLIT_SHARED_REFERENCE_S", 0.5)  # the shared limit suffices
    policy_method.search(graph, cluster, costs, objective="throughput", budget_s=0.5, random_order=True, workers=2)
    assert [line.split()[2] for line in log.read_text().splitlines()] == ["False"]
    log.unlink()
    monkeypatch.setattr(policy_method, "DP_SPLIT_SHARED_REFERENCE_S", 1000.0)  # cut short again ...
    fitting["limit"] = 1.5 * needed * 0.5 / 1000.0  # ... but the time left fits too little more
    policy_method.search(graph, cluster, costs, objective="throughput", budget_s=0.5, random_order=True, workers=2)
    assert [line.split()[2] for line in log.read_text().splitlines()] == ["True"]


def test_second_dp_limit_fits_the_time_left_at_the_shared_runs_rate() -> None:
    """The shared run did 1e6 pairs in 0.2 s: 0.5 s left fits 2.5e6 pairs; the cap is the full
    start limit; no time left, no run."""
    from rlplace import policy_method

    assert policy_method.second_dp_limit(0.2, 1e6, 0.5) == pytest.approx(2.5e6)
    assert policy_method.second_dp_limit(0.2, 1e6, 1e6) == local_search.DP_START_WORK_LIMIT
    assert policy_method.second_dp_limit(0.2, 1e6, -0.1) == 0.0
    assert policy_method.second_dp_limit(0.0, 1e6, 0.5) == local_search.DP_START_WORK_LIMIT
