"""Local search over the stage boundaries of a contiguous split (``local-search --stages``).

A contiguous split is held as a list of blocks (`rlplace.baselines.dp.contract_blocks`: ops a
contiguous split keeps whole) in stage order, each stage's blocks in block order, plus the
cut positions between stages; stage j runs on ``devices[j]``. Listing blocks this way is a
topological order of the forward block graph (edges never go to an earlier stage, and block
numbers are topological), so any cut of the list is again a contiguous split with the same
device order. Moves shift one cut by +-1, +-2, +-4, ... blocks with every stage keeping at
least one block; the first move that scores better is taken (first improvement, seeded random
order) until a whole round brings nothing or the simulations run out. The best split seen is
returned, so the result is never worse than the start under the simulator's objective.
"""

from __future__ import annotations

import numpy as np

from rlplace.costs import CostTable
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph
from rlplace.rules import key_better

Score = tuple[float, float]


def search_boundaries(
    graph: OpGraph,
    costs: CostTable,
    simulator,
    *,
    start: np.ndarray,
    evaluations: int,
    seed: int,
) -> np.ndarray:
    """(n,) device per op: the best contiguous split found from ``start``, an (n,) contiguous
    split; ``simulator`` scores candidates (`rlplace.simulate.Simulator.score`)."""
    from rlplace.baselines import dp

    start = np.asarray(start, dtype=np.int64)
    devices = dp.stage_order(graph, start)
    if devices is None:
        raise RlplaceError(f"local-search --stages: the start placement of graph {graph.name!r} is not a contiguous split")
    blocks = dp.contract_blocks(graph, costs)
    block_device = np.full(blocks.num_blocks, -1, dtype=np.int64)
    block_device[blocks.of_op] = start
    if np.any(block_device[blocks.of_op] != start):
        raise RlplaceError(f"local-search --stages: the start placement of graph {graph.name!r} splits a colocation class or a forward/backward pair")
    rank = {d: j for j, d in enumerate(devices)}
    stage_of_block = np.array([rank[int(d)] for d in block_device], dtype=np.int64)
    sequence = np.lexsort((np.arange(blocks.num_blocks), stage_of_block))
    cuts = np.searchsorted(stage_of_block[sequence], np.arange(1, len(devices)), side="left").astype(np.int64)
    device_array = np.asarray(devices, dtype=np.int64)

    def expand(cut: np.ndarray) -> np.ndarray:
        stage_in_sequence = np.searchsorted(cut, np.arange(blocks.num_blocks), side="right")
        per_block = np.empty(blocks.num_blocks, dtype=np.int64)
        per_block[sequence] = device_array[stage_in_sequence]
        return per_block[blocks.of_op]

    left = max(1, int(evaluations))

    def score(cut: np.ndarray) -> Score:
        nonlocal left
        left -= 1
        step, overflow = simulator.score(expand(cut))
        return float(overflow), float(step)

    rng = np.random.default_rng(seed)
    best, best_key = cuts.copy(), score(cuts)
    steps = [s * d for d in (1, 2, 4, 8, 16, 32) for s in (1, -1)]
    while left > 0 and cuts.size:
        improved = False
        moves = [(j, step) for j in range(cuts.size) for step in steps]
        for index in rng.permutation(len(moves)).tolist():
            if left <= 0:
                break
            j, step = moves[index]
            trial = best.copy()
            trial[j] += step
            low = trial[j - 1] + 1 if j > 0 else 1
            high = trial[j + 1] - 1 if j + 1 < trial.size else blocks.num_blocks - 1
            if not low <= trial[j] <= high:
                continue
            key = score(trial)
            if key_better(key, best_key):
                best, best_key, improved = trial, key, True
                break
        if not improved:
            break
    return expand(best)

