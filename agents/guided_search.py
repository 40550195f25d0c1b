"""Policy-guided search: local search whose candidate moves come in the order a ranker gives.

`guided_search` starts from the best of several (u,) start assignments and repeats:

1. observe the current placement (one full simulation: critical path, busy times, and with a
   ranker the features it reads; random order needs only the critical path, `_focus_view`);
2. list ``local-search``'s neighbourhood (`candidate_moves`: every move of a unit to another
   device that can run it; under ``throughput`` only those the memory estimate allows) and
   order it: moves of critical-path units first (``focus``, as ``local-search`` does), by the
   ``ranker``'s (u, k) score within each group (higher first); a share of the positions,
   ``random_share`` at first, is given to uniformly random candidates instead (exploration);
   with ``adaptive`` the share follows how often each list's simulated candidates were the
   improving move taken (`_SourceYield`), so a ranking that does no better than chance on
   this problem gives way to random order;
3. simulate the candidates in batches of ``batch`` (each with the current step time as its
   cutoff, `rlplace.rules.cutoff_for`: a candidate that cannot win may be cut short, which
   changes no decision); the best move of the first batch holding
   an improving one is taken (a tie is taken as a *sideways* step, at most
   ``SIDEWAYS_LIMIT`` in a row); the search goes on down the same order (moves of the moved
   unit dropped) and goes back to 1 after ``rerank_every`` moves (``rerank_random`` without a
   ranker: observing costs one simulation, ranking a forward pass) or when the order is used
   up; before each candidate move a random swap of two units is tried with probability
   ``swap_share`` (as ``local-search`` does; the policy ranks moves, not swaps);
4. when ``scan`` candidates bring nothing, restart from the best placement so far with a
   *kick*: with probability ``group_kick_share`` a *group kick* (`_group_kick`: up to
   ``GROUP_KICK_SIZE`` random units of one device moved together to one other device that
   can run them all), otherwise a few random units sent to random devices each (as
   ``local-search`` kicks);
5. when the budget is spent, with ``polish``: exchange the whole contents of two devices of
   the best placement (pairs in random order, the first that scores better is taken), at most
   ``POLISH_EXCHANGES`` times. Pairs of interchangeable devices
   (`rlplace.costs.interchangeable_devices`) are never tried, so on a homogeneous one-host
   cluster this costs nothing; elsewhere at most ``POLISH_EXCHANGES`` x pairs simulations
   (k = 16 with two kinds: 64 pairs, ~10 ms) past the budget. It puts a whole stage on a
   faster device in one step, which single moves and swaps reach only through worse
   placements. Run during the search instead of after it (before each kick), it drew
   pipelined searches on mixed clusters into worse basins (README, The learned placer).

`search_from_starts` is the deployed pipeline around it: local-search's own run from the classic
starts, then optionally a block-level search (`rlplace.baselines.block_search`, ``block_share``
of the budget; before the local-search run when `LOCAL_SEARCH_FIRST` is False, as until the
third 12-01 session), then `guided_search` from both answers and the starts.

The search phase stops after ``evaluations`` simulations or ``budget_s`` seconds; the answer is the best
placement seen (less memory overflow first, then smaller step time), so never worse than its
best start (of those scored: with fewer ``evaluations`` than starts, only the first ones, in
the order given, are scored). With ``ranker=None`` the order is a uniform random permutation with the critical
path first: ``local-search``'s order, the ablation ``benchmarks/bench_policy.py`` prints.
Settings were chosen on the validation slice of the training families
(``bench_policy.py --validation``), never on the held-out split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rlplace.costs import interchangeable_devices
from rlplace.envs.improve_state import MoveProblem, Observation, legal_moves, observe
from rlplace.rules import cutoff_for, key_better, key_equal

Ranker = Callable[[MoveProblem, np.ndarray, Observation], np.ndarray]
Key = tuple[float, float]

SIDEWAYS_LIMIT = 20
DEFAULT_BATCH = 4
DEFAULT_RANDOM_SHARE = 0.2
#: Adapt the random share to how often each list's candidates improved (`_SourceYield`).
DEFAULT_ADAPTIVE = True
MIN_RANDOM_SHARE = 0.05
MAX_RANDOM_SHARE = 0.9
DEFAULT_SCAN = 64
DEFAULT_RERANK = 4
#: Probability of a random swap of two units before each candidate move (``local-search`` uses 0.3).
DEFAULT_SWAP_SHARE = 0.3
#: Moves of the units on the simulated critical path (``throughput``: the busiest device) first,
#: as ``local-search`` orders them; with a ranker, ranked within each of the two groups.
DEFAULT_FOCUS = True
#: Share of the kicks that are group kicks (`_group_kick`), and the most units one moves.
DEFAULT_GROUP_KICK_SHARE = 0.5
GROUP_KICK_SIZE = 4
#: After the budget, exchange whole device contents on the best placement (`_exchange_descent`),
#: at most ``POLISH_EXCHANGES`` times.
DEFAULT_POLISH = True
#: Share of the budget (seconds or simulations) local-search's own run may take before the
#: guided search starts from its answer (`search_from_starts`).
LOCAL_SEARCH_SHARE = 0.5
#: Share of the budget (seconds or simulations) of the block-level search that comes first
#: (`search_from_starts`, `rlplace.baselines.block_search`). Under a time budget its seconds
#: count within ``LOCAL_SEARCH_SHARE``'s; under a simulation budget its simulations come on top
#: of local search's. 0.22 is 0.4 s of a 1.8 s decision.
BLOCK_SHARE = 0.22
POLISH_EXCHANGES = 3
#: Local-search's own run before the block phase instead of after it (`search_from_starts`): it
#: then has its whole share of the budget, so the never-worse guarantee holds more often.
#: Chosen on validation by a rule fixed beforehand (at most 0.3 % dearer, no more runs worse
#: than local-search's default answer): docs/learned-placer-experiments.md.
LOCAL_SEARCH_FIRST = True
#: Extra starts of the block phase and the guided search (never of local-search's own run):
#: METIS at this many seeds per search (`rlplace.baselines.local_search.seeded_restarts`,
#: ~4 ms each). Chosen on the validation sets (8 and 16 against none: docs).
METIS_RESTARTS = 8


@dataclass
class SearchStats:
    """What a search did: simulations, rankings, restarts, and the best key after each simulation."""

    simulations: int = 0
    rankings: int = 0
    restarts: int = 0
    moves_taken: int = 0
    wall_s: float = 0.0
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (simulations, seconds, best step time)




def guided_search(
    problem: MoveProblem,
    starts: Sequence[np.ndarray],
    ranker: Ranker | None,
    *,
    evaluations: int = 2000,
    budget_s: float | None = None,
    batch: int = DEFAULT_BATCH,
    random_share: float = DEFAULT_RANDOM_SHARE,
    scan: int = DEFAULT_SCAN,
    rerank_every: int = DEFAULT_RERANK,
    swap_share: float = DEFAULT_SWAP_SHARE,
    focus: bool = DEFAULT_FOCUS,
    rerank_random: int = 1,
    adaptive: bool = DEFAULT_ADAPTIVE,
    polish: bool = DEFAULT_POLISH,
    group_kick_share: float = DEFAULT_GROUP_KICK_SHARE,
    seed: int = 0,
    on_observe: Callable[[np.ndarray, Observation], None] | None = None,
) -> tuple[np.ndarray, Key, SearchStats]:
    """(best (u,) assignment, its (overflow, step time), stats); see the module docstring.

    ``on_observe(assignment, observation)``, when given, sees every state the search observes
    before ranking its moves (a copy of the (u,) assignment; only with a ranker, since random
    order computes no features): the states expert iteration labels to train on the search's
    own distribution (`rlplace.agents.search_states`).
    """
    rng = np.random.default_rng(seed)
    stats = SearchStats()
    began = time.perf_counter()
    deadline = None if budget_s is None else began + budget_s

    def out_of_budget() -> bool:
        return stats.simulations >= evaluations or (deadline is not None and time.perf_counter() >= deadline)

    def score(assignment: np.ndarray, against: Key | None = None) -> Key:
        stats.simulations += 1
        return problem.score(assignment, cutoff=cutoff_for(against))

    scored: list[tuple[Key, int]] = []
    for i, start in enumerate(starts):
        # In the caller's order, while the simulations last (one at least). A time budget
        # never skips a start: every start is scored (the answer is never worse than the best).
        if scored and stats.simulations >= evaluations:
            break
        scored.append((score(np.asarray(start, np.int64)), i))
    best_key, index = min(scored)
    best = np.asarray(starts[index], np.int64).copy()
    stats.curve.append((stats.simulations, time.perf_counter() - began, best_key[1]))
    current, current_key = best.copy(), best_key
    sideways = 0
    order = np.zeros(0, np.int64)
    since_ranking = rerank_every
    sources = _SourceYield()
    from_random: set[int] = set()
    while not out_of_budget():
        if since_ranking >= (rerank_every if ranker is not None else rerank_random) or order.size == 0:
            # With a ranker: its features and scores; without one only what ordering needs
            # (no features: random order never reads them). Either costs one simulation.
            scores: np.ndarray | None = None
            obs: Observation | None = None
            if ranker is not None:
                obs = observe(problem, current)
                scores = np.asarray(ranker(problem, current, obs), dtype=np.float64).reshape(-1)
                stats.rankings += 1
                if on_observe is not None:
                    on_observe(current.copy(), obs)
            view = _focus_view(problem, current, obs)
            stats.simulations += 1
            share = sources.share(random_share) if adaptive and ranker is not None else random_share
            ranked_order, from_random = _candidate_order(problem, view, scores, rng, share, scan, focus)
            order = _with_swaps(ranked_order, problem.num_units, rng, swap_share)
            since_ranking = 0
        taken = False
        while order.size and not out_of_budget():
            chunk, order = order[:batch], order[batch:]
            trials = []
            for move in chunk:
                if out_of_budget():
                    break
                trial = _apply(problem, current, int(move))
                if trial is not None:
                    trials.append((score(trial, current_key), trial, int(move)))
            if not trials:
                continue
            key, trial, move = min(trials, key=lambda item: item[0])
            sources.record([candidate for _, _, candidate in trials], move if key_better(key, current_key) else None, from_random)
            if key_better(key, current_key) or (key_equal(key, current_key) and sideways < SIDEWAYS_LIMIT):
                sideways = 0 if key_better(key, current_key) else sideways + 1
                moved_units = np.flatnonzero(trial != current)
                current, current_key = trial, key
                stats.moves_taken += 1
                if key_better(current_key, best_key):
                    best, best_key = current.copy(), current_key
                    stats.curve.append((stats.simulations, time.perf_counter() - began, best_key[1]))
                taken = True
                since_ranking += 1
                order = _still_legal(problem, current, order, moved_units)
                break
        if not taken and not out_of_budget():
            grouped = group_kick_share > 0 and rng.random() < group_kick_share  # share 0: no draw, the plain kicks' stream
            current = _group_kick(problem, best, rng) if grouped else _kick(problem, best, rng)
            current_key = score(current)
            sideways = 0
            since_ranking = rerank_every
            stats.restarts += 1
    if polish:
        pairs = distinct_device_pairs(problem)
        for _ in range(POLISH_EXCHANGES if pairs else 0):
            found = _exchange_descent(problem, best, best_key, pairs, rng, score)
            if found is None:
                break
            best, best_key = found
            stats.moves_taken += 1
            stats.curve.append((stats.simulations, time.perf_counter() - began, best_key[1]))
    stats.wall_s = time.perf_counter() - began
    stats.curve.append((stats.simulations, stats.wall_s, best_key[1]))
    return best, best_key, stats


def search_from_starts(
    problem: MoveProblem,
    starts: Sequence[np.ndarray],
    ranker: Ranker | None,
    *,
    evaluations: int | None = None,
    budget_s: float | None = None,
    guided_until_s: float | None = None,
    began: float | None = None,
    seed: int = 0,
    block_share: float = 0.0,
    max_blocks: int | None = None,
    extra_starts: Sequence[np.ndarray] = (),
    **options: object,
) -> tuple[np.ndarray, SearchStats]:
    """The deployed pipeline's search from (u,) ``starts``: local-search's own run from
    ``starts`` (`rlplace.baselines.local_search.search_units`, its default simulations, cut at
    `LOCAL_SEARCH_SHARE` of ``evaluations`` or at `LOCAL_SEARCH_SHARE` of ``budget_s`` from
    ``began``) and, with ``block_share`` > 0, a local search over blocks of units
    (`rlplace.baselines.block_search`, at most ``max_blocks`` blocks, default its
    ``DEFAULT_MAX_BLOCKS``; skipped when there are no more units than blocks) for
    ``block_share`` of ``budget_s`` (from its own start, ending by ``began`` + ``budget_s`` at
    the latest) or of ``evaluations``, in that order (`LOCAL_SEARCH_FIRST`; the other way
    round when it is False, the block phase's time then counting within local search's); then
    `guided_search` from the best of local search's answer, the block search's answer and the
    starts, with ``ranker``, for what is left: (best (u,) assignment,
    stats with every phase's simulations; the curve covers the guided phase). The local-search
    run never sees the block answer, so the result is never worse than that run's answer.
    ``extra_starts`` ((u,) assignments) are starts of the block search and the guided search
    only, never of local search's run.

    ``budget_s``: seconds from ``began`` (`time.perf_counter`; default now) for the whole
    search; ``guided_until_s`` (default ``budget_s``) ends the guided phase earlier, leaving
    the rest to the caller. ``options`` go to `guided_search` (``polish``, ``group_kick_share``,
    ``on_observe``, ...).
    """
    from rlplace.baselines.block_search import DEFAULT_MAX_BLOCKS, block_search, build_blocks
    from rlplace.baselines.local_search import DEFAULT_EVALUATIONS, search_units

    if not 0.0 <= block_share < 1.0 - LOCAL_SEARCH_SHARE:
        raise ValueError(f"block_share {block_share} must lie in [0, {1.0 - LOCAL_SEARCH_SHARE}): local search takes {LOCAL_SEARCH_SHARE} of the budget")
    began = time.perf_counter() if began is None else began
    max_blocks = DEFAULT_MAX_BLOCKS if max_blocks is None else max_blocks
    block_answers: list[np.ndarray] = []

    def block_phase() -> int:
        """The block search (when there are more units than blocks): its answer joins
        ``block_answers``; returns its simulations."""
        if not (block_share > 0 and problem.num_units > max_blocks):
            return 0
        blocks = build_blocks(problem.graph, problem.units, max_blocks)
        # Its share from its own start, but never past the decision's end: when the starts
        # took most of the budget (dp's exact program under throughput on a mixed cluster can
        # take over a second), the phase is cut rather than the budget overrun.
        block_deadline = None if budget_s is None else min(time.perf_counter() + block_share * budget_s, began + budget_s)
        block_limit = 10**9 if evaluations is None else max(1, int(block_share * evaluations))
        coarse, made = block_search(
            blocks, problem.budget, problem.simulator, [*starts, *extra_starts], objective=problem.objective, evaluations=block_limit, deadline=block_deadline, seed=seed
        )
        block_answers.append(coarse)
        return made

    def local_phase() -> tuple[np.ndarray, int]:
        """Local search's own run from the classic starts only, never from the block answer:
        it stays local-search's own, so the answer is never worse than local-search's default
        one (when the run ends within its share). Returns (its answer, simulations)."""
        first_deadline = None if budget_s is None else began + LOCAL_SEARCH_SHARE * budget_s
        first_limit = DEFAULT_EVALUATIONS if evaluations is None else max(1, min(DEFAULT_EVALUATIONS, int(LOCAL_SEARCH_SHARE * evaluations)))
        return search_units(
            problem.units, problem.budget, problem.simulator, list(starts), objective=problem.objective, evaluations=first_limit, deadline=first_deadline, seed=seed
        )

    if LOCAL_SEARCH_FIRST:
        first, made = local_phase()
        made_blocks = block_phase()
    else:
        made_blocks = block_phase()
        first, made = local_phase()
    end_s = guided_until_s if guided_until_s is not None else budget_s
    left_s = None if end_s is None else max(end_s - (time.perf_counter() - began), 1e-3)
    left_evaluations = 10**9 if evaluations is None else max(1, evaluations - made_blocks - made)
    best, _, stats = guided_search(problem, [first, *block_answers, *starts, *extra_starts], ranker, evaluations=left_evaluations, budget_s=left_s, seed=seed, **options)  # type: ignore[arg-type]
    stats.simulations += made_blocks + made
    return best, stats


def metis_restarts(problem: MoveProblem, seed: int, count: int | None = None) -> list[np.ndarray]:
    """(u,) assignments of METIS at ``count`` (default `METIS_RESTARTS`) seeds drawn from
    ``seed`` (`rlplace.baselines.local_search.seeded_restarts`) on ``problem``'s graph,
    cluster, objective, M and schedule: the ``extra_starts`` of `search_from_starts`."""
    from rlplace.baselines.local_search import seeded_restarts

    restarts = seeded_restarts(
        problem.graph, problem.cluster, problem.costs, objective=problem.objective, seed=seed, count=METIS_RESTARTS if count is None else count,
        microbatches=problem.microbatches, schedule=problem.schedule,
    )  # fmt: skip
    return [problem.units.contract(p) for p in restarts]


def candidate_moves(problem: MoveProblem, current: np.ndarray, legal: np.ndarray | None = None) -> np.ndarray:
    """(u, k) bool, ``local-search``'s neighbourhood: every move of a unit to another device
    that can run it; under ``throughput`` (whose memory model is the estimate's static sum) only
    those the memory estimate allows (``legal``, `legal_moves` of ``current``, computed when
    None), under the other objectives the simulator's overflow judges memory, so moves through
    a temporarily full device stay possible."""
    if problem.objective == "throughput":
        return legal_moves(problem, current) if legal is None else legal
    moves = problem.units.allowed.copy()
    moves[np.arange(problem.num_units), current] = False
    return moves


@dataclass(frozen=True)
class _FocusView:
    """What ordering a placement's moves needs: ``critical`` (u,) bool, the units on the
    simulated critical path (``throughput``: the busiest device's); ``movable`` (u, k) bool,
    `candidate_moves`."""

    critical: np.ndarray
    movable: np.ndarray


def _focus_view(problem: MoveProblem, current: np.ndarray, obs: Observation | None = None) -> _FocusView:
    """`_FocusView` of the (u,) ``current``: read off its observation ``obs`` when there is one,
    else from one plain simulation (no features: what `observe` costs besides its simulation
    is the ranking's)."""
    if obs is not None:
        return _FocusView(critical=obs.nodes[:, 2] > 0.5, movable=candidate_moves(problem, current, obs.legal))
    path = np.asarray(problem.simulator.run(problem.units.expand(current)).critical_path, dtype=np.int64)
    critical = np.zeros(problem.num_units, dtype=bool)
    critical[problem.units.of_op[path]] = True
    return _FocusView(critical=critical, movable=candidate_moves(problem, current))


def _candidate_order(
    problem: MoveProblem,
    view: _FocusView,
    scores: np.ndarray | None,
    rng: np.random.Generator,
    random_share: float,
    scan: int,
    focus: bool = DEFAULT_FOCUS,
) -> tuple[np.ndarray, set[int]]:
    """Up to ``scan`` flat move ids (unit * k + device): ranked moves with random ones mixed in
    (``focus``: critical-path units' moves first, in each list), and the set of those taken
    from the random list (all of them without ``scores``, (u * k,) move scores)."""
    legal = np.flatnonzero(view.movable.reshape(-1))
    if legal.size == 0:
        return legal, set()
    critical = view.critical[legal // problem.num_devices] if focus else np.zeros(legal.size, bool)
    permutation = rng.permutation(legal.size)
    permutation = permutation[np.argsort(~critical[permutation], kind="stable")]
    shuffled = legal[permutation]
    if scores is None:
        return shuffled[:scan], set(shuffled[:scan].tolist())
    ranked = legal[np.lexsort((-scores[legal], ~critical))]
    size = min(scan, legal.size)
    take_random = rng.random(size) < random_share
    order: list[int] = []
    randoms: set[int] = set()
    seen: set[int] = set()
    r_i = s_i = 0
    for pick_random in take_random.tolist():
        source, position = (shuffled, r_i) if pick_random else (ranked, s_i)
        while position < source.size and int(source[position]) in seen:
            position += 1
        if position >= source.size:
            source, position = (ranked, s_i) if pick_random else (shuffled, r_i)
            while position < source.size and int(source[position]) in seen:
                position += 1
            pick_random = not pick_random
        if position >= source.size:
            break
        move = int(source[position])
        seen.add(move)
        order.append(move)
        if pick_random:
            r_i = position + 1
            randoms.add(move)
        else:
            s_i = position + 1
    return np.asarray(order, dtype=np.int64), randoms


class _SourceYield:
    """How often a simulated candidate from the ranked list and from the random list was the
    improving move taken, and the random share those yields imply.

    The share's odds are the default's multiplied by the ratio of the two yields (each with
    one success in ``PRIOR_TRIALS`` trials as its prior, so it starts at the default), kept
    in [`MIN_RANDOM_SHARE`, `MAX_RANDOM_SHARE`] (a default of 0 or 1 stays as it is): where
    the policy's ranking finds improvements no better than chance on a problem (a family it
    generalizes poorly to), the search drifts toward random order, and toward the ranking
    where it is better.
    """

    PRIOR_TRIALS = 10.0

    def __init__(self) -> None:
        self.tried = {True: 0, False: 0}
        self.won = {True: 0, False: 0}

    def record(self, candidates: list[int], winner: int | None, from_random: set[int]) -> None:
        """One simulated batch: its candidates (swap ids < 0 are neither list's) and the
        improving move taken from it, if any."""
        for candidate in candidates:
            if candidate >= 0:
                self.tried[candidate in from_random] += 1
        if winner is not None and winner >= 0:
            self.won[winner in from_random] += 1

    def share(self, default: float) -> float:
        """The random share for the next ranking (``default`` itself when it is 0 or 1)."""
        if not 0.0 < default < 1.0:
            return default

        def rate(source: bool) -> float:
            return (self.won[source] + 1.0) / (self.tried[source] + self.PRIOR_TRIALS)

        odds = default / (1.0 - default) * rate(True) / rate(False)
        return float(min(max(odds / (1.0 + odds), MIN_RANDOM_SHARE), MAX_RANDOM_SHARE))


def _still_legal(problem: MoveProblem, current: np.ndarray, order: np.ndarray, moved_units: np.ndarray) -> np.ndarray:
    """The rest of a candidate order after a move: moves of the moved unit dropped, and (under
    ``throughput``) moves the new placement makes illegal under the memory estimate dropped."""
    if order.size == 0:
        return order
    legal = legal_moves(problem, current).reshape(-1) if problem.objective == "throughput" else problem.units.allowed.reshape(-1)
    moved = np.zeros(problem.num_units, dtype=bool)
    moved[moved_units] = True
    moves = order >= 0
    keep = ~moves  # swaps are checked when they are tried
    keep[moves] = legal[order[moves]] & ~moved[order[moves] // problem.num_devices]
    return order[keep]


def _apply(problem: MoveProblem, current: np.ndarray, candidate: int) -> np.ndarray | None:
    """The assignment after a candidate: a move id ``unit * k + device`` (>= 0) or a swap id
    ``-(1 + a * u + b)`` of units a and b; None for a swap that is no longer possible."""
    trial = current.copy()
    if candidate >= 0:
        unit, device = divmod(candidate, problem.num_devices)
        trial[unit] = device
        return trial
    a, b = divmod(-candidate - 1, problem.num_units)
    da, db = int(current[a]), int(current[b])
    if da == db or not (problem.units.allowed[a, db] and problem.units.allowed[b, da]):
        return None
    trial[a], trial[b] = db, da
    return trial


def _with_swaps(order: np.ndarray, u: int, rng: np.random.Generator, swap_share: float) -> np.ndarray:
    """``order`` with a random swap id inserted before each entry with probability ``swap_share``
    (as ``local-search`` interleaves swaps): an ordered pair of distinct units, uniform.
    All draws are made at once; one ``Generator.choice`` per swap cost ~20 us, 0.6 ms per order
    of 64 moves, which the ablation paid after every move."""
    if u < 2 or swap_share <= 0 or order.size == 0:
        return order
    before = rng.random(order.size) < swap_share
    count = int(before.sum())
    first = rng.integers(0, u, size=count)
    second = rng.integers(0, u - 1, size=count)
    second += second >= first  # uniform over the other u - 1 units
    position = np.arange(order.size) + np.cumsum(before)  # each move's place, after its swap
    out = np.empty(order.size + count, dtype=np.int64)
    out[position] = order
    out[position[before] - 1] = -(1 + first * u + second)
    return out


def distinct_device_pairs(problem: MoveProblem) -> list[tuple[int, int]]:
    """Device pairs (a < b) whose contents, exchanged, can change the step time: pairs within
    a group of interchangeable devices (`rlplace.costs.interchangeable_devices`) are left out."""
    group_of = np.empty(problem.num_devices, np.int64)
    for index, group in enumerate(interchangeable_devices(problem.costs, problem.cluster)):
        group_of[group] = index
    k = problem.num_devices
    return [(a, b) for a in range(k) for b in range(a + 1, k) if group_of[a] != group_of[b]]


def _exchange_descent(
    problem: MoveProblem,
    current: np.ndarray,
    current_key: Key,
    pairs: list[tuple[int, int]],
    rng: np.random.Generator,
    score: Callable[[np.ndarray, Key], Key],
) -> tuple[np.ndarray, Key] | None:
    """The first exchange of two devices' whole contents (``pairs`` in random order) that scores
    better than ``current``, with its key, or None; at most ``len(pairs)`` simulations
    (``score(trial, current_key)``, which may cut short a trial that cannot win)."""
    for index in rng.permutation(len(pairs)).tolist():
        a, b = pairs[index]
        on_a, on_b = current == a, current == b
        if not (on_a.any() or on_b.any()):
            continue
        trial = current.copy()
        trial[on_a], trial[on_b] = b, a
        if not problem.units.allowed[np.arange(trial.size), trial].all():
            continue
        key = score(trial, current_key)
        if key_better(key, current_key):
            return trial, key
    return None


def _group_kick(problem: MoveProblem, best: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``best`` with up to ``GROUP_KICK_SIZE`` units of one device (the device of a random unit;
    the units drawn at random among its) moved together to one other device that can run every
    one of them, drawn at random; a plain `_kick` when there is none.

    Single random moves scatter a kick's units over the devices; this one moves a share of one
    device's work elsewhere as a block, so the descent after it starts from a differently
    balanced split. Chosen on validation (README, The learned placer), where it beat
    connected groups of the same size.
    """
    home = int(best[int(rng.integers(problem.num_units))])
    on_home = np.flatnonzero(best == home)
    members = rng.choice(on_home, size=min(GROUP_KICK_SIZE, on_home.size), replace=False)
    targets = problem.units.allowed[members].all(axis=0)
    targets[home] = False
    devices = np.flatnonzero(targets)
    if devices.size == 0:
        return _kick(problem, best, rng)
    kicked = best.copy()
    kicked[members] = int(devices[rng.integers(devices.size)])
    return kicked


def _kick(problem: MoveProblem, best: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``best`` with a few units sent to random devices that can run them."""
    kicked = best.copy()
    u = problem.num_units
    size = min(max(2, u // 50), u)
    for unit in rng.choice(u, size=size, replace=False).tolist():
        devices = np.flatnonzero(problem.units.allowed[unit])
        kicked[unit] = int(devices[rng.integers(devices.size)])
    return kicked


def scorer_ranker(scorer: object) -> Ranker:
    """A `Ranker` from a `rlplace.agents.scorer.MoveScorer` (its pair logits)."""
    from .scorer import move_scores

    def rank(problem: MoveProblem, assignment: np.ndarray, obs: Observation) -> np.ndarray:
        return move_scores(scorer, obs)  # type: ignore[arg-type]

    return rank
