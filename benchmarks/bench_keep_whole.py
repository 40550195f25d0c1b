"""Cost of keeping ``_no_split_modules`` whole: simulated step time with and without.

    python benchmarks/bench_keep_whole.py [--models zoo:gpt2 ...] [--method local-search]

For each model, cluster and objective, places twice with `rlplace.pipeline.decide`
(``keep_whole=True``, the default, and ``False``) and prints both step times and the ratio.
"""

from __future__ import annotations

import argparse

from rlplace.load import load_model, resolve_cluster
from rlplace.pipeline import decide

CASES = (("4xT4", "pipelined"), ("2xA100+2xT4", "latency"), ("4xV100-nvlink", "pipelined"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["zoo:gpt2", "zoo:bert-base"])
    parser.add_argument("--method", default="local-search")
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args()
    print("| model | cluster | objective | method | step kept whole (ms) | step free (ms) | cost |")
    print("|---|---|---|---|---|---|---|")
    for spec in args.models:
        model = load_model(spec)
        for cluster_name, objective in CASES:
            cluster = resolve_cluster(cluster_name)
            times = []
            for keep in (True, False):
                decision = decide(model, cluster, args.method, objective=objective, microbatches=args.microbatches, keep_whole=keep)
                times.append(float(decision.result.step_time))
            print(f"| {spec} | {cluster_name} | {objective} | {args.method} | {times[0] * 1e3:.2f} | {times[1] * 1e3:.2f} | {times[0] / times[1] - 1:+.1%} |", flush=True)


if __name__ == "__main__":
    main()
