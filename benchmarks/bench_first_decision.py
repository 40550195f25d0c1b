"""The first `policy` decision of a fresh process, with and without the warm-up.

`rlplace place --method policy` makes one decision per process. Before `warm_up`
(`rlplace.policy_method`), that decision paid for what it loaded on first use (the start
methods' imports, numba kernels from the cache) out of its own 1.8 s budget. For every case of
`bench_policy.VALIDATION` and every seed, this runs one decision in a fresh interpreter twice:
``cold`` as before (the warm-up skipped) and ``warm`` as shipped (the warm-up in the cold
start, outside the decision), and prints each one's simulations and the ratio of their step
times (warm / cold, below 1: the warm decision found the faster placement), then the
geometric means, over all cases and over B-D.

    python benchmarks/bench_first_decision.py [--seeds 93,94] [--cases N] [--json FILE]

About 25 s per case and seed on a 2-core VM (two interpreters, each importing torch).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

MODES = ("cold", "warm")


def one_decision(index: int, seed: int, mode: str) -> dict[str, Any]:
    """Decide `bench_policy.VALIDATION[index]` at ``seed`` in this (fresh) process; ``mode``
    ``cold`` skips the warm-up. Returns the step time (inf when over memory) and simulations."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_policy

    import rlplace.policy_method as policy_method
    from rlplace.simulate import Simulator

    if mode == "cold":
        policy_method._WARMED.update({True, False})  # the decision as it was before warm_up
    policy_method.load_policy(None)
    regime, case = bench_policy.validation_cases(False, bench_policy.VALIDATION[index : index + 1])[0]
    inputs = {"objective": case.objective, "seed": seed, "microbatches": case.microbatches}
    placement, stats = policy_method.search(case.graph, case.cluster, case.costs, **inputs)
    simulator = Simulator(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
    step, overflow = simulator.score(placement)
    return {"index": index, "regime": regime, "case": case.label, "seed": seed, "mode": mode, "step": step if overflow == 0 else math.inf, "simulations": stats.simulations}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="93,94", help="comma-separated seeds")
    parser.add_argument("--cases", type=int, default=None, help="only the first N cases of VALIDATION (a quick check)")
    parser.add_argument("--json", type=Path, help="append every decision's row to this JSON lines file")
    parser.add_argument("--one", nargs=3, metavar=("INDEX", "SEED", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_decision(int(args.one[0]), int(args.one[1]), args.one[2])))
        return

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_policy

    ratios: list[tuple[str, float]] = []
    print(f"{'case':50} {'seed':>4} {'sims cold':>9} {'sims warm':>9} {'warm/cold':>9}")
    for index in range(len(bench_policy.VALIDATION) if args.cases is None else min(args.cases, len(bench_policy.VALIDATION))):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows = {}
            for mode in MODES:
                completed = subprocess.run(
                    [sys.executable, __file__, "--one", str(index), str(seed), mode], capture_output=True, text=True, check=False
                )  # fmt: skip
                if completed.returncode != 0:
                    raise SystemExit(f"decision {index} seed {seed} {mode} failed:\n{completed.stderr[-2000:]}")
                rows[mode] = json.loads(completed.stdout.strip().splitlines()[-1])
                if args.json:
                    with args.json.open("a") as out:
                        out.write(json.dumps(rows[mode]) + "\n")
            ratio = rows["warm"]["step"] / rows["cold"]["step"]
            ratios.append((rows["warm"]["regime"], ratio))
            print(f"{rows['warm']['case'][:50]:50} {seed:>4} {rows['cold']['simulations']:>9} {rows['warm']['simulations']:>9} {ratio:>9.4f}", flush=True)
    every = [r for _, r in ratios]
    b_to_d = [r for regime, r in ratios if regime != "A"]
    b_to_d_text = f"{bench_policy.geomean(b_to_d):.4f}" if b_to_d else "no case"
    print(f"geomean warm/cold: {bench_policy.geomean(every):.4f} over {len(every)} decisions (better {sum(r < 1 for r in every)}, worse {sum(r > 1 for r in every)}); B-D {b_to_d_text}")


if __name__ == "__main__":
    main()
