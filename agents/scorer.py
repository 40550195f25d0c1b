"""`MoveScorer`: the improvement policy's network (PyG encoder, (unit, device) pair scorer, stop, value).

Input: the padded observation of ``rlplace.envs.improve_env`` as a dict of tensors with a batch
dimension B (N node slots, D device slots, E edge slots); ``counts`` says how many of each are
real. Output: ``logits`` (B, N * D + 1), row-major by unit then device, the stop logit last,
and ``value`` (B,).

Encoder: a linear embedding of the node features, then ``layers`` message-passing layers of
``torch_geometric.nn`` with edge features (``conv``: ``gine`` = ``GINEConv`` (default),
``gatv2`` = ``GATv2Conv``, ``transformer`` = ``TransformerConv``), each with a residual and
ReLU. Edges run both ways (a direction flag is appended to the edge features). The graph
embedding is the mean of the real nodes' embeddings with the global features.

Pair scorer: one MLP over [unit embedding, graph embedding, device embedding, pair features]
for every (unit, device) slot, so the same weights serve any number of devices. Padding slots
get a large negative logit. Stop and value heads read the graph embedding.

torch and torch_geometric are imported by this module: import it only when a policy is used
(``from rlplace.agents.scorer import MoveScorer``); ``benchmarks/bench_policy.py`` reports the cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from rlplace.envs.improve_state import DEVICE_FEATURES, EDGE_FEATURES, GLOBAL_FEATURES, NODE_FEATURES, PAIR_FEATURES, Observation
from rlplace.errors import RlplaceError

CONVS = ("gine", "gatv2", "transformer")
#: Logit of padding slots (masked moves are removed by the mask, not by this).
PAD_LOGIT = -1e4


@dataclass(frozen=True)
class ScorerConfig:
    """Sizes of the `MoveScorer`.

    Attributes:
        hidden: embedding width.
        layers: message-passing layers.
        conv: ``gine``, ``gatv2`` or ``transformer``.
        scorer_hidden: hidden width of the pair MLP.
    """

    hidden: int = 64
    layers: int = 3
    conv: str = "gine"
    scorer_hidden: int = 64

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _conv(kind: str, hidden: int) -> nn.Module:
    from torch_geometric.nn import GATv2Conv, GINEConv, TransformerConv

    edge_dim = EDGE_FEATURES + 1
    if kind == "gine":
        return GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), edge_dim=edge_dim, train_eps=True)
    if kind == "gatv2":
        return GATv2Conv(hidden, hidden, heads=1, edge_dim=edge_dim, add_self_loops=False)
    if kind == "transformer":
        return TransformerConv(hidden, hidden, heads=1, edge_dim=edge_dim)
    raise RlplaceError(f"unknown conv {kind!r}; use one of {', '.join(CONVS)}")


class MoveScorer(nn.Module):
    """The network (module docstring)."""

    def __init__(self, config: ScorerConfig | None = None) -> None:
        super().__init__()
        self.config = config or ScorerConfig()
        h, s = self.config.hidden, self.config.scorer_hidden
        self.embed = nn.Sequential(nn.Linear(NODE_FEATURES, h), nn.ReLU(), nn.Linear(h, h))
        self.convs = nn.ModuleList(_conv(self.config.conv, h) for _ in range(self.config.layers))
        self.graph_mlp = nn.Sequential(nn.Linear(h + GLOBAL_FEATURES, h), nn.ReLU(), nn.Linear(h, h))
        self.device_mlp = nn.Sequential(nn.Linear(DEVICE_FEATURES + GLOBAL_FEATURES, h), nn.ReLU(), nn.Linear(h, h))
        self.pair_mlp = nn.Sequential(nn.Linear(3 * h + PAIR_FEATURES, s), nn.ReLU(), nn.Linear(s, s), nn.ReLU(), nn.Linear(s, 1))
        self.stop_head = nn.Sequential(nn.Linear(h, s), nn.ReLU(), nn.Linear(s, 1))
        self.value_head = nn.Sequential(nn.Linear(h, s), nn.ReLU(), nn.Linear(s, 1))

    def message_passing(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """The encoder's residual layers: (V, H) embedded nodes, (2, E) edges, (E, F + 1) edge
        features (both directions, `_both_directions`) -> (V, H)."""
        for conv in self.convs:
            x = torch.relu(x + conv(x, edge_index, edge_attr))
        return x

    def forward(self, obs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(logits (B, N * D + 1), value (B,)) for a batch of padded observations."""
        nodes = obs["nodes"].float()
        b, n, _ = nodes.shape
        d = obs["devices"].shape[1]
        counts = obs["counts"].long()
        node_valid = torch.arange(n, device=nodes.device)[None, :] < counts[:, 0:1]  # (B, N)
        device_valid = torch.arange(d, device=nodes.device)[None, :] < counts[:, 1:2]  # (B, D)

        x = self.embed(nodes).reshape(b * n, -1)
        edge_index, edge_attr = _flat_edges(obs["edge_index"].long(), obs["edge_attr"].float(), counts[:, 2], n)
        x = self.message_passing(x, edge_index, edge_attr)
        x = x.reshape(b, n, -1) * node_valid[..., None]
        pooled = x.sum(dim=1) / counts[:, 0:1].clamp(min=1).float()
        globals_ = obs["globals"].float()
        graph = self.graph_mlp(torch.cat([pooled, globals_], dim=1))  # (B, H)
        devices = self.device_mlp(torch.cat([obs["devices"].float(), globals_[:, None, :].expand(b, d, -1)], dim=2))  # (B, D, H)
        pair_in = torch.cat(
            [
                x[:, :, None, :].expand(b, n, d, -1),
                graph[:, None, None, :].expand(b, n, d, -1),
                devices[:, None, :, :].expand(b, n, d, -1),
                obs["pairs"].float(),
            ],
            dim=3,
        )
        pair_logits = self.pair_mlp(pair_in).squeeze(-1)  # (B, N, D)
        valid = node_valid[:, :, None] & device_valid[:, None, :]
        pair_logits = torch.where(valid, pair_logits, torch.full_like(pair_logits, PAD_LOGIT))
        logits = torch.cat([pair_logits.reshape(b, n * d), self.stop_head(graph)], dim=1)
        return logits, self.value_head(graph).squeeze(-1)


def _flat_edges(edge_index: Tensor, edge_attr: Tensor, num_edges: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Padded (B, 2, E) / (B, E, F) edges -> one graph of B * n nodes, both directions, (2, 2e) / (2e, F + 1)."""
    b, _, e = edge_index.shape
    keep = (torch.arange(e, device=edge_index.device)[None, :] < num_edges[:, None]).reshape(-1)  # (B*E,)
    offset = (torch.arange(b, device=edge_index.device) * n)[:, None]
    src = (edge_index[:, 0, :] + offset).reshape(-1)[keep]
    dst = (edge_index[:, 1, :] + offset).reshape(-1)[keep]
    return _both_directions(src, dst, edge_attr.reshape(b * e, edge_attr.shape[-1])[keep])


def _both_directions(src: Tensor, dst: Tensor, attr: Tensor) -> tuple[Tensor, Tensor]:
    """(e,) / (e,) / (e, F) edges -> each edge both ways: (2, 2e) index, (2e, F + 1) features
    with a direction flag (1 forward, 0 backward) appended."""
    forward = torch.cat([attr, torch.ones_like(attr[:, :1])], dim=1)
    backward = torch.cat([attr, torch.zeros_like(attr[:, :1])], dim=1)
    return torch.stack([torch.cat([src, dst]), torch.cat([dst, src])]), torch.cat([forward, backward])


def collate(observations: list, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Unpadded `rlplace.envs.improve_state.Observation` s -> a padded batch for `MoveScorer`,
    padded to the largest unit, device and edge counts of the batch (not the env's slots)."""
    b = len(observations)
    n = max(o.pairs.shape[0] for o in observations)
    d = max(o.pairs.shape[1] for o in observations)
    e = max(max(o.edge_index.shape[1] for o in observations), 1)
    nodes = np.zeros((b, n, NODE_FEATURES), np.float32)
    pairs = np.zeros((b, n, d, PAIR_FEATURES), np.float32)
    devices = np.zeros((b, d, DEVICE_FEATURES), np.float32)
    globals_ = np.zeros((b, GLOBAL_FEATURES), np.float32)
    edge_index = np.zeros((b, 2, e), np.int64)
    edge_attr = np.zeros((b, e, EDGE_FEATURES), np.float32)
    counts = np.zeros((b, 3), np.float32)
    for i, o in enumerate(observations):
        u, k = o.pairs.shape[:2]
        m = o.edge_index.shape[1]
        nodes[i, :u] = o.nodes
        pairs[i, :u, :k] = o.pairs
        devices[i, :k] = o.devices
        globals_[i] = o.globals
        edge_index[i, :, :m] = o.edge_index
        edge_attr[i, :m] = o.edge_attr
        counts[i] = (u, k, m)
    arrays = {"nodes": nodes, "pairs": pairs, "devices": devices, "globals": globals_, "edge_index": edge_index, "edge_attr": edge_attr, "counts": counts}
    return {key: torch.from_numpy(value).to(device) for key, value in arrays.items()}


def move_scores(scorer: MoveScorer, observation: Observation) -> np.ndarray:
    """(u, k) float64 pair logits of one unpadded observation (higher = try first).

    The same numbers as ``scorer(collate([observation]))``'s pair logits (to float rounding),
    computed the way a search needs them: no padding, no stop or value head, and the pair
    MLP's first layer split by its input blocks, so the (u, k, 3H + P) concatenation is never
    built: W [x_u, g, d_k, p_uk] = W_x x_u + W_g g + W_d d_k + W_p p_uk. This is the policy's
    hot path in `rlplace.agents.guided_search` (a ranking per few moves).
    """
    h = scorer.config.hidden
    with torch.inference_mode():
        nodes = torch.from_numpy(np.ascontiguousarray(observation.nodes, dtype=np.float32))
        x = scorer.embed(nodes)  # (u, H)
        src, dst = torch.from_numpy(np.ascontiguousarray(observation.edge_index, dtype=np.int64))
        attr = torch.from_numpy(np.ascontiguousarray(observation.edge_attr, dtype=np.float32).reshape(-1, EDGE_FEATURES))
        edge_index, edge_attr = _both_directions(src, dst, attr)
        x = scorer.message_passing(x, edge_index, edge_attr)
        globals_ = torch.from_numpy(np.ascontiguousarray(observation.globals, dtype=np.float32))
        graph = scorer.graph_mlp(torch.cat([x.mean(dim=0), globals_]))  # (H,)
        device_in = torch.from_numpy(np.ascontiguousarray(observation.devices, dtype=np.float32))
        devices = scorer.device_mlp(torch.cat([device_in, globals_.expand(device_in.shape[0], -1)], dim=1))  # (k, H)
        first, rest = scorer.pair_mlp[0], scorer.pair_mlp[1:]
        w_unit, w_graph, w_device, w_pair = first.weight.split([h, h, h, PAIR_FEATURES], dim=1)
        pairs = torch.from_numpy(np.ascontiguousarray(observation.pairs, dtype=np.float32))  # (u, k, P)
        hidden = pairs @ w_pair.T  # (u, k, S)
        hidden += (x @ w_unit.T)[:, None, :]
        hidden += (devices @ w_device.T)[None, :, :]
        hidden += graph @ w_graph.T + first.bias
        logits = rest(hidden).squeeze(-1)  # (u, k)
    return logits.double().numpy()
