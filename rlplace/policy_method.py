"""``policy``: the pretrained GNN policy (``rlplace.agents``) as a placement method.

The agents package (PyTorch, the env) is imported on the first call only, so the core keeps
its import cost. Options (keyword arguments of `place`, passed through by the CLI):

``checkpoint``  folder of a checkpoint written by ``train_agent.py`` (default:
                ``$RLPLACE_CHECKPOINT``, else ``checkpoints/default`` of the repository);
``samples``     K sampled placements scored besides the greedy one (default 16);
``search_evaluations``  simulations of the final local search (default 200; 0 turns it off).

The registry (`rlplace.methods`) hands it the same coarse graph, cost table, objective,
micro-batch count and seed as every other method. The returned placement goes through the
same exact memory check as every baseline (`rlplace.rules.finalize`). This module sits in the
methods layer (it imports the agents), not in the baselines package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlplace.cluster import Cluster
from rlplace.costs import CostTable
from rlplace.graph import OpGraph
from rlplace.placement import Placement
from rlplace.rules import finalize


def place(
    graph: OpGraph,
    cluster: Cluster,
    costs: CostTable,
    *,
    objective: str = "latency",
    seed: int = 0,
    microbatches: int = 1,
    checkpoint: str | Path | None = None,
    samples: int | None = None,
    search_evaluations: int | None = None,
    **_: Any,
) -> Placement:
    """Greedy + K samples + local search of the trained policy, scored by the simulator."""
    from rlplace.agents.infer import DEFAULT_SAMPLES, DEFAULT_SEARCH_EVALUATIONS, place_with_policy

    decision = place_with_policy(
        graph,
        cluster,
        checkpoint=checkpoint,
        objective=objective,
        microbatches=microbatches,
        samples=DEFAULT_SAMPLES if samples is None else samples,
        search_evaluations=DEFAULT_SEARCH_EVALUATIONS if search_evaluations is None else search_evaluations,
        seed=seed,
    )
    return finalize(graph, cluster, costs, decision.placement, objective=objective, method="policy", microbatches=microbatches)
