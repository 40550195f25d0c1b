"""Training and held-out cases of the improvement policy, and the documented split.

Held out (never trained or tuned on), as whole families and whole clusters:

- models: the synthetic ``fork-join`` family (every seed and size) and the ``resnet50`` family
  of the shared dnn-partitioning graphs (all three files);
- clusters: ``4xL4`` (a device kind absent from training), ``2x4xV100`` (two hosts over
  InfiniBand), ``1xA100+3xT4`` (a mixed layout absent from training) and ``2x8xA100`` (16
  devices on two hosts).

Trained on: synthetic ``layered`` and ``series-parallel`` graphs (forward and training graphs,
several seeds and sizes), optionally the small zoo models of `TRAIN_ZOO` (and, with
``TrainConfig.families == "wide"``, the more varied `WIDE_MODELS`), the ``bert`` dnn-partitioning graphs (on their own clusters), on the
clusters of `TRAIN_CLUSTERS` (2-8 devices: homogeneous, mixed, two-host) and, when the run
asks for them (``TrainConfig.generated_clusters``), generated clusters of 2-16 devices
(`generated_cluster`: never the L4 kind nor a held-out layout), each also in a
*memory-bound* variant (`memory_bound`), under ``latency``, ``pipelined`` M=4 and 8, and
``throughput``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from rlplace.cluster import Cluster
from rlplace.envs.improve_env import Case, make_case
from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

DNN_PARTITIONING = Path("/work/shared/data/dnn-partitioning/graphs")

TRAIN_MODELS: tuple[str, ...] = (
    "synthetic:layered:n=40:seed=200:training=true",
    "synthetic:layered:n=60:seed=201:width=4",
    "synthetic:layered:n=100:seed=202:width=3:training=true",
    "synthetic:layered:n=150:seed=203",
    "synthetic:series-parallel:n=50:seed=204:training=true",
    "synthetic:series-parallel:n=90:seed=205",
    "synthetic:series-parallel:n=120:seed=206:training=true",
)
TRAIN_DNN: tuple[str, ...] = ("bert24_training__layer.json", "bert24_inference__layer.json", "bert_l-3_inference__operator.json")
#: Small zoo models (captured once into `rlplace.agents.data.DEFAULT_GRAPH_CACHE`), trained on
#: when the run asks for them (``TrainConfig.zoo``); the resnet family stays held out.
TRAIN_ZOO: tuple[str, ...] = ("zoo:mlp-small", "zoo:dlrm", "zoo:mobilenet-v2", "zoo:mixtral-tiny", "zoo:moe-gshard")
#: The wider model set (``TrainConfig.families == "wide"``), added to the above: more seeds,
#: sizes and shapes of the two synthetic training families (seeds 220-229: never a validation
#: seed), and the zoo models the one-shot policy trains on (`rlplace.agents.data.TRAIN_MODELS`)
#: that `TRAIN_ZOO` lacks. The zoo models `rlplace.agents.data.HELDOUT_MODELS` names (gpt2,
#: vit-base, t5-small, regnet-y-040; resnet stays held out here) are never trained on: they are
#: the unseen-family validation set of ``benchmarks/bench_policy.py --families``.
WIDE_MODELS: tuple[str, ...] = (
    "synthetic:layered:n=50:seed=220:width=2:training=true",
    "synthetic:layered:n=80:seed=221:width=6",
    "synthetic:layered:n=120:seed=222:width=5:skip_prob=0.3:training=true",
    "synthetic:layered:n=180:seed=223:width=10",
    "synthetic:layered:n=200:seed=224:width=3:skip_prob=0.2",
    "synthetic:series-parallel:n=60:seed=225:parallel_prob=0.6:training=true",
    "synthetic:series-parallel:n=100:seed=226:parallel_prob=0.2",
    "synthetic:series-parallel:n=150:seed=227:parallel_prob=0.5",
    "synthetic:series-parallel:n=180:seed=228:training=true",
    "synthetic:series-parallel:n=200:seed=229:parallel_prob=0.7",
    "zoo:inception",
    "zoo:convnext-tiny",
    "zoo:bert-base",
    "zoo:mlp-medium",
)
#: Model families ``TrainConfig.families`` may name.
FAMILY_SETS: tuple[str, ...] = ("base", "wide")


def train_models(zoo: bool, families: str = "base") -> tuple[str, ...]:
    """The model specs training draws from: `TRAIN_MODELS`, `TRAIN_ZOO` when ``zoo``, and
    `WIDE_MODELS` (with `TRAIN_ZOO`) when ``families`` is ``"wide"``."""
    if families not in FAMILY_SETS:
        raise RlplaceError(f"families must be one of {', '.join(FAMILY_SETS)}, not {families!r}")
    if families == "wide":
        return TRAIN_MODELS + TRAIN_ZOO + WIDE_MODELS
    return TRAIN_MODELS + (TRAIN_ZOO if zoo else ())


TRAIN_CLUSTERS: tuple[str, ...] = ("2xV100-pcie", "4xV100-nvlink", "4xT4", "2xA100+2xT4", "1xH100+3xA10G", "8xA100-nvlink", "2xV100+4xT4")

HELDOUT_MODELS: tuple[str, ...] = (
    "synthetic:fork-join:n=60:seed=900:training=true",
    "synthetic:fork-join:n=120:seed=901:branches=6",
    "synthetic:fork-join:n=200:seed=902:branches=3",
)
HELDOUT_DNN: tuple[str, ...] = ("resnet50_training__layer.json", "resnet50_inference__layer.json", "resnet50_inference__operator.json")
HELDOUT_CLUSTERS: tuple[str, ...] = ("4xL4", "2x4xV100", "1xA100+3xT4", "2x8xA100")

#: Device kinds of generated training clusters (never L4, the held-out kind).
GENERATED_KINDS: tuple[str, ...] = ("V100-PCIe-32GB", "V100-32GB", "A100-PCIe-40GB", "A100-40GB", "A100-80GB", "H100-PCIe", "H100", "T4", "A10G", "A10", "L40S")
#: Links inside one host of a generated cluster (NVLink only between SXM kinds) and between hosts.
_PCIE_LINKS: tuple[str, ...] = ("pcie3", "pcie4")
_NVLINK_OF_KIND = {"V100-32GB": "nvlink2", "A100-40GB": "nvlink3", "A100-80GB": "nvlink3", "H100": "nvlink4"}
_INTER_LINKS: tuple[str, ...] = ("ib-edr", "ib-hdr")
GENERATED_PREFIX = "gen:"


def generated_cluster(seed: int) -> Cluster:
    """Training cluster ``gen:SEED``: 2-16 devices of one or two `GENERATED_KINDS` kinds on one
    or two hosts (two hosts hold the same number of devices), PCIe inside a host (NVLink when the
    host's devices are all one SXM kind), InfiniBand EDR or HDR between hosts. A draw whose
    layout matches a held-out cluster's (`HELDOUT_CLUSTERS`: same host count, devices per host
    and kind families) is redrawn, so the held-out clusters stay out of training."""
    from rlplace.catalog import catalog_device
    from rlplace.cluster_spec import LINK_KINDS

    rng = np.random.default_rng([seed, 0x6E6E])
    while True:
        hosts = 2 if rng.random() < 0.35 else 1
        per_host = int(rng.integers(1, 9)) if hosts == 2 else int(rng.integers(2, 9))
        count = hosts * per_host
        kinds = list(rng.choice(GENERATED_KINDS, size=2 if rng.random() < 0.4 else 1, replace=False))
        chosen = [str(kinds[0] if i < max(1, count // 2) or len(kinds) == 1 else kinds[1]) for i in range(count)]
        if _layout(hosts, per_host, chosen) not in _heldout_layouts():
            break
    devices = [catalog_device(kind, f"gpu{i}", host=i // per_host) for i, kind in enumerate(chosen)]
    sxm = _NVLINK_OF_KIND.get(chosen[0]) if len(set(chosen)) == 1 else None
    intra = LINK_KINDS[sxm if sxm is not None and rng.random() < 0.7 else str(rng.choice(_PCIE_LINKS))]
    inter = LINK_KINDS[str(rng.choice(_INTER_LINKS))] if hosts == 2 else None
    name = f"{GENERATED_PREFIX}{seed}"
    return Cluster.build(
        name,
        devices,
        intra_host=(intra.bandwidth, intra.latency),
        inter_host=None if inter is None else (inter.bandwidth, inter.latency),
        meta={"generated": name},
    )


Layout = tuple[int, int, frozenset[str]]


def _layout(hosts: int, per_host: int, kinds: Iterable[str]) -> Layout:
    """(hosts, devices per host, kind families: ``A100-PCIe-40GB`` -> ``A100``)."""
    return hosts, per_host, frozenset(kind.split("-")[0] for kind in kinds)


@functools.cache
def _heldout_layouts() -> frozenset[Layout]:
    """The layouts of `HELDOUT_CLUSTERS` (resolved once per process)."""
    from .data import resolve_cluster_spec

    layouts = set()
    for name in HELDOUT_CLUSTERS:
        cluster = resolve_cluster_spec(name)
        hosts = len({device.host for device in cluster.devices})
        layouts.add(_layout(hosts, cluster.num_devices // hosts, (device.kind for device in cluster.devices)))
    return frozenset(layouts)


def resolve_training_cluster(spec: str) -> Cluster:
    """A cluster spec of the training or held-out lists: ``gen:SEED`` (`generated_cluster`), a
    preset, a YAML file or a `rlplace.agents.data.GENERATED_CLUSTERS` name."""
    from .data import resolve_cluster_spec

    if spec.startswith(GENERATED_PREFIX):
        return generated_cluster(int(spec[len(GENERATED_PREFIX):]))
    return resolve_cluster_spec(spec)


def training_clusters(generated: int) -> tuple[str, ...]:
    """`TRAIN_CLUSTERS` and ``generated`` generated ones (``gen:0`` ... ``gen:{generated-1}``)."""
    return TRAIN_CLUSTERS + tuple(f"{GENERATED_PREFIX}{i}" for i in range(generated))


#: (objective, M) settings every case family is drawn under.
OBJECTIVE_SETTINGS: tuple[tuple[str, int], ...] = (("latency", 1), ("pipelined", 4), ("pipelined", 8), ("throughput", 1))


def memory_bound(cluster: Cluster, graph: OpGraph, objective: str, *, share: float = 1.5) -> Cluster:
    """``cluster`` with every device's memory set to ``share / k`` of the graph's memory estimate
    (so no single device can hold it when ``share < k``), never below twice its largest op."""
    from rlplace.rules import op_memory_demand

    demand = float(op_memory_demand(graph, objective).sum())
    largest = float(np.max(graph.resident_bytes + graph.output_bytes + graph.work_bytes)) if graph.num_ops else 0.0
    memory = max(share * demand / cluster.num_devices, 2.0 * largest)
    devices = tuple(dataclasses.replace(d, memory=memory) for d in cluster.devices)
    return dataclasses.replace(cluster, name=f"{cluster.name}[mem]", devices=devices)


def _load(spec: str) -> tuple[OpGraph, Cluster | None]:
    from rlplace.load import load_model

    if spec.startswith("zoo:"):
        from .data import load_graph

        return load_graph(spec)  # captured once, then read from the graph cache

    loaded = load_model(str(DNN_PARTITIONING / spec) if spec.endswith(".json") else spec)
    return loaded.graph, loaded.cluster


#: (model spec, cluster spec ('' = the graph's own), objective, M, memory-bound)
CaseSpec = tuple[str, str, str, int, bool]


def case_specs(models: tuple[str, ...], dnn: tuple[str, ...], clusters: tuple[str, ...]) -> list[CaseSpec]:
    """Every model on every cluster under every objective setting, plus memory-bound variants
    (latency and throughput); dnn-partitioning graphs on their own cluster under ``throughput``
    and ``pipelined`` M=4. Cheap: nothing is loaded (`build_case` does that)."""
    items: list[CaseSpec] = []
    for model in models:
        for cluster in clusters:
            for objective, m in OBJECTIVE_SETTINGS:
                items.append((model, cluster, objective, m, False))
            items.append((model, cluster, "latency", 1, True))
            items.append((model, cluster, "throughput", 1, True))
    for spec in dnn:
        if (DNN_PARTITIONING / spec).is_file():
            items.append((spec, "", "throughput", 1, False))
            items.append((spec, "", "pipelined", 4, False))
    return items


_GRAPHS: dict[str, tuple[OpGraph, Cluster | None]] = {}


def build_case(spec: CaseSpec, *, max_nodes: int = 256) -> Case:
    """The `Case` of one `CaseSpec` (graphs are loaded once per process)."""
    model, cluster_spec, objective, m, tight = spec
    if model not in _GRAPHS:
        _GRAPHS[model] = _load(model)
    graph, own = _GRAPHS[model]
    cluster = own if own is not None and not cluster_spec else resolve_training_cluster(cluster_spec)
    if tight:
        cluster = memory_bound(cluster, graph, objective)
    label = f"{model}@{cluster.name}/{objective}" + (f"(M={m})" if objective == "pipelined" else "")
    return make_case(label, graph, cluster, objective=objective, microbatches=m, max_nodes=max_nodes)


def iter_cases(models: tuple[str, ...], dnn: tuple[str, ...], clusters: tuple[str, ...], rng: np.random.Generator, *, max_nodes: int = 256) -> Iterator[Case]:
    """The cases of `case_specs` in a random order, built as they are drawn."""
    items = case_specs(models, dnn, clusters)
    for index in rng.permutation(len(items)).tolist():
        yield build_case(items[index], max_nodes=max_nodes)
