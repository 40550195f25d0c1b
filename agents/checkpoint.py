"""Policy checkpoints: weights in safetensors, everything else in JSON; loading never unpickles.

A checkpoint is a folder with two files:

``model.safetensors``
    The `PlacementNetwork`'s ``state_dict`` (float32 tensors, names as in the module).
``config.json``
    ``format`` (``"rlplace-policy"``), ``format_version`` (`FORMAT_VERSION`), ``network`` (the
    `NetworkConfig`), ``env`` (the env settings the policy was trained under: padding sizes,
    action form, objective, memory handling, reference heuristic), ``trained_on`` and
    ``heldout`` (MODEL and cluster specs), ``train_config`` (the `TrainConfig` of the run),
    ``training`` (timesteps, wall seconds, learning curve), ``versions`` (python, rlplace,
    torch, numpy, gymnasium, stable-baselines3, sb3-contrib) and ``weights`` (file name and
    its SHA-256, checked on load) and ``config_sha256``: the SHA-256 of the rest of the
    document (canonical JSON), so that neither file can be edited alone. Network sizes above
    ``rlplace.limits.MAX_NETWORK_SIZE`` are refused before anything is allocated.

A checkpoint of another format version is refused with an `RlplaceError` that names both
versions and what to do.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from rlplace.errors import RlplaceError
from rlplace.io import read_json, write_text_atomic

from .checkpoint_files import CONFIG_FILE, CONFIG_HASH_FIELD, WEIGHTS_FILE, check_network_sizes, document_sha256, file_sha256, load_weights
from .network import NetworkConfig, PlacementNetwork

FORMAT = "rlplace-policy"
FORMAT_VERSION = 1
_VERSIONED_PACKAGES = ("rlplace", "torch", "numpy", "gymnasium", "stable-baselines3", "sb3-contrib")


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """A loaded (or about to be saved) policy.

    Attributes:
        network: the network, in eval mode after `load_checkpoint`.
        env: env settings the policy expects (``max_nodes``, ``max_devices``, ``max_edges``,
            ``action_form``, ``objective``, ``microbatches``, ``oom_mode``, ``reference_method``).
        trained_on, heldout: ``{"models": [...], "clusters": [...]}`` specs.
        train_config: the training settings as a dict.
        training: ``timesteps``, ``wall_s``, ``curve`` ([timesteps, mean reward] rows) and more.
        versions: package versions of the run that wrote it.
        path: the folder it was loaded from (None before saving).
    """

    network: PlacementNetwork
    env: dict[str, Any]
    trained_on: dict[str, list[str]] = field(default_factory=dict)
    heldout: dict[str, list[str]] = field(default_factory=dict)
    train_config: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    @property
    def network_config(self) -> NetworkConfig:
        return self.network.config

    def config_json(self, weights_sha256: str) -> dict[str, Any]:
        """The ``config.json`` document."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "network": self.network_config.to_dict(),
            "env": self.env,
            "trained_on": self.trained_on,
            "heldout": self.heldout,
            "train_config": self.train_config,
            "training": self.training,
            "versions": self.versions or package_versions(),
            "weights": {"file": WEIGHTS_FILE, "sha256": weights_sha256},
        }


def package_versions() -> dict[str, str]:
    """Versions of python and the packages a checkpoint depends on ("absent" when not installed)."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def save_checkpoint(checkpoint: Checkpoint, directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (created if needed)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu", torch.float32).contiguous() for name, tensor in checkpoint.network.state_dict().items()}
    weights = folder / WEIGHTS_FILE
    temporary = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(temporary), metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})
    temporary.replace(weights)
    document = checkpoint.config_json(file_sha256(weights))
    document[CONFIG_HASH_FIELD] = document_sha256(document)
    write_text_atomic(folder / CONFIG_FILE, json.dumps(document, indent=2, sort_keys=False, allow_nan=False) + "\n")
    return folder


def load_checkpoint(directory: str | Path) -> Checkpoint:
    """Read a checkpoint folder (safetensors + JSON only; nothing is unpickled).

    Raises `RlplaceError` when the folder or a file is missing, the format or its version is
    not this one, the weights do not match their recorded hash, or the tensors do not fit
    the recorded network.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise RlplaceError(f"checkpoint folder {folder} does not exist; pass --checkpoint DIR with a folder written by train_agent.py")
    config_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for needed in (config_path, weights):
        if not needed.is_file():
            raise RlplaceError(f"checkpoint {folder} has no {needed.name}; it needs {CONFIG_FILE} and {WEIGHTS_FILE} as written by train_agent.py")
    document = read_json(config_path)
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise RlplaceError(f"{config_path} is not an rlplace policy checkpoint (its \"format\" is not {FORMAT!r})")
    version = document.get("format_version")
    if version != FORMAT_VERSION:
        wrote = document.get("versions", {}).get("rlplace", "unknown") if isinstance(document.get("versions"), dict) else "unknown"
        raise RlplaceError(
            f"checkpoint {folder} has format version {version!r} (written by rlplace {wrote}), but this rlplace reads format version "
            f"{FORMAT_VERSION}; retrain it with `python train_agent.py ... --out {folder}`, or use the rlplace version that wrote it"
        )
    expected = document.get("weights", {}).get("sha256") if isinstance(document.get("weights"), dict) else None
    actual = file_sha256(weights)
    if expected != actual:
        raise RlplaceError(f"checkpoint {folder}: {WEIGHTS_FILE} does not match the SHA-256 recorded in {CONFIG_FILE} (the files come from different runs or were modified); copy both files of one run")
    recorded = document.get(CONFIG_HASH_FIELD)
    if recorded is not None and recorded != document_sha256(document):  # checkpoints before it lack the field
        raise RlplaceError(f"checkpoint {folder}: {CONFIG_FILE} does not match its recorded {CONFIG_HASH_FIELD} (the file was modified); copy both files of one run")
    check_network_sizes(document.get("network", {}), f"checkpoint {folder}")
    config = NetworkConfig.from_dict(document.get("network", {}))
    network = load_weights(lambda: PlacementNetwork(config), weights, f"checkpoint {folder}")
    return Checkpoint(
        network=network,
        env=dict(document.get("env", {})),
        trained_on=dict(document.get("trained_on", {})),
        heldout=dict(document.get("heldout", {})),
        train_config=dict(document.get("train_config", {})),
        training=dict(document.get("training", {})),
        versions=dict(document.get("versions", {})),
        path=folder,
    )
