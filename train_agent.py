"""Train the GNN placement policy and write a checkpoint.

    python train_agent.py --timesteps 50000 --out checkpoints/mine
    python train_agent.py --models zoo:bert-base synthetic:layered:n=80 --clusters 4xV100-nvlink 2xA100+2xT4 \\
        --timesteps 20000 --out checkpoints/small --action-form sequential --seed 1

Without --models / --clusters it trains on the default split of ``rlplace.agents.data``.
Every setting of ``rlplace.agents.train.TrainConfig`` is printed at the start and stored in
the checkpoint's config.json.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from rlplace.errors import RlplaceError


def build_parser() -> argparse.ArgumentParser:
    from rlplace.agents.train import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description="Train the rlplace GNN placement policy with MaskablePPO.")
    parser.add_argument("--models", nargs="+", help="MODEL specs to train on (default: the built-in training split)")
    parser.add_argument("--clusters", nargs="+", help="cluster specs to train on (default: the built-in training split)")
    parser.add_argument("--heldout-models", nargs="+", help="MODEL specs to record as held out")
    parser.add_argument("--heldout-clusters", nargs="+", help="cluster specs to record as held out")
    parser.add_argument("--timesteps", type=int, default=defaults.timesteps, help="env steps to train for")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many wall-clock seconds")
    parser.add_argument("--out", default=defaults.out, help="checkpoint folder to write")
    parser.add_argument("--action-form", choices=("one-shot", "sequential"), default=defaults.action_form)
    parser.add_argument("--objective", choices=("latency", "pipelined", "throughput"), default=defaults.objective)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--max-nodes", type=int, default=defaults.max_nodes)
    parser.add_argument("--max-devices", type=int, default=defaults.max_devices)
    parser.add_argument("--n-envs", type=int, default=defaults.n_envs)
    parser.add_argument("--n-steps", type=int, default=defaults.n_steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--n-epochs", type=int, default=defaults.n_epochs)
    parser.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    parser.add_argument("--ent-coef", type=float, default=defaults.ent_coef)
    parser.add_argument("--imitation-epochs", type=int, default=defaults.imitation_epochs, help="imitation warm-start epochs before PPO (0: none)")
    parser.add_argument("--imitation-out", default=None, help="also write the imitation-only checkpoint here")
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--graph-cache", default=defaults.graph_cache, help="folder caching captured zoo graphs ('' for none)")
    parser.add_argument("--tensorboard", default=None, help="SB3 TensorBoard log folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rlplace.agents.train import TrainConfig, train

    overrides: dict[str, Any] = {
        "timesteps": args.timesteps,
        "time_limit_s": args.time_limit,
        "out": args.out,
        "action_form": args.action_form,
        "objective": args.objective,
        "seed": args.seed,
        "max_nodes": args.max_nodes,
        "max_devices": args.max_devices,
        "n_envs": args.n_envs,
        "n_steps": args.n_steps,
        "batch_size": args.batch_size,
        "n_epochs": args.n_epochs,
        "learning_rate": args.learning_rate,
        "ent_coef": args.ent_coef,
        "imitation_epochs": args.imitation_epochs,
        "imitation_out": args.imitation_out,
        "hidden": args.hidden,
        "layers": args.layers,
        "graph_cache": args.graph_cache or None,
        "tensorboard_dir": args.tensorboard,
    }
    for name in ("models", "clusters", "heldout_models", "heldout_clusters"):
        if getattr(args, name):
            overrides[name] = list(getattr(args, name))
    try:
        train(TrainConfig(**overrides), progress=lambda line: print(line, flush=True))
    except RlplaceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
