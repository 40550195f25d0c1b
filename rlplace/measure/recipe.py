"""How every process builds the same model: a spec string, a batch size and a seed.

Workers of a distributed measurement run in fresh interpreters (locally or on other hosts),
so they rebuild the model from this recipe instead of receiving it: the same seed gives the
same weights and inputs on every rank, and the same trace gives the same node names.

Specs:
    ``zoo:NAME``                   a named model of ``rlplace.zoo``;
    ``path/to/file.py:function``   a function returning ``(module, example_inputs)``;
    ``package.module:function``    the same, imported by module name.
"""

from __future__ import annotations

import importlib
import inspect
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
    from rlplace.modelspec import ZOO_PREFIX, is_python_spec, load_model_spec

    if spec.startswith(ZOO_PREFIX) or is_python_spec(spec):
        loaded = load_model_spec(spec, batch_size=batch_size)
        return loaded.module, loaded.example_inputs
    location, _, function_name = spec.rpartition(":")
    if not location or not function_name or location.endswith(".json"):
        raise RlplaceError(
            f"cannot measure model spec {spec!r}: measurement runs PyTorch code; use zoo:NAME, path/to/file.py:function or package.module:function"
        )
    try:
        source = importlib.import_module(location)
    except ImportError as exc:
        raise RlplaceError(f"cannot import {location!r} for model spec {spec!r}: {exc}") from None
    factory = getattr(source, function_name, None)
    if not callable(factory):
        raise RlplaceError(f"{location} has no function {function_name!r}")
    accepts_batch = "batch_size" in inspect.signature(factory).parameters
    result = factory(batch_size=batch_size) if batch_size is not None and accepts_batch else factory()
    if not (isinstance(result, tuple) and len(result) == 2):
        raise RlplaceError(f"{spec} must return (module, example_inputs)")
    return result
