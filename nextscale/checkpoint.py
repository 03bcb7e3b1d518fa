"""One-file checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

Version policy: every checkpoint records the ``library_version`` that wrote it; a checkpoint written by
another major.minor version (or by none) is refused with a ``ValueError`` (layouts and the keys that
name checkpoints may change between them): retrain, or load it with that version. Patch versions load.
Every failure to read a checkpoint (not a file, corrupt, foreign, missing entries, different config,
renamed or missing parameters) is a ``ValueError`` naming the file and what is wrong."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from .cache import Unreadable
from .config import check_plain_size

FORMAT = "nextscale-checkpoint-v1"
CONFIG_KEYS = ("config", "train_config")  # the plain-data configs a checkpoint records


class OutOfSpace(ValueError):
    """A file could not be written for want of space (disk full, quota, the shell's file size limit): one
    line naming the folder, the space free and needed. The previous file stays, so a rerun with room resumes."""


_WRITING: set[str] = set()  # this process's temporaries being written now
# atomic_path writes ".<stem>.<pid>.<8 random>.tmp<suffix>" beside a file first: up to this many characters
# more than the file's own name (pid up to 7 digits)
TMP_EXTRA = len("." + "." + "9" * 7 + "." + "x" * 8 + ".tmp")


def _sweep(path: Path) -> None:
    """Delete the temporaries of ``path`` that runs killed mid-write left (their writer is dead, or is this
    process and is not writing them: a container's pid 1 again); a live writer's are kept."""
    for tmp in path.parent.glob(f".{path.stem}.*.tmp{path.suffix}"):
        try:
            pid = int(tmp.name[len(path.stem) + 2:].split(".")[0])
        except ValueError:
            continue
        alive = pid != os.getpid()
        if alive:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                alive = False
            except PermissionError:  # another user's live process
                pass
        if not alive and str(tmp) not in _WRITING:
            tmp.unlink(missing_ok=True)


def _room(folder: Path) -> tuple[int, float]:
    """(bytes free on ``folder``'s disk, the shell's file size limit in bytes: inf when there is none)."""
    import resource
    import shutil

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return shutil.disk_usage(folder).free, float("inf") if limit == resource.RLIM_INFINITY else limit


def _space(folder: Path, needed: int | None) -> str:
    free, limit = _room(folder)
    cap = "" if limit == float("inf") else f", file size limit {limit / 1e6:.1f} MB"
    need = "" if needed is None else f", about {needed / 1e6:.1f} MB needed"
    return f"{free / 1e6:.1f} MB free{cap}{need}"


def _out_of_space(e: BaseException, folder: Path, needed: int | None) -> bool:
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    if isinstance(e, RuntimeError) and needed is not None:  # torch.save's writer hides the errno
        return min(_room(folder)) < needed
    return False


@contextmanager
def atomic_path(path: str | Path, needed: int | None = None) -> Iterator[Path]:
    """A fresh temporary path beside ``path`` (same suffix, so writers that go by it still work) to write
    the file to; when the block ends without error it is synced, given the permissions the user's umask
    gives new files, and renamed over ``path``. A kill mid-write leaves the previous file (or none), never
    a torn one that looks like a result, and the next write of ``path`` deletes the torn temporary. Every
    output file of the project is written through this; lack of space is :class:`OutOfSpace` (``needed``:
    the bytes the file will take, where known)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.{os.getpid()}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    _WRITING.add(tmp)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600, which locks teammates out on a shared cluster
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if _out_of_space(e, path.parent, needed):
            raise OutOfSpace(f"cannot write {path}: no space for it in {path.parent} ({_space(path.parent, needed)}); "
                             "make room and rerun the same command: it resumes from the last checkpoint") from None
        raise
    finally:
        _WRITING.discard(tmp)


def write_text(path: str | Path, text: str) -> Path:
    """``Path(path).write_text(text)`` in UTF-8 whatever the locale (``LC_ALL=C`` cannot fail a report's ``±``),
    atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plain data and tensors only) to ``path`` atomically (:func:`atomic_path`)."""
    from . import __version__

    from torch.utils._pytree import tree_leaves

    payload = {"format": FORMAT, "library_version": __version__, **payload}
    needed = sum(t.nbytes for t in tree_leaves(payload) if torch.is_tensor(t))
    with atomic_path(path, needed) as tmp, open(tmp, "wb") as f:
        torch.save(payload, f)


def _minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def load_checkpoint(path: str | Path, map_location="cpu", require: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint safely (no code runs); a truncated or foreign file, one of another library
    version (see the module doc) or one without the entries in ``require`` raises ``ValueError``."""
    from . import __version__

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint path {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, disallowed globals
        raise Unreadable(f"checkpoint {path} is corrupt, truncated or not a nextscale checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a nextscale checkpoint (format {FORMAT})")
    written = ckpt.get("library_version")
    if written is None or _minor(written) != _minor(__version__):
        raise ValueError(f"checkpoint {path} was written by nextscale {written}, this is {__version__}: checkpoints "
                         f"load only within the same major.minor version; retrain (delete the file) or use {written}")
    missing = [k for k in require if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}: truncated by hand or written by other code")
    for key in CONFIG_KEYS:  # compared and printed next: a deeply nested or self-repeating object would hang
        if key in ckpt:
            check_plain_size(f"checkpoint {path}: its {key}", ckpt[key])
    return ckpt


def load_state(module, state: dict, path) -> None:
    """``module.load_state_dict(state)`` with a ``ValueError`` naming the file and the parameters that
    are missing or unexpected (renamed parameters, another model class) or that is not a dict of tensors,
    instead of a RuntimeError or TypeError."""
    if not isinstance(state, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in state.items()):
        raise ValueError(f"checkpoint {path} holds a {type(state).__name__} where a state dict (names -> tensors) "
                         "belongs: written by other code or edited by hand")
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        want, got = set(module.state_dict()), set(state)
        detail = f"missing {sorted(want - got)[:5]}, unexpected {sorted(got - want)[:5]}" if want != got else \
            str(e).splitlines()[-1].strip()
        raise ValueError(f"checkpoint {path} does not fit {type(module).__name__}: {detail}") from None


def check_config(path, stored: dict, current: dict, what: str = "model config") -> None:
    """Raise ``ValueError`` listing every field where a checkpoint's config differs from the current one."""
    keys = sorted(set(stored) | set(current))
    diff = [f"{k}: checkpoint {stored.get(k)!r} vs current {current.get(k)!r}" for k in keys
            if stored.get(k) != current.get(k)]
    if diff:
        raise ValueError(f"checkpoint {path} was written with a different {what}: " + "; ".join(diff))


def keyed_path(folder: str | Path, name: str, *parts) -> Path:
    """``folder/name-<hash>.pt`` where the hash covers ``parts`` (dataclass configs as plain data, data
    fingerprints, ...): everything that shapes the weights, so a changed setting never reuses a stale file.
    Fields that shape no weights (``progress``, ``log_every``, ``ckpt_every`` of a TrainConfig) are left out."""
    import hashlib
    import json
    from dataclasses import is_dataclass

    from .config import config_to_dict

    quiet = ("progress", "log_every", "ckpt_every")
    plain = [{k: v for k, v in config_to_dict(p).items() if k not in quiet} if is_dataclass(p) else p for p in parts]
    digest = hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(folder) / f"{name}-{digest}.pt"


def keyed_stage_paths(folder: str | Path, data_fingerprint: str, autoencoder: tuple[str, object, object],
                      generator: tuple[str, object, object], base: Path | None = None) -> tuple[Path, Path]:
    """Paths of a two-stage run: ``autoencoder`` and ``generator`` are (name, model config, train config).
    Both keys cover the data; the generator's also covers the autoencoder's key, so a retrained
    autoencoder never feeds a generator trained on another one. ``base``: the checkpoint the autoencoder
    is built on (e.g. a quantizer on a frozen autoencoder), whose key joins the autoencoder's."""
    ae_name, ae_cfg, ae_train = autoencoder
    gen_name, gen_cfg, gen_train = generator
    ae = keyed_path(folder, ae_name, data_fingerprint, ae_cfg, ae_train, *(() if base is None else (base.name,)))
    return ae, keyed_path(folder, gen_name, data_fingerprint, gen_cfg, gen_train, ae.name)
