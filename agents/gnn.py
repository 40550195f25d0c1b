"""The graph encoder: GINE message passing over the env's padded group graph.

Batching choice (measured, see ``benchmarks/bench_policy.py``): the env's observations are
padded dense arrays, so a batch of B observations becomes one disjoint-union graph by adding
``b * max_nodes`` to the edge indices of observation b and dropping padded edges with the
edge mask; padded nodes stay in the flat node tensor as isolated nodes (they cost a row of
compute each and keep every reshape free). No Python loop over graphs, no
``Batch.from_data_list``.

Layer choice: `GineLayer` is PyTorch Geometric's ``GINEConv`` with ``aggr="mean"`` written
with ``index_add_``, with the same parameter names (``nn``, ``lin``, ``eps``; the tests load
its state into ``torch_geometric.nn.GINEConv`` and compare outputs). The reason: importing
``torch_geometric`` costs 5-10 s per process on this machine (it pulls in its datasets, LLM
and dynamo modules), five to ten times the one-second decision budget of ``rlplace place``;
the layer itself is a dozen lines. Messages run along both edge directions (data flows
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
        inverse_degree: (B * N,) float, 1 / incoming messages (0 for isolated nodes).
    """

    node_inputs: Tensor
    node_mask: Tensor
    src: Tensor
    dst: Tensor
    edge_attr: Tensor
    inverse_degree: Tensor

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
    degree = torch.zeros(batch * num_nodes, dtype=node_inputs.dtype, device=node_inputs.device)
    degree.index_add_(0, dst, torch.ones_like(dst, dtype=node_inputs.dtype))
    inverse_degree = torch.where(degree > 0, 1.0 / degree.clamp(min=1.0), torch.zeros_like(degree))
    return GraphBatch(node_inputs, obs["node_mask"].reshape(batch, num_nodes) > 0.5, src, dst, edge_attr, inverse_degree)


class GineLayer(nn.Module):
    """``x_i' = nn((1 + eps) x_i + mean_{j -> i} ReLU(x_j + lin(e_ji)))`` (GINE, mean aggregation).

    Shapes:
        x: (V, H); src, dst: (M,) int64; edge_attr: (M, Fe); inverse_degree: (V,) -> (V, H).
    """

    def __init__(self, hidden: int, edge_dim: int) -> None:
        super().__init__()
        self.nn = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.lin = nn.Linear(edge_dim, hidden)
        self.eps = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, edge_attr: Tensor, inverse_degree: Tensor) -> Tensor:
        messages = torch.relu(x[src] + self.lin(edge_attr))
        aggregated = torch.zeros_like(x).index_add_(0, dst, messages) * inverse_degree.unsqueeze(-1)
        return self.nn((1 + self.eps) * x + aggregated)


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
        self.convs = nn.ModuleList(GineLayer(hidden, edge_dim + 2) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))
        self.pool = nn.Sequential(nn.Linear(2 * hidden + global_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())

    def forward(self, graph: GraphBatch, global_features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.input(graph.node_inputs)
        for conv, norm in zip(self.convs, self.norms, strict=True):
            h = norm(h + torch.relu(conv(h, graph.src, graph.dst, graph.edge_attr, graph.inverse_degree)))
        nodes = h.view(graph.batch_size, graph.max_nodes, -1)
        mask = graph.node_mask.unsqueeze(-1).to(nodes.dtype)
        count = mask.sum(dim=1).clamp(min=1.0)
        mean = (nodes * mask).sum(dim=1) / count
        maximum = nodes.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        maximum = torch.where(torch.isfinite(maximum), maximum, torch.zeros_like(maximum))
        graph_embedding = self.pool(torch.cat([mean, maximum, global_features.float()], dim=-1))
        return nodes, graph_embedding
