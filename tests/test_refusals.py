"""Bad or hostile inputs found by trying the commands and the library as a user would: each is refused
before any training (one ``ValueError`` naming the argument, or a skipped file), never a traceback, a
hang or a silently wrong result."""
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch

from compare.config import CompareConfig
from compare.spec import load_spec
from nextscale.data import load_image_folder
from nextscale.train import pick_device

sys.path.insert(0, os.path.dirname(__file__))


def _png(path, value=128, side=8):
    from PIL import Image

    Image.fromarray(np.full((side, side), value, dtype=np.uint8)).save(path)


def test_one_device_parser_names_what_this_machine_has():
    assert pick_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "", "foo", "meta", "cuda:99", "cpu:x", 3.5):
        with pytest.raises(ValueError, match=r"device must be .*cpu.* on this machine, got"):
            pick_device(bad)
    with pytest.raises(ValueError, match="device must be"):
        CompareConfig(device="meta")  # refused where the config is built, not at the first stage


def test_a_named_pipe_in_a_class_folder_is_skipped_not_read(tmp_path):
    """A FIFO called x.png would block the loader forever; only regular files are images."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(5):
            _png(tmp_path / c / f"{i}.png", 40 * i)
    fifo = tmp_path / "a" / "x.png"
    os.mkfifo(fifo)
    (tmp_path / "b" / "folder.png").mkdir()  # a folder with an image's name: not an image either
    done = threading.Event()

    def unblock():  # a loader that opens the pipe gets junk (and fails) instead of hanging the suite
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.01)
                continue
            os.write(fd, b"junk")
            os.close(fd)
            return

    threading.Thread(target=unblock, daemon=True).start()
    try:
        data = load_image_folder(tmp_path, side=8, channels=1)
    finally:
        done.set()
    assert len(data.x_train) + len(data.x_test) == 10


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, monkeypatch):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            _png(tmp_path / c / f"{i}.png", side=64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000: PIL's bomb error
    with pytest.raises(ValueError, match=r"cannot read image .*0\.png: .*decompression bomb"):
        load_image_folder(tmp_path, side=8, channels=1)


def test_inpainting_refuses_pixels_outside_minus_one_one_and_takes_float64(digits):
    """[0, 255] images were returned with values up to 255; float64 ones ended in a dtype traceback."""
    from test_flowar_model import CFG, make
    from test_var_model import model as var_model

    flow = make(CFG, x=digits.x_train[:64] if digits.side == 8 else None)
    for m, side in ((flow, 8), (var_model(), 16)):
        x = torch.rand(2, 1, side, side) * 2 - 1
        mask = torch.zeros(2, 1, side, side, dtype=torch.bool)
        mask[..., : side // 2] = True
        y = torch.tensor([1, 2])
        with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\] .*got \[0, 255\]"):
            m.inpaint(torch.zeros_like(x).index_fill_(0, torch.tensor([1]), 255.0), mask, y, seed=0)
        a = m.inpaint(x, mask, y, seed=0)[0]
        b = m.inpaint(x.double(), mask, y, seed=0)[0]
        assert a.dtype == torch.float32 and torch.allclose(a, b.float(), atol=1e-5)


def test_spec_files_are_read_by_path_and_named_in_errors(tmp_path):
    odd = tmp_path / "a=b"
    odd.mkdir()
    (odd / "s.toml").write_text("[run]\nseeds = 2\n")
    assert load_spec(odd / "s.toml")["run"]["seeds"] == 2
    assert load_spec(str(odd / "s.toml"))["run"]["seeds"] == 2  # a path with '=' is still a path
    (tmp_path / "bad.toml").write_bytes(b"\xff\xfe[run]")
    with pytest.raises(ValueError, match=r"the spec file .*bad\.toml is not UTF-8 text"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "broken.toml").write_text("[run\n")
    with pytest.raises(ValueError, match=r"the spec file .*broken\.toml is not valid TOML"):
        load_spec(str(tmp_path / "broken.toml"))


def test_arm_overrides_are_checked_against_the_autoencoder_before_training(tmp_path, capsys):
    """vocab_size = 64 against a 512-code tokenizer was refused only after the classifier and the tokenizer
    had trained."""
    from compare.__main__ import main

    spec = tmp_path / "s.toml"
    spec.write_text("[arms.var.overrides]\nvocab_size = 64\n")
    with pytest.raises(SystemExit) as e:
        main(["--quick", "--out", str(tmp_path / "run"), "--config", str(spec)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err == ["error: arm var: vocab_size (64) must equal the tokenizer's (512)"], err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_sizes_that_fail_late_are_refused_first(digits, monkeypatch):
    from compare import harness

    cfg = CompareConfig(samples=500, batch_size=32, ae_batch_size=64)
    harness._check_sizes(cfg, digits)
    monkeypatch.setattr(harness, "world", lambda: 3)  # torchrun with 3 processes: 32 does not split
    with pytest.raises(ValueError, match=r"batch_size \(32\) must be divisible by the number of torchrun "
                                         r"processes \(3\)"):
        harness._check_sizes(cfg, digits)


def test_flowar_noise_and_steps_have_bounds():
    from flowar.sampling import FlowSampling
    from test_flowar_model import CFG

    from dataclasses import replace

    with pytest.raises(ValueError, match=r"prev_noise_std must lie in \[0, 100\]"):
        replace(CFG, prev_noise_std=1e300)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 10000\]"):
        FlowSampling(steps=10**8)


def test_an_inception_file_with_a_nan_weight_is_refused_naming_it(tmp_path):
    from compare.metrics.inception import load_inception
    from test_inception import randomized

    state = {k: v for k, v in randomized().state_dict().items() if not k.endswith("num_batches_tracked")}
    state["Mixed_7c.branch_pool.conv.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"weights\.pth holds NaN/inf weights in 1 tensor\(s\), e\.g\. "
                                         r"Mixed_7c\.branch_pool\.conv\.weight"):
        load_inception(path)
