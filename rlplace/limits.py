"""Every size limit on user input, named once; errors quote the name and the value.

Limits keep a bad or hostile input from costing unbounded memory or time: each is far above
what a real model or cluster needs and far below what would exhaust a workstation.
"""

from __future__ import annotations

from rlplace.errors import RlplaceError

#: Bytes read from any one input file (graph, placement, cluster YAML, profile, checkpoint config).
MAX_INPUT_BYTES = 256 * 1024**2
#: Ops of one graph.
MAX_OPS = 1_000_000
#: Edges of one graph.
MAX_EDGES = 4_000_000
#: Any one size (bytes), FLOP count or time of a graph: sums over a million ops stay finite.
MAX_QUANTITY = 1e30
#: Devices of one cluster. Edge times are stored per link class (`rlplace.costs.CostTable`):
#: an (edges, classes) float64 table plus (devices, devices) int64 classes, so a 5,600-edge graph
#: on 1,000 devices with 3 link classes (same device, intra-host, inter-host) takes
#: 5,600 x 3 x 8 B x 2 (times and fixed parts) + 1,000^2 x 8 B = 8.3 MB, not the 44.8 GB of a
#: dense (edges, devices, devices) table. The simulator's own per-device state grows with
#: devices^2 (one FIFO per ordered link) and devices x ops x micro-batches (ready queues).
MAX_DEVICES = 4096
#: Bytes of the factored edge-time table (edges x link classes x 8).
MAX_EDGE_TABLE_BYTES = 4 * 1024**3
#: Bytes of a dense (edges x devices x devices x 8) edge-time table, which a few readers
#: (the RL observation and improvement state) still materialize.
MAX_DENSE_EDGE_TABLE_BYTES = 4 * 1024**3
#: Micro-batches of the pipelined objective.
MAX_MICROBATCHES = 4096
#: Torch threads per measurement rank (``--threads``).
MAX_THREADS = 256
#: Simulations of one search (``--evaluations`` of policy and local-search).
MAX_EVALUATIONS = 10**8
#: Seconds of one search (``--budget-s``): one day.
MAX_BUDGET_S = 86_400.0
#: Any one size (hidden width, layers, heads, ...) in a policy checkpoint's config.json.
MAX_NETWORK_SIZE = 4096
#: Seeds are 32-bit: numpy's and torch's generators take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1


def check_count(value: int, limit: int, name: str, what: str) -> int:
    """``value`` if it is at most ``limit``; else `RlplaceError` naming the limit ``name``."""
    if value > limit:
        shown = f"{value:,}" if value < 1e15 else f"{value:.3g}"
        raise RlplaceError(f"{what}: {shown} is more than the limit {name} = {limit:,}")
    return value


def check_edge_table(num_edges: int, num_classes: int, where: str) -> None:
    """Refuse a graph x cluster whose factored edge-time table would exceed `MAX_EDGE_TABLE_BYTES`."""
    table = num_edges * num_classes * 8
    if table > MAX_EDGE_TABLE_BYTES:
        raise RlplaceError(
            f"{where}: {num_edges:,} edges over {num_classes:,} link classes need a {table / 1024**3:.1f} GiB edge-time table, "
            f"more than the limit MAX_EDGE_TABLE_BYTES = {MAX_EDGE_TABLE_BYTES / 1024**3:.0f} GiB; coarsen the graph or use fewer distinct links"
        )


def check_dense_edge_table(num_edges: int, num_devices: int, where: str) -> None:
    """Refuse materializing a dense edge-time table past `MAX_DENSE_EDGE_TABLE_BYTES`."""
    table = num_edges * num_devices * num_devices * 8
    if table > MAX_DENSE_EDGE_TABLE_BYTES:
        raise RlplaceError(
            f"{where}: {num_edges:,} edges on {num_devices:,} devices need a {table / 1024**3:.1f} GiB dense edge-time table, "
            f"more than the limit MAX_DENSE_EDGE_TABLE_BYTES = {MAX_DENSE_EDGE_TABLE_BYTES / 1024**3:.0f} GiB; "
            "coarsen the graph, use fewer devices, or a method that does not need the dense table"
        )


def check_seed(seed: int, what: str = "--seed") -> int:
    """A seed in 0 .. `MAX_SEED`."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RlplaceError(f"{what} must be an integer from 0 to {MAX_SEED:,} (MAX_SEED), got {seed!r}")
    return seed
