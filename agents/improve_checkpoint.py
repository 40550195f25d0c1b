"""Checkpoints of the improvement policy: ``model.safetensors`` + ``config.json``; loading never unpickles.

``config.json`` holds ``format`` (``"rlplace-improve-policy"``), ``format_version``, ``network``
(the `ScorerConfig`), ``weights`` (file name and SHA-256, checked on load), whatever the
writer adds under ``meta`` (trained on, held out, training curves) and ``config_sha256``, the
SHA-256 of the rest of the document (checked on load when present).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rlplace.errors import RlplaceError
from rlplace.io import read_json

from .checkpoint_files import CONFIG_FILE, CONFIG_HASH_FIELD, WEIGHTS_FILE, check_network_sizes, document_sha256, file_sha256, load_weights

FORMAT = "rlplace-improve-policy"
FORMAT_VERSION = 1


def default_checkpoint_dir() -> Path:
    """``$RLPLACE_CHECKPOINT``, else ``checkpoints/default`` next to the ``agents`` package (the
    repository root in a checkout, ``rlplace/checkpoints/default`` when installed)."""
    override = os.environ.get("RLPLACE_CHECKPOINT")
    return Path(override) if override else Path(__file__).resolve().parents[1] / "checkpoints" / "default"


def is_improve_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a checkpoint of this format (reads config.json only)."""
    try:
        document = read_json(Path(folder) / CONFIG_FILE)
    except RlplaceError:
        return False
    return isinstance(document, dict) and document.get("format") == FORMAT


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
    digest = file_sha256(temporary)
    temporary.replace(folder / WEIGHTS_FILE)
    document: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network": scorer.config.to_dict(),
        "weights": {"file": WEIGHTS_FILE, "sha256": digest},
        "meta": meta or {},
    }
    document[CONFIG_HASH_FIELD] = document_sha256(document)
    write_text_atomic(folder / CONFIG_FILE, json.dumps(document, indent=1, sort_keys=True, allow_nan=False) + "\n")
    return folder


def load_scorer(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """(`MoveScorer` in eval mode, meta) from ``folder``.

    Raises `RlplaceError` for a missing folder or file, another format or version, weights that
    do not match their SHA-256, a config that does not match its ``config_sha256``, network sizes
    above ``rlplace.limits.MAX_NETWORK_SIZE`` (checked before anything is allocated), or
    tensors that do not fit the recorded network.
    """
    from .scorer import MoveScorer, ScorerConfig

    folder = Path(folder)
    if not folder.is_dir():
        raise RlplaceError(f"no policy checkpoint in {str(folder)!r} (no such folder); pass --checkpoint DIR with a folder written by train_agent.py")
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for needed in (config_path, weights):
        if not needed.is_file():
            raise RlplaceError(f"no policy checkpoint in {str(folder)!r}: it has no {needed.name}; it needs {CONFIG_FILE} and {WEIGHTS_FILE} as written by train_agent.py")
    document = read_json(config_path)  # bounded, strict: names the file on any error
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        found = document.get("format") if isinstance(document, dict) else None
        raise RlplaceError(f"{str(folder)!r} is not an improvement-policy checkpoint (format {found!r}, expected {FORMAT!r}); train one with train_agent.py")
    if document.get("format_version") != FORMAT_VERSION:
        raise RlplaceError(f"checkpoint {str(folder)!r} has format version {document.get('format_version')!r}, this rlplace reads {FORMAT_VERSION}; retrain it with train_agent.py")
    recorded = document.get("weights", {}).get("sha256") if isinstance(document.get("weights"), dict) else None
    if file_sha256(weights) != recorded:
        raise RlplaceError(f"checkpoint {str(folder)!r}: {WEIGHTS_FILE} does not match the SHA-256 in {CONFIG_FILE}; the files come from different runs")
    if document.get(CONFIG_HASH_FIELD) is not None and document[CONFIG_HASH_FIELD] != document_sha256(document):
        raise RlplaceError(f"checkpoint {str(folder)!r}: {CONFIG_FILE} does not match its recorded {CONFIG_HASH_FIELD} (the file was modified); copy both files of one run")
    label = f"checkpoint {str(folder)!r}"
    network = document.get("network")
    check_network_sizes(network, label)
    try:
        config = ScorerConfig(**network)
    except TypeError as error:
        raise RlplaceError(f"{label}: the network of {CONFIG_FILE} is not a scorer configuration ({error})") from None
    scorer = load_weights(lambda: MoveScorer(config), weights, label)
    meta = document.get("meta", {})
    return scorer, meta if isinstance(meta, dict) else {}
