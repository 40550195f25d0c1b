"""The graph encoder: GINE message passing over the env's padded group graph.

Batching choice (measured, see ``benchmarks/bench_policy.py``): the env's observations are
padded dense arrays, so a batch of B observations becomes one disjoint-union graph by adding
``b * max_nodes`` to the edge indices of observation b and dropping padded edges with the
edge mask; padded nodes stay in the flat node tensor as isolated nodes (they cost a row of
compute each and keep every reshape free). No Python loop over graphs, no
``Batch.from_data_list``.

Layer: torch-geometric's ``GINEConv`` with ``aggr="mean"`` (imported when an encoder is
built; checkpoints of the earlier hand-written copy load unchanged, its parameter names were
PyG's: ``nn``, ``lin``, ``eps``). Messages run along both edge directions (data flows
forward, gradients and memory pressure backward), told apart by two extra edge features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class GraphBatch:
    """B padded observations as one flat graph.

    Shapes (B observations, N = max_nodes, M kept directed edges, both directions):
        node_inputs: (B * N, F) float, node features with the placement one-hot and the
            broadcast global features appended.
        node_mask: (B, N) bool, real groups.
        src, dst: (M,) int64 flat node ids of every message (padding dropped).
        edge_attr: (M, Fe + 2) float, edge features then a direction one-hot (forward, backward).
    """

    node_inputs: Tensor
    node_mask: Tensor
    src: Tensor
    dst: Tensor
    edge_attr: Tensor

    @property
    def edge_index(self) -> Tensor:
        """(2, M) int64 ``[src; dst]``, torch-geometric's layout."""
        return torch.stack([self.src, self.dst])

    @property
    def batch_size(self) -> int:
        return int(self.node_mask.shape[0])

    @property
    def max_nodes(self) -> int:
        return int(self.node_mask.shape[1])


def flatten_observation(obs: dict[str, Tensor], max_devices: int) -> GraphBatch:
    """Padded observation tensors (SB3 hands them over as float) -> `GraphBatch`.

    Shapes:
        obs["node_features"] (B, N, Fn), obs["node_device"] (B, N) (-1: not placed),
        obs["node_mask"] (B, N), obs["edge_index"] (B, 2, E), obs["edge_features"] (B, E, Fe),
        obs["edge_mask"] (B, E), obs["global_features"] (B, Fg).
    """
    node_features = obs["node_features"].float()
    batch, num_nodes, _ = node_features.shape
    node_device = obs["node_device"].round().long()
    placed_onehot = torch.zeros(batch, num_nodes, max_devices + 1, dtype=node_features.dtype, device=node_features.device)
    placed_onehot.scatter_(2, (node_device + 1).clamp(0, max_devices).unsqueeze(-1), 1.0)
    global_features = obs["global_features"].float().unsqueeze(1).expand(batch, num_nodes, -1)
    node_inputs = torch.cat([node_features, placed_onehot[..., 1:], global_features], dim=-1).reshape(batch * num_nodes, -1)

    edge_index = obs["edge_index"].round().long()  # (B, 2, E)
    num_edges = edge_index.shape[-1]
    offset = (torch.arange(batch, device=edge_index.device) * num_nodes).view(batch, 1, 1)
    flat = (edge_index + offset).permute(1, 0, 2).reshape(2, batch * num_edges)
    keep = obs["edge_mask"].reshape(-1) > 0.5
    forward_src, forward_dst = flat[0, keep], flat[1, keep]
    features = obs["edge_features"].float().reshape(batch * num_edges, -1)[keep]
    ones = torch.ones(features.shape[0], 1, dtype=features.dtype, device=features.device)
    zeros = torch.zeros_like(ones)
    src = torch.cat([forward_src, forward_dst])
    dst = torch.cat([forward_dst, forward_src])
    edge_attr = torch.cat([torch.cat([features, ones, zeros], dim=1), torch.cat([features, zeros, ones], dim=1)])
    return GraphBatch(node_inputs, obs["node_mask"].reshape(batch, num_nodes) > 0.5, src, dst, edge_attr)


class GraphEncoder(nn.Module):
    """Node and graph embeddings of a `GraphBatch`.

    ``h0 = ReLU(W [node features, placement one-hot, global features])``, then ``layers``
    residual GINE layers ``h <- LayerNorm(h + ReLU(GINE(h)))``; the graph embedding is an MLP
    of the masked mean and max of the node embeddings and the global features.

    Shapes:
        input: `GraphBatch` with node inputs (B * N, node_input_dim), global features (B, Fg)
        output: node embeddings (B, N, H), graph embedding (B, H)
    """

    def __init__(self, node_input_dim: int, edge_dim: int, global_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.input = nn.Sequential(nn.Linear(node_input_dim, hidden), nn.ReLU())
        from torch_geometric.nn import GINEConv

        self.convs = nn.ModuleList(
            GINEConv(nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden)), train_eps=True, edge_dim=edge_dim + 2, aggr="mean") for _ in range(layers)
        )
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.pool = nn.Sequential(nn.Linear(2 * hidden + global_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, graph: GraphBatch, global_features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.input(graph.node_inputs)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(h, graph.edge_index, graph.edge_attr)))
        nodes = h.view(graph.batch_size, graph.max_nodes, -1)
        mask = graph.node_mask.unsqueeze(-1).to(nodes.dtype)
        count = mask.sum(dim=1).clamp(min=1.0)
        mean = (nodes * mask).sum(dim=1) / count
        maximum = nodes.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        maximum = torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum))
        graph_embedding = self.pool(torch.cat([mean, maximum, global_features.float()], dim=-1))
        return nodes, graph_embedding
