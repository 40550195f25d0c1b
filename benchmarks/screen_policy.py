"""Screen settings of the `policy` pipeline on the validation sets, never on the held-out split.

Each variant is the shipped pipeline with some module constants set (``NAME`` alone: the
shipped settings); every variant runs `rlplace.policy_method.search` at the shipped budget
(`DEFAULT_BUDGET_S`, default workers) on every case of `bench_policy`'s three validation sets
(`VALIDATION`, `WIDE_VALIDATION`, `FAMILY_VALIDATION`: 31 cases) for each seed, the variants of
one case and seed back to back, so a loaded machine hurts them alike. A row is the policy's step
time over ``local-search``'s at its defaults (same case and seed). Rows are appended to a JSON
lines file as they come (a killed screen resumes where it stopped: rows already there are
skipped); the summary prints, per variant, the geometric mean pooled and per set and over
B-D, the worst row, the slowest decision (seconds, the whole `search` call; the shipped budget
is 1.8 s), and the geomean of its ratio to the first variant's with the runs it wins and loses.

This is how the search settings in docs/learned-placer-experiments.md were chosen (a rule
fixed before a screen, on seeds no earlier screen used, then confirmed on other seeds), e.g.:

    python benchmarks/screen_policy.py runs/screen.jsonl --seeds 3,4,5 \\
        --variant base:rlplace.agents.guided_search.METIS_RESTARTS=0 --variant restarts8
    python benchmarks/screen_policy.py runs/screen.jsonl --report
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import json
import math
import re
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

SETS = ("validation", "wide", "families", "throughput")


def parse_variant(text: str) -> tuple[str, dict[tuple[str, str], Any]]:
    """``NAME[:module.ATTR=VALUE[,module.ATTR=VALUE...]]`` -> (name, {(module, attr): value});
    VALUE is a Python literal, and may hold commas (a tuple: ``m.X=("a","b")``)."""
    name, _, settings = text.partition(":")
    patches: dict[tuple[str, str], Any] = {}
    for item in filter(None, re.split(r",(?=[\w.]+=)", settings)):
        target, _, value = item.partition("=")
        module, _, attr = target.rpartition(".")
        if not module or not attr or not value:
            raise SystemExit(f"variant {text!r}: each setting is module.ATTR=VALUE, got {item!r}")
        patches[(module, attr)] = ast.literal_eval(value)
    return name, patches


@contextlib.contextmanager
def patched(patches: dict[tuple[str, str], Any]) -> Iterator[None]:
    """The module constants of ``patches`` set for the duration (then restored)."""
    saved = []
    for (module_name, attr), value in patches.items():
        module = importlib.import_module(module_name)
        if not hasattr(module, attr):
            raise SystemExit(f"{module_name} has no {attr}")
        saved.append((module, attr, getattr(module, attr)))
        setattr(module, attr, value)
    try:
        yield
    finally:
        for module, attr, value in reversed(saved):
            setattr(module, attr, value)


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of the JSON lines file ``path`` ([] when there is none yet)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def report(path: Path) -> None:
    """Print the summary of the rows in ``path`` (module docstring); only case-seed pairs every
    variant ran count."""
    rows = read_rows(path)
    runs: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = defaultdict(dict)
    for row in rows:
        runs[(row["set"], row["case"], row["seed"])][row["variant"]] = row
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    complete = [key for key, by_variant in runs.items() if all(v in by_variant for v in variants)]
    # the three standing sets always (a screen of them keeps its layout), any other one when it ran
    shown = [s for s in SETS if s in SETS[:3] or any(row["set"] == s for row in rows)]
    print(f"{len(complete)} runs (case x seed) with every variant; step time / local-search's at its defaults, geometric means")
    print(f"{'variant':12s} {'pooled':>7s} " + " ".join(f"{s:>10s}" for s in shown) + f" {'B-D':>7s} {'worst':>6s} {'max s':>6s}  vs {variants[0]}")
    for variant in variants:
        ratios = {key: runs[key][variant]["ratio"] for key in complete}
        per_set = [geomean([r for key, r in ratios.items() if key[0] == s]) for s in shown]
        b_to_d = geomean([r for key, r in ratios.items() if runs[key][variant]["regime"] != "A"])
        seconds = [runs[key][variant].get("decide_s", math.nan) for key in complete]  # rows before 12-02 lack it
        slowest = max(seconds) if seconds and not any(math.isnan(s) for s in seconds) else math.nan
        line = f"{variant:12s} {geomean(list(ratios.values())):7.4f} " + " ".join(f"{v:10.4f}" for v in per_set) + f" {b_to_d:7.4f} {max(ratios.values()):6.3f} {slowest:6.2f}"
        if variant != variants[0]:
            relative = [ratios[key] / runs[key][variants[0]]["ratio"] for key in complete]
            wins, losses = sum(r < 1 - 1e-9 for r in relative), sum(r > 1 + 1e-9 for r in relative)
            line += f"  {geomean(relative):.4f} (better in {wins}, worse in {losses})"
        print(line)


def screen(path: Path, seeds: list[int], variants: list[tuple[str, dict[tuple[str, str], Any]]], sets: tuple[str, ...] = SETS[:3], objective: str | None = None) -> None:
    """Run every variant on every case of ``sets`` (under ``objective`` only, when given) and seed not yet in ``path``, appending rows."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_policy

    from rlplace.envs.improve_state import build_move_problem
    from rlplace.methods import run_method
    from rlplace.policy_method import load_policy, search

    done = {(row["set"], row["case"], row["seed"], row["variant"]) for row in read_rows(path)}
    load_policy(None)  # the cold start, outside every decision
    specs = {
        "validation": bench_policy.VALIDATION, "wide": bench_policy.WIDE_VALIDATION, "families": bench_policy.FAMILY_VALIDATION,
        "throughput": bench_policy.THROUGHPUT_VALIDATION,
    }  # fmt: skip
    for set_name in sets:
        chosen = tuple(spec for spec in specs[set_name] if objective is None or spec[3] == objective)
        for regime, case in bench_policy.validation_cases(False, chosen):
            problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)

            def scored(placement: np.ndarray, simulator: Any = problem.simulator) -> float:
                step_time, overflow = simulator.score(np.asarray(placement))
                return step_time if overflow == 0 else math.inf

            for seed in seeds:
                todo = [(name, patches) for name, patches in variants if (set_name, case.label, seed, name) not in done]
                if not todo:
                    continue
                inputs = {"objective": case.objective, "seed": seed, "microbatches": case.microbatches}
                reference = scored(run_method("local-search", case.graph, case.cluster, case.costs, **inputs).placement)
                for name, patches in todo:
                    with patched(patches):
                        began = time.perf_counter()
                        placement, stats = search(case.graph, case.cluster, case.costs, **inputs)
                        decide_s = time.perf_counter() - began
                    row = {
                        "set": set_name, "regime": regime, "case": case.label, "seed": seed, "variant": name, "ratio": scored(placement) / reference,
                        "simulations": stats.simulations, "decide_s": decide_s,
                    }  # fmt: skip
                    with path.open("a") as out:
                        out.write(json.dumps(row) + "\n")
                print(f"{set_name:10s} {case.label:50s} seed {seed}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", type=Path, help="JSON lines file the rows are appended to (and read back)")
    parser.add_argument("--seeds", default="3,4,5", help="comma-separated seeds")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:module.ATTR=VALUE,...]", help="a variant (repeat; the first is the reference)")
    parser.add_argument("--sets", default=",".join(SETS[:3]), help=f"comma-separated validation sets, of {', '.join(SETS)}")
    parser.add_argument("--objective", default=None, help="only the cases under this objective")
    parser.add_argument("--report", action="store_true", help="print the summary of the rows file and stop")
    args = parser.parse_args()
    if not args.report:
        if not args.variant:
            parser.error("give at least one --variant")
        sets = tuple(args.sets.split(","))
        if unknown := set(sets) - set(SETS):
            parser.error(f"unknown sets {sorted(unknown)}; use {', '.join(SETS)}")
        screen(args.rows, [int(s) for s in args.seeds.split(",")], [parse_variant(v) for v in args.variant], sets, args.objective)
    report(args.rows)


if __name__ == "__main__":
    main()
