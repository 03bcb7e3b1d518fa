"""One-file checkpoints: written atomically, read with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

FORMAT = "nextscale-checkpoint-v1"


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Write ``payload`` (plain data and tensors only) to ``path`` via a temp file + rename, so a crash
    mid-write leaves the previous file intact."""
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "library_version": __version__, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint safely (no code runs); a truncated or foreign file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickle errors, disallowed globals
        raise ValueError(f"checkpoint {path} is corrupt, truncated or not a nextscale checkpoint: {e}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path} is not a nextscale checkpoint (format {FORMAT})")
    return ckpt


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
