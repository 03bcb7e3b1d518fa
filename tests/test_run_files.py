"""The files a command writes and the files a rerun trusts (issue 33): every output path is checked before any
work (one ``error:`` line, exit 2), an output is never one of the inputs, a cached file that cannot be read
is set aside and made again, the released models' batch key covers every flag that changes a sample, a
rerun leaves no earlier run's grids beside its report, and a run spec is bounded in size and depth."""
import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nextscale.checkpoint import TMP_EXTRA
from nextscale.cli import out_file, out_folder

sys.path.insert(0, os.path.dirname(__file__))
TINY_VAR = ["--width", "32", "--depth", "1", "--heads", "2", "--latent-channels", "4", "--steps", "2",
            "--tokenizer-steps", "2", "--per-class", "1", "--device", "cpu"]


def _one_error(capsys, call) -> str:
    with pytest.raises(SystemExit) as e:
        call()
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


# ----------------------------------------------------------------------------- output paths

def test_every_output_path_is_checked_before_any_work(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").parent.mkdir()
    (out / "checkpoints").write_text("")
    with pytest.raises(ValueError, match=r"run/checkpoints is a file where the run writes a folder"):
        out_folder(out, ["results.json"], ["checkpoints"])
    (out / "checkpoints").unlink()
    (out / "results.json").mkdir()
    with pytest.raises(ValueError, match=r"run/results\.json is a folder where the run writes a file"):
        out_folder(out, ["results.json"], ["checkpoints"])
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"^--out .*f/sub/run is under .*/f, which is a file, not a folder$"):
        out_folder(tmp_path / "f" / "sub" / "run")
    with pytest.raises(ValueError, match=r"^--out .*: the name x{20}\.\.\.x{12} \(300 characters\) is longer than "
                                         r"the file system allows here \(255 bytes\)"):
        out_folder(tmp_path / ("x" * 300))
    long_file = "y" * (256 - TMP_EXTRA) + ".png"  # fits NAME_MAX alone, not with atomic_path's temporary
    with pytest.raises(ValueError, match=r"with its temporary"):
        out_folder(tmp_path / "ok", [long_file])
    assert not (tmp_path / "ok").exists()  # nothing made before every check passed
    assert out_folder(tmp_path / "ok", ["results.json", "sub/a.png"], ["checkpoints"]) == tmp_path / "ok"


def test_an_output_that_is_an_input_is_refused(tmp_path):
    samples = tmp_path / "S.npz"
    np.savez(samples, arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"^--out .*S\.npz is one of the command's inputs: the result would "
                                         r"replace it"):
        out_file(samples, inputs=[samples, tmp_path / "R.npz"])
    with pytest.raises(ValueError, match="one of the command's inputs"):  # another spelling of the same file
        out_file(tmp_path / "sub" / ".." / "S.npz", inputs=[str(samples)])
    assert out_file(tmp_path / "S.json", inputs=[samples, tmp_path]) == tmp_path / "S.json"  # beside them: fine
    (tmp_path / "imgs").mkdir()
    with pytest.raises(ValueError, match=r"^--out .*/imgs is one of the command's inputs"):  # an output folder
        out_folder(tmp_path / "imgs", ["results.json"], inputs=[tmp_path / "imgs"])


def test_compare_evaluate_does_not_replace_its_samples_with_the_result(tmp_path, capsys, monkeypatch):
    """``python -m compare.evaluate S.npz --reference R.npz --out S.npz`` wrote the JSON over S.npz (exit 0)."""
    from dataclasses import replace

    from compare.metrics import evaluate
    from compare.metrics.dinov2 import DINOv2, load_dinov2

    torch.manual_seed(0)
    torch.save(DINOv2(dim=32, depth=2, heads=2, grid=4).state_dict(), tmp_path / "w.pth")
    monkeypatch.setitem(evaluate.NETWORKS, "dinov2", replace(evaluate.NETWORKS["dinov2"], load=lambda path, device:
                        load_dinov2(path, device, dim=32, depth=2, heads=2, grid=4)))
    rng = np.random.default_rng(0)
    for name in ("S", "R"):
        np.savez(tmp_path / f"{name}.npz", arr_0=rng.integers(0, 256, (12, 8, 8, 3), dtype=np.uint8))
    before = (tmp_path / "S.npz").read_bytes()
    argv = [str(tmp_path / "S.npz"), "--reference", str(tmp_path / "R.npz"), "--dinov2", str(tmp_path / "w.pth"),
            "--device", "cpu", "--out"]
    err = _one_error(capsys, lambda: evaluate.main(argv + [str(tmp_path / "S.npz")]))
    assert "S.npz is one of the command's inputs" in err
    assert (tmp_path / "S.npz").read_bytes() == before
    evaluate.main(argv + [str(tmp_path / "S.json")])  # the same inputs, another --out: scored
    assert "fid_dinov2" in json.loads((tmp_path / "S.json").read_text())["metrics"]


def test_var_refuses_a_folder_where_its_metrics_go_before_training(tmp_path, capsys):
    from var.__main__ import main

    out = tmp_path / "run"
    (out / "metrics.json").mkdir(parents=True)
    err = _one_error(capsys, lambda: main(["--out", str(out), *TINY_VAR]))
    assert err.startswith("error: ") and "metrics.json is a folder where the run writes a file" in err
    assert not (out / "checkpoints").exists()


def test_compare_refuses_a_file_where_checkpoints_go_and_a_label_too_long_for_a_file_name(tmp_path, capsys):
    """A regular file at out/checkpoints failed at the first checkpoint (FileExistsError); a 300-character
    sampler label failed at its sample grid, after every arm had trained (File name too long)."""
    from compare.__main__ import main

    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("")
    err = _one_error(capsys, lambda: main(["--quick", "--out", str(out)]))
    assert "run/checkpoints is a file where the run writes a folder" in err
    (out / "checkpoints").unlink()
    spec = tmp_path / "s.toml"
    spec.write_text(f'[arms.var]\nsamplers = [{{label = "{"x" * 300}", cfg_scale = 1.0}}]\n')
    err = _one_error(capsys, lambda: main(["--quick", "--arms", "var", "--out", str(out), "--config", str(spec)]))
    assert "the name samples_var_xxxx" in err and "is longer than the file system allows" in err
    assert not (out / "checkpoints").exists()


# ----------------------------------------------------------------------------- files a rerun trusts

class _Fake:
    """A released model's surface for draw_samples: 3 classes, 4x4 RGB images of value seed / 10."""
    backbone = SimpleNamespace(cfg=SimpleNamespace(num_classes=3))

    def __init__(self):
        self.seeds = []

    def sample(self, y, seed, **kw):
        self.seeds.append(seed)
        return torch.full((len(y), 3, 4, 4), seed / 10), {}


def _released_args(tmp_path, *extra):
    from compare.released import parser

    for f in ("vae.pth", "var.pth", "fl.pth", "kl.ckpt"):
        (tmp_path / f).write_bytes(f.encode())
    return parser().parse_args(["--var", f"{tmp_path}/vae.pth,{tmp_path}/var.pth", "--flowar",
                                f"{tmp_path}/fl.pth,{tmp_path}/kl.ckpt", "--reference", "R", "--dinov2", "W",
                                "--samples", "6", "--batch", "4", "--out", str(tmp_path / "out"), *extra])


def test_a_cached_batch_that_cannot_be_read_is_set_aside_and_made_again(tmp_path, capsys):
    """A zero-byte batch file (a crash, a full disk) was an EOFError on every rerun."""
    from compare.released import draw_samples

    a = _released_args(tmp_path)
    files = [tmp_path / "fl.pth", tmp_path / "kl.ckpt"]
    model = _Fake()
    first, labels = draw_samples("flowar", model, files, {}, a, torch.device("cpu"))
    assert model.seeds == [0, 1] and first.shape == (6, 4, 4, 3) and labels.tolist() == [0, 1, 2, 0, 1, 2]
    folder, = (tmp_path / "out").glob("samples-flowar-*")
    (folder / "000001.npz").write_bytes(b"")
    capsys.readouterr()
    again, _ = draw_samples("flowar", model, files, {}, a, torch.device("cpu"))
    err = capsys.readouterr().err.strip().splitlines()
    assert model.seeds == [0, 1, 1] and np.array_equal(again, first)  # batch 1 alone made again, the same
    assert len(err) == 1 and err[0].startswith(f"warning: cached batch of flowar {folder / '000001.npz'} cannot be "
                                               f"read (") and err[0].endswith("set aside as 000001.npz.bad, made again")
    assert (folder / "000001.npz.bad").stat().st_size == 0 and (folder / "000001.npz").stat().st_size > 0
    np.savez(folder / "000000.npz", x=np.zeros((4, 4, 4, 3), np.uint8), y=np.array([2, 2, 2, 2]))  # another batch's
    draw_samples("flowar", model, files, {}, a, torch.device("cpu"))
    assert model.seeds == [0, 1, 1, 0] and "holds uint8 (4, 4, 4, 3) images of labels [2, 2, 2, 2]" in \
        capsys.readouterr().err


def test_a_checkpoint_that_cannot_be_read_is_set_aside_and_trained_again(tmp_path, capsys):
    """A zero-byte or torn checkpoint (a crash, a full disk) stopped every rerun; a readable one of other
    settings is still refused, not set aside."""
    from dataclasses import replace

    from nextscale.data import load_digits
    from nextscale.train import TrainConfig, train
    from toy import Toy

    data = load_digits(side=8)
    cfg = TrainConfig(steps=4, batch_size=16, lr=3e-3, warmup_steps=1, progress=False)

    def fit(c=cfg):
        torch.manual_seed(0)
        return train(Toy(), data.x_train, data.y_train, c, ckpt_path=tmp_path / "m.pt", device="cpu")

    first = fit()
    good = (tmp_path / "m.pt").read_bytes()
    for broken in (b"", good[: len(good) // 2]):
        (tmp_path / "m.pt").write_bytes(broken)
        capsys.readouterr()
        again = fit()
        err = capsys.readouterr().err.strip().splitlines()
        assert again.steps_run == 4 and again.losses == first.losses  # trained again, the same
        assert len(err) == 1 and err[0].startswith(f"warning: checkpoint {tmp_path / 'm.pt'} cannot be read (") \
            and err[0].endswith("set aside as m.pt.bad, made again"), err
        assert (tmp_path / "m.pt.bad").read_bytes() == broken and fit().steps_run == 0  # the new one is reused
    with pytest.raises(ValueError, match="different training config"):
        fit(replace(cfg, lr=1e-2))
    assert (tmp_path / "m.pt").read_bytes() != b""


def test_another_flowar_heads_does_not_reuse_the_batches_of_the_other_model(tmp_path):
    """Rerun with another --flowar-heads on the same --out: the batches of the other model were reused and
    labelled with the new one (the key left the flag out)."""
    from compare.released import draw_samples

    files = [tmp_path / "fl.pth", tmp_path / "kl.ckpt"]
    model = _Fake()
    for heads in ("2", "4"):
        draw_samples("flowar", model, files, {}, _released_args(tmp_path, "--flowar-heads", heads), torch.device("cpu"))
    assert model.seeds == [0, 1, 0, 1] and len(list((tmp_path / "out").glob("samples-flowar-*"))) == 2


def test_the_batch_key_covers_every_flag_but_the_few_that_change_no_sample(tmp_path):
    """Every flag of ``python -m compare.released`` (a flag added later too) changes the key of a model's
    batches, except the short UNKEYED list and the other models' own flags; file contents are keyed, not paths."""
    from compare.released import RELEASES, UNKEYED, batch_key, parser

    a = _released_args(tmp_path)
    files = {"var": [tmp_path / "vae.pth", tmp_path / "var.pth"], "flowar": [tmp_path / "fl.pth", tmp_path / "kl.ckpt"]}
    dests = [x.dest for x in parser()._actions if x.dest != "help"]
    assert set(UNKEYED) <= set(dests)
    for name, rel in RELEASES.items():
        key = batch_key(name, files[name], {}, a)
        for dest in dests:
            b = argparse.Namespace(**vars(a))
            value = getattr(a, dest)
            setattr(b, dest, (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int)
                    else f"{value}x")
            others = {f for n, r in RELEASES.items() if n != name for f in r.flags}
            same = dest in UNKEYED or dest in RELEASES or dest in others
            assert (batch_key(name, files[name], {}, b) == key) == same, (name, dest)
        assert batch_key(name, files[name], {"cfg_scale": 2.0}, a) != key  # the preset
        files[name][0].write_bytes(b"other weights")
        assert batch_key(name, files[name], {}, a) != key


# ----------------------------------------------------------------------------- stale outputs

def test_a_rerun_leaves_no_grid_of_the_earlier_run_beside_its_report(tmp_path, monkeypatch):
    import toy_family
    from compare.arms import ARMS
    from compare.config import CompareConfig
    from compare.harness import run

    monkeypatch.setitem(ARMS, toy_family.ARM.name, toy_family.ARM)
    kw = dict(arms=("toy",), seeds=1, samples=20, classifier_steps=4, sample_batch=20, cost_batch=4,
              throughput_batch=4, out=str(tmp_path))
    run(CompareConfig.quick_config(**kw, samplers={"toy": (("old row", {}),)}))
    (tmp_path / "samples_flowar_mine.png").write_bytes(b"")  # the harness's pattern: an arm's grid
    (tmp_path / "notes.png").write_bytes(b"")  # not the harness's: kept
    res = run(CompareConfig.quick_config(**kw, samplers={"toy": (("new row", {}),)}))
    grids = sorted(p.name for p in tmp_path.glob("samples_*.png"))
    assert grids == ["samples_toy_new_row.png"] == [r["grid"] for r in res["rows"]]
    assert (tmp_path / "notes.png").exists()


# ----------------------------------------------------------------------------- the run spec

def test_a_spec_is_bounded_in_size_and_depth_and_must_be_a_regular_file(tmp_path):
    """A TOML array nested 3,000 deep was a RecursionError; ``--config /dev/zero`` read until memory ran out
    (``/dev/null``, an empty device, ran the defaults)."""
    from compare.spec import SPEC_MAX_DEPTH, load_spec

    deep = tmp_path / "deep.toml"
    deep.write_text("[run]\nseeds = " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ValueError, match=rf"deep\.toml nests arrays or tables more than {SPEC_MAX_DEPTH} deep"):
        load_spec(deep)
    with pytest.raises(ValueError, match=r"the spec nests arrays or tables more than"):  # under the recursion limit
        load_spec("[run]\nseeds = " + "[" * 100 + "]" * 100 + "\n")
    big = tmp_path / "big.toml"
    big.write_text(("# " + "x" * 98 + "\n") * 20000)
    with pytest.raises(ValueError, match=r"big\.toml is over 1 MB: not a run spec"):
        load_spec(big)
    if os.path.exists("/dev/null"):
        with pytest.raises(ValueError, match=r"^the spec file /dev/null is a device, not a spec file$"):
            load_spec("/dev/null")
    with pytest.raises(ValueError, match=r"is a folder, not a spec file"):
        load_spec(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.toml")
        with pytest.raises(ValueError, match=r"is a named pipe, not a spec file"):  # refused without blocking
            load_spec(tmp_path / "pipe.toml")


def test_spec_values_that_give_way_to_quick_or_a_preset_are_named_in_one_line(tmp_path, capsys):
    """``seeds = 3`` and ``samples = 500`` (the defaults) under --quick, ``width = 128`` under --preset cifar32,
    were replaced silently."""
    from compare.__main__ import parse

    spec = tmp_path / "s.toml"
    spec.write_text("[run]\nseeds = 3\nsamples = 500\n[backbone]\nwidth = 128\ndepth = 3\n")
    cfg = parse(["--config", str(spec), "--quick", "--samples", "40"])
    err = capsys.readouterr().err.strip().splitlines()
    assert (cfg.seeds, cfg.samples, cfg.width, cfg.depth) == (2, 40, 64, 3)  # the layering itself is unchanged
    assert err == ["note: the spec's values equal to the defaults give way to --quick: run.seeds = 3 (now 2); "
                   "backbone.width = 128 (now 64); give one as a flag to keep it"]
    parse(["--config", str(spec), "--preset", "cifar32"])
    assert capsys.readouterr().err.strip().splitlines() == [
        "note: the spec's values equal to the defaults give way to --preset cifar32: run.samples = 500 (now 10000); "
        "backbone.width = 128 (now 384); give one as a flag to keep it"]
    parse(["--config", str(spec)])  # nothing gives way: no line
    assert capsys.readouterr().err == ""
