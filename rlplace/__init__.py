"""rlplace: learned device placement of deep-learning training graphs on accelerator clusters.

``rlplace.place(model, example_inputs, cluster=..., method=...)`` is the Python API
(`rlplace.api`); it is imported on first use so that ``import rlplace`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["PlacementResult", "__version__", "place"]

if TYPE_CHECKING:
    from rlplace.api import PlacementResult, place


def __getattr__(name: str) -> Any:
    if name in ("place", "PlacementResult"):
        from rlplace import api

        return getattr(api, name)
    raise AttributeError(f"module 'rlplace' has no attribute {name!r}")
