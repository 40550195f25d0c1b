"""Labelled states from the distribution the deployed search visits.

`rlplace.agents.expert.collect_states` labels states along short descents from the classic
starts: early states, where half the moves the scorer ranks first improve. The deployed
pipeline (`rlplace.policy_method`) spends its time elsewhere: after local-search's own run,
in the guided search's descents from kicked local optima, where improving moves are rare
(a random move improves about one time in ten). `collect_search_states` runs that pipeline
(the fast baselines' starts and METIS restarts, then
`rlplace.agents.guided_search.search_from_starts`, the deployed pipeline's own block phase, local-search run and guided search with the scorer's
ranking, under a simulation budget so it repeats exactly) and labels a random sample of the
states the guided search observed, exactly as `collect_states` labels its own (every legal
neighbour simulated, up to ``max_moves``). Training on them is expert iteration on the
search's own state distribution (DAgger with the search as the roll-out).
"""

from __future__ import annotations

import numpy as np

from rlplace.envs.improve_state import MoveProblem, Observation

from .expert import Example, label, target_of
from .scorer import MoveScorer

#: Simulations of one search (local-search's share included) when states are collected.
DEFAULT_SEARCH_EVALUATIONS = 3000
#: States labelled per search, drawn at random among those it observed.
DEFAULT_STATES_PER_SEARCH = 10


def collect_search_states(
    problem: MoveProblem,
    scorer: MoveScorer,
    rng: np.random.Generator,
    *,
    evaluations: int = DEFAULT_SEARCH_EVALUATIONS,
    per_search: int = DEFAULT_STATES_PER_SEARCH,
    max_moves: int = 128,
    seed: int = 0,
) -> list[Example]:
    """Up to ``per_search`` labelled states of one policy-guided search of ``problem``
    (module docstring); [] when no fast baseline places the problem's graph."""
    from rlplace.baselines.local_search import START_METHODS, start_placements

    from .guided_search import BLOCK_SHARE, metis_restarts, scorer_ranker, search_from_starts

    found = start_placements(
        problem.graph, problem.cluster, problem.costs, objective=problem.objective, seed=seed, methods=START_METHODS,
        microbatches=problem.microbatches, schedule=problem.schedule,
    )
    if not found:
        return []
    seen: list[tuple[np.ndarray, Observation]] = []
    search_from_starts(
        problem, [problem.units.contract(p) for p in found.values()], scorer_ranker(scorer), evaluations=evaluations, seed=seed,
        block_share=BLOCK_SHARE, extra_starts=metis_restarts(problem, seed), on_observe=lambda assignment, observation: seen.append((assignment, observation)),
    )
    examples = []
    for index in rng.permutation(len(seen))[:per_search].tolist():
        assignment, observation = seen[index]
        gains = label(problem, assignment, observation, rng, max_moves)
        examples.append(Example(observation, gains, target_of(gains)))
    return examples
