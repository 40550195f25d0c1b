"""Progress feedback of a command: a spinner naming the phase on a terminal, a phase log with ``-v``.

Library code marks its phases with ``with phase("coarsen"):``; nothing is shown unless a
command installed a reporter with `reporting` (the CLI does; `rlplace.place` does not), so the
API and tests stay silent. Phases: capture, coarsen, compile (the simulator's numba kernels),
search (the placement method), simulate. Everything goes to stderr.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, TextIO

_active: _Reporter | None = None


class _Reporter:
    """A rich status spinner (terminals only) plus, when ``verbose``, one log line per finished phase."""

    def __init__(self, verbose: bool, stream: TextIO) -> None:
        from rich.console import Console

        self.verbose = verbose
        self.console = Console(file=stream, stderr=stream is sys.stderr)
        self.status: Any = self.console.status("") if self.console.is_terminal else None
        self.depth = 0

    def start(self, name: str, detail: str) -> None:
        if self.status is not None:
            self.status.update(f"{name}{': ' + detail if detail else ''} ...")
            if self.depth == 0:
                self.status.start()
        self.depth += 1

    def finish(self, name: str, detail: str, seconds: float) -> None:
        self.depth -= 1
        if self.status is not None and self.depth == 0:
            self.status.stop()
        if self.verbose:
            self.console.print(f"[dim]phase {name}{' (' + detail + ')' if detail else ''}: {seconds:.2f} s[/]", highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"note: {text}", highlight=False, markup=False)


@contextmanager
def reporting(*, verbose: bool = False, stream: TextIO | None = None) -> Iterator[None]:
    """Show the phases run inside this block (spinner on a terminal; ``verbose``: a line per phase)."""
    global _active
    previous, _active = _active, _Reporter(verbose, stream or sys.stderr)
    try:
        yield
    finally:
        if _active is not None and _active.status is not None:
            _active.status.stop()
        _active = previous


@contextmanager
def phase(name: str, detail: str = "") -> Iterator[None]:
    """Mark a phase of the work (a no-op unless `reporting` is active)."""
    reporter = _active
    if reporter is None:
        yield
        return
    started = time.perf_counter()
    reporter.start(name, detail)
    try:
        yield
    finally:
        reporter.finish(name, detail, time.perf_counter() - started)


def note(text: str) -> None:
    """One ``note: ...`` line on stderr when `reporting` is active."""
    if _active is not None:
        _active.note(text)


def kernels_cached() -> bool:
    """Whether numba's on-disk cache already holds the simulator's compiled kernels."""
    from rlplace import _simkernel

    folder = Path(_simkernel.__file__).parent / "__pycache__"
    return any(folder.glob("_simkernel*.nbi"))


def compile_phase() -> Any:
    """The ``compile`` phase, with a note the first time (no cache yet) that it takes a while."""
    if _active is None:
        return nullcontext()
    if not kernels_cached():
        note("compiling the simulator's and the search's kernels with numba (first run only; 40 s on a 2-core machine, 80 s with --method policy; cached afterwards)")
    return phase("compile", "simulator kernels")
