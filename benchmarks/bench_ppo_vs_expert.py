"""What PPO adds on top of expert iteration, at equal CPU time (issue 10, Build 3).

Both arms start from the same weights (``--init``, default ``checkpoints/default``) and spend
the same CPU seconds of training (``time.process_time`` of this process, torch on one
thread; evaluation time is not counted):

- ``expert``: more expert-iteration rounds (`rlplace.agents.expert.collect_states` following
  the scorer's own moves on training cases, then `fit` on every example so far), as
  ``train_agent.py --init-checkpoint`` runs them;
- ``ppo``: ``sb3_contrib.MaskablePPO`` on the ``improve`` env of training cases, with the
  settings `rlplace.agents.improve_ppo.fine_tune` uses.

Every ``--eval-every-s`` CPU seconds each arm's scorer is judged on a fixed set of labelled
states from the validation slice (``bench_policy.VALIDATION``: training families at unseen
seeds and sizes; never the held-out split), collected once with every evaluated neighbour
simulated: `rlplace.agents.expert.ranking_quality` (share of states where the top-ranked
move improves, where one of the top 4 does, and the share of the best gain the top 4 hold;
the exact expectation of a random order is printed beside them). No timing enters the metric, so the
curves do not move with the host's load.

Resumable: each arm writes its weights (safetensors + JSON) and its curve under
``--work-dir`` at every evaluation and continues from there when run again (PPO's optimizer
and rollout buffer start afresh on resume; expert iteration keeps its examples). The two arms
can run at once in two processes (``--arms expert`` and ``--arms ppo``); ``--report`` prints
the curves found in the work folder.

    python benchmarks/bench_ppo_vs_expert.py --cpu-s 900 --eval-every-s 150
    python benchmarks/bench_ppo_vs_expert.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

ARMS = ("expert", "ppo")
#: Expert-iteration settings of the shipped checkpoint's fine-tuning stage (checkpoints/README.md).
EXPERT_CASES_PER_ROUND = 4
EXPERT_EPOCHS = 6
EXPERT_LEARNING_RATE = 3e-4
#: Labelled validation states: descents of this depth from these starts, one kick each.
EVAL_STARTS = ("m-topo", "heft")
EVAL_DEPTH = 6


def evaluation_states(work: Path, quick: bool) -> list[Any]:
    """The fixed labelled validation states (collected once, then read from ``work``)."""
    from bench_policy import VALIDATION, validation_cases

    from rlplace.agents.expert import collect_states
    from rlplace.agents.improve_train import load_examples, save_examples
    from rlplace.envs.improve_env import classic_starts
    from rlplace.envs.improve_state import build_move_problem
    from rlplace.io import write_text_atomic

    path = work / "eval_states.npz"
    examples = load_examples(path)
    if examples:
        return examples
    from rlplace.agents.expert import ranking_quality

    for index, (_, case) in enumerate(validation_cases(quick, VALIDATION)):
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        starts = classic_starts(problem, EVAL_STARTS)
        examples.extend(collect_states(problem, starts, np.random.default_rng([7, index]), depth=EVAL_DEPTH, perturbations=1, max_moves=128))
    work.mkdir(parents=True, exist_ok=True)
    save_examples(path, examples)
    write_text_atomic(work / "random.json", json.dumps(ranking_quality(examples, None)) + "\n")
    return examples


def judge(scorer: Any, examples: list[Any]) -> dict[str, float]:
    """`ranking_quality` of ``scorer`` on ``examples``."""
    from rlplace.agents.expert import ranking_quality
    from rlplace.agents.scorer import move_scores

    scorer.eval()
    return ranking_quality(examples, lambda observation: move_scores(scorer, observation))


class ArmState:
    """One arm's resumable record: CPU seconds spent and the curve, in ``work/<arm>/``."""

    def __init__(self, work: Path, arm: str) -> None:
        self.folder = work / arm
        self.path = self.folder / "curve.json"
        data = json.loads(self.path.read_text()) if self.path.is_file() else {"cpu_s": 0.0, "curve": []}
        self.cpu_s: float = float(data["cpu_s"])
        self.curve: list[dict[str, float]] = list(data["curve"])
        self.extra: dict[str, Any] = dict(data.get("extra", {}))

    def weights(self) -> Path | None:
        folder = self.folder / "scorer"
        return folder if (folder / "config.json").is_file() else None

    def record(self, scorer: Any, quality: dict[str, float], **counts: float) -> None:
        """Append an evaluation point and save the weights and the curve (atomically)."""
        from rlplace.agents.improve_checkpoint import save_scorer
        from rlplace.io import write_text_atomic

        self.curve.append({"cpu_s": round(self.cpu_s, 1), **quality, **counts})
        save_scorer(scorer, self.folder / "scorer")
        write_text_atomic(self.path, json.dumps({"cpu_s": self.cpu_s, "curve": self.curve, "extra": self.extra}, indent=1) + "\n")


def training_config() -> Any:
    """The `TrainConfig` both arms use: its defaults, with the zoo models (the stage-2 case set)."""
    from rlplace.agents.improve_train import TrainConfig

    return TrainConfig(zoo=True)


def run_expert(state: ArmState, scorer: Any, eval_set: list[Any], cpu_s: float, eval_every_s: float, seed: int) -> None:
    """More expert-iteration rounds until ``cpu_s`` CPU seconds (module docstring)."""
    from rlplace.agents import improve_data as data
    from rlplace.agents.expert import fit
    from rlplace.agents.improve_train import label_case, load_examples, save_examples, training_specs

    config = training_config()
    specs = training_specs(config)
    examples = load_examples(state.folder / "examples.npz")
    round_index = int(state.extra.get("rounds", 0))
    next_eval = (len(state.curve)) * eval_every_s
    while state.cpu_s < cpu_s:
        began = time.process_time()
        rng = np.random.default_rng([seed, 100 + round_index])
        for position, spec_index in enumerate(rng.choice(len(specs), size=EXPERT_CASES_PER_ROUND, replace=False).tolist()):
            case = data.build_case(specs[spec_index], max_nodes=config.max_units)
            examples.extend(label_case(case, config, scorer, np.random.default_rng([seed, 100 + round_index, position]), search_seed=seed, log=lambda line: None))
        fit(scorer, examples, epochs=EXPERT_EPOCHS, learning_rate=EXPERT_LEARNING_RATE, seed=seed + round_index)
        round_index += 1
        state.cpu_s += time.process_time() - began
        state.extra["rounds"] = round_index
        state.extra["examples"] = len(examples)
        save_examples(state.folder / "examples.npz", examples)
        if state.cpu_s >= next_eval or state.cpu_s >= cpu_s:
            state.record(scorer, judge(scorer, eval_set), rounds=round_index, examples=len(examples))
            print(f"expert: {state.cpu_s:7.0f} CPU s  {state.curve[-1]}", flush=True)
            next_eval = state.cpu_s + eval_every_s


def run_ppo(state: ArmState, scorer: Any, eval_set: list[Any], cpu_s: float, eval_every_s: float, seed: int) -> None:
    """MaskablePPO until ``cpu_s`` CPU seconds (module docstring)."""
    import torch

    from rlplace.agents import improve_data as data
    from rlplace.agents.improve_ppo import new_ppo_model, ppo_env
    from rlplace.agents.improve_train import training_specs

    config = training_config()
    specs = training_specs(config)
    env = ppo_env((data.build_case(specs[i], max_nodes=config.max_units) for i in np.random.default_rng(seed).permutation(len(specs)).tolist()), config)
    env.reset(seed=seed + len(state.curve))
    model = new_ppo_model(env, scorer, config, seed=seed + len(state.curve))
    steps = int(state.extra.get("timesteps", 0))
    next_eval = len(state.curve) * eval_every_s
    torch.set_num_threads(1)
    while state.cpu_s < cpu_s:
        began = time.process_time()
        model.learn(4 * config.n_steps, reset_num_timesteps=False)
        steps += 4 * config.n_steps
        state.cpu_s += time.process_time() - began
        state.extra["timesteps"] = steps
        if state.cpu_s >= next_eval or state.cpu_s >= cpu_s:
            tuned = model.policy.scorer
            state.record(tuned, judge(tuned, eval_set), timesteps=steps)
            tuned.train()
            print(f"ppo:    {state.cpu_s:7.0f} CPU s  {state.curve[-1]}", flush=True)
            next_eval = state.cpu_s + eval_every_s


def report(work: Path) -> None:
    """Print each arm's curve: CPU seconds, top-1 improving share, captured gain share."""
    print("arm      CPU s  states  top-1 improving  top-4 improving  top-4 captured   (validation states; higher is better)")
    rows = []
    random_path = work / "random.json"
    if random_path.is_file():
        rows.append(("random", {"cpu_s": 0.0, **json.loads(random_path.read_text())}))
    for arm in ARMS:
        path = work / arm / "curve.json"
        if path.is_file():
            rows.extend((arm, point) for point in json.loads(path.read_text())["curve"])
    for arm, point in rows:
        print(f"{arm:7s} {point['cpu_s']:6.0f}  {point['states']:6.0f}  {point['top1_improving']:15.3f}  {point['topk_improving']:15.3f}  {point['topk_captured']:14.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated: expert, ppo")
    parser.add_argument("--cpu-s", type=float, default=900.0, help="CPU seconds of training per arm")
    parser.add_argument("--eval-every-s", type=float, default=150.0, help="CPU seconds between evaluations")
    parser.add_argument("--init", default="checkpoints/default", help="the weights both arms start from")
    parser.add_argument("--work-dir", default="runs/ppo-vs-expert")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a third of the validation cases, 60 CPU s, evaluation every 30 s")
    parser.add_argument("--report", action="store_true", help="only print the curves in --work-dir (with --quick: its quick run)")
    args = parser.parse_args(argv)
    work = Path(args.work_dir) / ("quick" if args.quick else "")
    if args.report:
        report(work)
        return 0
    import torch

    from rlplace.agents.improve_checkpoint import load_scorer

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    cpu_s, eval_every_s = (60.0, 30.0) if args.quick else (args.cpu_s, args.eval_every_s)
    eval_set = evaluation_states(work, args.quick)
    for arm in [a for a in args.arms.split(",") if a]:
        if arm not in ARMS:
            parser.error(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
        state = ArmState(work, arm)
        scorer, _ = load_scorer(state.weights() or args.init)
        if not state.curve:
            state.record(scorer, judge(scorer, eval_set))
            print(f"{arm}: start {state.curve[-1]}", flush=True)
        (run_expert if arm == "expert" else run_ppo)(state, scorer, eval_set, cpu_s, eval_every_s, args.seed)
    report(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
