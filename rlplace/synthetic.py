"""Seeded synthetic computation graphs: layered, series-parallel and fork-join DAGs.

Every family returns an `OpGraph` directly (no torch), with analytic costs of plausible
magnitude for a transformer-sized workload: each op works on a ``tokens x width`` fp32
activation (``tokens`` rows, ``width`` features); a ``matmul`` op multiplies its input by a
``width_in x width_out`` weight it owns; other kinds are memory-bound. All FLOPs and byte
counts are integers (stored as float64), so sums over any grouping are exact.

With ``training=True`` the forward graph gets a backward mirror: one ``loss`` op fed by every
forward sink, one backward op per forward op (edges reversed, gradient tensors of the same
size, the forward output kept for it), and an Adam update per parameter-owning op. A
forward op, its backward op and its update form a colocation class (as `rlplace.capture`
does), so gradients and optimizer state stay with the weights.

Specs (see ``rlplace.zoo``): ``synthetic:FAMILY:key=value:...``, e.g.
``synthetic:layered:n=200:seed=3`` or ``synthetic:fork-join:n=500:seed=1:training=1``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rlplace.errors import RlplaceError
from rlplace.graph import OpGraph

#: Bytes per fp32 element.
FP32 = 4
#: Feature widths an op may have.
WIDTHS = (256, 512, 1024, 2048, 4096)
#: Forward kinds and their probabilities.
FORWARD_KINDS = ("matmul", "elementwise", "norm", "reduction")
FORWARD_KIND_PROBS = (0.45, 0.35, 0.12, 0.08)
#: Extra resident bytes per parameter byte in training with Adam: gradient + two moments.
ADAM_STATE_FACTOR = 4


@dataclass(frozen=True)
class _ForwardDag:
    """A forward DAG skeleton before costs: ``n`` ops, edges ``src < dst``."""

    num_ops: int
    edge_src: np.ndarray
    edge_dst: np.ndarray


# --------------------------------------------------------------------------- families
def layered(n: int = 200, *, seed: int = 0, width: int = 8, skip_prob: float = 0.1, training: bool = False) -> OpGraph:
    """A layered DAG: ``n`` forward ops in layers of 1..``width`` ops.

    Every op of a layer reads 1..3 ops of the previous layer and, with probability
    ``skip_prob``, one op of an earlier layer (a residual connection); every op outside the
    last layer is read by the next one.
    """
    _check_size(n, width=width)
    rng = np.random.default_rng(seed)
    layers: list[np.ndarray] = []
    start = 0
    while start < n:
        size = min(int(rng.integers(1, width + 1)), n - start)
        if start == 0 and n > 1:
            size = min(size, n - 1)  # at least two layers, so no op is isolated
        layers.append(np.arange(start, start + size))
        start += size
    src: list[int] = []
    dst: list[int] = []
    for depth in range(1, len(layers)):
        previous = layers[depth - 1]
        unread = set(previous.tolist())
        for op in layers[depth].tolist():
            fan_in = min(int(rng.integers(1, 4)), previous.size)
            for producer in rng.choice(previous, size=fan_in, replace=False).tolist():
                src.append(producer)
                dst.append(op)
                unread.discard(producer)
        for producer in sorted(unread):  # every op but the last layer's feeds the next layer
            src.append(producer)
            dst.append(int(rng.choice(layers[depth])))
            if depth >= 2 and rng.random() < skip_prob:
                earlier = layers[int(rng.integers(0, depth - 1))]
                src.append(int(rng.choice(earlier)))
                dst.append(op)
    skeleton = _skeleton(n, src, dst)
    return _with_costs(skeleton, rng, name=f"synthetic:layered:n={n}:seed={seed}", training=training)


def series_parallel(n: int = 200, *, seed: int = 0, parallel_prob: float = 0.35, training: bool = False) -> OpGraph:
    """A two-terminal series-parallel DAG with ``n`` ops.

    Starting from one edge source -> sink, each step picks an edge and either subdivides it
    with a new op (series) or, with probability ``parallel_prob``, adds a new op as a parallel
    path between the edge's ends.
    """
    _check_size(n, minimum=1)
    rng = np.random.default_rng(seed)
    # Ops are created with provisional ids; a series-parallel edge list stays acyclic, and
    # `_skeleton` renumbers ops in a topological order.
    src = [0] if n > 1 else []
    dst = [1] if n > 1 else []
    for new_op in range(2, n):
        edge = int(rng.integers(0, len(src)))
        u, v = src[edge], dst[edge]
        if rng.random() < parallel_prob:
            src.extend((u, new_op))
            dst.extend((new_op, v))
        else:
            dst[edge] = new_op
            src.append(new_op)
            dst.append(v)
    skeleton = _skeleton(n, src, dst, renumber=True)
    return _with_costs(skeleton, rng, name=f"synthetic:series-parallel:n={n}:seed={seed}", training=training)


def fork_join(n: int = 200, *, seed: int = 0, branches: int = 4, branch_length: int = 3, training: bool = False) -> OpGraph:
    """Stages of fork -> parallel chains -> join (Inception-like), ``n`` ops in all.

    Each stage has a fork op, 2..``branches`` chains of 1..``branch_length`` ops and a join op
    that becomes the next stage's fork; the last stage is cut short to hit ``n`` exactly.
    """
    _check_size(n, minimum=1)
    if branches < 1 or branch_length < 1:
        raise RlplaceError("fork-join needs branches >= 1 and branch_length >= 1")
    rng = np.random.default_rng(seed)
    src: list[int] = []
    dst: list[int] = []
    fork = 0
    next_op = 1
    while next_op < n:
        tails: list[int] = []
        for _ in range(int(rng.integers(min(2, branches), branches + 1))):
            previous = fork
            for _ in range(int(rng.integers(1, branch_length + 1))):
                if next_op >= n - 1:
                    break
                src.append(previous)
                dst.append(next_op)
                previous = next_op
                next_op += 1
            if previous != fork:
                tails.append(previous)
        join = next_op
        if join >= n:
            break
        for tail in tails or [fork]:
            src.append(tail)
            dst.append(join)
        next_op += 1
        fork = join
    skeleton = _skeleton(n, src, dst)
    return _with_costs(skeleton, rng, name=f"synthetic:fork-join:n={n}:seed={seed}", training=training)


#: Family name -> generator; each takes ``n`` and keyword ``seed``, ``training`` and its own knobs.
SYNTHETIC_FAMILIES: dict[str, Callable[..., OpGraph]] = {
    "layered": layered,
    "series-parallel": series_parallel,
    "fork-join": fork_join,
}

#: Knobs each family accepts in a spec, with their types.
FAMILY_PARAMS: dict[str, dict[str, type]] = {
    "layered": {"n": int, "seed": int, "width": int, "skip_prob": float, "training": bool},
    "series-parallel": {"n": int, "seed": int, "parallel_prob": float, "training": bool},
    "fork-join": {"n": int, "seed": int, "branches": int, "branch_length": int, "training": bool},
}


def synthetic_graph(spec: str, **defaults: object) -> OpGraph:
    """Build the graph named by ``spec``: ``synthetic:FAMILY[:key=value...]`` or a bare family.

    ``defaults`` fill in the knobs the spec does not set (a knob written in the spec wins),
    e.g. ``synthetic_graph("synthetic:layered:n=50", training=True, seed=3)``.
    """
    family, written = parse_synthetic_spec(spec)
    params: dict[str, object] = {key: _convert(family, key, value) for key, value in written.items()}
    for key, value in defaults.items():
        if key not in FAMILY_PARAMS[family]:
            raise RlplaceError(f"synthetic family {family!r} has no parameter {key!r}; it takes {', '.join(FAMILY_PARAMS[family])}")
        params.setdefault(key, value)
    _check_params(params, spec)
    return SYNTHETIC_FAMILIES[family](**params)


def _check_params(params: dict[str, object], spec: str) -> None:
    """Seeds in 0 .. `MAX_SEED`, sizes at most `MAX_OPS`, probabilities in [0, 1]."""
    from rlplace.limits import MAX_OPS, check_count, check_seed

    for key, value in params.items():
        if key == "seed":
            check_seed(value, f"synthetic seed (in {spec!r})")  # type: ignore[arg-type]
        elif isinstance(value, int) and not isinstance(value, bool):
            check_count(value, MAX_OPS, "MAX_OPS", f"synthetic option {key} (in {spec!r})")
        elif isinstance(value, float) and not 0.0 <= value <= 1.0:
            raise RlplaceError(f"synthetic option {key}={value!r} (in {spec!r}) must be a probability from 0 to 1")


def parse_synthetic_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``synthetic:FAMILY:k=v:...`` (or ``FAMILY:k=v``) -> (family, {knob: text}); checks names, not values."""
    parts = spec.strip().removeprefix("synthetic:").split(":")
    family = parts[0]
    if family not in SYNTHETIC_FAMILIES:
        raise RlplaceError(f"unknown synthetic family {family!r} in {spec!r}; choose one of {', '.join(SYNTHETIC_FAMILIES)}")
    params: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise RlplaceError(f"bad option {part!r} in {spec!r}; write options as key=value, e.g. synthetic:{family}:n=200:seed=3")
        if key not in FAMILY_PARAMS[family]:
            raise RlplaceError(f"synthetic family {family!r} has no option {key!r} (in {spec!r}); it takes {', '.join(FAMILY_PARAMS[family])}")
        params[key] = value
    for key, value in params.items():
        _convert(family, key, value)
    return family, params


def _convert(family: str, key: str, text: str) -> object:
    kind = FAMILY_PARAMS[family][key]
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(text)
            return lowered in ("1", "true", "yes")
        return kind(text)
    except ValueError:
        raise RlplaceError(f"synthetic option {key}={text!r} is not a valid {kind.__name__}") from None


# --------------------------------------------------------------------------- helpers
def _check_size(n: int, *, minimum: int = 1, width: int = 1) -> None:
    if n < minimum:
        raise RlplaceError(f"a synthetic graph needs n >= {minimum} ops (got n={n})")
    if width < 1:
        raise RlplaceError(f"a layered graph needs width >= 1 (got width={width})")


def _skeleton(n: int, src: list[int], dst: list[int], *, renumber: bool = False) -> _ForwardDag:
    """Deduplicate edges and, with ``renumber``, relabel ops in a topological order."""
    edge_src = np.asarray(src, dtype=np.int64)
    edge_dst = np.asarray(dst, dtype=np.int64)
    if renumber and edge_src.size:
        order = _topological_order(n, edge_src, edge_dst)
        new_id = np.empty(n, dtype=np.int64)
        new_id[order] = np.arange(n)
        edge_src, edge_dst = new_id[edge_src], new_id[edge_dst]
    keys = np.unique(edge_src * n + edge_dst)
    return _ForwardDag(n, keys // n, keys % n)


def _topological_order(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    indegree = np.bincount(dst, minlength=n)
    consumers: list[list[int]] = [[] for _ in range(n)]
    for s, d in zip(src.tolist(), dst.tolist(), strict=True):
        consumers[s].append(d)
    ready = [i for i in range(n) if indegree[i] == 0]
    order: list[int] = []
    while ready:
        op = ready.pop()
        order.append(op)
        for consumer in consumers[op]:
            indegree[consumer] -= 1
            if indegree[consumer] == 0:
                ready.append(consumer)
    return np.asarray(order, dtype=np.int64)


def _with_costs(dag: _ForwardDag, rng: np.random.Generator, *, name: str, training: bool) -> OpGraph:
    """Attach kinds, widths and analytic costs, and the backward mirror when ``training``.

    Shapes: ``tokens`` rows per activation, one of 1024..8192; ``width[i]`` features per op.
    """
    n = dag.num_ops
    tokens = int(rng.choice((1024, 2048, 4096, 8192)))
    kind_index = rng.choice(len(FORWARD_KINDS), size=n, p=FORWARD_KIND_PROBS)
    width = rng.choice(WIDTHS, size=n).astype(np.int64)
    # Width of an op's (first) input: its first producer's width, or its own for a source.
    width_in = width.copy()
    if dag.edge_src.size:
        first = np.unique(dag.edge_dst, return_index=True)
        width_in[first[0]] = width[dag.edge_src[first[1]]]
    is_matmul = kind_index == 0
    out_elems = tokens * width
    in_elems = tokens * width_in
    weight_elems = np.where(is_matmul, width_in * width, 0)
    flops = np.where(is_matmul, 2 * tokens * width_in * width, 5 * out_elems).astype(np.float64)
    bytes_accessed = (FP32 * (in_elems + out_elems + weight_elems)).astype(np.float64)
    output_bytes = (FP32 * out_elems).astype(np.float64)
    param_bytes = (FP32 * weight_elems).astype(np.float64)
    kinds = [FORWARD_KINDS[k] for k in kind_index.tolist()]
    names = [f"fwd{i}" for i in range(n)]
    edge_bytes = output_bytes[dag.edge_src]
    if not training:
        return OpGraph(
            names=tuple(names),
            kinds=tuple(kinds),
            flops=flops,
            bytes_accessed=bytes_accessed,
            output_bytes=output_bytes,
            param_bytes=param_bytes,
            resident_bytes=param_bytes,
            work_bytes=np.zeros(n),
            is_backward=np.zeros(n, dtype=bool),
            coloc=np.full(n, -1, dtype=np.int64),
            edge_src=dag.edge_src,
            edge_dst=dag.edge_dst,
            edge_bytes=edge_bytes,
            name=name,
            meta={"source": "synthetic", "tokens": tokens},
        )
    return _training_graph(dag, name, tokens, kinds, flops, bytes_accessed, output_bytes, param_bytes, width_in)


def _training_graph(
    dag: _ForwardDag,
    name: str,
    tokens: int,
    kinds: list[str],
    flops: np.ndarray,
    bytes_accessed: np.ndarray,
    output_bytes: np.ndarray,
    param_bytes: np.ndarray,
    width_in: np.ndarray,
) -> OpGraph:
    """Forward ops ``0..n-1``, the loss ``n``, backward ops ``n+1+(n-1-i)`` for forward ``i``, then updates.

    Backward of a matmul costs twice its forward FLOPs (input and weight gradients), other
    kinds once; gradients have the size of the tensors they differentiate.
    """
    n = dag.num_ops
    loss = n
    backward = n + 1 + (n - 1 - np.arange(n))  # reversed order keeps edges src < dst
    owners = np.flatnonzero(param_bytes > 0)
    update = 2 * n + 1 + np.arange(owners.size)
    total = 2 * n + 1 + owners.size
    is_matmul = np.array([k == "matmul" for k in kinds])

    out_degree = np.bincount(dag.edge_src, minlength=n)
    sinks = np.flatnonzero(out_degree == 0)
    grad_in_bytes = (FP32 * tokens * width_in).astype(np.float64)
    src = np.concatenate([dag.edge_src, sinks, np.full(sinks.size, loss), backward[dag.edge_dst], np.arange(n), backward[owners]])
    dst = np.concatenate([dag.edge_dst, np.full(sinks.size, loss), backward[sinks], backward[dag.edge_src], backward, update])
    edge_bytes = np.concatenate(
        [output_bytes[dag.edge_src], output_bytes[sinks], output_bytes[sinks], output_bytes[dag.edge_src], output_bytes, param_bytes[owners]]
    )
    order = np.lexsort((dst, src))

    all_flops = np.zeros(total)
    all_bytes = np.zeros(total)
    all_output = np.zeros(total)
    all_param = np.zeros(total)
    all_resident = np.zeros(total)
    all_flops[:n] = flops
    all_bytes[:n] = bytes_accessed
    all_output[:n] = output_bytes
    all_param[:n] = param_bytes
    all_resident[:n] = ADAM_STATE_FACTOR * param_bytes
    sink_elems = int(output_bytes[sinks].sum()) // FP32
    all_flops[loss] = 3 * sink_elems
    all_bytes[loss] = FP32 * 2 * sink_elems
    all_output[loss] = FP32
    all_flops[backward] = np.where(is_matmul, 2 * flops, flops)
    all_bytes[backward] = 2 * bytes_accessed
    all_output[backward] = grad_in_bytes + param_bytes
    param_elems = param_bytes[owners] / FP32
    all_flops[update] = 12 * param_elems
    all_bytes[update] = 7 * param_bytes[owners]  # read param, grad, m, v; write param, m, v
    all_output[update] = 0.0

    coloc = np.full(total, -1, dtype=np.int64)
    coloc[:n] = np.arange(n)
    coloc[backward] = np.arange(n)
    coloc[update] = owners
    all_kinds = [*kinds, "reduction", *[""] * n, *["optimizer"] * owners.size]
    names = [f"fwd{i}" for i in range(n)] + ["loss"] + [""] * n + [f"adam{i}" for i in owners.tolist()]
    for i in range(n):
        names[int(backward[i])] = f"bwd{i}"
        all_kinds[int(backward[i])] = kinds[i]
    is_backward = np.zeros(total, dtype=bool)
    is_backward[n + 1 :] = True
    return OpGraph(
        names=tuple(names),
        kinds=tuple(all_kinds),
        flops=all_flops,
        bytes_accessed=all_bytes,
        output_bytes=all_output,
        param_bytes=all_param,
        resident_bytes=all_resident,
        work_bytes=np.zeros(total),
        is_backward=is_backward,
        coloc=coloc,
        edge_src=src[order],
        edge_dst=dst[order],
        edge_bytes=edge_bytes[order],
        name=f"{name}:training=1",
        meta={"source": "synthetic", "tokens": tokens, "training": True},
    )
