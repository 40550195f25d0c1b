"""Training of the improvement policy: expert iteration, then MaskablePPO fine-tuning; resumable.

Phase 1 (expert iteration, `rlplace.agents.expert`): for ``rounds`` rounds, draw training cases
(`rlplace.agents.improve_data`), visit states along descent trajectories from the classic
starts (round 0: the simulated best move; later rounds: the scorer's top move) and kicks,
label every state with the simulated gains of its one-move neighbours, and fit the scorer by
cross-entropy on all examples so far.

Phase 2 (PPO): ``MaskablePPO`` with `ImproveMaskablePolicy` on `ImproveEnv` over training
cases, starting from the phase-1 weights, for ``ppo_timesteps`` steps or ``ppo_time_s``.

Everything is written under ``work_dir`` as it goes, so a killed run resumes where it stopped
(at most the case being labelled or the PPO steps since the last SB3 checkpoint are redone):
``state.json`` (phase, round, cases done, curves), ``examples.npz`` (labelled states, numeric
arrays only), ``scorer/`` (safetensors checkpoint after every round), ``ppo/`` (SB3
``CheckpointCallback`` zips). The final policy goes to ``out`` (safetensors + JSON).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from rlplace.errors import RlplaceError


@dataclass
class TrainConfig:
    """Settings of one training run (``train_agent.py`` makes one option of each).

    Attributes:
        out: checkpoint folder written at the end (safetensors + JSON).
        work_dir: folder of the resumable run state (examples, weights, PPO checkpoints).
        seed: seed of case order, search and torch.
        rounds: expert-iteration rounds.
        cases_per_round: training cases labelled per round.
        depth: moves per descent trajectory.
        perturbations: kicks of the best placement per start, each followed by a descent.
        max_moves: one-move neighbours simulated per state (all when fewer).
        epochs: cross-entropy epochs over all examples after each round.
        batch_size: examples per gradient step.
        learning_rate: Adam learning rate (both phases).
        hidden: embedding width of the scorer.
        layers: message-passing layers of the scorer.
        conv: graph layer: gine, gatv2 or transformer.
        expert_time_s: wall-clock limit of phase 1 in seconds (0: none).
        ppo_timesteps: PPO env steps after the warm start (0: no PPO).
        ppo_time_s: wall-clock limit of phase 2 in seconds (0: none).
        ppo_cases: training cases the PPO env draws from.
        n_steps: PPO rollout length.
        max_moves_per_episode: moves per PPO episode.
        checkpoint_every: PPO steps between SB3 checkpoints.
        eval_every: PPO steps between held-out evaluations.
        max_units: largest number of colocation units of a training case (coarsened above).
        tensorboard: TensorBoard log folder for PPO ('' for none).
        init_checkpoint: start from this checkpoint's weights ('' for fresh ones) when the work
            folder has none yet; every round then follows the scorer's own moves.
        zoo: also train on the small zoo models of improve_data.TRAIN_ZOO (captured once, cached).
        generated_clusters: also train on this many generated clusters (improve_data.generated_cluster: 2-16 devices, one or two hosts, one or two kinds).
        objectives: label only cases under these objectives (comma-separated: latency, pipelined, throughput; '' for all).
        states: where labelled states come from: descent (short descents from the classic starts and kicks, expert.collect_states) or search (states the deployed policy-guided search observes, search_states.collect_search_states).
        search_evaluations: simulations of one search when states is search.
        states_per_search: states labelled per search when states is search.
        families: model set trained on: base (improve_data.TRAIN_MODELS, plus TRAIN_ZOO with zoo) or wide (also TRAIN_ZOO and improve_data.WIDE_MODELS: more synthetic seeds and shapes, four more zoo models).
    """

    out: str = "checkpoints/default"
    work_dir: str = "runs/improve"
    seed: int = 0
    rounds: int = 3
    cases_per_round: int = 24
    depth: int = 8
    perturbations: int = 1
    max_moves: int = 128
    epochs: int = 8
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden: int = 64
    layers: int = 3
    conv: str = "gine"
    expert_time_s: float = 0.0
    ppo_timesteps: int = 0
    ppo_time_s: float = 0.0
    ppo_cases: int = 8
    n_steps: int = 64
    max_moves_per_episode: int = 16
    checkpoint_every: int = 256
    eval_every: int = 256
    max_units: int = 128
    tensorboard: str = ""
    init_checkpoint: str = ""
    zoo: bool = False
    generated_clusters: int = 0
    objectives: str = ""
    states: str = "descent"
    search_evaluations: int = 3000
    states_per_search: int = 10
    families: str = "base"


def field_help() -> dict[str, str]:
    """TrainConfig field name -> its description from the class docstring's Attributes section."""
    text = TrainConfig.__doc__ or ""
    lines = text.split("Attributes:", 1)[1].splitlines() if "Attributes:" in text else []
    helps: dict[str, str] = {}
    current = None
    for line in lines:
        stripped = line.strip()
        if ":" in stripped and stripped.split(":", 1)[0].isidentifier() and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current, description = stripped.split(":", 1)
            helps[current] = description.strip()
        elif current and stripped:
            helps[current] += " " + stripped
    return helps


# ------------------------------------------------------------------------- state
def save_examples(path: Path, examples: list[Any]) -> None:
    """Write labelled `Example` s to one ``.npz`` (numeric arrays only, replaced atomically)."""
    arrays: dict[str, np.ndarray] = {}
    for i, example in enumerate(examples):
        o = example.observation
        for name in ("nodes", "pairs", "devices", "globals", "edge_index", "edge_attr", "legal"):
            arrays[f"{i}/{name}"] = getattr(o, name)
        arrays[f"{i}/scalars"] = np.array([o.step_time, o.overflow])
        arrays[f"{i}/gains"] = example.gains
        arrays[f"{i}/target"] = example.target
    temporary = path.with_suffix(".tmp.npz")
    np.savez_compressed(temporary, **arrays)
    temporary.replace(path)


def load_examples(path: Path) -> list[Any]:
    """The `Example` s `save_examples` wrote to ``path`` ([] when there is no file); never unpickles."""
    from rlplace.envs.improve_state import Observation, finite_features

    from .expert import Example

    if not path.is_file():
        return []
    data = np.load(path, allow_pickle=False)
    count = len({key.split("/")[0] for key in data.files})
    examples = []
    for i in range(count):
        scalars = data[f"{i}/scalars"]
        observation = Observation(
            nodes=finite_features(data[f"{i}/nodes"]), pairs=finite_features(data[f"{i}/pairs"]), devices=finite_features(data[f"{i}/devices"]),
            globals=finite_features(data[f"{i}/globals"]), edge_index=data[f"{i}/edge_index"], edge_attr=finite_features(data[f"{i}/edge_attr"]), legal=data[f"{i}/legal"],
            step_time=float(scalars[0]), overflow=float(scalars[1]),
        )
        examples.append(Example(observation, data[f"{i}/gains"], data[f"{i}/target"]))
    return examples


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from rlplace.io import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def split_description(zoo: bool = False, generated_clusters: int = 0, families: str = "base") -> dict[str, Any]:
    """The training and held-out specs recorded in the checkpoint."""
    from . import improve_data as d

    return {
        "trained_on": {"models": list(d.train_models(zoo, families)) + [f"dnn-partitioning:{s}" for s in d.TRAIN_DNN], "clusters": list(d.training_clusters(generated_clusters)), "memory_bound_variants": True},
        "heldout": {"models": list(d.HELDOUT_MODELS) + [f"dnn-partitioning:{s}" for s in d.HELDOUT_DNN], "clusters": list(d.HELDOUT_CLUSTERS)},
        "objectives": [f"{o}" + (f"(M={m})" if o == "pipelined" else "") for o, m in d.OBJECTIVE_SETTINGS],
    }


def with_objectives(specs: list[Any], objectives: str) -> list[Any]:
    """The case specs (`rlplace.agents.improve_data.CaseSpec`) under the comma-separated
    ``objectives`` ('' keeps all); an unknown name raises `RlplaceError`."""
    if not objectives:
        return specs
    from rlplace.objectives import OBJECTIVES

    wanted = {name.strip() for name in objectives.split(",")}
    unknown = wanted - set(OBJECTIVES)
    if unknown:
        raise RlplaceError(f"--objectives: unknown objective(s) {', '.join(sorted(unknown))}; use any of {', '.join(OBJECTIVES)}")
    return [spec for spec in specs if spec[2] in wanted]


# -------------------------------------------------------------------------- train
#: Classic methods whose placements start the descents of `expert.collect_states`.
TRAINING_STARTS = ("m-topo", "m-etf", "heft", "single")


def training_specs(config: TrainConfig) -> list[Any]:
    """The case specs training under ``config`` draws from: the synthetic models (and the zoo
    with ``config.zoo``; the wide set with ``config.families``), the dnn-partitioning graphs,
    the training clusters (and ``config.generated_clusters`` generated ones), limited to
    ``config.objectives``."""
    from . import improve_data as data

    specs = data.case_specs(data.train_models(config.zoo, config.families), data.TRAIN_DNN, data.training_clusters(config.generated_clusters))
    return with_objectives(specs, config.objectives)


def label_case(case: Any, config: TrainConfig, scorer: Any, rng: np.random.Generator, *, search_seed: int, follow_scorer: bool = True, log: Any = print) -> list[Any]:
    """The labelled states (`expert.Example`) of one training case under ``config.states``:
    descents from the `TRAINING_STARTS` placements (following ``scorer``'s moves when
    ``follow_scorer``), or a sample of the states of one policy-guided search (seeded
    ``search_seed``); [] (logged) when the case has no move problem or no classic start."""
    from rlplace.envs.improve_env import classic_starts
    from rlplace.envs.improve_state import build_move_problem

    from .expert import collect_states
    from .search_states import collect_search_states

    try:
        problem = build_move_problem(case.graph, case.cluster, case.costs, objective=case.objective, microbatches=case.microbatches)
        starts = classic_starts(problem, TRAINING_STARTS)  # also under states=search: the same cases are skipped
    except RlplaceError as error:
        log(f"skip {case.label}: {error}")
        return []
    if not starts:
        return []
    if config.states == "search":
        return collect_search_states(
            problem, scorer, rng, evaluations=config.search_evaluations, per_search=config.states_per_search, max_moves=config.max_moves, seed=search_seed,
        )
    return collect_states(
        problem, starts, rng, depth=config.depth, perturbations=config.perturbations, max_moves=config.max_moves, scorer=scorer if follow_scorer else None,
    )


def train(config: TrainConfig, *, log: Any = print) -> Path:
    """Run (or resume) both phases and write ``config.out``; returns the checkpoint folder."""
    import torch

    from . import improve_data as data
    from .expert import fit
    from .improve_checkpoint import load_scorer, save_scorer
    from .scorer import MoveScorer, ScorerConfig

    if config.conv not in ("gine", "gatv2", "transformer"):
        raise RlplaceError(f"conv must be gine, gatv2 or transformer, not {config.conv!r}")
    if config.states not in ("descent", "search"):
        raise RlplaceError(f"states must be descent or search, not {config.states!r}")
    data.train_models(config.zoo, config.families)  # an unknown family set fails before any work
    torch.set_num_threads(1)
    torch.manual_seed(config.seed)
    work = Path(config.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {"round": 0, "cases_done": 0, "curve": [], "fit_log": [], "expert_s": 0.0, "config": asdict(config)}
    if state["config"] != asdict(config):
        changed = sorted(k for k in asdict(config) if state["config"].get(k) != asdict(config)[k])
        log(f"resuming {work} with changed settings: {', '.join(changed)}")
    examples = load_examples(work / "examples.npz")
    if (work / "scorer" / "config.json").is_file():
        scorer, _ = load_scorer(work / "scorer")
        log(f"resumed at round {state['round']}, {state['cases_done']} cases done, {len(examples)} examples")
    elif config.init_checkpoint:
        scorer, _ = load_scorer(config.init_checkpoint)
        log(f"starting from the weights of {config.init_checkpoint}")
    else:
        scorer = MoveScorer(ScorerConfig(hidden=config.hidden, layers=config.layers, conv=config.conv))
    follow_scorer_from = 0 if config.init_checkpoint else 1
    specs = training_specs(config)
    began = time.perf_counter() - float(state["expert_s"])

    def expert_time_left() -> bool:
        return config.expert_time_s <= 0 or time.perf_counter() - began < config.expert_time_s

    while state["round"] < config.rounds and expert_time_left():
        round_index = int(state["round"])
        case_rng = np.random.default_rng([config.seed, round_index])
        chosen = case_rng.choice(len(specs), size=min(config.cases_per_round, len(specs)), replace=False)
        for position in range(int(state["cases_done"]), chosen.size):
            if not expert_time_left():
                break
            case = data.build_case(specs[int(chosen[position])], max_nodes=config.max_units)
            examples.extend(label_case(
                case, config, scorer, np.random.default_rng([config.seed, round_index, position]),
                search_seed=config.seed * 100_000 + round_index * 1000 + position, follow_scorer=round_index >= follow_scorer_from, log=log,
            ))
            state["cases_done"] = position + 1
            state["expert_s"] = time.perf_counter() - began
            save_examples(work / "examples.npz", examples)
            _write_json(state_path, state)
        if state["cases_done"] < chosen.size:
            break
        fit_log: list[dict[str, float]] = []
        fit(scorer, examples, epochs=config.epochs, batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed + round_index, log=fit_log)
        state["fit_log"].extend({"round": round_index, **row} for row in fit_log)
        state["curve"].append({"round": round_index, "examples": len(examples), "wall_s": time.perf_counter() - began, **fit_log[-1]})
        log(f"round {round_index}: {len(examples)} examples, loss {fit_log[-1]['loss']:.3f}, top-1 improving {fit_log[-1]['top1_improving']:.2f}, {time.perf_counter() - began:.0f} s")
        state["round"] = round_index + 1
        state["cases_done"] = 0
        state["expert_s"] = time.perf_counter() - began
        save_scorer(scorer, work / "scorer")
        _write_json(state_path, state)

    ppo_info: dict[str, Any] = {}
    if config.ppo_timesteps > 0:
        from .improve_ppo import fine_tune

        order = np.random.default_rng(config.seed).permutation(len(specs))
        cases = (data.build_case(specs[int(i)], max_nodes=config.max_units) for i in order)
        scorer, ppo_info = fine_tune(scorer, cases, config, work, log=log)
    meta = {
        **split_description(config.zoo, config.generated_clusters, config.families),
        "train_config": asdict(config),
        "training": {"expert_rounds": state["round"], "examples": len(examples), "expert_wall_s": state["expert_s"], "curve": state["curve"], "fit_log": state["fit_log"], "ppo": ppo_info},
    }
    return save_scorer(scorer, config.out, meta)


def config_from_options(options: dict[str, Any]) -> TrainConfig:
    """A `TrainConfig` from ``{field: value}`` (unknown names are a clear error)."""
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise RlplaceError(f"unknown training setting(s): {', '.join(unknown)}")
    return TrainConfig(**options)
