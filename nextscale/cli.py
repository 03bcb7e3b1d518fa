"""Command-line options every head's command shares: output, data, seed, backbone shape, device."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .autoencoder import CODERS
from .backbone import BackboneConfig
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


def out_folder(path: str | Path) -> Path:
    """Create the output folder (before any training); a file in the way or an unwritable place is a
    ``ValueError`` naming it."""
    if not str(path).strip():
        raise ValueError("--out must name a folder, got an empty path (it would write into the current folder)")
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"--out {out} is not writable: {e.strerror}") from None
    return out


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
