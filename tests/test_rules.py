"""The placement rules of `rlplace.rules`, each checked through both of its callers: the
baselines (`rlplace.rules.prepare`, `finalize`) and the env (`rlplace.envs.problem`)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.cluster import ACCELERATOR, Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs.problem import build_problem
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import colocation_violation
from rlplace.rules import activation_share, build_units, colocation_leaders, finalize, prepare, repair_exact, unit_memory_floor
from rlplace.simulate import Simulator
from rlplace.synthetic import synthetic_graph

GB = 1e9


def gpus(k: int, memory: float = 16 * GB) -> Cluster:
    devices = [Device(name=f"gpu{i}", kind="custom", category=ACCELERATOR, fp32_flops=1e12, fp16_flops=1e12, memory=memory, memory_bandwidth=1e11) for i in range(k)]
    return Cluster.build(f"{k}gpu", devices, intra_host=(1e9, 0.0))


def independent_ops(resident: list[float], coloc: list[str | None] | None = None) -> OpGraph:
    """Ops op0, op1, ... taking 1 time unit each, no edges, the given resident bytes and classes."""
    coloc = coloc or [None] * len(resident)
    ops = [
        {"name": f"op{i}", "times": {ACCELERATOR: 1.0}, "resident_bytes": r, "param_bytes": r, "coloc": c}
        for i, (r, c) in enumerate(zip(resident, coloc, strict=True))
    ]
    return OpGraph.build(ops, [], name="independent", time_classes=(ACCELERATOR,))


# ------------------------------------------------------------------ colocation units
def test_colocation_units_by_hand_for_ops_and_for_groups() -> None:
    # a, c share class x; d, e share class y; b is alone.
    graph = independent_ops([0.0] * 5, ["x", None, "x", "y", "y"])
    assert colocation_leaders(graph).tolist() == [0, 1, 0, 3, 3]
    # Groups {a}, {b, c}, {d}, {e}: x ties groups 0 and 1, y ties 2 and 3.
    assert colocation_leaders(graph, np.array([0, 1, 1, 2, 3]), 4).tolist() == [0, 0, 2, 2]
    # Transitive: groups {a, d}, {c}, {e}: x ties 0-1, y ties 0-2, so all three are one unit.
    assert colocation_leaders(graph, np.array([0, 3, 1, 0, 2]), 4).tolist() == [0, 0, 0, 3]


def test_the_baselines_and_the_env_build_the_same_colocation_units() -> None:
    graph, cluster = synthetic_graph("series-parallel", n=30, seed=3, training=True), gpus(2)
    assert np.any(graph.coloc >= 0), "the synthetic training graph has colocation classes"
    units, _ = prepare(graph, cluster, CostTable.build(graph, cluster), "latency")
    problem = build_problem(graph, cluster, objective="latency", microbatches=1, max_nodes=graph.num_ops)
    assert problem.coarsening is None
    np.testing.assert_array_equal(problem.unit_leader, units.leader)
    # Coarsened, ops of one unit land in groups of one group unit.
    coarse = build_problem(graph, cluster, objective="latency", microbatches=1, max_nodes=8)
    assert coarse.coarsening is not None
    group_leader_of_op = coarse.unit_leader[coarse.group_of_op]
    for members in units.members:
        assert np.unique(group_leader_of_op[members]).size == 1


# ------------------------------------------------------------------------- legalize
@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=-2, max_value=4), min_size=12, max_size=12))
def test_legalize_output_respects_op_times_and_colocation(choice: list[int]) -> None:
    graph = independent_ops([1 * GB] * 12, ["x", None, "x", "y", None, "y", "x", None, None, "z", "z", None])
    problem = build_problem(graph, gpus(3), objective="latency", microbatches=1, max_nodes=64)
    legal, invalid = problem.legalize(np.array(choice))
    assert invalid == sum(not 0 <= c < 3 for c in choice)
    assert np.all(problem.allowed[np.arange(legal.size), legal])
    assert colocation_violation(graph, problem.expand(legal)) is None


# --------------------------------------------------------------------- exact repair
def test_the_baselines_and_the_env_repair_the_same_overflow_the_same_way() -> None:
    # Three 4 GB ops all on gpu0 (10 GB) overflow it by 2 GB; each alone covers that, the
    # first (op0) moves to gpu1, the device with the most room.
    graph, cluster = independent_ops([4 * GB] * 3), gpus(2, 10 * GB)
    start = np.zeros(3, dtype=np.int64)
    by_baselines = finalize(graph, cluster, CostTable.build(graph, cluster), start, objective="latency", method="test")
    problem = build_problem(graph, cluster, objective="latency", microbatches=1, max_nodes=64)
    by_env, fits, moves = problem.repair(start)
    assert by_baselines.tolist() == by_env.tolist() == [1, 0, 0]
    assert fits and moves == 1


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=7),
    st.integers(min_value=2, max_value=3),
    st.integers(min_value=6, max_value=14),
)
def test_exact_repair_fixes_what_one_move_at_a_time_can_and_never_adds_overflow(sizes: list[int], k: int, capacity_gb: int) -> None:
    """Under ``throughput`` (resident bytes only, so the estimate is exact): start with every op
    on gpu0; the repair never raises the total overflow, and whenever all ops fit by
    first-fit-decreasing with room for the largest op to spare, the repair ends without overflow."""
    graph, cluster = independent_ops([s * GB for s in sizes]), gpus(k, capacity_gb * GB)
    costs = CostTable.build(graph, cluster)
    units = build_units(graph, costs, "throughput")
    simulator = Simulator(graph, cluster, costs, objective="throughput")
    capacity = cluster.memory
    start = np.zeros(units.num_units, dtype=np.int64)

    def overflow(peak: np.ndarray) -> float:
        return float(np.maximum(peak - capacity, 0.0).sum())

    before = overflow(simulator.peak_memory(units.expand(start)))
    assignment, peak, moves = repair_exact(units, start, lambda a: simulator.peak_memory(units.expand(a)), capacity)
    assert overflow(peak) <= before
    np.testing.assert_allclose(peak, simulator.peak_memory(units.expand(assignment)))
    if before == 0:
        assert moves == 0 and np.all(assignment == 0)
    loads = np.zeros(k)
    for size in sorted(sizes, reverse=True):
        loads[int(np.argmin(loads))] += size
    if loads.max() + max(sizes) <= capacity_gb:
        assert overflow(peak) == 0


# --------------------------------------------------------------------- memory ledger
def test_the_baselines_and_the_env_ledgers_count_the_same_bytes_under_throughput() -> None:
    """Under ``throughput`` memory is resident bytes only: the baselines' unit ledger and the
    env's sequential ledger (copies and working memory tracked, all 0 there) must agree."""
    from rlplace.envs.ledger import sequential_ledger
    from rlplace.rules import MemoryLedger

    graph = synthetic_graph("series-parallel", n=20, seed=2, training=True)
    cluster = gpus(3, 0.7 * float(graph.resident_bytes.sum()))
    units, budget = prepare(graph, cluster, CostTable.build(graph, cluster), "throughput")
    problem = build_problem(graph, cluster, objective="throughput", microbatches=1, max_nodes=graph.num_ops)
    baselines, env = MemoryLedger(units, budget), sequential_ledger(problem)
    rng = np.random.default_rng(0)
    for group in range(problem.num_groups):
        device = int(rng.integers(3))
        if problem.unit_leader[group] == group:
            unit = int(units.of_op[group])
            assert env.candidates(group)[device] == baselines.fits(unit, device)
            baselines.add(unit, device)
        else:
            device = int(env.placement[problem.unit_leader[group]])
        env.add(group, device)
    np.testing.assert_array_equal(env.used, baselines.used)
    np.testing.assert_array_equal(env.used, np.bincount(env.placement, weights=graph.resident_bytes, minlength=3))


# ------------------------------------------------------------ pipeline schedule memory
def training_chain() -> tuple[OpGraph, Cluster]:
    """f0 -> f1 -> b1 -> b0, f0 -> b0 (f0's output kept for its backward); stage pairs colocated.

    Every op takes 1 s per step (1/4 s per micro-batch at M = 4), f0 and f1 output 8 GB per
    step (2 GB per micro-batch), nothing else holds memory, edges are free. gpu0 has 6 GB,
    gpu1 100 GB, so only gpu0's peak matters.
    """
    ops = [
        {"name": "f0", "times": {ACCELERATOR: 1.0}, "output_bytes": 8 * GB, "coloc": "s0"},
        {"name": "f1", "times": {ACCELERATOR: 1.0}, "output_bytes": 8 * GB, "coloc": "s1"},
        {"name": "b1", "times": {ACCELERATOR: 1.0}, "is_backward": True, "coloc": "s1"},
        {"name": "b0", "times": {ACCELERATOR: 1.0}, "is_backward": True, "coloc": "s0"},
    ]
    edges = [{"src": s, "dst": d, "bytes": 0.0, "time": 0.0} for s, d in (("f0", "f1"), ("f1", "b1"), ("b1", "b0"), ("f0", "b0"))]
    graph = OpGraph.build(ops, edges, name="chain", time_classes=(ACCELERATOR,))
    devices = [Device(name=f"gpu{i}", kind="custom", category=ACCELERATOR, fp32_flops=1e12, fp16_flops=1e12, memory=m, memory_bandwidth=1e11) for i, m in enumerate((6 * GB, 100 * GB))]
    return graph, Cluster.build("6GB+100GB", devices, intra_host=(1e9, 0.0))


#: The two-stage split of `training_chain`: f0, b0 on gpu0 (stage 0), f1, b1 on gpu1 (stage 1).
SPLIT = [0, 1, 1, 0]


def test_activation_share_by_hand() -> None:
    assert activation_share("pipelined", 4, "1f1b", 2) == 0.5  # min(4, 2) of 4 micro-batches in flight
    assert activation_share("pipelined", 8, "1f1b", 4) == 0.5
    assert activation_share("pipelined", 2, "1f1b", 4) == 1.0  # M < k: every micro-batch may be in flight
    assert activation_share("pipelined", 4, "gpipe", 2) == 1.0
    assert activation_share("pipelined", 4, "interleaved-1f1b", 2) == 1.0  # counted as gpipe (an upper bound)
    assert activation_share("pipelined", 1, "1f1b", 2) == 1.0
    assert activation_share("latency", 4, "1f1b", 2) == 1.0


def test_a_split_that_overflows_under_gpipe_fits_under_1f1b_and_finalize_keeps_it() -> None:
    # Time in micro-batch op units (1/4 s). gpu0 runs F0..F3 at 0..4 under gpipe, and each f0
    # output (2 GB) lives until its b0 finishes (>= 5): all four are alive at [3, 4], 8 GB.
    # Under 1f1b stage 0 does w = min(4, 2 - 0) = 2 forwards, then F2 waits for B0: F0 [0,1],
    # F1 [1,2], B0 [3,4], F2 [4,5], B1 [5,6], F3 [6,7], ...: f0 outputs live [0,4], [1,6],
    # [4,8], [6,10], never more than two at once, 4 GB. Capacity 6 GB lies in between.
    graph, cluster = training_chain()
    costs = CostTable.build(graph, cluster)
    split = np.array(SPLIT, dtype=np.int64)
    gpipe = Simulator(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="gpipe").run(split)
    one_f_one_b = Simulator(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b").run(split)
    assert gpipe.peak_memory[0] == 8 * GB and gpipe.oom
    assert one_f_one_b.peak_memory[0] == 4 * GB
    assert gpipe.step_time == one_f_one_b.step_time == 2.5  # 10 micro-batch op times either way
    kept = finalize(graph, cluster, costs, split, objective="pipelined", method="test", microbatches=4, schedule="1f1b")
    assert kept.tolist() == SPLIT
    repaired = finalize(graph, cluster, costs, split, objective="pipelined", method="test", microbatches=4, schedule="gpipe")
    assert repaired.tolist() != SPLIT
    assert not Simulator(graph, cluster, costs, objective="pipelined", microbatches=4).run(repaired).oom


def test_the_estimate_counts_the_microbatches_1f1b_keeps_in_flight() -> None:
    # Units {f0, b0} and {f1, b1}: 8 GB of outputs each; under 1f1b at M = 4 on 2 devices, half.
    graph, cluster = training_chain()
    costs = CostTable.build(graph, cluster)
    gpipe, _ = prepare(graph, cluster, costs, "pipelined", microbatches=4, schedule="gpipe")
    one_f_one_b, _ = prepare(graph, cluster, costs, "pipelined", microbatches=4, schedule="1f1b")
    assert gpipe.demand.tolist() == [8 * GB, 8 * GB]
    assert one_f_one_b.demand.tolist() == [4 * GB, 4 * GB]


def test_dp_and_local_search_find_the_split_only_under_1f1b() -> None:
    # gpipe: the split overflows gpu0 (8 > 6 GB) and so does everything on gpu0 (16 GB): the
    # answer holds every op on gpu1, 4 ops x 1 s = 4 s. 1f1b: the split fits (4 GB), 2.5 s.
    from rlplace.baselines import dp, local_search

    graph, cluster = training_chain()
    costs = CostTable.build(graph, cluster)
    for method in (dp.place, local_search.place):
        under_gpipe = method(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="gpipe")
        under_1f1b = method(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b")
        assert under_gpipe.tolist() == [1, 1, 1, 1]
        assert under_1f1b.tolist() == SPLIT


def test_the_sound_memory_floor_is_one_microbatch_share_under_pipelined() -> None:
    # One op: 8 GB of output per step on a 6 GB device. One step at once needs 8 GB, so no
    # placement exists for latency; at M = 4 a micro-batch needs 2 GB, so prepare must not refuse.
    graph = OpGraph.build([{"name": "x", "times": {ACCELERATOR: 1.0}, "output_bytes": 8 * GB}], [], name="one", time_classes=(ACCELERATOR,))
    cluster = gpus(1, 6 * GB)
    costs = CostTable.build(graph, cluster)
    with pytest.raises(RlplaceError, match="needs 8"):
        prepare(graph, cluster, costs, "latency")
    units, _ = prepare(graph, cluster, costs, "pipelined", microbatches=4)
    assert unit_memory_floor(graph, units, "pipelined", 4).tolist() == [2 * GB]
