"""How every process builds the same model: a spec string, a batch size and a seed.

Workers of a distributed measurement run in fresh interpreters (locally or on other hosts),
so they rebuild the model from this recipe instead of receiving it: the same seed gives the
same weights and inputs on every rank, and the same trace gives the same node names.

Specs:
    ``zoo:NAME``                   a named model of ``rlplace.zoo``;
    ``path/to/file.py:function``   a function returning ``(module, example_inputs)``;
    ``package.module:function``    the same, imported by module name (its errors, a
                                   ``SystemExit`` included, are `RlplaceError`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from rlplace.errors import RlplaceError
from rlplace.measure.program import materialize


@dataclass(frozen=True)
class ModelRecipe:
    """A model every process can rebuild identically.

    Attributes:
        spec: ``zoo:NAME``, ``path/to/file.py:function`` or ``package.module:function``.
        batch_size: passed to the function or zoo entry when given.
        seed: seeds weights (for meta or freshly built modules) and inputs.
    """

    spec: str
    batch_size: int | None = None
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecipe:
        return cls(spec=str(data["spec"]), batch_size=data.get("batch_size"), seed=int(data.get("seed", 0)))

    def build(self) -> tuple[nn.Module, Any]:
        """The module (real weights, train mode) and its example inputs."""
        torch.manual_seed(self.seed)
        module, inputs = _call_factory(self.spec, self.batch_size)
        if not isinstance(module, nn.Module):
            raise RlplaceError(f"model spec {self.spec!r} returned {type(module).__name__}, not an nn.Module")
        module, inputs = materialize(module, inputs, seed=self.seed)
        return module.train(), inputs


def _call_factory(spec: str, batch_size: int | None) -> tuple[Any, Any]:
    from rlplace.load import model_and_inputs

    if spec.endswith(".json") or spec.startswith("synthetic:"):
        raise RlplaceError(
            f"cannot measure model spec {spec!r}: measurement runs PyTorch code; use zoo:NAME, path/to/file.py:function or package.module:function"
        )
    return model_and_inputs(spec, batch_size=batch_size, importable=True)
