"""``local-search``: moves and swaps of units, scored by the simulator, from the best fast baseline.

Start: every fast baseline (``START_METHODS``; those that raise are skipped) is scored by
`rlplace.simulate.Simulator.score` for the requested objective and the best one is kept
(less memory overflow first, then smaller step time; the order of ``START_METHODS`` breaks
ties). Every start gets the search's ``microbatches`` and ``schedule``, so each start is
the placement that method returns for this very objective and schedule; under ``pipelined`` the
simulator, and so every score and the final memory check, uses the requested schedule.

Search (first improvement, random order, seeded): the neighbourhood is every move of one unit
to another device that can run it, plus swaps of two units on different devices. Candidates
are tried in a fresh random permutation of the moves, moves of the units on the simulated
critical path (for ``throughput``: on the most loaded device) first, with a random swap
interleaved with probability ``SWAP_PROBABILITY``; the first candidate that scores better is
taken and a new permutation drawn (and the critical path simulated again). A candidate's
simulation gets the current step time as its cutoff (`rlplace.rules.cutoff_for`), so one that
can be neither better nor equal may stop early; no decision changes. A candidate that only ties is taken too (a *sideways* step), which lets the
search cross the plateaus of the max-load objective, at most ``SIDEWAYS_LIMIT`` times in a row.
When a whole permutation brings nothing, the search restarts from the best placement so far
with a few random moves applied (a *kick*). It stops after ``evaluations`` simulations (the
start's included; default `DEFAULT_EVALUATIONS`) or, when ``budget_s`` is given, once that many
seconds have passed since the call began (then without a simulation limit unless
``evaluations`` is given too), and returns the best placement seen, so it is never worse than its best
start under the objective it scores (the invariant ``tests/test_dp.py`` checks).
For ``throughput`` (whose memory model is the static sum the estimate uses) moves that
break the memory estimate are skipped unsimulated; for the other objectives the simulator's
overflow decides.

Stages mode (``stages=True``): the start is ``dp``'s contiguous split (``stages=True``) or the
given ``start``, which must be one (`rlplace.baselines.dp.stage_order`). Its blocks (ops a
contiguous split keeps whole, `rlplace.baselines.dp.contract_blocks`) are listed stage by
stage, each stage in block order, which is a topological order of the blocks; the search only
moves the boundaries between consecutive stages in that list (by 1, 2, 4, ... blocks, every
stage keeping at least one block), so every placement it tries, and the one it returns, is a
contiguous split with the start's devices in the start's stage order.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.portfolio import resolve_workers, run_seeds
from rlplace.rules import MemoryLedger, Units, cutoff_for, finalize, key_better, key_equal, ledger_for, make_simulator, prepare

#: Default number of simulations.
DEFAULT_EVALUATIONS = 2000
#: Fast baselines the search may start from, in tie-breaking order (dp only when installed).
START_METHODS = ("dp", "m-topo", "m-etf", "heft", "critical-path", "metis", "single", "round-robin")
#: ``work_limit`` of ``dp``'s throughput program as a start (`rlplace.baselines.dp.solve`): pairs
#: of nested ideals x device states, about 17-26 ns each on a 2-core VM, so ~1-1.5 s. The largest
#: validation case of the policy bench uses 5.9e7; a 200-op layered graph on 2x8xA100 (21,866
#: ideals, 1.5e8 pairs x 17 states) took 68 s without it.
DP_START_WORK_LIMIT = 6e7
#: The decision budget (seconds) that gets the whole `DP_START_WORK_LIMIT`; a search given less
#: time scales the limit down in proportion, so that its starts leave it time to search. The
#: full limit takes 1.4-1.9 s on this project's 2-core VM (about 30 ns a pair), so at the
#: policy's 1.8 s it left some `throughput` decisions about 80 simulations (twelfth session:
#: 1.8 -> 3.6, chosen on validation with the max-load tabu search; docs/learned-placer-experiments.md).
DP_START_REFERENCE_S = 3.6
SWAP_PROBABILITY = 0.3
SIDEWAYS_LIMIT = 50
#: Try moves of critical-path units first.
FOCUS_CRITICAL_PATH = True

Score = tuple[float, float]


def place(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    evaluations: int | None = None,
    budget_s: float | None = None,
    start: np.ndarray | None = None,
    start_methods: Sequence[str] = START_METHODS,
    stages: bool = False,
    referee: Callable[[np.ndarray], Score] | None = None,
    workers: int = 1,
) -> Placement:
    """Improve the best fast baseline (or ``start``, an (n,) placement) by local search;
    ``microbatches`` and ``schedule`` set M and the pipeline schedule of the ``pipelined``
    objective the search scores; ``stages`` keeps
    a contiguous split and moves only its stage boundaries (module docstring).

    ``referee``: when ``graph`` stands for a larger one (a coarsened graph), the score
    (bytes over capacity, step time) of an (n,) placement of ``graph`` on the graph it stands
    for. The search's result and every start are judged by it and the best is returned (the
    search's result on ties), so the answer is never worse than a start where it counts.

    ``evaluations`` (simulations) and ``budget_s`` (seconds since the call began, the starts
    included) bound the search; neither given: `DEFAULT_EVALUATIONS` simulations (stages mode,
    a small boundary search, uses ``evaluations`` alone).
    """
    began = time.perf_counter()
    check_search_budget(evaluations, budget_s)
    limit = evaluations if evaluations is not None else (10**9 if budget_s is not None else DEFAULT_EVALUATIONS)
    deadline = None if budget_s is None else began + budget_s
    units, budget = prepare(graph, cluster, costs, objective, microbatches=microbatches, schedule=schedule)
    simulator = make_simulator(graph, cluster, costs, objective, microbatches, schedule)
    if stages and workers != 1:
        raise RlplaceError(f"local-search: workers={workers} applies to the search over units, not to the stage-boundary search (drop stages or workers)")
    if stages:
        from rlplace.baselines.stage_search import search_boundaries

        if start is None:
            from rlplace.baselines.dp import place as dp_place

            start = np.asarray(dp_place(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule, stages=True), dtype=np.int64)
        best = search_boundaries(graph, costs, simulator, start=start, evaluations=evaluations or DEFAULT_EVALUATIONS, seed=seed)
        best = _refereed(best, [np.asarray(start, dtype=np.int64)], referee)
        return finalize(graph, cluster, costs, best, objective=objective, method="local-search", simulator=simulator)
    if start is None:
        failures: dict[str, str] = {}
        starts = start_placements(
            graph, cluster, costs, objective=objective, seed=seed, methods=start_methods, failures=failures,
            microbatches=microbatches, schedule=schedule, budget_s=budget_s,
        )
        if not starts:
            reasons = "; ".join(f"{name}: {reason}" for name, reason in list(failures.items())[:2])
            raise RlplaceError(f"local-search: no fast baseline found a start placement for graph {graph.name!r} ({reasons})")
    else:
        starts = {"given": np.asarray(start, dtype=np.int64)}
    unit_starts = [units.contract(p) for p in starts.values()]
    members = run_seeds(
        lambda member_seed: search_units(units, budget, simulator, unit_starts, objective=objective, evaluations=limit, deadline=deadline, seed=member_seed)[0],
        seed,
        resolve_workers(workers),
    )
    best = min(members, key=lambda found: _unit_key(units, simulator, found))
    result = _refereed(units.expand(best), [units.expand(units.contract(p)) for p in starts.values()], referee)
    return finalize(graph, cluster, costs, result, objective=objective, method="local-search", simulator=simulator)


_WARMED: set[tuple[str, str]] = set()  # (objective, schedule) pairs `warm_up` has run


def warm_up(cluster: Cluster, *, objective: str = "latency", microbatches: int = 1, schedule: str = "gpipe") -> None:
    """Run one tiny local search on ``cluster`` under ``objective`` (once per process and
    objective), so that a timed decision never pays for what a search loads on first use: the
    start methods' libraries (pymetis, scipy) and their numba kernels, about 0.5 s on this
    project's 2-core VM (a `pipelined` local search on a 255-op graph took 1.18 s in a fresh
    process, 0.60 s in a warm one). `rlplace.pipeline.decide` calls it before the clock starts."""
    key = (objective, schedule if objective == "pipelined" else "")
    if key in _WARMED:
        return
    _WARMED.add(key)
    from rlplace.synthetic import layered

    graph = layered(24, seed=0, training=True)
    with contextlib.suppress(RlplaceError):  # e.g. a cluster too small for this graph: the user's decision will say so
        place(graph, cluster, CostTable.build(graph, cluster), objective=objective, microbatches=min(microbatches, 2), schedule=schedule, evaluations=60)


def _unit_key(units: Units, simulator, assignment: np.ndarray) -> tuple[float, float]:
    """(bytes over capacity, step time) of a (u,) unit assignment: smaller is better, in that order."""
    step_time, overflow = simulator.score(units.expand(assignment))
    return float(overflow), float(step_time)


def check_search_budget(evaluations: int | None, budget_s: float | None) -> None:
    """`RlplaceError` unless ``evaluations`` (simulations) is None or >= 1 and ``budget_s``
    (seconds) None or > 0: the bounds every search (local-search, the policy) takes."""
    if evaluations is not None and evaluations < 1:
        raise RlplaceError(f"evaluations must be >= 1, got {evaluations}")
    if budget_s is not None and not budget_s > 0:
        raise RlplaceError(f"budget_s must be > 0 seconds, got {budget_s}")


def search_units(
    units: Units,
    budget: np.ndarray,
    simulator,
    starts: list[np.ndarray],
    *,
    objective: str,
    evaluations: int = DEFAULT_EVALUATIONS,
    deadline: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, int]:
    """The search of the module docstring from (u,) unit assignments ``starts``, on ``units``
    with memory-estimate ``budget`` ((k,) bytes) and ``simulator``: (the best (u,) assignment,
    simulations made). Stops after ``evaluations`` simulations or at ``deadline``
    (`time.perf_counter` seconds); with one seed, a larger budget only extends the same run."""
    search = _Search(units, budget, simulator, np.random.default_rng(seed), objective, evaluations, deadline)
    best = search.run(starts)
    return best, search.made


def _refereed(found: np.ndarray, starts: list[np.ndarray], referee: Callable[[np.ndarray], Score] | None) -> np.ndarray:
    """``found``, unless the referee scores a start strictly better (then the best such start)."""
    if referee is None:
        return found
    best, best_key = found, tuple(float(v) for v in referee(found))
    for start in starts:
        key = tuple(float(v) for v in referee(start))
        if key_better(key, best_key):  # type: ignore[arg-type]
            best, best_key = start, key
    return best


def start_placements(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str,
    seed: int,
    methods: Sequence[str] = START_METHODS,
    failures: dict[str, str] | None = None,
    microbatches: int = 1,
    schedule: str = "gpipe",
    budget_s: float | None = None,
    dp_reference_s: float | None = None,
    dp_limit: float | None = None,
    cut_short: set[str] | None = None,
    timings: dict[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Placements of the fast baselines ``methods`` that succeed (a missing dp is skipped),
    each under the search's ``microbatches`` and ``schedule``; ``dp`` with `dp_work_limit`
    of the search's ``budget_s`` (seconds; None: no time budget) and ``dp_reference_s``
    (None: `DP_START_REFERENCE_S`), or with the work limit ``dp_limit`` (pairs) when given.

    ``failures``, when given, receives method name -> error message for those that raised;
    ``cut_short`` receives ``"dp"`` when dp's exact ``throughput`` program passed its work
    limit and its linearized split is the start; ``timings`` receives method name -> wall
    seconds it took (those that raised too).
    """
    from rlplace.baselines import METHODS

    found: dict[str, np.ndarray] = {}
    for name in methods:
        began = time.perf_counter()
        try:
            if name == "dp" and objective == "throughput":
                from rlplace.baselines import dp

                # dp's exact throughput program can take minutes on wide graphs over many devices;
                # as a start it is capped, past which it gives its linearized split
                limit = dp_work_limit(budget_s, dp_reference_s) if dp_limit is None else dp_limit
                solution = dp.solve(graph, cluster, costs, objective=objective, work_limit=limit)
                if solution.over_work_limit and cut_short is not None:
                    cut_short.add(name)
                placement = solution.placement
            else:
                placement = METHODS[name](graph, cluster, costs, objective=objective, seed=seed, microbatches=microbatches, schedule=schedule)
            found[name] = np.asarray(placement, dtype=np.int64)
        except RlplaceError as error:
            if failures is not None:
                failures[name] = str(error)
            continue
        except ModuleNotFoundError as error:
            if error.name != "rlplace.baselines.dp":
                raise
        finally:
            if timings is not None:
                timings[name] = time.perf_counter() - began
    return found


def dp_work_limit(budget_s: float | None, reference_s: float | None = None) -> float:
    """``work_limit`` of ``dp`` as a start of a search with ``budget_s`` seconds (None: no time
    budget): `DP_START_WORK_LIMIT`, scaled down below ``reference_s`` seconds (None:
    `DP_START_REFERENCE_S`)."""
    if budget_s is None:
        return DP_START_WORK_LIMIT
    return DP_START_WORK_LIMIT * min(1.0, budget_s / (DP_START_REFERENCE_S if reference_s is None else reference_s))


def seeded_restarts(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str,
    seed: int,
    count: int,
    microbatches: int = 1,
    schedule: str = "gpipe",
) -> list[np.ndarray]:
    """(n,) placements of METIS (`rlplace.baselines.metis`, the one start method whose answer
    depends on its seed) at ``count`` seeds drawn from ``seed``, those that succeed.

    Over eight seeds METIS gives anything from 0.90x to 1.01x of the best classic start on the
    same memory-bound throughput case, so the best of several is a better start than one.
    """
    drawn = np.random.default_rng(seed).integers(0, 2**31 - 1, size=count)
    placed = (
        start_placements(graph, cluster, costs, objective=objective, seed=int(metis_seed), methods=("metis",), microbatches=microbatches, schedule=schedule)
        for metis_seed in drawn.tolist()
    )
    return [found["metis"] for found in placed if "metis" in found]


class _Search:
    """State of one local search over (u,) unit assignments."""

    def __init__(
        self, units: Units, budget: np.ndarray, simulator, rng: np.random.Generator, objective: str, evaluations: int, deadline: float | None = None
    ) -> None:
        self.units = units
        self.deadline = deadline
        self.budget = budget
        self.simulator = simulator
        self.rng = rng
        self.check_memory = objective == "throughput"
        self.limit = max(1, int(evaluations))
        self.made = 0
        self.timed_out = False

    @property
    def left(self) -> int:
        """Simulations the search may still make (0 once past the deadline)."""
        return 0 if self.timed_out else self.limit - self.made

    def score(self, assignment: np.ndarray, against: Score | None = None) -> Score:
        """(overflow, step time) of ``assignment``; compared with ``against``, a fitting one that
        can be neither better nor equal may come back as ``(0.0, inf)`` (`cutoff_for`)."""
        self.made += 1
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            self.timed_out = True  # this simulation still counts; the search stops after it
        step_time, overflow = self.simulator.score(self.units.expand(assignment), cutoff=cutoff_for(against))
        return float(overflow), float(step_time)

    def run(self, starts: list[np.ndarray]) -> np.ndarray:
        scored = [(self.score(start), position) for position, start in enumerate(starts)]
        best_key, position = min(scored)
        best = starts[position].copy()
        current, current_key = best.copy(), best_key
        ledger = ledger_for(current, self.units, self.budget)
        sideways = 0
        while self.left > 0:
            improved = False
            for candidate in self._candidates(current):
                if self.left <= 0:
                    break
                if self.check_memory and not _fits_after(candidate, current, ledger, self.units):
                    continue
                trial = current.copy()
                for unit, device in candidate:
                    trial[unit] = device
                key = self.score(trial, current_key)
                if key_better(key, current_key) or (key_equal(key, current_key) and sideways < SIDEWAYS_LIMIT):
                    sideways = 0 if key_better(key, current_key) else sideways + 1
                    for unit, device in candidate:
                        ledger.remove(unit, int(current[unit]))
                        ledger.add(unit, device)
                    current, current_key = trial, key
                    if key_better(current_key, best_key):
                        best, best_key = current.copy(), current_key
                    improved = True
                    break
            if not improved and self.left > 0:
                current = self._kick(best)
                ledger = ledger_for(current, self.units, self.budget)
                current_key = self.score(current)
                sideways = 0
        return best

    def _candidates(self, current: np.ndarray):
        """Moves in random order, random swaps interleaved; each a list of (unit, new device)."""
        units = self.units
        options = units.allowed.copy()
        options[np.arange(units.num_units), current] = False
        move_units, move_devices = np.nonzero(options)
        order = self.rng.permutation(move_units.shape[0])
        focus = self._focus(current) if FOCUS_CRITICAL_PATH else None
        if focus is not None:
            # Moves of the units that set the step time come first (stable: random within each group).
            order = order[np.argsort(~focus[move_units[order]], kind="stable")]
        for index in order.tolist():
            if units.num_units >= 2 and self.rng.random() < SWAP_PROBABILITY:
                swap = self._random_swap(current)
                if swap is not None:
                    yield swap
            yield [(int(move_units[index]), int(move_devices[index]))]

    def _focus(self, current: np.ndarray) -> np.ndarray | None:
        """(u,) bool, units holding an op of the simulated critical path (``throughput``: the
        bottleneck device's ops), or None when the placement cannot be simulated in full."""
        try:
            path = self.simulator.run(self.units.expand(current)).critical_path
        except RlplaceError:
            return None
        focus = np.zeros(self.units.num_units, dtype=bool)
        focus[self.units.of_op[np.asarray(path, dtype=np.int64)]] = True
        return focus

    def _random_swap(self, current: np.ndarray) -> list[tuple[int, int]] | None:
        first, second = (int(v) for v in self.rng.choice(self.units.num_units, size=2, replace=False))
        a, b = int(current[first]), int(current[second])
        if a == b or not (self.units.allowed[first, b] and self.units.allowed[second, a]):
            return None
        return [(first, b), (second, a)]

    def _kick(self, best: np.ndarray) -> np.ndarray:
        kicked = best.copy()
        size = max(2, self.units.num_units // 50)
        for unit in self.rng.choice(self.units.num_units, size=min(size, self.units.num_units), replace=False).tolist():
            devices = np.flatnonzero(self.units.allowed[unit])
            kicked[unit] = int(devices[self.rng.integers(devices.size)])
        return kicked


def _fits_after(candidate: list[tuple[int, int]], current: np.ndarray, ledger: MemoryLedger, units: Units) -> bool:
    change = np.zeros_like(ledger.used)
    for unit, device in candidate:
        change[int(current[unit])] -= units.demand[unit]
        change[device] += units.demand[unit]
    after = ledger.used + change
    return bool(np.all((after <= ledger.budget) | (change <= 0)))
