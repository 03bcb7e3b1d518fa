"""Files an earlier run wrote that a rerun reuses (a checkpoint to resume or reuse, a batch of samples): read
through :func:`read_cached`, which sets an unreadable one aside and has it made again, instead of failing
the rerun (a zero-byte or torn file left by a crash, a full disk or a copy)."""
from __future__ import annotations

import os
import pickle
import sys
import zipfile
import zlib
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class Unreadable(ValueError):
    """A file that cannot be read back as what it should be (empty, torn, corrupt, another format). A
    ``ValueError``, so where the file is the user's (a checkpoint given to load) it is one ``error:`` line."""


# what reading a broken file raises: the readers' own errors for bytes that are not what they should be
UNREADABLE = (Unreadable, OSError, EOFError, zipfile.BadZipFile, zlib.error, pickle.UnpicklingError)


def read_cached(path: str | Path, read: Callable[[Path], T], what: str = "cached file") -> T | None:
    """``read(path)`` of a file an earlier run wrote and this one would reuse. A file that cannot be read
    (:data:`UNREADABLE`) is renamed ``<name>.bad`` (replacing an older one, so nothing is lost and nothing
    piles up), reported in one ``warning:`` line on stderr, and None is returned: the caller makes it again.
    Other errors (a readable file made with other settings) propagate."""
    path = Path(path)
    try:
        return read(path)
    except UNREADABLE as e:
        reason = (getattr(e, "strerror", None) or str(e) or type(e).__name__).splitlines()[0].rstrip(": ")
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        bad = path.with_name(path.name + ".bad")
        try:
            os.replace(path, bad)
        except FileNotFoundError:  # gone already (another process of the run set it aside first)
            pass
        except OSError as e2:
            raise ValueError(f"{what} {path} cannot be read ({reason}) nor set aside ({e2.strerror}): "
                             f"remove it and rerun") from None
        print(f"warning: {what} {path} cannot be read ({reason}); set aside as {bad.name}, made again",
              file=sys.stderr, flush=True)
        return None
