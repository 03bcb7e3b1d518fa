"""Sets of images made elsewhere, as the standalone evaluator (``python -m compare.evaluate``) reads them:
a folder of images (searched recursively, .png/.jpg/.jpeg, one size), an ``.npz`` of uint8 images (the
ADM evaluator's layout, ``arr_0`` (N, H, W, C), or this package's ``x``), or a statistics ``.npz``
(``mu``, ``sigma``: pytorch-fid's format). Anything else is a ``ValueError`` naming the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from nextscale.data import IMAGE_SUFFIXES, check_npz_fits, image_files, read_image

from .fid import load_stats


def read_set(path: str | Path, what: str) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, C) from a folder or an .npz, or (mu, sigma) from a statistics .npz."""
    p = Path(path)
    if p.is_dir():
        return _read_folder(p, what)
    if p.suffix != ".npz" or not p.is_file():
        raise ValueError(f"{what} must be an image folder or an .npz file, got {str(path)!r}")
    check_npz_fits(p, ("mu", "sigma", "arr_0", "x"), f"{what} {p}")  # before anything is inflated
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if {"mu", "sigma"} <= keys:
                return load_stats(p)
            key = next((k for k in ("arr_0", "x") if k in keys), None)
            if key is None:
                raise ValueError(f"{what} {p}: want 'arr_0' (N, H, W, C) uint8 images, 'x', or 'mu' and 'sigma'; "
                                 f"found {sorted(keys)}")
            x = z[key]
    except ValueError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects
        raise ValueError(f"cannot read {what} {p}: {e}") from None
    return _check_images(x, f"{what} {p}")


def _read_folder(root: Path, what: str) -> np.ndarray:
    files = image_files(root.rglob("*"))
    if not files:
        raise ValueError(f"{what} {root} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    out = [read_image(f, lambda im: np.asarray(im.convert("RGB"))) for f in files]
    sizes = sorted({a.shape for a in out})
    if len(sizes) > 1:
        raise ValueError(f"{what} {root}: images must share one size, found {sizes[:3]}")
    return np.stack(out)


def _check_images(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) < 2:
        raise ValueError(f"{name}: want at least 2 images as (N, H, W, C) with C in (1, 3), got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"{name}: want uint8 pixels (0..255, as saved images), got dtype {x.dtype}")
    return x


def features(net, images_NHWC: np.ndarray, chunk: int = 250) -> torch.Tensor:
    """``net.features`` of uint8 images, ``chunk`` at a time (a 10k x 256^2 reference stays uint8 in
    memory; the 8-bit images are already on the grid the protocol rounds to)."""
    out = []
    for i in range(0, len(images_NHWC), chunk):
        x = torch.from_numpy(images_NHWC[i:i + chunk]).permute(0, 3, 1, 2).float() / 127.5 - 1
        out.append(net.features(x))
    return torch.cat(out)
