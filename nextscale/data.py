"""Datasets: the embedded default (scikit-learn's digits), a folder of images, an ``.npz`` of arrays.

Every loader returns an :class:`ImageData`: float images in [-1, 1] of shape (N, C, side, side),
long labels, and a deterministic stratified train/test split chosen by ``seed``.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import check_float, check_int, check_memory, check_seed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class ImageData:
    name: str
    x_train: torch.Tensor  # (N, C, S, S) in [-1, 1]
    y_train: torch.Tensor  # (N,) long
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    class_names: list[str]

    @property
    def channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def side(self) -> int:
        return self.x_train.shape[-1]

    def fingerprint(self) -> str:
        """Short hash of the data and split, for caches keyed by dataset."""
        h = hashlib.sha256()
        for t in (self.x_train, self.y_train, self.x_test, self.y_test):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): per class, a seeded shuffle puts round(test_fraction * n_c) in test."""
    check_float("test_fraction", test_fraction, 0, 1, lo_open=True, hi_open=True)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        if n_test == 0 or n_test == len(idx):
            raise ValueError(f"class {c} has {len(idx)} images: too few to split with test_fraction={test_fraction}")
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def check_finite(x: np.ndarray, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the first NaN/inf index, if there is one."""
    bad = ~np.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: {int(bad.sum())} NaN/inf pixel values, the first at index {first}")


def from_arrays(name: str, x_NCHW: np.ndarray, y: np.ndarray, side: int | None, seed: int,
                test_fraction: float, class_names: list[str] | None = None,
                num_classes: int | None = None) -> ImageData:
    """Build :class:`ImageData` from images already in [-1, 1]; resizes (bilinear, antialiased) to ``side``.

    Without ``num_classes``, the labels found are mapped to 0..K-1 in sorted order (labels {0, 7} become
    classes 0 and 1) and ``class_names`` records the original label of each class."""
    check_seed("seed", seed)
    if side is not None:
        check_int("side", side, 1)
    y = np.asarray(y)
    if len(x_NCHW) == 0:
        raise ValueError(f"{name}: no images")
    if y.ndim != 1 or len(y) != len(x_NCHW):
        raise ValueError(f"{name}: labels must be 1-d with one per image, got shape {y.shape} for {len(x_NCHW)} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name}: labels must be integers, got dtype {y.dtype}")
    check_finite(np.asarray(x_NCHW), name)
    if y.min() < 0:
        raise ValueError(f"{name}: labels must lie in [0, inf), got {int(y.min())} (e.g. -1 for 'unlabelled': "
                         f"drop those images)")
    if num_classes is None:
        found = np.unique(y)
        if class_names is None:
            class_names = [str(int(v)) for v in found]
        y = np.searchsorted(found, y)
        num_classes = len(found)
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes - 1}], got [{y.min()}, {y.max()}]")
    if side is not None:  # the data set is held twice: loaded and split
        check_images_fit("side", len(x_NCHW), x_NCHW.shape[1], side, f"{len(x_NCHW)} images fit at a smaller side", 2)
    x = torch.as_tensor(np.asarray(x_NCHW, dtype=np.float32))
    if side is not None and (x.shape[-1] != side or x.shape[-2] != side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)
    tr, te = stratified_split(y, test_fraction, seed)
    yt = torch.as_tensor(y, dtype=torch.long)
    names = class_names or [str(i) for i in range(num_classes)]
    return ImageData(name, x[tr].contiguous(), yt[tr], x[te].contiguous(), yt[te], num_classes, names)


def check_images_fit(name: str, n: int, channels: int, side: int, advice: str, copies: int = 1) -> None:
    """Refuse ``n`` float32 images (``copies`` of them at once) that would take more than half the memory."""
    check_memory(name, 4.0 * copies * n * channels * side * side, advice)


def image_files(paths) -> list[Path]:
    """The regular files among ``paths`` with an image suffix, sorted: a named pipe or socket called x.png
    would block the read."""
    return sorted(p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def read_image(path: Path, convert):
    """``convert(im)`` of the PIL image at ``path``; an unreadable file or a decompression bomb is a
    ``ValueError`` naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return convert(im)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def load_digits(side: int = 16, seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """scikit-learn's bundled handwritten digits: 1797 real 8x8 grey images, 10 classes (no download)."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = d.images[:, None].astype(np.float32) / 16.0 * 2 - 1  # pixel values 0..16 -> [-1, 1]
    return from_arrays("digits", x, d.target, side, seed, test_fraction)


def load_image_folder(root: str | Path, side: int, seed: int = 0, test_fraction: float = 0.2,
                      channels: int = 3) -> ImageData:
    """``root/<class>/<image>.png|jpg``: one sub-folder per class (sorted names -> ids 0..)."""
    check_int("channels", channels, 1, 3)
    if channels == 2:
        raise ValueError("channels must be 1 (grey) or 3 (RGB), got 2")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {root} does not exist or is not a folder")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    per_class = []
    for c in classes:
        files = image_files((root / c).iterdir())
        if not files:
            raise ValueError(f"class folder {root / c} holds no {'/'.join(IMAGE_SUFFIXES)} images")
        per_class.append(files)
    n = sum(map(len, per_class))
    check_images_fit("side", n, channels, side, f"{n} images fit at a smaller side", 2)
    xs, ys = [], []
    for ci, files in enumerate(per_class):
        for f in files:
            xs.append(read_image(f, lambda im: _read_image(im, side, channels)))
            ys.append(ci)
    return from_arrays(root.name, np.stack(xs), np.array(ys), None, seed, test_fraction, classes, len(classes))


def _read_image(im, side: int, channels: int) -> np.ndarray:
    """A PIL image as (channels, side, side) in [-1, 1]. 16-bit grey PNGs (PIL modes I;16*, I) are scaled
    by 65535 (``convert("L")`` would clip them to white); everything else goes through 8-bit L/RGB."""
    from PIL import Image

    if im.mode.startswith("I"):
        a = np.asarray(im, dtype=np.float32) / 65535.0
        a = np.asarray(Image.fromarray(a, mode="F").resize((side, side), Image.BICUBIC)).clip(0, 1) * 2 - 1
        return np.repeat(a[None], channels, axis=0)
    im = im.convert("L" if channels == 1 else "RGB").resize((side, side), Image.BICUBIC)
    a = np.asarray(im, dtype=np.float32) / 255.0 * 2 - 1
    return a[None] if channels == 1 else a.transpose(2, 0, 1)


def check_npz_fits(path: str | Path, keys, name: str, float_copies: int = 0) -> None:
    """Refuse (``ValueError`` naming ``name``) the arrays ``keys`` of the ``.npz`` at ``path`` when, inflated,
    they would take more than half this machine's memory, from their ``.npy`` headers and the zip's
    directory, before anything is inflated (a compressed file of a few MB can hold 12 GB of zeros);
    ``float_copies``: float32 copies of every element the reader makes. Every ``.npz`` a user gives is
    size-checked here first; a file that is not a readable ``.npz`` passes (reading it fails next, with the
    reader's own message)."""
    total, found = 0, []
    try:
        with np.load(path, allow_pickle=False) as z:  # lazy: the zip's directory only
            for key in keys:
                if key not in z.files:
                    continue
                found.append(key)
                member = z.zip.getinfo(f"{key}.npy")
                nbytes = elements = member.file_size
                with z.zip.open(member) as f:
                    version = np.lib.format.read_magic(f)
                    read = {(1, 0): np.lib.format.read_array_header_1_0,
                            (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if read is not None:
                        shape, _, dtype = read(f)
                        elements = int(np.prod(shape, dtype=object))
                        nbytes = max(nbytes, elements * dtype.itemsize)  # numpy allocates what the header says
                total += nbytes + float_copies * 4 * elements
    except Exception:  # noqa: BLE001 - not an .npz, truncated, pickled: the reader says so next
        return
    check_memory(name, total, f"its arrays {', '.join(found)} inflate to that; use a smaller file")


def load_npz(path: str | Path, side: int | None = None, seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """An ``.npz`` with ``x`` (N, H, W), (N, H, W, C) or (N, C, H, W) images and integer labels ``y`` (N,).

    Pixel values: uint8 (0..255), uint16 (0..65535), other integer types holding 0..255 (8-bit) or
    0..65535 (16-bit), or finite floats in [0, 1] or [-1, 1]."""
    path = Path(path)
    check_npz_fits(path, ("x", "y"), f"npz file {path}", float_copies=3)  # x to float32, scaled, split
    try:
        with np.load(path, allow_pickle=False) as z:  # x and y alone: other arrays are not read
            found, arrays = sorted(z.files), {k: z[k] for k in ("x", "y") if k in z.files}
    except Exception as e:  # missing, truncated, not a zip, pickled objects
        raise ValueError(f"cannot read npz file {path}: {e}") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise ValueError(f"{path}: missing array {key!r} (found {found})")
    x, y = arrays["x"], arrays["y"]
    if x.size == 0 or len(x) == 0:
        raise ValueError(f"{path}: x holds no images (shape {x.shape})")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
        raise ValueError(f"{path}: x must be square images (N,H,W), (N,H,W,C) or (N,C,H,W) with C in (1, 3), "
                         f"got shape {arrays['x'].shape}")
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{path}: integer images must hold 0..255 (8-bit) or 0..65535 (16-bit), got [{lo}, {hi}]")
        depth = 65535.0 if x.dtype == np.uint16 or hi > 255 else 255.0
        x = x.astype(np.float32) / depth * 2 - 1
    elif np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
        check_finite(x, str(path))
        lo, hi = float(x.min()), float(x.max())
        if lo >= 0 and hi <= 1:
            x = x * 2 - 1
        elif lo < -1 or hi > 1:
            raise ValueError(f"{path}: float images must lie in [0, 1] or [-1, 1], got [{lo:.3g}, {hi:.3g}]")
    else:
        raise ValueError(f"{path}: x must hold integer or float pixel values, got dtype {x.dtype}")
    return from_arrays(path.stem, x, y, side, seed, test_fraction)


def load_dataset(spec: str = "digits", side: int | None = None, seed: int = 0, test_fraction: float = 0.2) -> ImageData:
    """``"digits"``, a path to an ``.npz`` file, or a path to an image folder."""
    if side is not None:
        check_int("side", side, 1)
    check_seed("seed", seed)
    if spec == "digits":
        return load_digits(side=side or 16, seed=seed, test_fraction=test_fraction)
    p = Path(spec)
    if p.suffix == ".npz":
        return load_npz(p, side=side, seed=seed, test_fraction=test_fraction)
    if p.is_dir():
        return load_image_folder(p, side=side or 32, seed=seed, test_fraction=test_fraction)
    raise ValueError(f"dataset must be 'digits', an .npz file or an image folder, got {spec!r}")
