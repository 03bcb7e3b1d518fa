import numpy as np
import pytest
import torch
from PIL import Image

from nextscale.data import from_arrays, load_dataset, load_digits, load_image_folder, load_npz, stratified_split


def test_digits_shapes_range_and_stratified_split(digits):
    assert digits.x_train.shape[1:] == (1, 16, 16) and len(digits.x_train) + len(digits.x_test) == 1797
    assert digits.x_train.min() >= -1 and digits.x_train.max() <= 1
    assert digits.num_classes == 10
    tr = torch.bincount(digits.y_train, minlength=10).float()
    te = torch.bincount(digits.y_test, minlength=10).float()
    frac = te / (tr + te)
    assert (frac - 0.2).abs().max() < 0.01, frac  # every class split 80/20
    native = load_digits(side=8)  # no resize: exactly the 17 grey levels 0..16 mapped to [-1, 1]
    levels = torch.unique(torch.cat([native.x_train, native.x_test]))
    assert torch.allclose(levels, torch.arange(17) / 16 * 2 - 1)


def test_split_is_deterministic_by_seed():
    a, b, c = load_digits(seed=3), load_digits(seed=3), load_digits(seed=4)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not torch.equal(a.y_train, c.y_train)


def test_split_sets_are_disjoint_and_cover_everything():
    y = np.repeat(np.arange(4), 10)
    tr, te = stratified_split(y, 0.3, seed=0)
    assert len(set(tr) & set(te)) == 0 and sorted(np.concatenate([tr, te])) == list(range(40))
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(y, 1.5, seed=0)
    with pytest.raises(ValueError, match="too few"):
        stratified_split(np.array([0, 0, 1]), 0.5, seed=0)


def _write_folder(root, classes=("cat", "dog"), n=5, size=(12, 10)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder(tmp_path):
    _write_folder(tmp_path / "pets")
    d = load_image_folder(tmp_path / "pets", side=8, seed=0)
    assert d.class_names == ["cat", "dog"] and d.num_classes == 2
    assert d.x_train.shape[1:] == (3, 8, 8) and len(d.x_train) + len(d.x_test) == 10
    assert d.x_train.min() >= -1 and d.x_train.max() <= 1
    grey = load_dataset(str(tmp_path / "pets"), side=8)
    assert grey.channels == 3
    assert load_image_folder(tmp_path / "pets", side=8, channels=1).channels == 1


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nope", side=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty", side=8)
    (tmp_path / "empty" / "a").mkdir()
    with pytest.raises(ValueError, match=r"empty/a holds no"):
        load_image_folder(tmp_path / "empty", side=8)
    _write_folder(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path / "bad", side=8)


def test_npz_layouts_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    for name, x in {"nhw": rng.integers(0, 255, (30, 6, 6), dtype=np.uint8),
                    "nhwc": rng.random((30, 6, 6, 3)).astype(np.float32),
                    "nchw": rng.uniform(-1, 1, (30, 3, 6, 6))}.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        d = load_npz(tmp_path / f"{name}.npz", side=4)
        assert d.x_train.shape[2:] == (4, 4) and d.num_classes == 3
        assert d.x_train.min() >= -1 and d.x_train.max() <= 1
    np.savez(tmp_path / "nolabel.npz", x=np.zeros((4, 6, 6)))
    with pytest.raises(ValueError, match="missing array 'y'"):
        load_npz(tmp_path / "nolabel.npz")
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 6, 5)), y=np.zeros(4, int))
    with pytest.raises(ValueError, match="square images"):
        load_npz(tmp_path / "shape.npz")
    np.savez(tmp_path / "neg.npz", x=np.zeros((4, 6, 6)), y=np.array([0, 1, -1, 0]))
    with pytest.raises(ValueError, match=r"labels must lie in"):
        load_npz(tmp_path / "neg.npz")
    np.savez(tmp_path / "count.npz", x=np.zeros((4, 6, 6)), y=np.zeros(3, int))
    with pytest.raises(ValueError, match="one per image"):
        load_npz(tmp_path / "count.npz")
    np.savez(tmp_path / "range.npz", x=np.full((4, 6, 6), 3.0), y=np.zeros(4, int))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_npz(tmp_path / "range.npz")
    (tmp_path / "trunc.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(ValueError, match="trunc.npz"):
        load_npz(tmp_path / "trunc.npz")
    with pytest.raises(ValueError, match="dataset must be"):
        load_dataset("imagenet")


def test_bad_pixels_and_labels_are_refused_or_handled(tmp_path):
    y = np.repeat(np.arange(2), 6)
    x = np.zeros((12, 6, 6), np.float32)
    x[3, 2, 4] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=y)
    with pytest.raises(ValueError, match=r"nan.npz: 1 NaN/inf pixel values, the first at index \(3, 0, 2, 4\)"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 6, 6)), y=np.zeros(0, int))
    with pytest.raises(ValueError, match="x holds no images"):
        load_npz(tmp_path / "empty.npz")
    with pytest.raises(ValueError, match="no images"):
        from_arrays("none", np.zeros((0, 1, 4, 4)), np.zeros(0, int), None, 0, 0.2)
    # integer pixels in a wide type: 0..255 is 8-bit, up to 65535 (or uint16) is 16-bit
    ramp = np.tile(np.linspace(0, 1, 6), (12, 6, 1))
    for dtype, depth in ((np.int64, 255), (np.uint16, 65535), (np.int32, 65535)):
        vals = (ramp * depth).round().astype(dtype)
        np.savez(tmp_path / "ints.npz", x=vals, y=y)
        d = load_npz(tmp_path / "ints.npz")
        assert float(d.x_train.min()) == -1.0 and float(d.x_train.max()) == 1.0, dtype
    np.savez(tmp_path / "big.npz", x=np.full((12, 6, 6), 70000, np.int64), y=y)
    with pytest.raises(ValueError, match=r"0..255 \(8-bit\) or 0..65535 \(16-bit\), got \[70000, 70000\]"):
        load_npz(tmp_path / "big.npz")
    # sparse labels {0, 7}: two classes, the mapping kept in class_names
    np.savez(tmp_path / "sparse.npz", x=np.zeros((12, 6, 6), np.float32), y=np.repeat([0, 7], 6))
    d = load_npz(tmp_path / "sparse.npz")
    assert d.num_classes == 2 and d.class_names == ["0", "7"] and set(d.y_train.tolist()) == {0, 1}
    with pytest.raises(ValueError, match=r"side must lie in \[1, inf\), got 0"):
        load_dataset("digits", side=0)
    with pytest.raises(ValueError, match=r"seed must lie in \[0, 2147483647\], got -1"):
        load_dataset("digits", seed=-1)


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            a = np.full((8, 8), 1000 * (i + 1), np.uint16)   # dark 16-bit greys: 8-bit conversion saturates
            Image.fromarray(a).save(tmp_path / c / f"{i}.png")
    d = load_image_folder(tmp_path, side=8, channels=1)
    x = torch.cat([d.x_train, d.x_test])
    want = sorted({1000 * (i + 1) / 65535 * 2 - 1 for i in range(5)})
    got = sorted({round(float(v), 4) for v in x.flatten()})
    assert got == [round(w, 4) for w in want], got


def test_loaders_map_pixels_exactly_and_keep_layout_and_labels(tmp_path):
    """Exact values, not just ranges: [0, 1] -> [-1, 1], uint8 / 255, NHWC transposed (not reshaped), and
    every folder image labelled with its own folder."""
    # a distinct value per (image, channel, row, column), so any reshape instead of transpose shows
    N, H, W, C = 6, 4, 4, 3
    vals = np.arange(N * H * W * C, dtype=np.float32).reshape(N, H, W, C) / (N * H * W * C - 1)
    y = np.repeat([0, 1], 3)
    np.savez(tmp_path / "nhwc.npz", x=vals, y=y)
    d = load_npz(tmp_path / "nhwc.npz", test_fraction=0.34)
    x = torch.cat([d.x_train, d.x_test])
    order = np.concatenate([np.flatnonzero(np.isin(np.arange(N), idx)) for idx in stratified_split(y, 0.34, 0)])
    want = torch.as_tensor(vals[order].transpose(0, 3, 1, 2) * 2 - 1)
    assert torch.allclose(x, want, atol=1e-6)
    u8 = np.array([[[0, 51], [204, 255]]] * 6, dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", x=u8, y=y)
    d = load_npz(tmp_path / "u8.npz", test_fraction=0.34)
    assert torch.allclose(d.x_train[0, 0], torch.tensor([[-1.0, -0.6], [0.6, 1.0]]), atol=1e-6)
    # folder labels: class "a" images are black, class "b" white; each label must match its pixels
    for c, v in (("a", 0), ("b", 255)):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((6, 6), v, np.uint8)).save(tmp_path / "f" / c / f"{i}.png")
    d = load_image_folder(tmp_path / "f", side=6, channels=1)
    for xs, ys in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        assert torch.equal(xs.mean((1, 2, 3)), torch.where(ys == 0, -1.0, 1.0))
