"""``rlplace tune`` on models with branches: the simulator's best placement vs the measured-refined one.

    nice -n 10 python benchmarks/bench_tune.py [--models two_branch,three_branch,soft_moe] [--budget 6]

For each model of ``rlplace.measure.models`` it runs ``rlplace tune MODEL --budget B --json``
(2 local gloo ranks, the shipped policy) as a user would, and prints the simulator's best
placement's simulated and measured step time, the tuned result's measured step time (by
construction never above the simulator's best: when they differ, both are measured side by
side in one launch and the faster there wins), the best step time the search saw, and the
measurements used. ``rlplace calibrate`` runs first (the simulator's cluster is the calibrated
2-rank stand-in). With ``--confirm R`` (default 3) the two placements are measured once more,
side by side, R interleaved rounds, in a fresh launch: an independent check of the gain against
the host's noise. Takes ~1.5-2 min per model on the shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("two_branch", "three_branch", "soft_moe")


def tune(model: str, budget: int, out: Path, total_timeout: float, extra: list[str]) -> dict:
    command = [
        sys.executable, "-m", "rlplace.cli", "tune", f"rlplace.measure.models:{model}", "--budget", str(budget),
        "--total-timeout", str(total_timeout), "--out", str(out), "--json", *extra,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=total_timeout + 300, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rlplace tune {model} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout)


def calibrate(out: Path) -> None:
    command = [sys.executable, "-m", "rlplace.cli", "calibrate", "--devices", "2", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"rlplace calibrate failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def confirm(model: str, placement_file: Path, rounds: int) -> tuple[float, float]:
    """(simulator's best, tuned) median step time, measured together in ``rounds`` interleaved rounds."""
    import numpy as np

    from rlplace.measure.recipe import ModelRecipe
    from rlplace.measure.session import MeasureSetup, local_cpu_cluster, measure

    data = json.loads(placement_file.read_text())
    setup = MeasureSetup.prepare(ModelRecipe(f"rlplace.measure.models:{model}"), local_cpu_cluster(len(data["device_names"])))
    placements = [np.asarray(data["simulator_best"]["placement"], np.int64), np.asarray(data["placement"], np.int64)]
    sim_best, tuned = measure(setup, placements, backend="gloo", steps=5, warmup=2, rounds=rounds, timeout_s=300.0)
    return sim_best.measured_step_time, tuned.measured_step_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated factories of rlplace.measure.models")
    parser.add_argument("--budget", type=int, default=6, help="measurements per model (default 6)")
    parser.add_argument("--total-timeout", type=float, default=150.0, help="seconds per tune run (default 150)")
    parser.add_argument("--confirm", type=int, default=3, metavar="R", help="interleaved rounds of the side-by-side re-measurement (0: skip)")
    parser.add_argument("--no-calibrate", action="store_true", help="skip `rlplace calibrate` (the simulator then uses the catalog's generic CPU)")
    parser.add_argument("--extra", default="", help="more rlplace tune options, space separated")
    args = parser.parse_args()
    rows = []
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        extra = args.extra.split()
        if not args.no_calibrate:
            calibrate(Path(scratch) / "profile.json")
            extra += ["--profile", str(Path(scratch) / "profile.json")]
            print(f"calibrated in {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        for model in args.models.split(","):
            out = Path(scratch) / model
            result = tune(model, args.budget, out, args.total_timeout, extra)
            row = {"model": model, **result}
            if args.confirm > 0:
                row["confirm_sim_best"], row["confirm_tuned"] = confirm(model, out / "placement.json", args.confirm)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(f"\nrlplace tune, 2 gloo ranks (1 thread each), shipped policy, budget {args.budget} measurements per model; {time.perf_counter() - began:.0f} s in all\n")
    header = (
        "| model | sim-best simulated ms | sim-best measured ms | tuned measured ms | gain | search's best ms | measurements | PPO steps / updates "
        "| tuned from | re-measured (sim-best / tuned) ms | wall s |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for r in rows:
        side = f"{r['confirm_sim_best'] * 1e3:.1f} / {r['confirm_tuned'] * 1e3:.1f}" if "confirm_tuned" in r else "-"
        print(
            f"| {r['model']} | {r['simulator_best_simulated_step_time'] * 1e3:.1f} | {r['simulator_best_measured_step_time'] * 1e3:.1f} | "
            f"{r['tuned_measured_step_time'] * 1e3:.1f} | {r['measured_gain'] * 100:.1f} % | {r['searched_best_measured_step_time'] * 1e3:.1f} | {r['measurements']} of {r['budget']} | "
            f"{r['ppo_timesteps']} / {r['ppo_updates']} | {r['tuned_source']} | {side} | {r['wall_s']:.0f} |"
        )
        assert r["tuned_measured_step_time"] <= r["simulator_best_measured_step_time"]  # the invariant


if __name__ == "__main__":
    main()
