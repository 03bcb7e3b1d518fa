"""What the released-checkpoint loaders (:mod:`var.release`, :mod:`flowar.release`) share: reading a state
dict file safely, reordering packed rows, and placing renamed weights with an error that names the
release's key and shapes (the first that does not fit) instead of ``load_state_dict``'s list."""
from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn


# VAR's AdaLNSelfAttn (and FlowAR's AR blocks, built like it) lay their adaLN projection's rows out as (gamma1,
# gamma2, scale1, scale2, shift1, shift2); ours are (shift1, scale1, gate1, shift2, scale2, gate2): ours from theirs.
ADA_ROWS = (4, 2, 0, 5, 3, 1)


class Renamed(dict):
    """A state dict in this project's names that remembers each entry's name in the release (``origin``)."""

    def __init__(self):
        super().__init__()
        self.origin: dict[str, str] = {}

    def put(self, name: str, value: torch.Tensor, release_name: str) -> None:
        self[name] = value
        self.origin[name] = release_name


def load_state_file(path: str | Path, name: str, map_location="cpu") -> dict[str, torch.Tensor]:
    """The state dict in a release file, read with ``weights_only`` (no code runs; an ``argparse.Namespace``
    of training flags is allowed): a plain one (the released files), or a training checkpoint's
    "model_ema" (the weights the releases evaluate), "model" or "state_dict" (MAR's VAE file), in that
    order. ``ValueError`` naming ``name`` if the file is missing or holds none."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: no file at {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # FlowAR's training checkpoints hold args
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated zip, pickled code
        raise ValueError(f"{name}: {path} is not a readable state dict file: {str(e).splitlines()[0]}") from None
    for key in ("model_ema", "model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{name}: {path} holds no state dict (a dict of tensors)")
    return obj


def state_shape(state: Mapping[str, torch.Tensor], key: str, what: str, rank: int) -> torch.Size:
    """The shape of ``state[key]``, a floating tensor of ``rank`` dimensions: every size a loader reads from a
    file goes through here, so a missing key, a wrong rank (a 1-D weight matrix) or integer weights are one
    ``ValueError`` naming the key instead of an ``IndexError`` or a model that loads wrong."""
    if key not in state:
        raise ValueError(f"not a {what} state dict: it has no key {key!r}")
    v = state[key]
    if v.dim() != rank or not v.is_floating_point():
        raise ValueError(f"the {what} file's key {key!r} is a {v.dim()}-D {v.dtype} tensor of shape {tuple(v.shape)}, "
                         f"expected a {rank}-D floating tensor")
    return v.shape


def count_under(state: Mapping[str, torch.Tensor], prefix: str) -> int:
    """How many distinct entries (``prefix`` + name + ``.``...) a state dict holds under ``prefix``: the
    blocks of a ``ModuleList``, the levels of a coder."""
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def rename(name: str, table: Sequence[tuple[str, str]]) -> str | None:
    """``name`` under the first (pattern, replacement) of ``table`` whose pattern matches it, else None."""
    for pattern, replacement in table:
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return None


def permute_rows(w: torch.Tensor, order: Sequence[int]) -> torch.Tensor:
    """Reorder the len(order) equal row blocks of a packed projection (weight or bias)."""
    return torch.cat([w.chunk(len(order))[i] for i in order])


def check_state(module: nn.Module, state: Mapping[str, torch.Tensor], what: str, keep: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module`` strictly, or raise one ``ValueError`` naming ``what`` and the first entry
    that does not fit: an unexpected key, a shape that differs, NaN or inf values, or a missing key. Entries of
    the module whose names end in one of ``keep`` (buffers the release has no counterpart of) keep their own
    values."""
    own = module.state_dict()
    origin = getattr(state, "origin", {})

    def named(k: str) -> str:
        return f"{origin[k]!r} (here {k!r})" if origin.get(k, k) != k else repr(k)

    for k, v in state.items():
        if k not in own:
            raise ValueError(f"{what} does not fit: key {named(k)} of shape {tuple(v.shape)} has no place here")
        if v.is_floating_point() != own[k].is_floating_point():
            raise ValueError(f"{what} does not fit: key {named(k)} holds {v.dtype} values, expected {own[k].dtype}")
        if v.shape != own[k].shape:
            raise ValueError(f"{what} does not fit: key {named(k)} has shape {tuple(v.shape)}, expected "
                             f"{tuple(own[k].shape)}")
        if v.is_floating_point() and v.device.type != "meta" and not torch.isfinite(v).all():
            raise ValueError(f"{what} holds NaN or inf values in key {named(k)}: a corrupt or diverged file")
    full = dict(state)
    for k, v in own.items():
        if k not in full:
            if not (keep and k.endswith(keep)):
                raise ValueError(f"{what} does not fit: it lacks key {k!r} (shape {tuple(v.shape)})")
            full[k] = v
    module.load_state_dict(full)
