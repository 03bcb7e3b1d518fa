"""Every output file is written atomically, with the permissions the user's umask gives (not 0600)."""
import os
import stat

import pytest

from nextscale.checkpoint import atomic_path, save_checkpoint, write_text


def test_a_failed_write_leaves_the_previous_file_and_no_temp(tmp_path):
    path = tmp_path / "results.json"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    with atomic_path(path) as tmp:
        assert tmp.parent == path.parent and tmp.suffix == ".json" and tmp != path
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_outputs_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "report.md", "x")
        save_checkpoint(tmp_path / "c.pt", {"a": 1})
    finally:
        os.umask(old)
    for name in ("report.md", "c.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
