"""Command-line options every head's command shares: output, data, seed, backbone shape, device."""
from __future__ import annotations

import argparse
import os
import stat
import sys
from contextlib import contextmanager
from pathlib import Path

from .autoencoder import CODERS
from .backbone import BackboneConfig
from .checkpoint import TMP_EXTRA
from .data import ImageData, check_images_fit, load_dataset


def add_run_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help="output folder (checkpoints, PNGs, metrics.json)")
    p.add_argument("--data", default="digits", help="'digits', an .npz file or an image folder")
    p.add_argument("--side", type=int, default=None, help="image side (default: 16 for digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128, help="backbone width")
    p.add_argument("--depth", type=int, default=4, help="backbone depth")
    p.add_argument("--heads", type=int, default=4, help="backbone attention heads")
    p.add_argument("--latent-channels", type=int, default=8, help="latent channels (the backbone's in_dim)")
    p.add_argument("--coder", default="conv", choices=tuple(CODERS), help="the autoencoder's coder: conv (small) or "
                   "ldm (the releases' latent-diffusion coder; default: conv)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def data_and_backbone(a: argparse.Namespace) -> tuple[ImageData, BackboneConfig]:
    """The data set the options name and the backbone over its latent pyramid (latent side = image side / 2);
    ``--per-class`` samples of every class must fit in memory."""
    data = load_dataset(a.data, side=a.side, seed=a.seed)
    check_images_fit("--per-class", a.per_class * data.num_classes, data.channels, data.side,
                     "use a smaller --per-class")
    return data, BackboneConfig.for_images(data.side, data.num_classes, a.latent_channels, width=a.width,
                                           depth=a.depth, heads=a.heads)


def _is_dir(path: Path) -> bool | None:
    """True for a folder, False for anything else there, None where nothing is (or it cannot be looked at)."""
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def _name_max(path: Path) -> int:
    """The longest file name the file system holding ``path`` (or its nearest existing folder) allows."""
    for p in (path, *path.parents):
        if _is_dir(p):
            try:
                return os.pathconf(p, "PC_NAME_MAX")
            except (OSError, ValueError):
                break
    return 255


def _short(name: str) -> str:
    return name if len(name) <= 40 else f"{name[:20]}...{name[-12:]} ({len(name)} characters)"


def out_folder(path: str | Path, files=(), folders=(), inputs=(), flag: str = "--out", written: bool = True) -> Path:
    """Create the output folder ``path`` after checking that everything the command will write there can be
    made, so a run is refused before any work rather than failing after it: ``files`` and ``folders`` are
    the names (relative to ``path``) it writes. Each problem is a ``ValueError`` naming ``flag`` and the
    path: an empty path, a regular file at or above the folder, a folder where a file goes or a file where
    a folder goes, a name longer than the file system allows (a file's with its temporary, see
    :data:`TMP_EXTRA`), an output that is one of the command's ``inputs`` (paths it reads: the result
    would replace them; the folder itself too unless ``written`` is False), an unwritable place."""
    if not str(path).strip():
        raise ValueError(f"{flag} must name a folder, got an empty path (it would write into the current folder)")
    out = Path(path)
    limit = _name_max(out)
    targets = [(out / name, False) for name in folders] + [(out / name, True) for name in files]
    for target, is_file in [(out, False)] + targets:  # names first: a stat of too long a name is an error
        parts = target.relative_to(out).parts if target != out else out.parts
        for i, part in enumerate(parts):
            room = limit - (TMP_EXTRA if is_file and i == len(parts) - 1 else 0)
            if len(part.encode()) > room:
                raise ValueError(f"{flag} {_short(str(out))}: the name {_short(part)} is longer than the file "
                                 f"system allows here ({room} bytes{' with its temporary' if room < limit else ''})"
                                 f"; shorten it")
    for p in (out, *out.parents):  # the nearest existing ancestor must be a folder
        kind = _is_dir(p)
        if kind:
            break
        if kind is False:
            raise ValueError(f"{flag} {out} is a file, not a folder" if p == out else
                             f"{flag} {out} is under {p}, which is a file, not a folder")
    for target, is_file in targets:
        if is_file and _is_dir(target):
            raise ValueError(f"{target} is a folder where the run writes a file: remove it or use another {flag}")
        n = len(target.relative_to(out).parts)
        for p in ((target,) if not is_file else ()) + tuple(target.parents)[:n - 1]:
            if _is_dir(p) is False:
                raise ValueError(f"{p} is a file where the run writes a folder: remove it or use another {flag}")
    read = {Path(i).resolve() for i in inputs if i is not None and str(i).strip() and Path(i).exists()}
    for target in [out] * written + [t for t, _ in targets]:
        if target.resolve() in read:
            raise ValueError(f"{flag} {target} is one of the command's inputs: the result would replace it; "
                             f"give another path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {out} is not writable: {e.strerror}") from None
    return out


def out_file(path: str | Path, inputs=(), flag: str = "--out") -> Path:
    """:func:`out_folder` for a command whose output is the one file ``path``: its folder is made and checked,
    the file may not be a folder, too long a name or one of ``inputs``."""
    if not str(path).strip():
        raise ValueError(f"{flag} must name a file, got an empty path")
    path = Path(path)
    out_folder(path.parent, files=(path.name,), inputs=inputs, flag=flag, written=False)
    return path


def remove_stale(out: Path, candidates, written) -> list[Path]:
    """Delete the files in ``out`` matching ``candidates`` (names or glob patterns: the command's own output
    names) that this run did not write (``written``: names), so an earlier run's sample grids or sample
    files do not sit beside this run's report as if they were its. Returns what was removed."""
    keep = {Path(w).name for w in written}
    gone = []
    for pattern in candidates:
        for p in sorted(Path(out).glob(pattern)):
            if p.name not in keep and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
                gone.append(p)
    return gone


def at_least(name: str, value, lo) -> None:
    """A command-line check: ``--name`` must be >= ``lo``."""
    if value is not None and value < lo:
        raise ValueError(f"--{name} must be >= {lo}, got {value}")


def run_or_exit(fn, *args):
    """Run a command; a user error (``ValueError``) prints one line ``error: ...`` (one per problem when it
    lists several, e.g. a run spec's) and exits with status 2. The environment cannot fail a finished run
    at its end: plots are files, drawn with Agg whatever ``MPLBACKEND`` says, and a character the terminal's
    encoding lacks (``±`` under ``PYTHONIOENCODING=ascii``) is printed escaped."""
    os.environ["MPLBACKEND"] = "Agg"
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return fn(*args)
    except ValueError as e:
        for line in str(e).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback; 130 is the shell's status for SIGINT
        print("\ninterrupted: the same command resumes where this one stopped (finished stages are reused, "
              "a stage in training from its last checkpoint, written every 10% of its steps)", file=sys.stderr)
        raise SystemExit(130) from None


@contextmanager
def out_lock(out: Path):
    """Hold ``out/.lock`` for the duration of a run: a second run on the same folder is refused with a
    ``ValueError`` naming the holder (host and pid) instead of both writing the same checkpoints.

    The lock is ``fcntl.flock`` on the file, which the kernel releases when its holder dies however it
    dies (kill, OOM), so a rerun is never blocked by a dead run, in a container (where every run is pid
    1) or after the pid is recycled. The file stays; its text names the last holder."""
    import fcntl
    import socket

    lock = Path(out) / ".lock"
    if lock.is_dir() or lock.is_symlink():
        raise ValueError(f"{lock} is a {'link' if lock.is_symlink() else 'folder'}, not the run's lock file: remove it")
    try:  # O_NOFOLLOW: a link put there after the check is not followed (truncating what it points to)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:
        raise ValueError(f"{lock} cannot be the run's lock file: {e.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held by a live process
        holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise ValueError(f"another run ({holder}) is writing to {out}; wait for it or use another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
    return True
