"""What one ranking of the policy-guided search costs, against one simulation.

A ranking (`rlplace.agents.guided_search`, after every kick and every few moves taken) is an
`observe` (one full simulation with its critical path, and the features) and a forward pass
of the shipped `MoveScorer` (`rlplace.agents.scorer.move_scores`). For each case of the
validation sets (training families at unseen seeds; never the held-out split), from the first
classic start, this prints the median milliseconds of:

- ``observe``: the observation the ranking reads;
- ``rank``: `move_scores` on it (the search's path: one unpadded observation);
- ``padded``: the same logits through the batched network (`collate` of one observation),
  the path the search used until 12-01;
- ``score``: one makespan-only simulation without a cutoff (what a candidate costs at most).

One thread, as in the search. Numbers move with the machine's speed; compare columns of one run.

    python benchmarks/bench_ranking.py [--repeats 30] [--cases 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from rlplace.agents.scorer import MoveScorer
    from rlplace.envs.improve_state import MoveProblem

sys.path.insert(0, str(Path(__file__).resolve().parent))


def median_ms(call: Callable[[], object], repeats: int) -> float:
    """Median wall milliseconds of ``call`` over ``repeats`` calls, after one warm-up call."""
    call()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times)


def case_row(problem: MoveProblem, assignment: np.ndarray, scorer: MoveScorer, repeats: int) -> list[float]:
    """Median ms of observe, rank, padded and score for the (u,) ``assignment`` of ``problem``."""
    import torch

    from rlplace.agents.scorer import collate, move_scores
    from rlplace.envs.improve_state import observe

    obs = observe(problem, assignment)
    placement = problem.units.expand(assignment)

    def padded() -> object:
        with torch.no_grad():
            return scorer(collate([obs]))

    return [
        median_ms(lambda: observe(problem, assignment), repeats),
        median_ms(lambda: move_scores(scorer, obs), repeats),
        median_ms(padded, repeats),
        median_ms(lambda: problem.simulator.score(placement), repeats),
    ]


def main(argv: list[str] | None = None) -> int:
    import torch
    from bench_policy import FAMILY_VALIDATION, VALIDATION, WIDE_VALIDATION, validation_cases

    from rlplace.baselines.local_search import start_placements
    from rlplace.envs.improve_state import build_move_problem
    from rlplace.policy_method import load_policy

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--cases", type=int, default=8, help="how many validation cases (spread over the three sets)")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    scorer = load_policy(None)

    cases = [case for spec in (VALIDATION, WIDE_VALIDATION, FAMILY_VALIDATION) for case in validation_cases(False, spec)]
    step = max(1, len(cases) // args.cases)
    print(f"{'case':50s} {'units':>5s} {'devices':>7s} {'observe':>8s} {'rank':>6s} {'padded':>7s} {'score':>6s}  (ms, median of {args.repeats})")
    for _, case in cases[::step][: args.cases]:
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        start = next(iter(start_placements(case.graph, case.cluster, case.costs, objective=case.objective, seed=0, microbatches=case.microbatches).values()))
        row = case_row(problem, problem.units.contract(start), scorer, args.repeats)
        print(f"{case.label[:50]:50s} {problem.num_units:5d} {problem.num_devices:7d} {row[0]:8.2f} {row[1]:6.2f} {row[2]:7.2f} {row[3]:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
