"""MODEL specs that name Python code: ``path/to/file.py:function`` (`rlplace.load` owns all specs).

A file spec imports the file by its path (no ``sys.path`` changes) and calls ``function``,
which returns ``(module, example_inputs)``: an ``nn.Module`` and a tuple of positional
inputs or a dict of keyword inputs. When a batch size is asked for, the function must take
a ``batch_size`` keyword. Build big models under ``torch.device("meta")`` so that loading
them costs no weight memory. Every problem raises `RlplaceError` naming the spec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from rlplace.errors import RlplaceError
from rlplace.interrupt import Terminated


def parse_python_spec(spec: str) -> tuple[Path, str]:
    """Split ``path/to/file.py:function`` into the file and the function name."""
    path, sep, function = spec.rpartition(":")
    if not sep or not path.endswith(".py") or not function:
        raise RlplaceError(f"model spec {spec!r} is not of the form path/to/file.py:function")
    if not function.isidentifier():
        raise RlplaceError(f"model spec {spec!r}: {function!r} is not a Python function name")
    return Path(path), function


def call_model_function(spec: str, *, batch_size: int | None = None) -> tuple[Any, tuple[Any, ...] | dict[str, Any]]:
    """``(module, example_inputs)`` of a ``path/to/file.py:function`` spec.

    Importing the file runs its top-level code, like any Python entry point.

    Raises:
        RlplaceError: malformed spec, missing file or function, a function that raises
            (``SystemExit`` from the user's code included) or returns something other than
            ``(module, example_inputs)``, or a batch size the function cannot take.
    """
    path, function_name = parse_python_spec(spec)
    return _call(_find_function(_import_file(path, spec), function_name, spec), spec, function_name, batch_size)


def is_dotted_spec(spec: str) -> bool:
    """True for ``package.module:function`` (dotted Python names on both sides)."""
    location, sep, function = spec.rpartition(":")
    return bool(sep) and function.isidentifier() and bool(location) and all(part.isidentifier() for part in location.split("."))


def call_module_function(spec: str, *, batch_size: int | None = None) -> tuple[Any, tuple[Any, ...] | dict[str, Any]]:
    """``(module, example_inputs)`` of a ``package.module:function`` spec: the module is imported
    by name (running its top-level code), then the function called as in `call_model_function`."""
    if not is_dotted_spec(spec):
        raise RlplaceError(f"model spec {spec!r} is not of the form package.module:function")
    location, _, function_name = spec.rpartition(":")
    try:
        source = importlib.import_module(location)
    except (KeyboardInterrupt, Terminated):
        raise
    except BaseException as exc:  # any error while importing the user's module, sys.exit() included
        raise RlplaceError(f"model spec {spec!r}: importing {location!r} raised {type(exc).__name__}: {_first_line(exc)}") from None
    return _call(_find_function(source, function_name, spec), spec, function_name, batch_size)


def _call(function: Callable[..., Any], spec: str, function_name: str, batch_size: int | None) -> tuple[Any, tuple[Any, ...] | dict[str, Any]]:
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise RlplaceError(f"batch size must be a positive integer, got {batch_size!r}")
    kwargs: dict[str, Any] = {}
    if batch_size is not None:
        if not _accepts_keyword(function, "batch_size"):
            raise RlplaceError(f"model spec {spec!r}: {function_name}() takes no batch_size argument; add a batch_size parameter or drop --batch-size")
        kwargs["batch_size"] = batch_size
    try:
        result = function(**kwargs)
    except (KeyboardInterrupt, Terminated):
        raise
    except BaseException as exc:  # the user's code may raise anything, sys.exit() included: a model problem
        raise RlplaceError(f"model spec {spec!r}: {function_name}() raised {type(exc).__name__}: {_first_line(exc)}") from exc
    return check_model_result(result, spec, function_name)


def _import_file(path: Path, spec: str) -> ModuleType:
    if not path.is_file():
        raise RlplaceError(f"model spec {spec!r}: file {str(path)!r} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    safe_stem = re.sub(r"\W", "_", resolved.stem)
    module_name = f"_rlplace_model_{safe_stem}_{digest}"
    import_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if import_spec is None or import_spec.loader is None:
        raise RlplaceError(f"model spec {spec!r}: cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(import_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look classes up here
    try:
        import_spec.loader.exec_module(module)
    except (KeyboardInterrupt, Terminated):
        sys.modules.pop(module_name, None)
        raise
    except BaseException as exc:  # any error while running the user's file, sys.exit() included
        sys.modules.pop(module_name, None)
        raise RlplaceError(f"model spec {spec!r}: importing {str(path)!r} raised {type(exc).__name__}: {_first_line(exc)}") from exc
    return module


def _find_function(module: ModuleType, function_name: str, spec: str) -> Callable[..., Any]:
    function = getattr(module, function_name, None)
    if function is None:
        available = sorted(
            name for name, value in vars(module).items() if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == module.__name__
        )
        hint = f"; functions defined there: {', '.join(available)}" if available else ""
        raise RlplaceError(f"model spec {spec!r}: the file defines no {function_name!r}{hint}")
    if not callable(function):
        raise RlplaceError(f"model spec {spec!r}: {function_name!r} is a {type(function).__name__}, not a function")
    return function


def _accepts_keyword(function: Callable[..., Any], keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any((p.name == keyword and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)) or p.kind == p.VAR_KEYWORD for p in parameters)


def check_model_result(result: Any, spec: str, function_name: str) -> tuple[Any, tuple[Any, ...] | dict[str, Any]]:
    """``result`` as ``(module, example_inputs)``: inputs a tuple or a str-keyed dict; else `RlplaceError`."""
    import torch

    expected = "(module, example_inputs) with module a torch.nn.Module and example_inputs a tuple or a dict"
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise RlplaceError(f"model spec {spec!r}: {function_name}() must return {expected}; it returned {_describe(result)}")
    module, example_inputs = result
    if not isinstance(module, torch.nn.Module):
        raise RlplaceError(f"model spec {spec!r}: {function_name}() must return {expected}; its first item is {_describe(module)}")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    elif isinstance(example_inputs, list):
        example_inputs = tuple(example_inputs)
    elif isinstance(example_inputs, Mapping):
        if not all(isinstance(key, str) for key in example_inputs):
            raise RlplaceError(f"model spec {spec!r}: {function_name}() returned a dict of example inputs whose keys are not all strings")
        example_inputs = dict(example_inputs)
    elif not isinstance(example_inputs, tuple):
        raise RlplaceError(f"model spec {spec!r}: {function_name}() must return {expected}; its second item is {_describe(example_inputs)}")
    return module, example_inputs


def _describe(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
