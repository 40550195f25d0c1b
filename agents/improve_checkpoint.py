"""Checkpoints of the improvement policy: ``model.safetensors`` + ``config.json``; loading never unpickles.

``config.json`` holds ``format`` (``"rlplace-improve-policy"``), ``format_version``, ``network``
(the `ScorerConfig`), ``weights`` (file name and SHA-256, checked on load), whatever the
writer adds under ``meta`` (trained on, held out, training curves) and ``config_sha256``, the
SHA-256 of the rest of the document (checked on load when present).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from rlplace.errors import RlplaceError

FORMAT = "rlplace-improve-policy"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CONFIG_HASH_FIELD = "config_sha256"


def default_checkpoint_dir() -> Path:
    """``$RLPLACE_CHECKPOINT``, else ``checkpoints/default`` next to the ``agents`` package (the
    repository root in a checkout, ``rlplace/checkpoints/default`` when installed)."""
    override = os.environ.get("RLPLACE_CHECKPOINT")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "checkpoints" / "default"


def is_improve_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a checkpoint of this format (reads config.json only)."""
    path = Path(folder) / CONFIG_FILE
    try:
        return json.loads(path.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def save_scorer(scorer: Any, folder: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``scorer`` (a `MoveScorer`) and ``meta`` to ``folder`` (created); returns the folder.
    The weights go to a temporary name first, so a kill never leaves a half-written pair."""
    from safetensors.torch import save_file

    from rlplace.io import write_text_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").float().contiguous() for name, tensor in scorer.state_dict().items()}
    temporary = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(temporary), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
    temporary.replace(folder / WEIGHTS_FILE)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": scorer.config.to_dict(),
        "weights": {"file": WEIGHTS_FILE, "sha256": digest},
        "meta": meta or {},
    }
    document[CONFIG_HASH_FIELD] = _document_sha256(document)
    write_text_atomic(folder / CONFIG_FILE, json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return folder


def load_scorer(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(`MoveScorer` in eval mode, meta) from ``folder``.

    Raises `RlplaceError` for a missing folder or file, another format or version, weights that
    do not match their SHA-256, a config that does not match its ``config_sha256``, network sizes
    above ``rlplace.limits.MAX_NETWORK_SIZE`` (checked before anything is allocated), or
    tensors that do not fit the recorded network.
    """
    import torch
    from safetensors.torch import load_file

    from rlplace.limits import MAX_NETWORK_SIZE, check_count

    from .scorer import MoveScorer, ScorerConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise RlplaceError(f"no policy checkpoint in {str(folder)!r} (no such folder); pass --checkpoint DIR with a folder written by train_agent.py")
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for needed in (config_path, weights):
        if not needed.is_file():
            raise RlplaceError(f"no policy checkpoint in {str(folder)!r}: it has no {needed.name}; it needs {CONFIG_FILE} and {WEIGHTS_FILE} as written by train_agent.py")
    try:
        document = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise RlplaceError(f"{str(config_path)!r} is not valid JSON: {error}") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise RlplaceError(f"{str(folder)!r} is not an improvement-policy checkpoint (format {found!r}, expected {FORMAT!r}); train one with train_agent.py")
    if document.get("format_version") != FORMAT_VERSION:
        raise RlplaceError(f"checkpoint {str(folder)!r} has format version {document.get('format_version')!r}, this rlplace reads {FORMAT_VERSION}; retrain it with train_agent.py")
    recorded = document.get("weights", {}).get("sha256") if isinstance(document.get("weights"), dict) else None
    if hashlib.sha256(weights.read_bytes()).hexdigest() != recorded:
        raise RlplaceError(f"checkpoint {str(folder)!r}: {WEIGHTS_FILE} does not match the SHA-256 in {CONFIG_FILE}; the files come from different runs")
    if document.get(CONFIG_HASH_FIELD) is not None and document[CONFIG_HASH_FIELD] != _document_sha256(document):
        raise RlplaceError(f"checkpoint {str(folder)!r}: {CONFIG_FILE} does not match its recorded {CONFIG_HASH_FIELD} (the file was modified); copy both files of one run")
    network = document.get("network")
    if not isinstance(network, dict):
        raise RlplaceError(f"checkpoint {str(folder)!r}: the \"network\" section of {CONFIG_FILE} is not an object")
    for key, value in network.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            check_count(value, MAX_NETWORK_SIZE, "MAX_NETWORK_SIZE", f"checkpoint {folder}: network {key}")
    try:
        config = ScorerConfig(**network)
    except TypeError as error:
        raise RlplaceError(f"checkpoint {str(folder)!r}: the network of {CONFIG_FILE} is not a scorer configuration ({error})") from None
    with torch.device("meta"):  # sizes first, no memory: the weights file must hold every tensor
        needed = sum(t.numel() * t.element_size() for t in MoveScorer(config).state_dict().values())
    if needed > weights.stat().st_size:
        raise RlplaceError(
            f"checkpoint {str(folder)!r}: the network of {CONFIG_FILE} needs {needed:,} bytes of weights but {WEIGHTS_FILE} holds "
            f"{weights.stat().st_size:,}; the two files come from different runs"
        )
    scorer = MoveScorer(config)
    try:
        state = load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types
        raise RlplaceError(f"checkpoint {str(folder)!r}: cannot read {WEIGHTS_FILE} ({error})") from None
    expected = {name: tuple(t.shape) for name, t in scorer.state_dict().items()}
    if set(expected) != set(state):
        raise RlplaceError(f"checkpoint {str(folder)!r}: weights do not fit the recorded network (missing {sorted(set(expected) - set(state))[:3]}, unexpected {sorted(set(state) - set(expected))[:3]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != expected[name]:
            raise RlplaceError(
                f"checkpoint {str(folder)!r}: tensor {name!r} in {WEIGHTS_FILE} has shape {tuple(tensor.shape)} but the network of {CONFIG_FILE} "
                f"needs {expected[name]}; the two files come from different runs"
            )
    scorer.load_state_dict(state)
    scorer.eval()
    meta = document.get("meta", {})
    return scorer, meta if isinstance(meta, dict) else {}


def _document_sha256(document: dict[str, Any]) -> str:
    """SHA-256 of ``document`` without its `CONFIG_HASH_FIELD`, as canonical JSON."""
    body = {key: value for key, value in document.items() if key != CONFIG_HASH_FIELD}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode("utf-8")).hexdigest()
