"""The import graph of rlplace, envs and agents: no circles, and no import from a lower layer to a higher one.

Every ``import`` statement counts, wherever it is: at module level, inside a function (lazy
imports), under ``if TYPE_CHECKING:``. ``rlplace/envs`` and ``rlplace/agents`` are symlinks to
``envs/`` and ``agents/`` in worktrees; each file is read once, under the name code imports it
by (``rlplace.envs.x``, ``rlplace.agents.x``).

The layers, top to bottom (README, "Layout"): a module may import its own layer and any layer
below it, never one above.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (layer, module prefixes), top to bottom. The first prefix that matches a module (longest
#: prefixes are tried first) decides its layer.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # The package itself: ``rlplace.place`` re-exports the Python API (imported on first use).
    ("package", ("rlplace",)),
    ("cli", ("rlplace.cli", "rlplace.__main__")),
    # The subcommands' bodies (``rlplace measure`` lives with its tools) and the Python API.
    ("commands", ("rlplace.commands", "rlplace.measure.cli", "rlplace.api", "rlplace.runtime")),
    ("pipeline", ("rlplace.pipeline", "rlplace.report")),
    ("methods", ("rlplace.methods", "rlplace.policy_method")),
    ("agents", ("rlplace.agents",)),
    ("envs", ("rlplace.envs",)),
    ("baselines", ("rlplace.baselines",)),
    # Inputs: models, graphs, clusters and measured profiles in, graphs and cost inputs out.
    (
        "inputs",
        (
            "rlplace.load",
            "rlplace.modelspec",
            "rlplace.zoo",
            "rlplace.zoo_models",
            "rlplace.capture",
            "rlplace.formats",
            "rlplace.measure",
            "rlplace.synthetic",
            "rlplace.catalog",
            "rlplace.cluster_spec",
        ),
    ),
    # Core: graph, cluster, costs, simulate, the placement rules and their small helpers.
    (
        "core",
        (
            "rlplace.rules",
            "rlplace.placement",
            "rlplace.plot",
            "rlplace.trace",
            "rlplace.coarsen",
            "rlplace.simulate",
            "rlplace.schedules",
            "rlplace._simkernel",
            "rlplace.costs",
            "rlplace.profile",
            "rlplace.cluster",
            "rlplace.graph",
            "rlplace.objectives",
            "rlplace.units",
            "rlplace.devicemap",
            "rlplace.feedback",
            "rlplace.io",
            "rlplace.errors",
        ),
    ),
)

#: Import edges (importer, imported) that break the rules and are being removed by work in
#: progress, each with a comment naming who removes it. Empty since the cli <-> commands,
#: capture/api -> modelspec -> zoo -> capture and measure/calibrate <-> distributed circles went
#: (issue 14); never grow it.
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def _canonical(module: str) -> str:
    """``envs.x`` and ``agents.x`` (top-level packages) are ``rlplace.envs.x``, ``rlplace.agents.x``."""
    for package in ("envs", "agents"):
        if module == package or module.startswith(package + "."):
            return "rlplace." + module
    return module


def _source_files() -> Iterator[tuple[str, Path]]:
    """(module name, path) of every module, each file once (the symlinked folders are skipped)."""
    for top, prefix in (("rlplace", "rlplace"), ("envs", "rlplace.envs"), ("agents", "rlplace.agents")):
        base = ROOT / top
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base)
            if any((base / part).is_symlink() for part in relative.parts[:1]):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join([prefix, *parts]), path


def _imports(module: str, path: Path, is_package: bool, known: set[str]) -> Iterator[str]:
    """Every module name ``path`` imports, absolute. ``from a import b`` is module ``a.b`` when
    that is a module of the repository, else (a name defined in ``a``) module ``a``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield _canonical(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = _canonical(node.module or "")
            for alias in node.names:
                yield f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target


@functools.cache
def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of this repository it imports (each resolved to the longest known name)."""
    files = dict(_source_files())
    known = set(files)
    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        targets: set[str] = set()
        for name in _imports(module, path, path.name == "__init__.py", known):
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                targets.add(name)
        graph[module] = targets
    return graph


def layer_of(module: str) -> int:
    """Index in `LAYERS` (0 = top) of ``module``; the package ``rlplace`` matches only itself, and
    a module no prefix names is core, the strictest place (it may import only core)."""
    best: tuple[int, int] | None = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or (prefix != "rlplace" and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return len(LAYERS) - 1 if best is None else best[0]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _without_known(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {module: {t for t in targets if (module, t) not in KNOWN_VIOLATIONS} for module, targets in graph.items()}


def test_the_import_graph_is_read() -> None:
    graph = import_graph()
    assert "rlplace.rules.finish" in graph["rlplace.baselines.m_topo"] or "rlplace.rules" in graph["rlplace.baselines.m_topo"]
    assert "rlplace.envs.problem" in graph and "rlplace.agents.infer" in graph
    assert not any(name.startswith(("envs.", "agents.")) for name in graph)
    # Lazy imports inside functions count: the policy method imports the agents only when called.
    assert "rlplace.agents.guided_search" in graph["rlplace.policy_method"]
    # Relative imports resolve inside the package.
    assert "rlplace.envs.problem" in graph["rlplace.envs.placement_env"]


def test_no_import_circles() -> None:
    cycles = _cycles(_without_known(import_graph()))
    assert cycles == [], f"import circles: {cycles}"


def test_no_import_goes_up_a_layer() -> None:
    graph = _without_known(import_graph())
    upward = sorted(
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in graph.items()
        for target in targets
        if layer_of(target) < layer_of(module)
    )
    assert upward == [], "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_known_violations_still_exist() -> None:
    """An allow-list entry that no longer matches an import must be deleted (the list only shrinks)."""
    graph = import_graph()
    stale = sorted(f"{a} -> {b}" for a, b in KNOWN_VIOLATIONS if b not in graph.get(a, set()))
    assert stale == [], f"remove these fixed entries from KNOWN_VIOLATIONS: {stale}"


def test_the_checks_catch_a_circle_and_know_the_order() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    order = ["rlplace", "rlplace.cli", "rlplace.commands", "rlplace.pipeline", "rlplace.methods", "rlplace.agents.infer",
             "rlplace.envs.problem", "rlplace.baselines.dp", "rlplace.capture.api", "rlplace.rules.finish"]  # fmt: skip
    assert [layer_of(m) for m in order] == sorted(layer_of(m) for m in order)
    assert layer_of("rlplace.some_new_module") == len(LAYERS) - 1  # unnamed modules are core
