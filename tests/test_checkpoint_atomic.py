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


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """A kill -9 mid-write leaves the temporary; the next write of the same file deletes it (its writer
    is dead), while a live writer's temporary is kept."""
    import subprocess
    import sys
    path = tmp_path / "ae-123.pt"
    child = subprocess.run([sys.executable, "-c", (
        "import os, sys\nfrom nextscale.checkpoint import atomic_path\n"
        f"with atomic_path({str(path)!r}) as tmp:\n    tmp.write_bytes(b'torn')\n    os._exit(9)\n")])
    assert child.returncode == 9
    torn = [p.name for p in tmp_path.iterdir()]
    assert len(torn) == 1 and torn[0].endswith(".tmp.pt")
    live = tmp_path / f".ae-123.{os.getppid()}.abcd.tmp.pt"  # a live process's (pytest's parent)
    live.write_bytes(b"being written")
    save_checkpoint(path, {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, path.name])


def test_no_space_is_one_line_naming_the_folder_and_the_sizes(tmp_path):
    """The shell's file size limit (as a full disk): one OutOfSpace line, the previous checkpoint kept."""
    import subprocess
    import sys
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"a": 1})
    script = ("import resource, torch\nfrom nextscale.checkpoint import save_checkpoint, OutOfSpace\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
              f"try:\n    save_checkpoint({str(path)!r}, {{'w': torch.zeros(1_000_000)}})\n"
              "except OutOfSpace as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert f"cannot write {path}: no space for it in {tmp_path}" in out.stdout
    assert "file size limit 0.1 MB, about 4.0 MB needed" in out.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


def test_the_run_lock_never_follows_a_link(tmp_path):
    from nextscale.cli import out_lock
    mine = tmp_path / "notes.txt"
    mine.write_text("a user's file")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(mine)
    with pytest.raises(ValueError, match=r"\.lock is a link, not the run's lock file"):
        with out_lock(out):
            pass
    assert mine.read_text() == "a user's file"
