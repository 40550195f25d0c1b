"""What every policy checkpoint format shares: its two file names, the hashes that tie them
together, the network-size limit, and a weights loader that checks before it allocates.

A checkpoint is ``model.safetensors`` (the weights) plus ``config.json`` (the network sizes,
the weights' SHA-256 and ``config_sha256``, the SHA-256 of the rest of the document). Loading
never unpickles. `rlplace.agents.checkpoint` (one-shot / sequential policy) and
`rlplace.agents.improve_checkpoint` (improvement policy) differ only in what the document says.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlplace.errors import RlplaceError
from rlplace.limits import MAX_NETWORK_SIZE, check_count

if TYPE_CHECKING:
    from torch import nn

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: SHA-256 of config.json without this field (canonical JSON); checked on load when present.
CONFIG_HASH_FIELD = "config_sha256"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def document_sha256(document: dict[str, Any]) -> str:
    """SHA-256 of ``document`` without its `CONFIG_HASH_FIELD`, as canonical JSON."""
    body = {key: value for key, value in document.items() if key != CONFIG_HASH_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")).hexdigest()


def check_network_sizes(network: Any, label: str) -> None:
    """Every whole-number size of the ``network`` section at most `MAX_NETWORK_SIZE`.

    ``label`` starts each error (e.g. ``checkpoint runs/x``).
    """
    if not isinstance(network, dict):
        raise RlplaceError(f"{label}: the \"network\" section of {CONFIG_FILE} is not an object")
    for key, value in network.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            check_count(value, MAX_NETWORK_SIZE, "MAX_NETWORK_SIZE", f"{label}: network {key}")


def load_weights(build: Callable[[], nn.Module], weights: Path, label: str) -> nn.Module:
    """``build()`` with the tensors of ``weights`` loaded, in eval mode.

    The network is first built on the meta device to compare the bytes it needs with the
    file's size (a config that asks for a huge network fails before any memory is taken);
    then every tensor name and shape is checked against the file. ``label`` starts each error.
    """
    import torch
    from safetensors.torch import load_file

    with torch.device("meta"):
        needed = sum(t.numel() * t.element_size() for t in build().state_dict().values())
    if needed > weights.stat().st_size:
        raise RlplaceError(
            f"{label}: the network of {CONFIG_FILE} needs {needed:,} bytes of weights but {WEIGHTS_FILE} holds "
            f"{weights.stat().st_size:,}; the two files come from different runs"
        )
    network = build()
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own SafetensorError and OSError subclasses
        raise RlplaceError(f"{label}: cannot read {WEIGHTS_FILE} ({error})") from None
    expected = {name: tuple(tensor.shape) for name, tensor in network.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise RlplaceError(f"{label}: weights do not fit the recorded network (missing {missing[:3]}, unexpected {unexpected[:3]}); the files come from different versions")
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise RlplaceError(
                f"{label}: tensor {name!r} in {WEIGHTS_FILE} has shape {tuple(tensor.shape)} but the network of {CONFIG_FILE} "
                f"needs {expected[name]}; the two files come from different runs"
            )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise RlplaceError(f"{label}: weights do not fit the recorded network ({str(error).splitlines()[0]})") from None
    network.eval()
    return network
