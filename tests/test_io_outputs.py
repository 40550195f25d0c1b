"""One command's output files are written all or none, also when a rename fails midway."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rlplace.errors import RlplaceError
from rlplace.io import write_outputs


def test_all_files_are_written_and_no_temporary_is_left(tmp_path: Path) -> None:
    old = tmp_path / "a.json"
    old.write_text("old a")
    write_outputs({old: "new a", tmp_path / "b.png": b"\x89PNG"})
    assert old.read_text() == "new a" and (tmp_path / "b.png").read_bytes() == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.png"]


@pytest.mark.parametrize("failing", [1, 2])
def test_a_failed_rename_puts_back_the_files_already_renamed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: int) -> None:
    existing, fresh, last = tmp_path / "placement.json", tmp_path / "trace.json", tmp_path / "picture.png"
    existing.write_text("the old placement")
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src: str, dst: str | Path) -> None:
        if Path(dst).parent == tmp_path and not Path(dst).name.startswith("."):
            calls["n"] += 1
            if calls["n"] == failing + 1:
                raise PermissionError(13, "Permission denied", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(RlplaceError, match=r"cannot write .*: Permission denied"):
        write_outputs({existing: "the new placement", fresh: "{}", last: b"png"})
    assert existing.read_text() == "the old placement"  # restored from its hard link
    assert not fresh.exists() and not last.exists()  # created by this call, removed again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["placement.json"]  # no temporary, no link left
