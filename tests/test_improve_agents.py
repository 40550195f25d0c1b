"""The improvement policy: scorer, MaskablePPO plug-in, expert targets, guided search, checkpoints, training."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplace.cluster import Cluster, Device
from rlplace.costs import CostTable
from rlplace.envs.improve_state import build_move_problem, observe
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

HEAVY = 10.0
TINY = 1e-3


def two_heavy_graph(tiny: int = 20) -> OpGraph:
    """A source feeding two heavy ops and ``tiny`` nearly free ones: on 2 equal devices the
    optimum (latency) puts the heavy ops apart (T <= HEAVY + (tiny + 1) * TINY); together T >= 2 * HEAVY."""
    ops = [dict(name="in", times={"accelerator": TINY})]
    ops += [dict(name=f"heavy{i}", times={"accelerator": HEAVY}) for i in range(2)]
    ops += [dict(name=f"tiny{i}", times={"accelerator": TINY}) for i in range(tiny)]
    edges = [dict(src="in", dst=op["name"], bytes=1.0, time=TINY) for op in ops[1:]]
    return OpGraph.build(ops, edges, name="two-heavy", time_classes=("accelerator",), time_unit="unit")


def two_devices() -> Cluster:
    devices = tuple(Device(f"g{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e11) for i in range(2))
    return Cluster("pair", devices, np.array([[np.inf, 1e9], [1e9, np.inf]]), np.zeros((2, 2)))


def problem_of(graph: OpGraph, objective: str = "latency"):
    cluster = two_devices()
    return build_move_problem(graph, cluster, CostTable.build(graph, cluster), objective=objective)


@pytest.mark.parametrize("conv", ["gine", "gatv2", "transformer"])
def test_scorer_logits_have_the_flat_action_layout_and_do_not_depend_on_the_batch(conv: str) -> None:
    from rlplace.agents.scorer import PAD_LOGIT, MoveScorer, ScorerConfig, collate

    torch.manual_seed(0)
    scorer = MoveScorer(ScorerConfig(hidden=16, layers=2, conv=conv, scorer_hidden=16)).eval()
    small = problem_of(two_heavy_graph(3))
    large = problem_of(two_heavy_graph(9))
    a = observe(small, np.zeros(small.num_units, np.int64))
    b = observe(large, np.zeros(large.num_units, np.int64))
    with torch.no_grad():
        alone, value_alone = scorer(collate([a]))
        both, values = scorer(collate([a, b]))
    n, d = both.shape[1] - 1, 2
    assert alone.shape == (1, small.num_units * 2 + 1) and both.shape == (2, large.num_units * 2 + 1)
    assert n == large.num_units * d
    padded = both[0, :-1].reshape(large.num_units, d)
    torch.testing.assert_close(padded[: small.num_units].reshape(-1), alone[0, :-1], rtol=1e-4, atol=1e-4)
    assert torch.all(padded[small.num_units :] == PAD_LOGIT)
    torch.testing.assert_close(both[0, -1], alone[0, -1], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(values[0], value_alone[0], rtol=1e-4, atol=1e-4)


def test_unknown_conv_is_a_clear_error() -> None:
    from rlplace.agents.scorer import MoveScorer, ScorerConfig

    with pytest.raises(RlplaceError, match="unknown conv 'sage'"):
        MoveScorer(ScorerConfig(conv="sage"))


def test_maskable_ppo_trains_the_scorer_policy_and_never_picks_a_masked_move() -> None:
    from sb3_contrib import MaskablePPO

    from rlplace.agents.improve_policy import ImproveMaskablePolicy
    from rlplace.envs.improve_env import ImproveEnv, make_case

    case = make_case("two-heavy", two_heavy_graph(4), two_devices(), objective="latency")
    env = ImproveEnv(cases=[case], max_nodes=8, max_devices=2, max_edges=16, max_moves=4)
    model = MaskablePPO(ImproveMaskablePolicy, env, n_steps=16, batch_size=8, n_epochs=1, seed=0, policy_kwargs={"scorer": {"hidden": 8, "layers": 1, "scorer_hidden": 8}})
    model.learn(32)
    obs, _ = env.reset(seed=0)
    for _ in range(4):
        mask = env.action_masks()
        action, _ = model.predict(obs, action_masks=mask)
        assert mask[int(action)]
        obs, _, terminated, truncated, _ = env.step(int(action))
        if terminated or truncated:
            break


def test_expert_target_puts_mass_on_improving_moves_or_stop() -> None:
    from rlplace.agents.expert import target_of

    gains = np.array([[np.nan, 0.2], [np.nan, 0.1], [np.nan, -0.5]])
    target = target_of(gains, temperature=0.5)
    assert target[-1] == 0.0 and target.sum() == pytest.approx(1.0)
    # weights exp((g - best) / (0.5 * best)): 1 and exp(-1)
    assert target[1] == pytest.approx(1 / (1 + np.exp(-1.0)))
    assert target[3] == pytest.approx(np.exp(-1.0) / (1 + np.exp(-1.0)))
    assert target_of(np.array([[np.nan, -0.1]]))[-1] == 1.0


def test_expert_labels_are_the_simulated_relative_gains() -> None:
    from rlplace.agents.expert import label

    problem = problem_of(two_heavy_graph(2))
    start = np.zeros(problem.num_units, np.int64)
    obs = observe(problem, start)
    gains = label(problem, start, obs, np.random.default_rng(0))
    heavy = problem.graph.index_of("heavy0")
    unit = int(problem.units.of_op[heavy])
    moved = start.copy()
    moved[unit] = 1
    expected = (obs.step_time - problem.simulator.step_time(problem.units.expand(moved))) / obs.step_time
    assert gains[unit, 1] == pytest.approx(expected)
    assert np.all(np.isnan(gains[:, 0]))


def _example(gains: np.ndarray):
    from rlplace.agents.expert import Example

    return Example(observation=None, gains=gains, target=np.zeros(gains.size + 1))  # type: ignore[arg-type]


def test_ranking_quality_judges_the_top_ranked_evaluated_moves() -> None:
    from rlplace.agents.expert import ranking_quality

    # state 1: gains 0.4 (best), -0.2, 0.1, unevaluated, -0.1, 0.0; state 2: nothing improves (skipped)
    first = np.array([[0.4, -0.2, 0.1], [np.nan, -0.1, 0.0]])
    second = np.array([[-0.3, np.nan], [0.0, -0.1]])
    # the ranking puts the unevaluated move first, then -0.2, then 0.1, then 0.4
    ranking = np.array([[1.0, 5.0, 4.0], [9.0, 0.0, 0.0]])
    quality = ranking_quality([_example(first), _example(second)], lambda obs: ranking, top=2)
    assert quality["states"] == 1.0
    assert quality["top1_improving"] == 0.0  # -0.2: the unevaluated move never counts
    assert quality["topk_improving"] == 1.0  # 0.1 is second
    assert quality["topk_captured"] == pytest.approx(0.1 / 0.4)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=7), st.integers(1, 5))
def test_random_ranking_quality_is_the_exact_expectation_over_all_orders(values: list[float], top: int) -> None:
    from itertools import permutations

    from rlplace.agents.expert import ranking_quality

    gains = np.array(values)
    if not np.any(gains > 0):
        assert ranking_quality([_example(gains)], None, top=top)["states"] == 0.0
        return
    orders = list(permutations(range(gains.size)))
    expected = np.zeros(3)
    for order in orders:
        chosen = gains[list(order[:top])]
        expected += (chosen[0] > 0, np.any(chosen > 0), min(max(chosen.max() / gains.max(), 0.0), 1.0))
    expected /= len(orders)
    quality = ranking_quality([_example(gains)], None, top=top)
    assert [quality["top1_improving"], quality["topk_improving"], quality["topk_captured"]] == pytest.approx(expected.tolist())


def _sims_to_optimum(problem, ranker, seeds: range) -> float:
    from rlplace.agents.guided_search import guided_search

    counts = []
    start = np.zeros(problem.num_units, np.int64)
    for seed in seeds:
        _, _, stats = guided_search(problem, [start], ranker, evaluations=60, batch=1, random_share=0.0, swap_share=0.0, seed=seed)
        reached = [sims for sims, _, best in stats.curve if best <= HEAVY * 1.01]
        counts.append(reached[0] if reached else 61)
    return float(np.mean(counts))


def test_after_a_tiny_training_run_the_policy_beats_random_move_order_on_a_known_optimum() -> None:
    from rlplace.agents.expert import collect_states, fit
    from rlplace.agents.guided_search import scorer_ranker
    from rlplace.agents.scorer import MoveScorer, ScorerConfig

    torch.manual_seed(0)
    problem = problem_of(two_heavy_graph())
    examples = collect_states(problem, [np.zeros(problem.num_units, np.int64)], np.random.default_rng(0), depth=3, perturbations=2)
    scorer = MoveScorer(ScorerConfig(hidden=16, layers=1, scorer_hidden=16))
    fit(scorer, examples, epochs=40, batch_size=8, learning_rate=3e-3)
    policy = _sims_to_optimum(problem, scorer_ranker(scorer), range(6))
    random = _sims_to_optimum(problem, None, range(6))
    assert policy < random
    assert policy <= 3  # start, observe, the first ranked move


def test_guided_search_never_returns_worse_than_its_best_start_and_respects_the_budget() -> None:
    from rlplace.agents.guided_search import guided_search

    problem = problem_of(two_heavy_graph(6))
    starts = [np.zeros(problem.num_units, np.int64), np.ones(problem.num_units, np.int64)]
    best, key, stats = guided_search(problem, starts, None, evaluations=25, seed=3)
    assert stats.simulations <= 25
    assert key == problem.score(best)
    assert key <= min(problem.score(s) for s in starts)


def test_guided_search_scores_its_starts_in_order_only_while_the_budget_lasts() -> None:
    """More starts than simulations: only the first ``evaluations`` starts are scored, in
    order, and the answer is the best of those (all-on-one scores 2 * HEAVY, the split of the
    two heavy ops about HEAVY; then copies of the split)."""
    from rlplace.agents.guided_search import guided_search

    problem = problem_of(two_heavy_graph(6))
    all_on_one = np.zeros(problem.num_units, np.int64)
    split = np.arange(problem.num_units, dtype=np.int64) % 2
    assert problem.score(split) < problem.score(all_on_one)
    starts = [all_on_one, split, *[split.copy() for _ in range(6)]]
    for budget, expected in ((1, all_on_one), (2, split)):
        best, key, stats = guided_search(problem, starts, None, evaluations=budget, seed=0, polish=False)
        assert stats.simulations == budget
        assert np.array_equal(best, expected) and key == problem.score(expected)


def test_random_order_never_computes_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ablation orders its moves from a plain simulation (`_focus_view`): features are
    the ranking's cost, so a search without a ranker never calls ``observe``, and still
    counts one simulation per view."""
    from rlplace.agents import guided_search as guided

    def no_features(*_: object, **__: object) -> None:
        raise AssertionError("observe called without a ranker")

    problem = problem_of(two_heavy_graph(6))
    starts = [np.zeros(problem.num_units, np.int64)]
    monkeypatch.setattr(guided, "observe", no_features)
    best, key, stats = guided.guided_search(problem, starts, None, evaluations=60, seed=1, polish=False)
    assert stats.simulations == 60 and stats.rankings == 0
    assert key == problem.score(best) and key <= problem.score(starts[0])


def test_on_observe_sees_every_state_the_guided_search_ranks() -> None:
    from rlplace.agents.guided_search import guided_search, scorer_ranker
    from rlplace.agents.scorer import MoveScorer, ScorerConfig

    torch.manual_seed(0)
    problem = problem_of(two_heavy_graph(6))
    ranker = scorer_ranker(MoveScorer(ScorerConfig(hidden=8, layers=1)).eval())
    seen = []
    starts = [np.zeros(problem.num_units, np.int64)]
    _, _, stats = guided_search(problem, starts, ranker, evaluations=60, seed=1, on_observe=lambda a, o: seen.append((a, o)))
    assert len(seen) == stats.rankings > 0
    for assignment, observation in seen:
        assert observation.step_time == pytest.approx(problem.score(assignment)[1])
    assert not np.shares_memory(seen[0][0], seen[-1][0])


def test_search_states_are_exactly_labelled_states_the_search_observed() -> None:
    from rlplace.agents import search_states
    from rlplace.agents.scorer import MoveScorer, ScorerConfig

    torch.manual_seed(0)
    problem = problem_of(two_heavy_graph(6))
    scorer = MoveScorer(ScorerConfig(hidden=8, layers=1)).eval()
    observed: list[float] = []
    real = search_states.label

    def recording_label(problem_, assignment, observation, rng, max_moves):
        gains = real(problem_, assignment, observation, rng, max_moves)
        for move in np.flatnonzero(np.isfinite(gains.reshape(-1))).tolist():  # every label is the simulated gain
            unit, device = divmod(move, problem_.num_devices)
            moved = assignment.copy()
            moved[unit] = device
            expected = (observation.step_time - problem_.score(moved)[1]) / observation.step_time
            assert gains[unit, device] == pytest.approx(expected)
        observed.append(observation.step_time)
        return gains

    examples = search_states.collect_search_states(problem, scorer, np.random.default_rng(0), evaluations=80, per_search=3, max_moves=16, seed=2)
    assert 0 < len(examples) <= 3
    search_states.label = recording_label
    try:
        again = search_states.collect_search_states(problem, scorer, np.random.default_rng(0), evaluations=80, per_search=3, max_moves=16, seed=2)
    finally:
        search_states.label = real
    assert [e.observation.step_time for e in again] == observed == [e.observation.step_time for e in examples]  # repeats exactly
    for example in examples:
        assert example.target.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("tiny", [6, 80])
def test_the_policy_method_runs_the_search_that_search_states_collects_from(tiny: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """One search for both: `policy_method.search` under a simulation budget (one worker) ends
    where `search_from_starts` with the block phase ends from the same starts, METIS restarts
    and seed, and so
    do their simulations (9 units: no block phase; 83 units: more than 64, with one)."""
    import rlplace.baselines.block_search as block_search
    from rlplace.agents.guided_search import BLOCK_SHARE, metis_restarts, search_from_starts
    from rlplace.baselines.local_search import START_METHODS, start_placements
    from rlplace.policy_method import search

    calls: list[int] = []
    real = block_search.block_search
    monkeypatch.setattr(block_search, "block_search", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    graph = two_heavy_graph(tiny)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    problem = problem_of(graph)
    placement, stats = search(graph, cluster, costs, objective="latency", evaluations=60, random_order=True, seed=2)
    assert len(calls) == (1 if problem.num_units > block_search.DEFAULT_MAX_BLOCKS else 0)
    starts = [problem.units.contract(p) for p in start_placements(graph, cluster, costs, objective="latency", seed=2, methods=START_METHODS).values()]
    best, direct = search_from_starts(problem, starts, None, evaluations=60, seed=2, block_share=BLOCK_SHARE, extra_starts=metis_restarts(problem, 2))
    assert np.array_equal(np.asarray(placement), problem.units.expand(best))
    assert stats.simulations == direct.simulations


@pytest.mark.parametrize("conv", ["gine", "gatv2", "transformer"])
@pytest.mark.parametrize("tiny", [0, 7])
def test_move_scores_equal_the_padded_forward_pass(conv: str, tiny: int) -> None:
    """The search's single-observation path (split first pair layer, no padding) computes the
    same pair logits as the batched network, for every kind of layer."""
    from rlplace.agents.scorer import MoveScorer, ScorerConfig, collate, move_scores

    torch.manual_seed(3)
    scorer = MoveScorer(ScorerConfig(hidden=16, layers=2, conv=conv, scorer_hidden=8)).eval()
    problem = problem_of(two_heavy_graph(tiny))
    assignment = np.arange(problem.num_units, dtype=np.int64) % 2
    obs = observe(problem, assignment)
    with torch.no_grad():
        logits, _ = scorer(collate([obs]))
    expected = logits[0, :-1].reshape(problem.num_units, 2).double().numpy()
    fast = move_scores(scorer, obs)
    assert fast.shape == expected.shape and fast.dtype == np.float64
    assert np.allclose(fast, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(fast, fast.mean())  # the scores differ between moves: the comparison has teeth


@pytest.mark.parametrize("conv", ["gine", "gatv2", "transformer"])
def test_move_scores_of_a_placement_without_edges_between_units_equal_the_padded_pass(conv: str) -> None:
    """No edge between units (the padded batch still holds one padding edge slot)."""
    from rlplace.agents.scorer import MoveScorer, ScorerConfig, collate, move_scores
    from rlplace.envs.improve_state import DEVICE_FEATURES, EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, PAIR_FEATURES, Observation

    rng = np.random.default_rng(4)
    u, k = 5, 3
    obs = Observation(
        nodes=rng.normal(size=(u, NODE_FEATURES)).astype(np.float32),
        pairs=rng.normal(size=(u, k, PAIR_FEATURES)).astype(np.float32),
        devices=rng.normal(size=(k, DEVICE_FEATURES)).astype(np.float32),
        globals=rng.normal(size=GLOBAL_FEATURES).astype(np.float32),
        edge_index=np.zeros((2, 0), np.int64),
        edge_attr=np.zeros((0, EDGE_FEATURES), np.float32),
        legal=np.ones((u, k), bool),
        step_time=1.0,
        overflow=0.0,
    )
    torch.manual_seed(5)
    scorer = MoveScorer(ScorerConfig(hidden=16, layers=2, conv=conv, scorer_hidden=8)).eval()
    with torch.no_grad():
        logits, _ = scorer(collate([obs]))
    assert np.allclose(move_scores(scorer, obs), logits[0, :-1].reshape(u, k).double().numpy(), rtol=1e-5, atol=1e-5)


def test_save_then_load_gives_identical_rankings_and_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from rlplace.agents.improve_checkpoint import load_scorer, save_scorer
    from rlplace.agents.scorer import MoveScorer, ScorerConfig, move_scores

    torch.manual_seed(1)
    scorer = MoveScorer(ScorerConfig(hidden=16, layers=2, conv="gatv2")).eval()
    save_scorer(scorer, tmp_path / "ck", {"note": "x"})

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling")

    with monkeypatch.context() as patched:  # only while loading (numba's own cache unpickles later)
        patched.setattr(pickle, "load", refuse)
        patched.setattr(pickle, "loads", refuse)
        loaded, meta = load_scorer(tmp_path / "ck")
    assert meta == {"note": "x"}
    problem = problem_of(two_heavy_graph(5))
    obs = observe(problem, np.zeros(problem.num_units, np.int64))
    before, after = move_scores(scorer, obs), move_scores(loaded, obs)
    assert np.array_equal(before, after)
    assert np.array_equal(np.argsort(-before.reshape(-1), kind="stable"), np.argsort(-after.reshape(-1), kind="stable"))


def test_tampered_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    from rlplace.agents.improve_checkpoint import load_scorer, save_scorer
    from rlplace.agents.scorer import MoveScorer, ScorerConfig

    folder = save_scorer(MoveScorer(ScorerConfig(hidden=8, layers=1)), tmp_path / "ck")
    config = json.loads((folder / "config.json").read_text())
    config["weights"]["sha256"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlplaceError, match="SHA-256"):
        load_scorer(folder)
    config["format"] = "other"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RlplaceError, match="not an improvement-policy checkpoint"):
        load_scorer(folder)
    with pytest.raises(RlplaceError, match="no policy checkpoint"):
        load_scorer(tmp_path / "missing")


def test_train_agent_options_come_from_train_config_fields() -> None:
    from dataclasses import fields

    import train_agent
    from rlplace.agents.improve_train import TrainConfig, field_help

    helps = field_help()
    assert set(helps) == {f.name for f in fields(TrainConfig)}
    assert all(helps.values())
    parser = train_agent.build_parser()
    options = {action.dest for action in parser._actions if action.dest != "help"}
    assert options == {f.name for f in fields(TrainConfig)}
    assert parser.parse_args(["--rounds", "2", "--conv", "gatv2"]).rounds == 2


def test_training_cases_can_be_limited_to_some_objectives() -> None:
    from rlplace.agents import improve_data as data
    from rlplace.agents.improve_train import with_objectives

    specs = data.case_specs(data.TRAIN_MODELS[:2], data.TRAIN_DNN, data.TRAIN_CLUSTERS[:2])
    assert with_objectives(specs, "") == specs
    pipelined = with_objectives(specs, "pipelined")
    assert pipelined and {spec[2] for spec in pipelined} == {"pipelined"}
    assert {spec[3] for spec in pipelined} == {4, 8}  # both micro-batch settings stay
    both = with_objectives(specs, "latency, throughput")
    assert len(both) + len(pipelined) == len(specs)
    with pytest.raises(RlplaceError, match=r"unknown objective.*pipelind"):
        with_objectives(specs, "pipelind")


def test_policy_method_runs_through_run_method_on_the_given_costs(tmp_path: Path) -> None:
    from rlplace.agents.improve_checkpoint import save_scorer
    from rlplace.agents.scorer import MoveScorer, ScorerConfig
    from rlplace.methods import run_method

    save_scorer(MoveScorer(ScorerConfig(hidden=8, layers=1)), tmp_path / "ck")
    graph = two_heavy_graph(4)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    result = run_method("policy", graph, cluster, costs, objective="latency", checkpoint=tmp_path / "ck", evaluations=40)
    problem = problem_of(graph)
    assert problem.simulator.step_time(result.placement) <= HEAVY * 1.01


def test_training_resumes_after_a_kill_with_nothing_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file

    from rlplace.agents import expert, improve_train

    def config(folder: str):
        return improve_train.TrainConfig(
            out=str(tmp_path / folder / "out"), work_dir=str(tmp_path / folder / "work"), rounds=1, cases_per_round=2, depth=2,
            perturbations=0, max_moves=16, epochs=1, hidden=8, layers=1, max_units=64,
        )

    improve_train.train(config("whole"), log=lambda line: None)
    real = expert.collect_states
    calls = {"count": 0}

    def killed_on_second_case(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(expert, "collect_states", killed_on_second_case)
    with pytest.raises(KeyboardInterrupt):
        improve_train.train(config("killed"), log=lambda line: None)
    state = json.loads((tmp_path / "killed" / "work" / "state.json").read_text())
    assert state["round"] == 0 and state["cases_done"] == 1
    monkeypatch.setattr(expert, "collect_states", real)
    improve_train.train(config("killed"), log=lambda line: None)
    whole = load_file(str(tmp_path / "whole" / "out" / "model.safetensors"))
    resumed = load_file(str(tmp_path / "killed" / "out" / "model.safetensors"))
    assert whole.keys() == resumed.keys()
    for name in whole:
        torch.testing.assert_close(whole[name], resumed[name], rtol=0, atol=0)
    meta = json.loads((tmp_path / "killed" / "out" / "config.json").read_text())["meta"]
    assert meta["training"]["examples"] == json.loads((tmp_path / "whole" / "out" / "config.json").read_text())["meta"]["training"]["examples"]
    assert "fork-join" in " ".join(meta["heldout"]["models"])


def test_training_on_the_searchs_own_states_writes_a_checkpoint_that_records_it(tmp_path: Path) -> None:
    from rlplace.agents import improve_train

    config = improve_train.TrainConfig(
        out=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), rounds=1, cases_per_round=1, max_moves=8, epochs=1,
        hidden=8, layers=1, max_units=64, states="search", search_evaluations=60, states_per_search=2,
    )
    improve_train.train(config, log=lambda line: None)
    meta = json.loads((tmp_path / "out" / "config.json").read_text())["meta"]
    assert meta["train_config"]["states"] == "search"
    assert 0 < meta["training"]["examples"] <= 2
    with pytest.raises(RlplaceError, match="states must be descent or search"):
        improve_train.train(improve_train.TrainConfig(work_dir=str(tmp_path / "w2"), states="replay"), log=lambda line: None)


def test_training_ppo_phase_runs_from_the_warm_start_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    from rlplace.agents import improve_train

    lines: list[str] = []

    def config(timesteps: int):
        return improve_train.TrainConfig(
            out=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), rounds=1, cases_per_round=1, depth=2, perturbations=0,
            max_moves=8, epochs=1, hidden=8, layers=1, max_units=64, ppo_timesteps=timesteps, n_steps=8, batch_size=8,
            checkpoint_every=8, eval_every=0, ppo_cases=1, max_moves_per_episode=4,
        )

    improve_train.train(config(16), log=lines.append)
    first = json.loads((tmp_path / "out" / "config.json").read_text())["meta"]["training"]["ppo"]
    assert first["timesteps"] >= 16 and len(first["cases"]) == 1
    improve_train.train(config(32), log=lines.append)
    second = json.loads((tmp_path / "out" / "config.json").read_text())["meta"]["training"]["ppo"]
    assert any(line.startswith("PPO resumed from improve_") for line in lines)  # from the SB3 checkpoint of the first run
    assert second["timesteps"] >= 32


def test_the_move_problem_scores_under_the_requested_schedule() -> None:
    from rlplace.simulate import Simulator

    graph = two_heavy_graph(4)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    problem = build_move_problem(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b")
    placement = np.array([0, 0, 1] + [1] * 4)
    expected = Simulator(graph, cluster, costs, objective="pipelined", microbatches=4, schedule="1f1b").score(placement)
    assert problem.schedule == "1f1b"
    assert problem.simulator.score(placement) == expected


def test_policy_returns_the_start_the_full_graph_referee_prefers(tmp_path: Path) -> None:
    """With a referee (the full graph's score in ``decide``), a start it scores strictly better
    than the search's result is returned, as for local-search."""
    from rlplace.agents.improve_checkpoint import save_scorer
    from rlplace.agents.scorer import MoveScorer, ScorerConfig
    from rlplace.policy_method import place

    save_scorer(MoveScorer(ScorerConfig(hidden=8, layers=1)), tmp_path / "ck")
    graph = two_heavy_graph(4)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    on_one = np.zeros(graph.num_ops, np.int64)  # the `single` start: everything on g0

    def referee(placement: np.ndarray) -> tuple[float, float]:
        return (0.0, 1.0) if np.array_equal(placement, on_one) else (0.0, 2.0)

    result = place(graph, cluster, costs, objective="latency", checkpoint=tmp_path / "ck", evaluations=40, referee=referee)
    assert np.array_equal(np.asarray(result), on_one)


def test_decide_gives_policy_the_full_graph_referee_and_the_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    import rlplace.pipeline as pipeline
    import rlplace.policy_method as policy_method
    from rlplace.load import load_model

    seen: dict[str, object] = {}

    def fake_place(graph, cluster, costs, **options):
        seen.update(options)
        return np.zeros(graph.num_ops, np.int64)

    monkeypatch.setattr(policy_method, "place", fake_place)
    monkeypatch.setattr(pipeline, "preload_policy", lambda checkpoint=None: 0.0)
    model = load_model("synthetic:layered:n=60:seed=1")
    cluster = two_devices()
    decision = pipeline.decide(model, cluster, "policy", objective="pipelined", microbatches=4, schedule="1f1b", max_groups=20)
    assert decision.coarsening is not None
    assert seen["schedule"] == "1f1b" and seen["microbatches"] == 4
    assert callable(seen["referee"])
    overflow, step = seen["referee"](np.zeros(decision.coarsening.graph.num_ops, np.int64))  # type: ignore[operator]
    assert overflow == 0.0 and step == pytest.approx(float(decision.result.step_time))


def test_guided_search_neighbourhood_is_local_searchs() -> None:
    """Under latency a move past the memory estimate is a candidate (the simulator judges it);
    under throughput only the estimate's legal moves are."""
    from rlplace.agents.guided_search import candidate_moves
    from rlplace.envs.improve_state import legal_moves

    graph = two_heavy_graph(4)
    for objective in ("latency", "throughput"):
        problem = problem_of(graph, objective)
        current = np.zeros(problem.num_units, np.int64)
        obs = observe(problem, current)
        moves = candidate_moves(problem, current, obs.legal)
        assert np.array_equal(moves, candidate_moves(problem, current))  # the same when it computes the legal moves
        if objective == "throughput":
            assert np.array_equal(moves, legal_moves(problem, current))
        else:
            expected = problem.units.allowed.copy()
            expected[:, 0] = False
            assert np.array_equal(moves, expected)


def test_the_random_share_follows_each_lists_yield() -> None:
    from rlplace.agents.guided_search import MAX_RANDOM_SHARE, MIN_RANDOM_SHARE, _SourceYield

    sources = _SourceYield()
    assert sources.share(0.2) == pytest.approx(0.2)  # equal priors: the default
    randoms = {10, 11, 12}
    for _ in range(3):  # three batches, each won by a random candidate, swaps (< 0) not counted
        sources.record([10, 11, 12, 1, 2, 3, 4, 5, 6, -7], 10, randoms)
    sources.record([1] * 12 + [10], None, randoms)
    # random: 3 won of 10 tried -> (3 + 1) / (10 + 10) = 0.2; ranked: 0 of 30 -> 1 / 40 = 0.025;
    # odds 0.25 x 8 = 2 -> share 2 / 3
    assert sources.tried == {True: 10, False: 30} and sources.won == {True: 3, False: 0}
    assert sources.share(0.2) == pytest.approx(2 / 3)
    assert sources.share(0.0) == 0.0 and sources.share(1.0) == 1.0  # an explicit choice stays
    ranked_wins, random_wins = _SourceYield(), _SourceYield()
    for _ in range(100):  # one candidate of each list per batch, always the same list winning
        ranked_wins.record([10, 1], 1, randoms)
        random_wins.record([10, 1], 10, randoms)
    assert ranked_wins.share(0.2) == MIN_RANDOM_SHARE  # odds 0.25 x (1 / 110) / (101 / 110)
    assert random_wins.share(0.2) == MAX_RANDOM_SHARE  # odds 0.25 x 101, clamped


def test_random_order_tries_critical_path_units_first() -> None:
    from rlplace.agents.guided_search import _candidate_order, _focus_view

    problem = problem_of(two_heavy_graph(8))
    current = np.array([0, 1, 1] + [0] * 8)  # both heavy ops on g1: in -> heavy -> heavy is the path
    obs = observe(problem, current)
    critical = obs.nodes[:, 2] > 0.5
    assert critical.tolist() == [True, True, True] + [False] * 8
    view = _focus_view(problem, current)
    assert np.array_equal(view.critical, critical)  # a plain simulation's path is the observation's
    observed = _focus_view(problem, current, obs)
    assert np.array_equal(observed.critical, view.critical) and np.array_equal(observed.movable, view.movable)
    order, _ = _candidate_order(problem, view, None, np.random.default_rng(0), 0.0, 10**6)
    on_path = critical[order // problem.num_devices]
    assert on_path[: critical.sum()].all() and not on_path[critical.sum():].any()


def test_swaps_come_before_their_move_at_the_share_and_uniform_over_pairs_of_distinct_units() -> None:
    from rlplace.agents.guided_search import _with_swaps

    u, share, rounds = 6, 0.3, 300
    order = np.arange(40, dtype=np.int64) * 3
    rng = np.random.default_rng(7)
    counts = np.zeros((u, u))
    inserted = 0
    for _ in range(rounds):
        out = _with_swaps(order, u, rng, share)
        assert np.array_equal(out[out >= 0], order)  # the moves, in their order
        assert out[-1] >= 0 and np.all(out[1:][out[:-1] < 0] >= 0)  # every swap is followed by a move
        first, second = np.divmod(-out[out < 0] - 1, u)
        np.add.at(counts, (first, second), 1)
        inserted += first.size
    assert inserted / (rounds * order.size) == pytest.approx(share, abs=0.02)
    assert np.all(np.diag(counts) == 0)  # never a unit with itself
    off = counts[~np.eye(u, dtype=bool)]  # 30 ordered pairs, ~120 draws each
    assert off.min() > 0.7 * off.mean() and off.max() < 1.3 * off.mean()
    assert np.array_equal(_with_swaps(order, 1, rng, share), order)  # one unit: nothing to swap


def test_after_a_move_the_order_keeps_its_swaps_and_drops_the_moved_units_moves() -> None:
    from rlplace.agents.guided_search import _still_legal

    problem = problem_of(two_heavy_graph(4))  # 7 units on 2 devices: move id = unit * 2 + device
    current = np.zeros(problem.num_units, np.int64)
    current[[2, 5]] = 1
    order = np.array([2 * 2 + 0, -(1 + 3 * 7 + 5), 3 * 2 + 1, 5 * 2 + 0, 6 * 2 + 1, -(1 + 2 * 7 + 4)], dtype=np.int64)
    kept = _still_legal(problem, current, order, moved_units=np.array([2, 5]))
    assert kept.tolist() == [-(1 + 3 * 7 + 5), 3 * 2 + 1, 6 * 2 + 1, -(1 + 2 * 7 + 4)]
    assert _still_legal(problem, current, np.zeros(0, np.int64), np.array([1])).size == 0


def test_the_ablation_and_the_policy_respect_the_simulation_budget() -> None:
    """``search(random_order=True)`` loads no checkpoint, counts its simulations (starts and
    observations included) against ``evaluations``, repeats exactly for a seed, and is never
    worse than its best start."""
    from rlplace.baselines.local_search import START_METHODS, start_placements
    from rlplace.policy_method import search

    graph = two_heavy_graph(4)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    first, stats = search(graph, cluster, costs, objective="latency", evaluations=25, random_order=True, seed=3)
    again, _ = search(graph, cluster, costs, objective="latency", evaluations=25, random_order=True, seed=3)
    assert stats.simulations <= 25
    assert np.array_equal(np.asarray(first), np.asarray(again))
    problem = problem_of(graph)
    starts = start_placements(graph, cluster, costs, objective="latency", seed=3, methods=START_METHODS)
    assert problem.simulator.step_time(first) <= min(problem.simulator.step_time(p) for p in starts.values())


def test_local_search_stops_at_its_time_budget_no_worse_than_its_start() -> None:
    from rlplace.baselines.local_search import START_METHODS, start_placements
    from rlplace.baselines.local_search import place as local_search
    from rlplace.errors import RlplaceError

    graph = two_heavy_graph(4)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    found = local_search(graph, cluster, costs, budget_s=1e-6)  # past the deadline after the first simulation
    simulator = problem_of(graph).simulator
    starts = start_placements(graph, cluster, costs, objective="latency", seed=0, methods=START_METHODS)
    assert simulator.step_time(found) <= min(simulator.step_time(p) for p in starts.values())
    for bad in ({"budget_s": 0.0}, {"evaluations": 0}):
        with pytest.raises(RlplaceError):
            local_search(graph, cluster, costs, **bad)


def test_generated_training_clusters_span_2_to_16_devices_and_never_a_held_out_layout() -> None:
    from rlplace.agents.data import resolve_cluster_spec
    from rlplace.agents.improve_data import GENERATED_PREFIX, HELDOUT_CLUSTERS, build_case, generated_cluster, training_clusters

    def layout(cluster):
        hosts = sorted({d.host for d in cluster.devices})
        return len(hosts), cluster.num_devices // len(hosts), frozenset(d.kind.split("-")[0] for d in cluster.devices)

    held_out = {layout(resolve_cluster_spec(name)) for name in HELDOUT_CLUSTERS}
    clusters = [generated_cluster(seed) for seed in range(300)]
    assert all(2 <= c.num_devices <= 16 for c in clusters)
    assert {c.num_devices for c in clusters} >= {2, 16}
    assert {len({d.host for d in c.devices}) for c in clusters} == {1, 2}
    assert not any(layout(c) in held_out for c in clusters)
    assert all("L4" not in {d.kind for d in c.devices} for c in clusters)
    assert generated_cluster(7).bandwidth.tolist() == generated_cluster(7).bandwidth.tolist()
    assert training_clusters(2)[-2:] == (f"{GENERATED_PREFIX}0", f"{GENERATED_PREFIX}1")
    case = build_case(("synthetic:layered:n=20:seed=1", f"{GENERATED_PREFIX}3", "latency", 1, False), max_nodes=64)
    assert case.cluster.num_devices == generated_cluster(3).num_devices


@pytest.mark.parametrize(("program_search", "module_name", "function_name"), [("tabu", "max_load_tabu", "tabu_search"), ("lns", "ilp", "improve")])
def test_under_throughput_the_pipeline_ends_with_the_program_phase_never_worse_than_local_search(
    monkeypatch: pytest.MonkeyPatch, program_search: str, module_name: str, function_name: str
) -> None:
    import importlib

    from rlplace import policy_method
    from rlplace.baselines import local_search
    from rlplace.policy_method import PROGRAM_SHARE, search

    module = importlib.import_module(f"rlplace.baselines.{module_name}")
    calls: list[float] = []
    original = getattr(module, function_name)

    def recorded(*args, **kwargs):
        calls.append(kwargs["deadline"])
        return original(*args, **kwargs)

    monkeypatch.setattr(module, function_name, recorded)
    monkeypatch.setattr(policy_method, "PROGRAM_SEARCH", program_search)
    graph = two_heavy_graph(6)
    cluster = two_devices()
    costs = CostTable.build(graph, cluster)
    found, _ = search(graph, cluster, costs, objective="throughput", budget_s=0.6, random_order=True, seed=1)
    assert PROGRAM_SHARE > 0 and len(calls) == 1
    problem = build_move_problem(graph, cluster, costs, objective="throughput")
    searched = local_search.place(graph, cluster, costs, objective="throughput", seed=1)
    assert problem.simulator.step_time(found) <= problem.simulator.step_time(searched) * (1 + 1e-9)
    search(graph, cluster, costs, objective="latency", budget_s=0.3, random_order=True, seed=1)
    assert len(calls) == 1  # the phase is for throughput only


def test_the_wide_model_set_adds_models_but_never_a_held_out_or_family_validation_one() -> None:
    import sys
    from pathlib import Path

    from rlplace.agents.improve_data import HELDOUT_MODELS, TRAIN_MODELS, TRAIN_ZOO, WIDE_MODELS, train_models
    from rlplace.agents.improve_train import TrainConfig, split_description, training_specs
    from rlplace.synthetic import parse_synthetic_spec

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_policy import FAMILY_VALIDATION, VALIDATION, WIDE_VALIDATION

    assert train_models(False) == TRAIN_MODELS and train_models(True) == TRAIN_MODELS + TRAIN_ZOO
    wide = train_models(False, "wide")
    assert set(wide) == set(TRAIN_MODELS) | set(TRAIN_ZOO) | set(WIDE_MODELS) and len(wide) == len(set(wide))
    never = {spec for _, spec, *_ in FAMILY_VALIDATION} | set(HELDOUT_MODELS)
    assert not never & set(wide)
    assert not any("resnet" in spec or "fork-join" in spec for spec in wide)
    validation_seeds = {parse_synthetic_spec(spec)[1].get("seed") for _, spec, *_ in VALIDATION + WIDE_VALIDATION if spec.startswith("synthetic:")}
    assert not validation_seeds & {parse_synthetic_spec(spec)[1].get("seed") for spec in wide if spec.startswith("synthetic:")}
    assert len(training_specs(TrainConfig(families="wide"))) > len(training_specs(TrainConfig(zoo=True)))
    assert split_description(False, 0, "wide")["trained_on"]["models"][: len(wide)] == list(wide)
    with pytest.raises(RlplaceError, match="families must be one of base, wide"):
        train_models(False, "everything")


def test_bench_policy_summary_rows_cover_their_regimes() -> None:
    """B-D is every regime but latency, the memory-bound one (C) included: a substring test on
    "B-D" once dropped C from that row."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_policy import rows_of

    rows = [{"regime": regime, "case": regime} for regime in "AABCCD"]
    assert [r["regime"] for r in rows_of(rows, "B-D")] == ["B", "C", "C", "D"]
    assert [r["regime"] for r in rows_of(rows, "all")] == list("AABCCD")
    assert [r["regime"] for r in rows_of(rows, "C")] == ["C", "C"]


def test_bench_policy_report_prints_the_summary_of_a_saved_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--report FILE`` recomputes the table from a ``--json`` file: B-D over B, C and D
    (0.9 * 0.8 * 1.0) ** (1/3) = 0.896, all four regimes (0.72) ** (1/4) = 0.921."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_policy import main

    def row(regime: str, ratio: float) -> dict[str, object]:
        return {
            "regime": regime, "case": regime, "seed": 0, "policy": ratio, "best_time": 1.0, "local_search_budget": 1.0, "ablation": 1.0,
            "policy_sims_to_ls": 10.0, "ablation_sims_to_ls": 20.0, "lower_bound": 0.5, "policy_decide_s": 1.8, "local_search_s": 0.1,
        }  # fmt: skip

    saved = tmp_path / "run.json"
    saved.write_text(json.dumps([row("A", 1.0), row("B", 0.9), row("C", 0.8), row("D", 1.0)]))
    assert main(["--report", str(saved)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(("all ", "B-D "))}
    assert lines["B-D"][1] == "0.896" and lines["all"][1] == "0.921"
    other = tmp_path / "other-seeds.json"  # a run at other seeds: its rows join the pool
    other.write_text(json.dumps([{**row("B", 0.8), "seed": 3}, {**row("A", 1.0), "seed": 3}]))
    assert main(["--report", str(saved), str(other)]) == 0
    printed = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.startswith(("all ", "B-D "))}
    # B-D: (0.9 * 0.8 * 1.0 * 0.8) ** (1/4) = 0.871; all: (0.72 * 0.8) ** (1/6) = 0.912
    assert lines["B-D"][1] == "0.871" and lines["all"][1] == "0.912"
    assert "decision time of policy" in printed and "simulations per policy decision" not in printed  # rows without the count print none
    counted = tmp_path / "counted.json"
    counted.write_text(json.dumps([{**row("A", 1.0), "policy_sims": 100}, {**row("B", 0.9), "policy_sims": 300}, {**row("C", 0.8), "policy_sims": 900}]))
    assert main(["--report", str(counted)]) == 0
    assert "simulations per policy decision: median 300 " in capsys.readouterr().out


def test_bench_policy_report_recomputes_bounds_with_todays_lower_bound(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """``--report FILE --bounds-now``: a row saved with the old bound (5 = work 10 / 2 devices)
    of a 1-8-1 chain at M = 4 gets today's one-op pipeline bound, 0.25 + 8 + 0.25 = 8.5, so
    LB/best with a best classic of 10 goes from 0.500 to 0.850; a case in no set is refused."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import bench_policy

    from rlplace.cluster import Cluster, Device
    from rlplace.envs.improve_env import make_case

    ops = [{"name": name, "times": {"accelerator": t}} for name, t in (("a", 1.0), ("b", 8.0), ("c", 1.0))]
    graph = OpGraph.build(ops, [{"src": "a", "dst": "b", "bytes": 0.0, "time": 0.0}, {"src": "b", "dst": "c", "bytes": 0.0, "time": 0.0}], time_classes=("accelerator",))
    cluster = Cluster.build("two", [Device(f"d{i}", "custom", "accelerator", 1e12, 1e12, 1e12, 1e12) for i in range(2)], intra_host=(1e9, 0.0))
    case = make_case("chain@two M=4", graph, cluster, objective="pipelined", microbatches=4)
    monkeypatch.setattr(bench_policy, "held_out_cases", lambda quick: [("B", case)])
    monkeypatch.setattr(bench_policy, "validation_cases", lambda quick, specs=(): [])
    row = {
        "regime": "B", "case": case.label, "seed": 0, "policy": 9.0, "best_time": 10.0, "local_search_budget": 10.0, "ablation": 9.0,
        "policy_sims_to_ls": 10.0, "ablation_sims_to_ls": 20.0, "lower_bound": 5.0, "policy_decide_s": 1.8, "local_search_s": 0.1,
    }  # fmt: skip
    saved = tmp_path / "run.json"
    saved.write_text(json.dumps([row]))
    assert bench_policy.main(["--report", str(saved), "--bounds-now"]) == 0
    out = capsys.readouterr().out
    assert any(line.split()[-2:] == ["0.500", "0.850"] for line in out.splitlines() if line.startswith("B      chain"))
    saved.write_text(json.dumps([{**row, "case": "elsewhere"}]))
    with pytest.raises(SystemExit, match="in none of the bench's sets"):
        bench_policy.main(["--report", str(saved), "--bounds-now"])


def test_screen_policy_parses_variants_patches_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A variant sets module constants only while it runs; the report's geomeans come from the
    rows: base (0.9 * 1.0) ** 0.5 = 0.9487, the variant (0.8 * 1.0) ** 0.5 = 0.8944, its
    ratio to base (0.8 / 0.9) ** 0.5 = 0.9428, better in 1 run, worse in none; its slowest
    decision 1.70 s (rows without decision times show nan)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import screen_policy

    from rlplace.agents import guided_search

    name, patches = screen_policy.parse_variant("more:rlplace.agents.guided_search.METIS_RESTARTS=3,rlplace.agents.guided_search.BLOCK_SHARE=0.1")
    assert name == "more" and patches == {("rlplace.agents.guided_search", "METIS_RESTARTS"): 3, ("rlplace.agents.guided_search", "BLOCK_SHARE"): 0.1}
    shipped = guided_search.METIS_RESTARTS, guided_search.BLOCK_SHARE
    with screen_policy.patched(patches):
        assert (guided_search.METIS_RESTARTS, guided_search.BLOCK_SHARE) == (3, 0.1)
    restored = guided_search.METIS_RESTARTS, guided_search.BLOCK_SHARE
    assert restored == shipped
    with pytest.raises(SystemExit, match=r"module\.ATTR=VALUE"):
        screen_policy.parse_variant("bad:METIS_RESTARTS")

    rows = tmp_path / "rows.jsonl"
    lines = [("base", "B", 0.9, 1.8), ("more", "B", 0.8, 1.7), ("base", "A", 1.0, 1.9), ("more", "A", 1.0, 1.6)]
    rows.write_text("".join(json.dumps({"set": "wide", "regime": r, "case": r, "seed": 3, "variant": v, "ratio": x, "decide_s": t}) + "\n" for v, r, x, t in lines))
    screen_policy.report(rows)
    out = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert out["base"][1] == "0.9487" and out["more"][1] == "0.8944" and out["more"][3] == "0.8944"
    assert out["more"][5] == "0.8000" and out["more"][6] == "1.000" and out["base"][7] == "1.90" and out["more"][7] == "1.70"
    assert out["more"][8] == "0.9428" and out["more"][-4:] == ["1,", "worse", "in", "0)"]
    rows.write_text("".join(json.dumps({"set": "throughput", "regime": r, "case": r, "seed": 3, "variant": v, "ratio": x}) + "\n" for v, r, x, _ in lines))
    screen_policy.report(rows)
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[2:7] == ["validation", "wide", "families", "throughput", "B-D"]  # a set outside the standing three shows when it ran
    assert {line.split()[0]: line.split() for line in printed[2:]}["more"][5] == "0.8944"
    assert {line.split()[0]: line.split() for line in printed[2:]}["more"][8] == "nan"
