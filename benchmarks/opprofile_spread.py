"""Run-to-run spread of per-op profiles (`rlplace.measure.opprofile.profile_ops`) on the
development models of `benchmarks/fidelity.py`, one pass of 25 calls per signature (the old
setting) against the default (5 interleaved passes of 9, preempted calls left out, fastest
pass kept), optionally with memory-bound processes running beside it (what other jobs on a
shared host do).

Prints, per setting and model, the summed forward and backward times of every repetition
and their max/min ratio. Timings on a shared host are noisy: hold the host quiet.

    python benchmarks/opprofile_spread.py [--models a,b] [--repeats 3] [--hogs 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import torch

from rlplace.measure.opprofile import profile_ops
from rlplace.measure.program import export_forward
from rlplace.measure.recipe import ModelRecipe

HOG = "import numpy as np, time\na = np.ones(4_000_000); b = np.empty_like(a)\nend = time.time() + {seconds}\nwhile time.time() < end:\n    np.copyto(b, a)\n"
SETTINGS = {"one pass of 25": {"repeats": 25, "passes": 1}, "5 passes of 9": {"repeats": 9, "passes": 5}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="bench_mlp,bench_transformer,bench_cnn,two_branch")
    parser.add_argument("--repeats", type=int, default=3, help="profiles per model and setting")
    parser.add_argument("--hogs", type=int, default=0, help="memory-bound processes running beside the profiles")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    programs = {}
    for name in args.models.split(","):
        module, inputs = ModelRecipe("rlplace.measure.models:" + name).build()
        programs[name] = export_forward(module, inputs)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=600)]) for _ in range(args.hogs)]
    try:
        for label, options in SETTINGS.items():
            print(f"{label} ({args.hogs} hogs):")
            for name, program in programs.items():
                totals = []
                for _ in range(args.repeats):
                    started = time.perf_counter()
                    profile = profile_ops(program, **options)
                    totals.append((sum(profile.forward_s.values()), sum(profile.backward_s.values()), time.perf_counter() - started))
                forward = [t[0] * 1e3 for t in totals]
                backward = [t[1] * 1e3 for t in totals]
                print(
                    f"  {name:18s} forward ms {' '.join(f'{v:6.2f}' for v in forward)} (max/min {max(forward) / min(forward):.2f})"
                    f"  backward ms {' '.join(f'{v:6.2f}' for v in backward)} (max/min {max(backward) / min(backward):.2f})  {totals[-1][2]:.1f} s each"
                )
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
