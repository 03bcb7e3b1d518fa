"""Small validators for config dataclasses: each raises ``ValueError`` naming the field and its range."""
from __future__ import annotations

import math
import os
from dataclasses import asdict, fields
from typing import Any, Iterable


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    _check_range(name, value, lo, hi)


# Seeds are mixed into 64-bit generator seeds (e.g. seed * 1_000_003 + step * 7919 in training): below
# 2**31 none of those overflow, and numpy's legacy generators take them too.
SEED_MAX = 2**31 - 1


def check_seed(name: str, value: Any) -> None:
    check_int(name, value, 0, SEED_MAX)


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where it cannot be read: no sysconf on Windows)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(name: str, nbytes: float, advice: str) -> None:
    """Refuse a size whose tensors alone would take more than half this machine's memory (it would die in
    an allocation, possibly after hours of training); ``advice`` says what would fit."""
    total = machine_memory()
    if total is None:  # nothing to check against
        return
    if nbytes > total / 2:
        raise ValueError(f"{name}: needs {size_text(nbytes)} of memory, more than half of this machine's "
                         f"{size_text(total)}; {advice}")


def size_text(nbytes: float) -> str:
    """Bytes as GiB (from 1 GiB) or MiB, one decimal."""
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


# A config as plain data (a checkpoint's, a spec's) is a few hundred values a few levels deep: anything much
# larger is not one, and comparing or printing it (a list holding itself twice, 40 times over, is 2^40
# values once expanded) would take hours.
PLAIN_MAX_VALUES, PLAIN_MAX_DEPTH = 100_000, 32


def check_plain_size(name: str, value: Any, max_values: int = PLAIN_MAX_VALUES,
                     max_depth: int = PLAIN_MAX_DEPTH) -> None:
    """Refuse plain data (dicts, lists, tuples of values) nested deeper than ``max_depth`` or holding more
    than ``max_values`` values once expanded (a value reached twice counts twice, as comparing or printing
    it visits it twice); stops counting at the bound, so it takes at most ``max_values`` steps."""
    stack, seen = [(value, 1)], 0
    while stack:
        v, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise ValueError(f"{name} holds more than {max_values:,} values: not a config")
        if isinstance(v, (dict, list, tuple)):
            if depth > max_depth:
                raise ValueError(f"{name} is nested more than {max_depth} levels deep: not a config")
            stack += [(x, depth + 1) for x in (v.values() if isinstance(v, dict) else v)]


def check_float(name: str, value: Any, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hi_open: bool = False) -> None:
    """A finite number in the range: NaN and +-inf are refused everywhere (an infinite guidance scale or
    noise level gives NaN images, not an error)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    _check_range(name, value, lo, hi, lo_open, hi_open)


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")


def config_from(cls, given, kw: dict, what: str, also: tuple[str, ...] = ()):
    """``given`` (an instance of the dataclass ``cls``), or a ``cls`` built from the keyword fields ``kw``,
    not both: how a call takes its settings as one config or as keywords. An unknown keyword is a
    ``ValueError`` listing the fields and ``also`` (the call's own keywords)."""
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(kw) - set(names))
    if unknown:
        raise ValueError(f"unknown {what} keyword(s) {', '.join(unknown)}; allowed: {', '.join(names + list(also))}")
    if given is None:
        return cls(**kw)
    if not isinstance(given, cls) or kw:
        raise ValueError(f"give {what} as one {cls.__name__} or as keywords, not both")
    return given


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _check_range(name, value, lo, hi, lo_open=False, hi_open=False) -> None:
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        left = "-inf" if lo is None else f"{lo}"
        right = "inf" if hi is None else f"{hi}"
        rng = ("(" if lo_open or lo is None else "[") + f"{left}, {right}" + (")" if hi_open or hi is None else "]")
        raise ValueError(f"{name} must lie in {rng}, got {value!r}")


def config_to_dict(cfg) -> dict:
    """Plain data (tuples become lists) so it survives ``torch.load(weights_only=True)``."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {k: plain(v) for k, v in asdict(cfg).items()}


def config_as(cls, cfg, **extra):
    """A ``cls`` config (a subclass of ``cfg``'s class) with ``cfg``'s field values, ``extra`` replacing or
    adding fields: e.g. a VAR config widened to the hybrid's, validated as ``cls``."""
    return cls(**{**{f.name: getattr(cfg, f.name) for f in fields(cfg)}, **extra})


def config_from_dict(cls, d: dict):
    """Inverse of :func:`config_to_dict` for a dataclass whose sequence fields are tuples."""
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
