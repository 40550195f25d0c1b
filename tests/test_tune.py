"""``rlplace tune``: the policy fine-tuned on measured step times (``rlplace.agents.tune``).

Unit tests use a fake measurer (step time = a fixed function of the placement) so every
invariant is exact: each placement is measured at most once, the budget and the deadline
hold, the reward is the measured relative gain, and the result is never slower than the
simulator's best measured the same way. One end-to-end test runs ``rlplace tune`` on real gloo
ranks with a budget of 3 and checks the files it writes and that no rank outlives it.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from rlplace.agents.improve_checkpoint import default_checkpoint_dir, load_scorer
from rlplace.agents.tune import MeasuredImproveEnv, MeasurementCache, SessionMeasurer, TuneConfig, tune_problem
from rlplace.envs.improve_env import classic_starts, make_case
from rlplace.envs.improve_state import MoveProblem, build_move_problem
from rlplace.envs.specs import resolve_cluster, resolve_model
from rlplace.errors import RlplaceError

TINY_MODEL = "rlplace.measure.models:mlp"


@pytest.fixture(scope="module")
def problem() -> MoveProblem:
    entry = resolve_model("synthetic:fork-join:n=30:seed=3")
    case = make_case("fork-join", entry.graph, resolve_cluster("2xV100-pcie"), objective="latency")
    return build_move_problem(case.graph, case.cluster, case.costs, objective="latency")


@pytest.fixture(scope="module")
def scorer():
    return load_scorer(default_checkpoint_dir())[0]


class FakeMeasurer:
    """Step time = the simulated one scaled by a factor in [0.5, 1.5) fixed by the placement's
    bytes (``reverse``: 1 / simulated, so the simulator ranks placements backwards)."""

    def __init__(self, problem: MoveProblem, *, reverse: bool = False) -> None:
        self.problem, self.reverse = problem, reverse
        self.calls: dict[bytes, int] = {}
        self.batches = 0

    def time_of(self, placement: np.ndarray) -> float:
        simulated = float(self.problem.simulator.score(placement)[0])
        if self.reverse:
            return 1.0 / simulated
        return simulated * (0.5 + (zlib.crc32(np.asarray(placement, np.int64).tobytes()) % 1000) / 1000)

    def measure(self, placements, timeout_s: float) -> list[float]:
        self.batches += 1
        for p in placements:
            key = np.asarray(p, np.int64).tobytes()
            self.calls[key] = self.calls.get(key, 0) + 1
        return [self.time_of(p) for p in placements]

    def compare(self, placements, rounds: int, timeout_s: float) -> list[list[float]]:
        self.compared = [np.asarray(p, np.int64).copy() for p in placements]
        return [[self.time_of(p)] * rounds for p in placements]


def _config(**changes) -> TuneConfig:
    settings = {"budget": 8, "search_evaluations": 60, "ppo_timesteps": 24, "n_steps": 8, "n_epochs": 2, "candidates": 3}
    settings.update(changes)
    return TuneConfig(**settings)


# ------------------------------------------------------------------------------ the cache
def test_cache_measures_each_placement_once_and_counts_only_new_ones() -> None:
    class Counter:
        def __init__(self) -> None:
            self.seen: list[bytes] = []

        def measure(self, placements, timeout_s):
            self.seen += [p.tobytes() for p in placements]
            return [float(p.sum()) for p in placements]

    counter = Counter()
    cache = MeasurementCache(counter, budget=3, timeout_s=5.0)
    a, b, c, d = (np.array(v, np.int64) for v in ([0, 1], [1, 1], [1, 0], [0, 0]))
    assert cache.get_many([a, a, b]) == [1.0, 1.0, 2.0]  # a repeated inside one batch: measured once
    assert cache.get(b) == 2.0 and cache.get(a) == 1.0
    assert cache.measurements == 2 and cache.hits == 3
    assert cache.get_many([c, d]) == [1.0, None]  # the budget (3) leaves d unmeasured
    assert cache.exhausted and cache.get(d) is None
    assert len(counter.seen) == len(set(counter.seen)) == 3
    placement, best = cache.best()
    assert best == 1.0 and placement.tolist() == [0, 1]  # a and c tie at 1.0: the earlier one


def test_cache_measures_nothing_after_the_deadline() -> None:
    fake = FakeMeasurer.__new__(FakeMeasurer)
    cache = MeasurementCache(fake, budget=10, timeout_s=5.0, deadline=time.perf_counter() - 1.0)
    assert cache.exhausted
    assert cache.get(np.zeros(3, np.int64)) is None and cache.measurements == 0


def test_cache_key_merges_placements_the_executor_runs_alike() -> None:
    counter = FakeMeasurer.__new__(FakeMeasurer)
    counter.calls, counter.batches, counter.reverse = {}, 0, False
    counter.time_of = lambda p: 1.0  # type: ignore[method-assign]
    cache = MeasurementCache(counter, budget=5, timeout_s=5.0, key=lambda p: bytes([int(p[0])]))
    cache.get_many([np.array([0, 1]), np.array([0, 0]), np.array([1, 1])])
    assert cache.measurements == 2 and cache.hits == 1


# ----------------------------------------------------------------------------- the env
def test_measured_env_reward_is_the_relative_measured_gain(problem: MoveProblem) -> None:
    fake = FakeMeasurer(problem)
    cache = MeasurementCache(fake, budget=3, timeout_s=5.0)
    start = np.zeros(problem.num_units, np.int64)
    env = MeasuredImproveEnv(problem, cache, problem.units.expand, lambda: start, max_moves=8)
    env.reset(seed=0)
    unit, device = map(int, np.argwhere(env.action_masks()[:-1].reshape(env.max_nodes, env.max_devices))[0])
    _, reward, _, truncated, info = env.step(unit * env.max_devices + device)
    moved = start.copy()
    moved[unit] = device
    before, after = fake.time_of(problem.units.expand(start)), fake.time_of(problem.units.expand(moved))
    assert reward == pytest.approx((before - after) / before, rel=1e-12)
    assert info["measured_time"] == after and not truncated
    # moving back costs nothing: both placements are cached
    _, back, _, _, _ = env.step(unit * env.max_devices + int(start[unit]))
    assert back == pytest.approx((after - before) / after, rel=1e-12) and cache.measurements == 2


def test_measured_env_truncates_when_nothing_can_be_measured(problem: MoveProblem) -> None:
    cache = MeasurementCache(FakeMeasurer(problem), budget=1, timeout_s=5.0)
    env = MeasuredImproveEnv(problem, cache, problem.units.expand, lambda: np.zeros(problem.num_units, np.int64))
    env.reset(seed=0)
    action = int(np.flatnonzero(env.action_masks()[:-1])[0])
    _, reward, _, truncated, info = env.step(action)
    assert reward == 0.0 and truncated and info["budget_exhausted"] and cache.measurements == 1


# --------------------------------------------------------------------------- tune_problem
@pytest.mark.parametrize(("budget", "reverse", "seed"), [(1, False, 0), (3, True, 1), (8, False, 2), (8, True, 3)])
def test_tuned_result_never_slower_than_the_simulators_best_measured_alike(problem, scorer, budget: int, reverse: bool, seed: int) -> None:
    fake = FakeMeasurer(problem, reverse=reverse)
    starts = classic_starts(problem, ("m-topo", "heft", "single"))
    result = tune_problem(problem, starts, scorer, MeasurementCache(fake, budget=budget, timeout_s=5.0), _config(budget=budget, seed=seed))
    assert result.simulator_best_measured == fake.time_of(result.simulator_best)  # measured first, as any other
    assert result.best_measured <= result.simulator_best_measured
    measured = [np.frombuffer(k, np.int64) for k in fake.calls]
    assert result.best_measured == min(fake.time_of(p) for p in measured)  # exactly the best seen
    assert result.measurements == len(fake.calls) <= budget
    assert max(fake.calls.values()) == 1  # never the same placement twice
    assert result.history[0]["source"] == "simulator"
    if reverse and budget > 1:
        assert result.best_measured < result.simulator_best_measured  # the simulator's best is the slowest here


def test_confirmation_keeps_the_simulators_best_when_the_winner_was_luck(problem, scorer) -> None:
    class Lucky(FakeMeasurer):
        """The search's measurements rank placements backwards; side by side, all are equal but
        the simulator's best (first) is a little faster."""

        def compare(self, placements, rounds, timeout_s):
            self.rounds = rounds
            return [[1.0] * rounds, [1.01] * rounds]

    fake = Lucky(problem, reverse=True)
    starts = classic_starts(problem, ("m-topo", "heft", "single"))
    result = tune_problem(problem, starts, scorer, MeasurementCache(fake, budget=4, timeout_s=5.0), _config(budget=4, confirm_rounds=5))
    assert result.confirmed and fake.rounds == 5
    assert result.searched_best_measured < fake.time_of(result.simulator_best)  # the search thought it won
    assert result.best.tolist() == result.simulator_best.tolist()
    assert result.best_measured == result.simulator_best_measured == 1.0 and result.best_source == "simulator"


def test_confirmation_needs_a_win_in_every_round(problem, scorer) -> None:
    class Mixed(FakeMeasurer):
        def compare(self, placements, rounds, timeout_s):
            return [[1.0, 1.0, 1.0], [0.5, 0.5, 1.2]]  # faster in median, slower in one round

    result = tune_problem(problem, classic_starts(problem, ("m-topo", "heft", "single")), scorer, MeasurementCache(Mixed(problem, reverse=True), budget=4, timeout_s=5.0), _config(budget=4))
    assert result.confirmed and result.best.tolist() == result.simulator_best.tolist() and result.best_measured == 1.0


def test_confirmation_keeps_a_real_winner(problem, scorer) -> None:
    fake = FakeMeasurer(problem, reverse=True)
    starts = classic_starts(problem, ("m-topo", "heft", "single"))
    result = tune_problem(problem, starts, scorer, MeasurementCache(fake, budget=4, timeout_s=5.0), _config(budget=4))
    assert result.confirmed and [p.tolist() for p in fake.compared] == [result.simulator_best.tolist(), result.best.tolist()]
    assert result.best_measured == fake.time_of(result.best) < result.simulator_best_measured == fake.time_of(result.simulator_best)


def test_tune_spends_the_budget_and_fine_tunes(problem, scorer) -> None:
    fake = FakeMeasurer(problem)
    starts = classic_starts(problem, ("m-topo", "heft", "single"))
    result = tune_problem(problem, starts, scorer, MeasurementCache(fake, budget=10, timeout_s=5.0), _config(budget=10, ppo_timesteps=64))
    assert result.measurements == 10
    assert result.ppo_updates >= 1 and result.scorer is not scorer
    assert {h["source"] for h in result.history} >= {"simulator", "ppo"}


def test_tune_without_time_to_measure_is_an_error(problem, scorer) -> None:
    cache = MeasurementCache(FakeMeasurer(problem), budget=4, timeout_s=5.0, deadline=time.perf_counter() - 1.0)
    with pytest.raises(RlplaceError, match="could not be measured"):
        tune_problem(problem, classic_starts(problem, ("m-topo",)), scorer, cache, _config(budget=4))


def test_bad_settings_are_errors() -> None:
    for bad in ({"budget": 0}, {"timeout_s": 0.0}, {"total_timeout_s": -1.0}, {"n_steps": 1}):
        with pytest.raises(RlplaceError):
            _config(**bad).validate()


# ------------------------------------------------------------------------- real ranks
def rank_processes() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "rlplace.measure" in " ".join(child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


def test_hung_rank_scores_a_penalty_within_the_timeout_and_leaves_nothing() -> None:
    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import MeasureSetup, local_cpu_cluster

    setup = MeasureSetup.prepare(ModelRecipe(TINY_MODEL), local_cpu_cluster(2))
    measurer = SessionMeasurer(setup, steps=2, warmup=1, fault={"rank": 1, "kind": "hang"})
    placement = np.zeros(setup.graph.num_ops, np.int64)
    started = time.monotonic()
    (step_time,) = measurer.measure([placement], timeout_s=4.0)
    assert time.monotonic() - started < 4.0 + 15.0
    assert step_time == pytest.approx(10.0 * measurer.single_device_time) and measurer.failures
    assert not rank_processes()


def test_rlplace_tune_end_to_end_tiny_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlplace.cli import main

    out = tmp_path / "tuned"
    started = time.monotonic()
    status = main(
        ["tune", TINY_MODEL, "--budget", "3", "--candidates", "1", "--ppo-steps", "16", "--evaluations", "40", "--steps", "2", "--warmup", "1",
         "--timeout", "60", "--total-timeout", "90", "--out", str(out), "--json"]
    )  # fmt: skip
    assert status == 0
    assert time.monotonic() - started < 90 + 60  # the total timeout, plus start-up and the last PPO rollout
    payload = json.loads(capsys.readouterr().out)
    assert payload["measurements"] <= 3
    assert payload["ppo_timesteps"] >= 16 and payload["ppo_updates"] >= 1  # PPO ran on measured rewards
    assert payload["tuned_measured_step_time"] <= payload["simulator_best_measured_step_time"]
    tuned, meta = load_scorer(out)
    base = load_scorer(default_checkpoint_dir())[0].state_dict()
    assert any(not torch.equal(value, base[name]) for name, value in tuned.state_dict().items())  # PPO changed the weights
    assert meta["tuned"]["model"] == TINY_MODEL and meta["tuned"]["reward"] == "measured" and meta["tuned"]["backend"] == "gloo"
    placement = json.loads((out / "placement.json").read_text())
    assert placement["measured_step_time"] == payload["tuned_measured_step_time"]
    assert len(placement["placement"]) == len(placement["simulator_best"]["placement"])
    assert not rank_processes()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budget", "0"], "budget must be at least 1"),
        (["--timeout", "0"], "timeouts must be positive"),
        (["--inference"], "drop --inference"),
        (["--threads", "1000000000"], "MAX_THREADS"),
        (["--confirm-rounds", "-1"], "confirm_rounds"),
        (["--steps", "0"], "--steps must be at least 1"),
    ],
)
def test_bad_tune_options_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    from rlplace.cli import main

    assert main(["tune", TINY_MODEL, "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_train_agent_reward_option(capsys: pytest.CaptureFixture[str]) -> None:
    import train_agent

    assert train_agent.main(["--reward", "measured"]) == 2
    assert "needs --model MODEL" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        train_agent.main(["--reward", "bogus"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: train_agent.py: argument --reward")
    assert train_agent.main(["--reward", "measured", "--model", TINY_MODEL, "--budget", "0"]) == 2
    assert "budget must be at least 1" in capsys.readouterr().err
    assert train_agent.main(["--reward", "measured", "--model", TINY_MODEL, "--threads", "1000000000"]) == 2
    assert "MAX_THREADS" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        train_agent.main(["--reward", "measured", "--model", TINY_MODEL, "--rounds", "3"])  # a training option, not a tune one
    assert exit_.value.code == 2 and "unrecognized arguments: --rounds 3" in capsys.readouterr().err


def test_tune_out_that_is_a_file_or_an_unmeasurable_model_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rlplace.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["tune", TINY_MODEL, "--out", str(blocker)]) == 2
    assert "give a folder" in capsys.readouterr().err and blocker.read_text() == "x"
    assert main(["tune", "synthetic:layered", "--out", str(tmp_path / "o")]) == 2
    assert "measurement runs PyTorch code" in capsys.readouterr().err
