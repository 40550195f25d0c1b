"""``policy``: policy-guided search with the trained improvement policy (``rlplace.agents``).

Decides on the graph and cost table it is given (the same coarse graph and `CostTable` every
method gets) and the requested objective and M:

1. starts: the placements of ``local-search``'s fast baselines
   (``rlplace.baselines.local_search.START_METHODS``, made for the same M and schedule), the
   same starts local search uses; for phases 2-3 only, METIS at
   `rlplace.agents.guided_search.METIS_RESTARTS` more seeds drawn from each search's seed
   (`rlplace.baselines.local_search.seeded_restarts`: its answer depends much on the seed);
   under ``throughput`` `dp`'s exact program gets a work limit scaled to the budget, and with
   two or more searches side by side the second runs it again with a larger one when the
   shared starts cut it short (`DP_SPLIT`);
2. local-search's own run from the classic starts (never from the block answer or a METIS
   restart; `rlplace.baselines.local_search.search_units`: its default 2000 simulations, cut
   at `rlplace.agents.guided_search.LOCAL_SEARCH_SHARE` of the budget, the starts' time
   included), so the answer is never worse than ``local-search``'s default answer whenever
   that run fits in its share; then the block-level search (`rlplace.baselines.block_search`,
   skipped with ``blocks=False`` or when there are at most 64 units): local search over at
   most 64 blocks of units (a coarsening of the graph; a block moves as a whole), every
   candidate scored by the same simulator, for `rlplace.agents.guided_search.BLOCK_SHARE` of
   the budget, never past its end (the order: `rlplace.agents.guided_search.LOCAL_SEARCH_FIRST`;
   phases 2-3 are `rlplace.agents.guided_search.search_from_starts`);
3. search: `rlplace.agents.guided_search.guided_search` from the best of the two answers,
   the starts and the METIS restarts, with
   the checkpoint's `MoveScorer` ranking local search's moves (critical-path units first,
   random moves mixed in at a share that follows how often they improve), simulated in batches, with swaps and kicks, until
   ``evaluations`` simulations or ``budget_s`` seconds in all, every candidate scored under
   the objective, M and schedule; then its final polish (exchanges of two devices' whole
   contents, at most 3 x the non-interchangeable device pairs in simulations past the budget,
   none on a homogeneous one-host cluster);
4. under ``throughput`` with a time budget, what is left of it goes to a tabu search on the
   max-load objective with incrementally scored moves (`rlplace.baselines.max_load_tabu`;
   ``PROGRAM_SEARCH = "lns"``: the max-load integer program's large-neighbourhood search,
   `rlplace.baselines.ilp.improve`) from the search's answer. Phase 3 ends at
   1 - ``PROGRAM_SHARE`` of the budget, but phase 2 keeps its own shares, so the tabu search
   gets less than ``PROGRAM_SHARE`` (0.5-1.05 s of 1.8 s on the validation cases);
5. side by side: phases 2-4 run as ``workers`` searches at once from the same starts, each with
   its own seed (`rlplace.portfolio`: forked processes; the first keeps ``seed``), and the best
   answer is kept; default one per core (at most 4) under a time budget, one with a simulation
   budget alone (so that answer does not depend on the machine);
6. on a coarsened graph the full-graph ``referee`` (`rlplace.pipeline.decide` passes the one
   ``local-search`` gets) judges the result against the starts; the best placement goes
   through `rlplace.rules.finalize` (exact memory check and repair) like every method.

The registry (`rlplace.methods`) hands it the same coarse graph, cost table, objective,
micro-batch count and seed as every other method. This module sits in the methods layer (it
imports the agents), not in the baselines package.

The agents package (PyTorch, torch-geometric) is imported on the first call only; the loaded
checkpoint is kept for the next call of the process. Options (keyword arguments, passed by the
CLI): ``checkpoint`` (folder; default ``$RLPLACE_CHECKPOINT``, else ``checkpoints/default``),
``evaluations`` (simulations) and ``budget_s`` (seconds for the whole decision after the
checkpoint is loaded: start placements and search); with neither, `DEFAULT_BUDGET_S` seconds
(so the answer depends on the machine's speed: give ``evaluations`` alone for a run that
repeats exactly), ``workers`` (searches side by side, step 5). `search` also returns the
search's statistics and runs the ablation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.portfolio import resolve_workers, run_seeds, run_until, worker_seed
from rlplace.rules import finalize

#: Seconds of one decision (start placements and search, after the checkpoint is loaded) when
#: neither ``evaluations`` nor ``budget_s`` is given: the issue's 2 s decision time, less room
#: for the full-graph check and repair after the search (measured: 0.03 s on 4,869 ops at M = 1,
#: 0.13 s on llama-13b's 8,138 ops at M = 8 on 16 devices).
DEFAULT_BUDGET_S = 1.8
#: ``throughput`` with a time budget: the guided search (step 3) ends this share of the budget
#: early, for the max-load search of step 4 (`PROGRAM_SEARCH`) from the best placement found
#: (step 2's phases keep their own shares, so step 4 may get less).
PROGRAM_SHARE = 0.7
#: What that last share runs: ``"tabu"`` the incremental max-load tabu search
#: (`rlplace.baselines.max_load_tabu`), ``"lns"`` the program's large-neighbourhood search
#: (`rlplace.baselines.ilp.improve`; the pipeline before the twelfth session). Chosen on
#: validation: docs/learned-placer-experiments.md, "A max-load tabu search".
PROGRAM_SEARCH = "tabu"
#: ``throughput`` with two or more searches side by side and a time budget: the starts they share
#: give `dp`'s exact program a small work limit (the whole `rlplace.baselines.local_search.DP_START_WORK_LIMIT`
#: only at `DP_SPLIT_SHARED_REFERENCE_S` seconds), and when that cuts it short the second search
#: runs it again with the whole limit before searching, in a child killed when the decision's
#: time is up (`rlplace.portfolio.run_until`), and only when the time left fits at least
#: `DP_SPLIT_MIN_GAIN` times the shared limit at the shared run's rate (`second_dp_limit`).
#: Where the exact program cannot finish, the first search still gets the whole budget; where
#: it finishes late but its split is much the better start, the second has it.
DP_SPLIT = True
DP_SPLIT_SHARED_REFERENCE_S = 14.4
#: Seconds of the decision the second search keeps for its own phases after that second run
#: (the run's deadline is the decision's end less these).
DP_SPLIT_RESERVE_S = 0.1
#: The second run is made only when the work that fits the time left is at least this many
#: times the shared limit.
DP_SPLIT_MIN_GAIN = 2.0
#: Seconds of each of `warm_up`'s tiny decisions (one per objective).
WARM_UP_BUDGET_S = 0.1
_LOADED: dict[str, Any] = {}
_WARMED: set[bool] = set()  # the ``random_order`` values `warm_up` has run for


def load_policy(checkpoint: str | Path | None = None) -> Any:
    """The checkpoint's `MoveScorer` (cached per folder for the life of the process); the
    first call also runs `warm_up` (which loads every compiled kernel a decision uses, the
    observation's included), so that it is the whole cold start of a process."""
    from rlplace.agents.improve_checkpoint import default_checkpoint_dir, load_scorer

    folder = str(Path(checkpoint) if checkpoint is not None else default_checkpoint_dir())
    if folder not in _LOADED:
        _LOADED[folder] = load_scorer(folder)[0]
    warm_up(checkpoint)
    return _LOADED[folder]


def warm_up(checkpoint: str | Path | None = None, *, random_order: bool = False) -> None:
    """Run one tiny decision per objective, once per process (and per ``random_order``), so
    that a timed decision never pays for what a decision loads on first use (`load_policy`
    runs it; `search` does for the random-order ablation, which loads no checkpoint).

    A decision imports the start methods' libraries (pymetis, scipy.optimize, the block search,
    the max-load tabu search) and loads some twenty compiled kernels from numba's cache on first
    use: about 0.5-1 s on this project's 2-core VM, i.e. up to half of a 1.8 s budget, which
    every ``rlplace place --method policy`` (a fresh process) used to lose. Costs about
    ``3 * WARM_UP_BUDGET_S`` seconds plus those loads, all of it outside any decision.
    """
    if random_order in _WARMED:
        return
    # before the searches below, which call this again; a ranked decision runs everything a
    # random-order one does
    _WARMED.update({True} if random_order else {True, False})
    from rlplace.load import resolve_cluster
    from rlplace.simulate import Simulator
    from rlplace.synthetic import layered

    cluster = resolve_cluster("2xA100+2xT4")  # mixed: the final device exchange runs too
    # forward and backward ops, more units than the block phase's 64; under throughput a
    # smaller graph, since its start placements alone take about 1 s on 100 layers. The
    # pipelined one under interleaved-1f1b: it runs the schedule kernels gpipe never needs.
    for objective, microbatches, schedule, layers in (
        ("latency", 1, "gpipe", 100), ("pipelined", 2, "interleaved-1f1b", 100), ("throughput", 1, "gpipe", 40)
    ):  # fmt: skip
        graph = layered(layers, seed=0, training=True)
        costs = CostTable.build(graph, cluster)
        placement, _ = search(
            graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule,
            checkpoint=checkpoint, budget_s=WARM_UP_BUDGET_S, random_order=random_order, workers=1,
        )  # fmt: skip
        # a full simulation with its critical path: a search reaches it only when it stalls
        Simulator(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule).run(placement)


def place(graph: OpGraph, cluster: Cluster, costs: CostTable, **options: Any) -> Placement:
    """Policy-guided search from the fast baselines' placements (module docstring); the
    options are `search`'s (``objective``, ``seed``, ``microbatches``, ``schedule``,
    ``referee``, ``checkpoint``, ``evaluations``, ``budget_s``).

    ``microbatches`` and ``schedule`` set the ``pipelined`` objective every candidate is scored
    under (and the starts that take them are made for). ``referee``: as ``local-search``'s
    (`rlplace.baselines.local_search.place`): when ``graph`` is a coarsened graph, the
    (bytes over, step time) of an (n,) placement on the full graph; the search's result and
    every start are judged by it and the best is returned.
    """
    return search(graph, cluster, costs, **options)[0]


def search(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    schedule: str = "gpipe",
    referee: Callable[[np.ndarray], tuple[float, float]] | None = None,
    checkpoint: str | Path | None = None,
    evaluations: int | None = None,
    budget_s: float | None = None,
    random_order: bool = False,
    polish: bool = True,
    group_kick_share: float | None = None,
    workers: int | None = None,
    blocks: bool = True,
    **_: Any,
) -> tuple[Placement, Any]:
    """`place`, and the search's `rlplace.agents.guided_search.SearchStats` (simulations, curve).

    ``random_order``: the ablation: the same starts, the same local-search phase and the same
    guided search with a uniform random move order instead of the policy's ranking (no
    checkpoint is loaded), i.e. plain local search all through. The statistics' simulations
    include the local-search phase; its curve covers the guided phase only. ``polish``: the
    guided search's final device exchange and ``group_kick_share`` its share of group kicks
    (None: its default; `rlplace.agents.guided_search.guided_search`). ``blocks``: phase 0, the
    block-level search (False: the pipeline as it was before it). ``workers``: searches side
    by side (module docstring, step 5; None: the default there); the statistics are the best
    search's, with the simulations and rankings of all of them.
    """
    import torch

    from rlplace.agents.guided_search import BLOCK_SHARE, metis_restarts, scorer_ranker, search_from_starts
    from rlplace.baselines.local_search import DP_START_WORK_LIMIT, START_METHODS, _refereed, check_search_budget, dp_work_limit, start_placements
    from rlplace.envs.improve_state import build_move_problem

    check_search_budget(evaluations, budget_s)
    # A simulation budget promises the same answer on every machine: one search unless asked.
    count = resolve_workers(workers) if workers is not None or evaluations is None else 1
    if evaluations is None and budget_s is None:
        budget_s = DEFAULT_BUDGET_S
    ranker = None if random_order else scorer_ranker(load_policy(checkpoint))  # the cold start, outside the budget
    warm_up(checkpoint, random_order=random_order)  # ... and so are the ablation's first imports
    began = time.perf_counter()
    problem = build_move_problem(graph, cluster, costs, objective=objective, microbatches=microbatches, schedule=schedule)
    failures: dict[str, str] = {}
    cut_short: set[str] = set()
    timings: dict[str, float] = {}
    split_dp = DP_SPLIT and objective == "throughput" and count > 1 and budget_s is not None
    found = start_placements(
        graph, cluster, costs, objective=objective, seed=seed, methods=START_METHODS, failures=failures, microbatches=microbatches, schedule=schedule,
        budget_s=budget_s, dp_reference_s=DP_SPLIT_SHARED_REFERENCE_S if split_dp else None, cut_short=cut_short, timings=timings,
    )  # fmt: skip
    if not found:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in list(failures.items())[:2])
        raise RlplaceError(f"policy: no fast baseline found a start placement for graph {graph.name!r} ({reasons})")
    starts = [problem.units.contract(p) for p in found.values()]

    def improve(member_seed: int) -> tuple[np.ndarray, Any]:
        """Phases 1-4 from ``starts`` (and, for phases 2-3, METIS at more seeds) with
        ``member_seed``: the best (u,) unit assignment and the statistics."""
        member_starts = starts
        if split_dp and budget_s is not None and "dp" in cut_short and member_seed == worker_seed(seed, 1):
            # The second search gives dp's exact program the larger work limit the shared starts
            # cut short, on its own clock; the first searches all the while (see DP_SPLIT).
            # It runs in a child killed at the deadline, since its time can only be estimated.
            shared_limit = dp_work_limit(budget_s, DP_SPLIT_SHARED_REFERENCE_S)
            deadline = began + budget_s - DP_SPLIT_RESERVE_S
            if second_dp_limit(timings["dp"], shared_limit, deadline - time.perf_counter()) >= DP_SPLIT_MIN_GAIN * shared_limit:
                exact = run_until(
                    lambda: start_placements(graph, cluster, costs, objective=objective, seed=seed, methods=("dp",), dp_limit=DP_START_WORK_LIMIT), deadline
                )
                member_starts = starts + [problem.units.contract(p) for p in (exact or {}).values()]
        program_s = PROGRAM_SHARE * budget_s if budget_s is not None and objective == "throughput" else 0.0
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one small forward pass per ranking: threads only add contention
        try:
            kicks = {} if group_kick_share is None else {"group_kick_share": group_kick_share}
            best, stats = search_from_starts(
                problem,
                member_starts,
                ranker,
                evaluations=evaluations,
                budget_s=budget_s,
                guided_until_s=None if budget_s is None else budget_s - program_s,
                began=began,
                seed=member_seed,
                polish=polish,
                block_share=BLOCK_SHARE if blocks else 0.0,
                extra_starts=metis_restarts(problem, member_seed),
                **kicks,
            )
        finally:
            torch.set_num_threads(threads)
        if program_s > 0 and budget_s is not None:
            best = _max_load_phase(graph, cluster, costs, problem, np.asarray(best), began + budget_s, member_seed)
        return np.asarray(best), stats

    # Phases 1-4 once per worker, side by side, each with its own seed; the best result is kept.
    members = run_seeds(improve, seed, count)
    keys = [problem.score(found_units) for found_units, _ in members]  # (bytes over, step time)
    winner = min(range(count), key=lambda k: (*keys[k], k))
    best, stats = members[winner]
    stats.simulations = sum(member_stats.simulations for _, member_stats in members)
    stats.rankings = sum(member_stats.rankings for _, member_stats in members)
    result = _refereed(problem.units.expand(np.asarray(best)), [problem.units.expand(s) for s in starts], referee)
    placement = finalize(
        graph, cluster, costs, result, objective=objective, method="policy", simulator=problem.simulator, microbatches=microbatches, schedule=schedule
    )
    return placement, stats


def second_dp_limit(shared_s: float, shared_limit: float, left_s: float) -> float:
    """Work (pairs of ideals x device states) of dp's exact program that fits ``left_s``
    seconds at the rate of the shared run, which took ``shared_s`` seconds (its fixed costs and
    linearized fallback included, so the estimate errs short) under ``shared_limit``; never more
    than `DP_START_WORK_LIMIT`, 0 when no time is left. The second search reruns the program
    only when this is well above the shared limit."""
    from rlplace.baselines.local_search import DP_START_WORK_LIMIT

    if left_s <= 0:
        return 0.0
    if shared_s <= 0:
        return DP_START_WORK_LIMIT
    return min(DP_START_WORK_LIMIT, left_s * shared_limit / shared_s)


def _max_load_phase(
    graph: OpGraph, cluster: Cluster, costs: CostTable, problem: Any, best: np.ndarray, deadline: float, seed: int
) -> np.ndarray:
    """Step 4 (``throughput``): `PROGRAM_SEARCH` from the (u,) assignment ``best`` until
    ``deadline`` (`time.perf_counter` seconds); returns the (u,) assignment it ends with."""
    if PROGRAM_SEARCH == "tabu":
        from rlplace.baselines.max_load_tabu import tabu_search

        return tabu_search(problem.simulator, problem.units, problem.budget, best, deadline=deadline, seed=seed)[0]
    from rlplace.baselines import ilp
    from rlplace.baselines.max_load_program import MaxLoadProgram

    program = MaxLoadProgram(graph, cluster, costs, problem.units, problem.budget)
    best, _, _ = ilp.improve(program, problem.simulator, np.asarray(best), deadline=deadline, seed=seed)
    return best
