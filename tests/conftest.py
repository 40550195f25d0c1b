"""Shared test setup."""

from __future__ import annotations

import pytest

import rlplace.policy_method as policy_method
from rlplace.baselines import local_search
from rlplace.objectives import OBJECTIVES, SCHEDULES


@pytest.fixture(autouse=True)
def _warm_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs as if its process were warm already: the warm-ups
    (`rlplace.policy_method.warm_up`, `rlplace.baselines.local_search.warm_up`) only move
    first-use loads out of a timed decision, and their tiny decisions would otherwise show up
    in whatever a test counts (tests/test_warm_up.py checks them in fresh interpreters)."""
    monkeypatch.setattr(policy_method, "_WARMED", {True, False})
    monkeypatch.setattr(local_search, "_WARMED", {(objective, schedule) for objective in OBJECTIVES for schedule in ("", *SCHEDULES)})
