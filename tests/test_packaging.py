"""A wheel of rlplace, installed into a fresh venv, places a zoo model with the policy it ships."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "train_agent.py", "rlplace", "envs", "agents", "checkpoints/default")


def copy_sources(target: Path) -> None:
    """The files a wheel build reads (the symlinks rlplace/envs, rlplace/agents and caches left out)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "envs", "agents")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore if name == "rlplace" else shutil.ignore_patterns("__pycache__"))
        else:
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done


def package_folders() -> set[str]:
    """Dotted names of the folders with an ``__init__.py`` that make up the installed packages."""
    names = {"rlplace.envs", "rlplace.agents"}
    for init in (ROOT / "rlplace").rglob("__init__.py"):
        relative = init.parent.relative_to(ROOT)
        if relative.parts[:2] not in (("rlplace", "envs"), ("rlplace", "agents")):  # import symlinks of worktrees
            names.add(".".join(relative.parts))
    return names


def test_pyproject_lists_every_package_folder() -> None:
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert package_folders() <= listed, f"packages missing from pyproject.toml: {sorted(package_folders() - listed)}"


def test_wheel_in_a_fresh_venv_places_with_the_packaged_policy(tmp_path: Path) -> None:
    source, wheels, venv, outside = tmp_path / "src", tmp_path / "wheels", tmp_path / "venv", tmp_path / "elsewhere"
    copy_sources(source)
    outside.mkdir()
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(source)], cwd=tmp_path)
    (wheel,) = wheels.glob("rlplace-*.whl")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    # The venv sees torch and the other dependencies of this interpreter through a .pth file
    # (path lines only: the editable-install hook of the checkout is not run), and rlplace
    # only from the wheel installed into its own site-packages, which comes first.
    venv_site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=outside).stdout.strip())
    (venv_site / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--quiet", str(wheel)], cwd=tmp_path)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "RLPLACE_CHECKPOINT", "VIRTUAL_ENV")}
    located = run([str(python), "-c", "import rlplace, rlplace.agents.infer as i; print(rlplace.__file__); print(i.default_checkpoint_dir())"], outside, env)
    module_file, checkpoint = located.stdout.split()
    assert module_file.startswith(str(venv_site)), located.stdout
    assert Path(checkpoint) == venv_site / "rlplace" / "checkpoints" / "default"
    assert (Path(checkpoint) / "model.safetensors").is_file()
    imports = "; ".join(f"import {name}" for name in sorted(package_folders()))
    run([str(python), "-c", imports], outside, env)
    placed = run([str(venv / "bin" / "rlplace"), "place", "zoo:mlp-small", "--cluster", "2xV100-pcie", "--method", "policy", "--json"], outside, env)
    answer = json.loads(placed.stdout)
    assert answer["method"] == "policy"
    assert answer["step_time"] > 0
    assert len(answer["placement"]) == answer["num_ops"]
    help_text = run([str(venv / "bin" / "rlplace"), "train", "--help"], outside, env).stdout
    assert "--expert-time-s" in help_text and "--ppo-timesteps" in help_text
