"""Command-line options every head's command shares: output, data, seed, backbone shape, device."""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from .backbone import BackboneConfig
from .data import ImageData, load_dataset
from .scales import default_schedule, latent_side_of


def add_run_args(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", default=out, help="output folder (checkpoints, PNGs, metrics.json)")
    p.add_argument("--data", default="digits", help="'digits', an .npz file or an image folder")
    p.add_argument("--side", type=int, default=None, help="image side (default: 16 for digits)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=128, help="backbone width")
    p.add_argument("--depth", type=int, default=4, help="backbone depth")
    p.add_argument("--heads", type=int, default=4, help="backbone attention heads")
    p.add_argument("--latent-channels", type=int, default=8, help="latent channels (the backbone's in_dim)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def data_and_backbone(a: argparse.Namespace) -> tuple[ImageData, BackboneConfig]:
    """The data set the options name and the backbone over its latent pyramid (latent side = image side / 2)."""
    data = load_dataset(a.data, side=a.side, seed=a.seed)
    return data, BackboneConfig(schedule=default_schedule(latent_side_of(data.side)), in_dim=a.latent_channels,
                                num_classes=data.num_classes, width=a.width, depth=a.depth, heads=a.heads)


def out_folder(path: str | Path) -> Path:
    """Create the output folder (before any training); a file in the way or an unwritable place is a
    ``ValueError`` naming it."""
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
    lists several, e.g. a run spec's) and exits with status 2."""
    try:
        return fn(*args)
    except ValueError as e:
        for line in str(e).splitlines() or [""]:
            print(f"error: {line}", file=sys.stderr)
        raise SystemExit(2) from None


@contextmanager
def out_lock(out: Path):
    """Hold ``out/.lock`` (created exclusively, holding our pid) for the duration of a run: a second run
    on the same folder is refused with a ``ValueError`` instead of both writing the same checkpoints.
    A lock whose process is gone (a killed run) is taken over."""
    lock = Path(out) / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise ValueError(f"another run (pid {pid}) is writing to {out}; wait for it or use another --out") \
                    from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:
        raise ValueError(f"cannot take the lock {lock}")
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
