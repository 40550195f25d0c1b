"""How well the simulator predicts measured step times: calibrated profile, 2 gloo ranks.

Calibrates the two local CPU ranks (1 thread each, ``rlplace calibrate``; again before each
model unless ``--no-recalibrate``, since a shared host's speed drifts) and fits the per-op
profile's isolation correction on the calibration models
(`rlplace.measure.opprofile.fit_isolation_correction`), then for each model profiles its ops
in isolation and measures a dozen placements (both single-device ones, contiguous two-way
cuts at several points in both directions, alternating and random module-level splits)
with two gloo ranks, in 3 interleaved rounds, and compares the median measured step time
with the simulator's latency prediction on the calibrated cluster. Prints one row per
placement, then per model and overall: Spearman rank correlation (`scipy.stats.spearmanr`)
and the median absolute relative error, with and without the per-op profile. The machine's
load average is printed too (it counts the idle-priority spinners of `rlplace.measure.awake`,
about 1 per core while ranks run): other processes on the host inflate measured times.

    python benchmarks/fidelity.py [--profile FILE | --no-recalibrate] [--models a,b,c] [--steps 5]
                                  [--warmup 2] [--rounds 3] [--placements 12] [--nice N] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from rlplace.graph import OpGraph
from rlplace.measure.calibrate import Profile, calibrate, load_profile, profile_summary, write_profile
from rlplace.measure.opprofile import IsolationCorrection, fit_isolation_correction
from rlplace.measure.recipe import ModelRecipe
from rlplace.measure.session import MeasureSetup, local_cpu_cluster, measure, relative_error
from rlplace.placement import respect_colocation

MODELS = ("rlplace.measure.models:bench_mlp", "rlplace.measure.models:bench_transformer", "rlplace.measure.models:bench_cnn")


@dataclass(frozen=True)
class Row:
    model: str
    placement: str
    simulated: float
    measured: float
    simulated_modelled: float
    messages: int
    simulated_busy: tuple[float, ...]
    measured_cpu: tuple[float, ...]

    @property
    def error(self) -> float:
        return relative_error(self.simulated, self.measured)


def _units(graph: OpGraph) -> np.ndarray:
    """(n,) unit id per op: forward ops grouped by their top two module-path components."""
    paths = graph.meta.get("module_paths") or [""] * graph.num_ops
    labels: dict[str, int] = {}
    units = np.empty(graph.num_ops, dtype=np.int64)
    current = ""
    for op in range(graph.num_ops):
        path = str(paths[op])
        if path:
            current = ".".join(path.split(".")[:2])
        units[op] = labels.setdefault(current, len(labels))
    return units


def placements_for(graph: OpGraph, count: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """Named two-device placements of ``graph`` that keep colocation classes together."""
    n = graph.num_ops
    forward = np.flatnonzero(~graph.is_backward)
    chosen: list[tuple[str, np.ndarray]] = [("all on rank0", np.zeros(n, dtype=np.int64)), ("all on rank1", np.ones(n, dtype=np.int64))]
    for fraction in (0.25, 0.5, 0.75):
        cut = np.zeros(n, dtype=np.int64)
        cut[forward[int(len(forward) * fraction) :]] = 1
        chosen.append((f"cut at {fraction:.0%}", cut))
        chosen.append((f"cut at {fraction:.0%}, reversed", 1 - cut))
    units = _units(graph)
    unit_count = int(units.max()) + 1
    chosen.append(("alternate units", (units % 2).astype(np.int64)))
    chosen.append(("alternate unit pairs", ((units // 2) % 2).astype(np.int64)))
    working = np.flatnonzero(~graph.is_backward & ~np.isin(np.array(graph.kinds), ["view", "input"]))
    for run in (1, 3):  # fine-grained splits: many activations and gradients cross
        alternating = np.zeros(n, dtype=np.int64)
        alternating[working] = (np.arange(len(working)) // run) % 2
        chosen.append((f"alternate ops in runs of {run}", alternating))
    rng = np.random.default_rng(seed)
    while len(chosen) < count:
        chosen.append((f"random units #{len(chosen)}", rng.integers(0, 2, size=unit_count)[units].astype(np.int64)))
    return [(name, respect_colocation(graph, placement)) for name, placement in chosen[:count]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", help="reuse a profile instead of calibrating (written by rlplace calibrate)")
    parser.add_argument("--save-profile", help="write the calibrated profile here")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated model specs")
    parser.add_argument("--placements", type=int, default=12, help="placements per model (12 named ones, then random module-level splits)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per placement and round (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before each round's timed ones (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over all placements of a model, step times pooled (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per model (all its placements)")
    parser.add_argument("--json", help="write every row and the summary as JSON")
    parser.add_argument(
        "--op-profile", action=argparse.BooleanOptionalAction, default=True,
        help="time each distinct op of the model and its backward in isolation and simulate with those times (default); "
        "the modelled (calibrated roofline) prediction is summarized too",
    )  # fmt: skip
    parser.add_argument(
        "--recalibrate", action=argparse.BooleanOptionalAction, default=True,
        help="calibrate again before each model (default): a shared host's speed drifts by tens of percent within a minute",
    )  # fmt: skip
    parser.add_argument(
        "--nice", type=int, default=-20 if os.geteuid() == 0 else None,
        help="CPU priority of the ranks (default -20 as root: other processes on the host then barely stretch the timings)",
    )  # fmt: skip
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_before = os.getloadavg()
    profiles: list[dict] = []

    def current_profile() -> Profile:
        if args.profile:
            return load_profile(args.profile)
        calibration_started = time.perf_counter()
        profile = calibrate(2, backend="gloo", threads=1, nice=args.nice)
        if args.save_profile:
            write_profile(profile, args.save_profile)
        print(f"profile (calibrated in {time.perf_counter() - calibration_started:.0f} s):")
        for line in profile_summary(profile):
            print(f"  {line}")
        profiles.append(profile.to_json())
        return profile

    rows: list[Row] = []
    correction: IsolationCorrection | None = None
    correction_profile = None
    profile = current_profile() if args.profile or not args.recalibrate else None
    for spec in [s for s in args.models.split(",") if s]:
        if profile is None or (args.recalibrate and not args.profile):
            profile = current_profile()
        cluster = local_cpu_cluster(2, profile)
        if args.op_profile and (correction is None or correction_profile is not profile):
            fitting_started = time.perf_counter()
            correction, correction_profile = fit_isolation_correction(cluster), profile
            errors = [abs(f - m) / m for m, f, _ in correction.fit.values()]
            before = [abs(u - m) / m for m, _, u in correction.fit.values()]
            print(
                f"isolation correction (fitted in {time.perf_counter() - fitting_started:.0f} s on {len(errors)} calibration models): "
                f"step time = {correction.scale:.2f} x isolated {correction.forward_s * 1e6:+.1f} us per forward node "
                f"{correction.backward_s * 1e6:+.1f} us per backward op; median error on them {statistics.median(errors) * 100:.1f}% (uncorrected {statistics.median(before) * 100:.1f}%)"
            )
        model_started = time.perf_counter()
        setup = MeasureSetup.prepare(ModelRecipe(spec), cluster)
        named = placements_for(setup.graph, args.placements)
        modelled = setup
        if args.op_profile:
            profiling_started = time.perf_counter()
            setup = setup.with_op_profile(correction=correction)
            print(f"per-op profile of {spec} in {time.perf_counter() - profiling_started:.1f} s")
        measured = measure(setup, [p for _, p in named], backend="gloo", steps=args.steps, warmup=args.warmup, rounds=args.rounds, threads=1, timeout_s=args.timeout, nice=args.nice)
        print(f"\n{spec}: {setup.graph.num_ops} ops, {len(named)} placements, {time.perf_counter() - model_started:.0f} s")
        print(f"  {'placement':28s} {'simulated ms':>13s} {'measured ms':>12s} {'error':>7s} {'msgs':>5s}   busy per rank, simulated / CPU ms")
        for (name, placement), measurement in zip(named, measured, strict=True):
            result = setup.simulate(placement)
            row = Row(
                spec.rpartition(":")[2], name, float(result.step_time), measurement.measured_step_time,
                float(modelled.simulate(placement).step_time), measurement.messages,
                tuple(float(b) for b in result.busy_time), measurement.cpu_times,
            )  # fmt: skip
            rows.append(row)
            busy = "  ".join(f"{s * 1e3:.1f}/{c * 1e3:.1f}" for s, c in zip(row.simulated_busy, row.measured_cpu, strict=True))
            print(f"  {name:28s} {row.simulated * 1e3:13.2f} {row.measured * 1e3:12.2f} {row.error * 100:6.1f}% {row.messages:5d}   {busy}")

    summary = _summary(rows)
    if args.op_profile:
        summary["modelled"] = _summary([dataclasses.replace(row, simulated=row.simulated_modelled) for row in rows])
    summary["seconds"] = time.perf_counter() - started
    summary["load_average_before"] = load_before
    summary["load_average_after"] = os.getloadavg()
    print("\nper model:")
    for model, stats in summary["per_model"].items():
        print(f"  {model:18s} spearman {stats['spearman']:.3f}  median |rel. error| {stats['median_abs_rel_error'] * 100:.1f}%  ({stats['placements']} placements)")
    for label, key in (("one-device placements", "one_device_median_abs_rel_error"), ("placements with messages", "multi_device_median_abs_rel_error")):
        if summary[key] is not None:
            print(f"  {label:26s} median |rel. error| {summary[key] * 100:.1f}%")
    if "modelled" in summary:
        modelled_summary = summary["modelled"]
        print(
            f"  without the per-op profile: spearman {modelled_summary['spearman']:.3f}, median |rel. error| "
            f"{modelled_summary['median_abs_rel_error'] * 100:.1f}% (one-device {_percent(modelled_summary['one_device_median_abs_rel_error'])}, "
            f"with messages {_percent(modelled_summary['multi_device_median_abs_rel_error'])}); per model "
            + ", ".join(f"{m} {st['spearman']:.3f}/{st['median_abs_rel_error'] * 100:.1f}%" for m, st in modelled_summary["per_model"].items())
        )
    print(
        f"overall: {summary['placements']} placements of {len(summary['per_model'])} models: spearman {summary['spearman']:.3f}, "
        f"median |rel. error| {summary['median_abs_rel_error'] * 100:.1f}%  ({summary['seconds']:.0f} s; "
        f"load average {load_before[0]:.2f} before, {summary['load_average_after'][0]:.2f} after; ranks at nice {args.nice})"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as stream:
            json.dump({"rows": [row.__dict__ | {"error": row.error} for row in rows], "summary": summary, "profiles": profiles}, stream, indent=2)
    return 0


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _summary(rows: list[Row]) -> dict:
    def stats(subset: list[Row]) -> dict:
        simulated = [r.simulated for r in subset]
        measured = [r.measured for r in subset]
        return {
            "placements": len(subset),
            "spearman": float(spearmanr(simulated, measured).statistic),
            "median_abs_rel_error": float(statistics.median(r.error for r in subset)),
        }

    per_model = {model: stats([r for r in rows if r.model == model]) for model in dict.fromkeys(r.model for r in rows)}
    # What calibration alone decides (no message crosses) apart from what messages add.
    split = {
        "one_device_median_abs_rel_error": float(statistics.median(r.error for r in rows if r.messages == 0)) if any(r.messages == 0 for r in rows) else None,
        "multi_device_median_abs_rel_error": float(statistics.median(r.error for r in rows if r.messages > 0)) if any(r.messages > 0 for r in rows) else None,
    }
    return {**stats(rows), **split, "per_model": per_model}


if __name__ == "__main__":
    sys.exit(main())
