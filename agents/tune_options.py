"""The options of ``rlplace tune`` (and of ``train_agent.py --reward measured``); argparse only.

`rlplace.cli` adds them to its ``tune`` subcommand beside the model options every subcommand
has; `rlplace.agents.tune.train_with_reward` builds the same command line for the training
script. Importing this module imports nothing heavy (the CLI's parser must stay light).
"""

from __future__ import annotations

import argparse


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``rlplace tune`` option except MODEL, the shared model options and ``--keep-awake``."""
    parser.add_argument("--cluster", metavar="C", help="cluster the ranks stand for and the simulator predicts (default: 2 local CPU ranks)")
    parser.add_argument("--profile", metavar="FILE", help="calibration profile written by `rlplace calibrate`")
    parser.add_argument("--backend", choices=("gloo", "nccl"), default="gloo", help="gloo (CPU ranks) or nccl (GPU ranks)")
    parser.add_argument("--budget", type=int, default=12, metavar="N", help="distinct placements measured at most (default 12)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S", help="seconds before one hung measurement is killed (default 120)")
    parser.add_argument("--total-timeout", type=float, default=900.0, metavar="S", help="seconds for the whole run; nothing new is measured after it (default 900)")
    parser.add_argument("--candidates", type=int, default=3, metavar="K", help="the policy's best simulated placements measured first (default 3)")
    parser.add_argument("--evaluations", type=int, default=600, metavar="N", help="simulations of each policy-guided search (default 600)")
    parser.add_argument("--ppo-steps", type=int, default=256, metavar="N", help="MaskablePPO env steps at most (default 256; 0: no fine-tuning)")
    parser.add_argument("--confirm-rounds", type=int, default=3, metavar="R", help="re-measure the winner beside the simulator's best, R interleaved rounds (default 3; 0: off)")
    parser.add_argument("--checkpoint", metavar="DIR", help="policy to start from (default checkpoints/default or $RLPLACE_CHECKPOINT)")
    parser.add_argument("--out", default="tuned", metavar="DIR", help="folder for the tuned checkpoint and placement.json (default ./tuned)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps per measurement (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model, the searches and PPO")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
