"""What the simulation cutoff saves a search: microseconds per candidate with and without it.

On each `latency` and `pipelined` case of the policy benchmark's validation slice
(`bench_policy.VALIDATION`), local-search's default answer (2000 simulations, seed 0) stands
in for the placement a search stands on; ``--moves`` random single moves of one unit from it
are the candidates. Each candidate is scored by `Simulator.score` in full and with the
answer's step time as its cutoff (what `local-search` and the guided search pass,
`rlplace.rules.cutoff_for`). Prints, per case, the median-of-3 microseconds per candidate both
ways, the share of candidates the cutoff cut short, and how many beat the answer (those are
never cut; the benchmark checks that every finite cut score equals the full one).

    python benchmarks/bench_cutoff.py [--moves 400]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_policy import validation_cases

from rlplace.envs.improve_state import build_move_problem
from rlplace.methods import run_method
from rlplace.rules import cutoff_for


def random_moves(allowed: np.ndarray, start: np.ndarray, count: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` copies of the (u,) ``start`` with one random unit sent to another device it can run on."""
    trials = []
    while len(trials) < count:
        unit = int(rng.integers(start.size))
        devices = np.flatnonzero(allowed[unit] & (np.arange(allowed.shape[1]) != start[unit]))
        if devices.size:
            trial = start.copy()
            trial[unit] = int(devices[rng.integers(devices.size)])
            trials.append(trial)
    return trials


def microseconds(score, trials: list[np.ndarray]) -> float:
    """Median over three passes of the mean microseconds per ``score(trial)``."""
    passes = []
    for _ in range(3):
        began = time.perf_counter()
        for trial in trials:
            score(trial)
        passes.append((time.perf_counter() - began) / len(trials) * 1e6)
    return statistics.median(passes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=400, help="random single moves scored per case")
    args = parser.parse_args(argv)
    print(f"{'case':50s} {'full us':>8s} {'cut us':>8s} {'saved':>6s} {'cut':>6s} {'better':>6s}")
    for _, case in validation_cases(quick=False):
        if case.objective == "throughput":
            continue  # a max-load sum of a few microseconds: never cut
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        answer = run_method("local-search", case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches, seed=0).placement
        current = problem.units.contract(np.asarray(answer))
        key = problem.score(current)
        trials = random_moves(problem.units.allowed, current, args.moves, np.random.default_rng(0))
        cutoff = cutoff_for(key)
        full = [problem.score(t) for t in trials]
        cut = [problem.score(t, cutoff=cutoff) for t in trials]
        for exact, short in zip(full, cut, strict=True):
            assert short == exact or (np.isinf(short[1]) and exact[1] > cutoff), (short, exact)
        full_us = microseconds(problem.score, trials)
        cut_us = microseconds(functools.partial(problem.score, cutoff=cutoff), trials)
        share_cut = float(np.mean([np.isinf(s[1]) for s in cut]))
        better = sum(s < key for s in full)
        print(f"{case.label[:50]:50s} {full_us:8.1f} {cut_us:8.1f} {1 - cut_us / full_us:6.1%} {share_cut:6.1%} {better:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
