"""The training and held-out sets: MODEL specs, cluster specs, and a cache of captured graphs.

Cluster specs are preset names, YAML files, or the names of `GENERATED_CLUSTERS` (mixed
clusters the presets lack, built from catalog devices). Zoo models are captured once and kept
as rlplace graph JSON in a cache folder (capture takes seconds to a minute per model; the
cached graph loads in milliseconds).

The default split keeps whole models and whole clusters out of training: the held-out models
are other architectures or other members of a family (GPT-2, T5, ViT, ResNet-50, RegNet, an
unseen synthetic seed), the held-out clusters are device kinds or layouts the training set
lacks (4 L4, two hosts of 4 V100 over InfiniBand, 4 A100 over NVLink, 1 A100 with 3 T4).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlplace.cluster import Cluster
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

#: Mixed clusters built from catalog devices (YAML-shaped dicts for ``cluster_from_dict``).
GENERATED_CLUSTERS: dict[str, dict[str, Any]] = {
    "1xA100+1xT4": {
        "devices": [{"name": "gpu0", "kind": "A100-PCIe-40GB"}, {"name": "gpu1", "kind": "T4"}],
        "interconnect": {"intra_host": "pcie3"},
    },
    "2xV100+4xT4": {
        "devices": [{"name": f"gpu{i}", "kind": "V100-PCIe-32GB" if i < 2 else "T4", "host": 0 if i < 2 else 1} for i in range(6)],
        "interconnect": {"intra_host": "pcie3", "inter_host": "ib-edr"},
    },
    "1xH100+3xA10G": {
        "devices": [{"name": f"gpu{i}", "kind": "H100-PCIe" if i == 0 else "A10G"} for i in range(4)],
        "interconnect": {"intra_host": "pcie4"},
    },
    "3xA10G": {"devices": [{"name": f"gpu{i}", "kind": "A10G"} for i in range(3)], "interconnect": {"intra_host": "pcie4"}},
    # held out:
    "1xA100+3xT4": {
        "devices": [{"name": f"gpu{i}", "kind": "A100-PCIe-40GB" if i == 0 else "T4"} for i in range(4)],
        "interconnect": {"intra_host": "pcie3"},
    },
}

#: Training models: seeded synthetic training graphs of several shapes and sizes, and small zoo models.
TRAIN_MODELS: tuple[str, ...] = (
    "synthetic:layered:n=30:seed=100",
    "synthetic:layered:n=60:seed=101:width=4",
    "synthetic:layered:n=120:seed=102",
    "synthetic:layered:n=200:seed=103:width=3",
    "synthetic:series-parallel:n=40:seed=104",
    "synthetic:series-parallel:n=90:seed=105",
    "synthetic:series-parallel:n=200:seed=106",
    "synthetic:fork-join:n=50:seed=107",
    "synthetic:fork-join:n=100:seed=108:branches=6",
    "synthetic:layered:n=80:seed=109:training=false",
    "synthetic:fork-join:n=80:seed=110:training=false",
    "zoo:mlp-small",
    "zoo:mlp-medium",
    "zoo:dlrm",
    "zoo:inception",
    "zoo:moe-gshard",
    "zoo:mixtral-tiny",
    "zoo:mobilenet-v2",
    "zoo:convnext-tiny",
    "zoo:bert-base",
)
#: Training clusters: 2 to 8 devices, homogeneous and mixed.
TRAIN_CLUSTERS: tuple[str, ...] = (
    "2xV100-pcie",
    "4xV100-nvlink",
    "4xT4",
    "4xA10G",
    "2xA100-nvlink",
    "8xA100-nvlink",
    "2xA100+2xT4",
    "1xA100+1xT4",
    "2xV100+4xT4",
    "1xH100+3xA10G",
    "3xA10G",
)
HELDOUT_MODELS: tuple[str, ...] = ("zoo:resnet-50", "zoo:gpt2", "zoo:vit-base", "zoo:t5-small", "zoo:regnet-y-040", "synthetic:fork-join:n=150:seed=999")
HELDOUT_CLUSTERS: tuple[str, ...] = ("4xL4", "2x4xV100", "4xA100-nvlink", "1xA100+3xT4")

#: Where captured zoo graphs are cached (relative to the working folder; ``runs/`` is git-ignored).
DEFAULT_GRAPH_CACHE = "runs/graph-cache"


def resolve_cluster_spec(spec: str | Cluster) -> Cluster:
    """A preset name, a YAML file, or a `GENERATED_CLUSTERS` name -> `Cluster` (`rlplace.load.resolve_cluster`)."""
    from rlplace.load import resolve_cluster

    return resolve_cluster(spec, named=GENERATED_CLUSTERS)


def load_graph(spec: str, cache_dir: str | Path | None = DEFAULT_GRAPH_CACHE) -> tuple[OpGraph, Cluster | None]:
    """The training graph of a MODEL spec (and the cluster a dnn-partitioning file carries).

    ``zoo:`` and ``file.py:function`` specs are captured once and cached as graph JSON under
    ``cache_dir`` (None: no cache); other specs are cheap and always built.
    """
    from rlplace.load import load_model

    cacheable = spec.startswith("zoo:") or ".py:" in spec
    if cacheable and cache_dir is not None:
        path = Path(cache_dir) / (_safe_name(spec) + ".json")
        if path.is_file():
            return OpGraph.load(path), None
        loaded = load_model(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        loaded.graph.save(path)
        return loaded.graph, loaded.cluster
    loaded = load_model(spec)
    return loaded.graph, loaded.cluster


def load_graphs(specs: Sequence[str], cache_dir: str | Path | None = DEFAULT_GRAPH_CACHE) -> list[Any]:
    """MODEL specs -> env model entries (``rlplace.envs.specs.ModelEntry``) labelled by their spec."""
    from rlplace.envs.specs import ModelEntry

    if not specs:
        raise RlplaceError("no models given; pass at least one MODEL spec")
    entries = []
    for spec in specs:
        graph, cluster = load_graph(spec, cache_dir)
        entries.append(ModelEntry(spec, graph, cluster))
    return entries


def _safe_name(spec: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.=" else "_" for c in spec)
