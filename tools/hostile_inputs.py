"""Try bad and hostile inputs against the commands and the library, and count how each ends (run by hand:
each case is also a test; this is the recount, a few minutes on 2 CPU cores).

    python tools/hostile_inputs.py [--only SUBSTRING] [--timeout 60]

A command case runs ``python -m var|flowar|compare`` with tiny training settings in a fresh folder and ends
as one of: handled (exit 2, one ``error:`` line, nothing trained), late (refused, but after a stage
trained), traceback, silent (exit 0 on bad input), hang (past the timeout); where the input is legal but
once broke a run (a named pipe among the images: skipped), exit 0 is the handled outcome. A library case calls the
library in this process: handled (``ValueError``, or the right result where the input is legal but once
failed, e.g. float64 images), traceback (another exception) or silent (a wrong result, no error).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

TINY = {"var": ["--width", "32", "--depth", "1", "--heads", "2", "--latent-channels", "4", "--steps", "2",
                "--tokenizer-steps", "2", "--per-class", "1"],
        "flowar": ["--width", "32", "--depth", "1", "--heads", "2", "--latent-channels", "4", "--steps", "2",
                   "--ae-steps", "2", "--per-class", "1"],
        "compare": ["--quick", "--train-steps", "2", "--samples", "20"]}
DEVICES = ("gpu", "", "foo", "meta", "mps", "cuda:99")


def files(d: Path) -> dict:
    """Bad files the cases point at."""
    import torch
    from PIL import Image

    def png(p, side=8, value=128):
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((side, side), value, np.uint8)).save(p)

    f = {}
    np.savez(f.setdefault("nan", d / "nan.npz"), x=np.full((20, 8, 8), np.nan, np.float32), y=np.repeat(np.arange(2), 10))
    np.savez(f.setdefault("empty", d / "empty.npz"), x=np.zeros((0, 8, 8), np.uint8), y=np.zeros(0, int))
    np.savez(f.setdefault("neg", d / "neg.npz"), x=np.zeros((20, 8, 8), np.uint8), y=np.full(20, -1))
    np.savez(f.setdefault("odd", d / "odd.npz"), x=np.zeros((20, 25, 25), np.uint8), y=np.repeat(np.arange(2), 10))
    np.savez(f.setdefault("side26", d / "s26.npz"), x=np.zeros((20, 26, 26), np.uint8), y=np.repeat(np.arange(2), 10))
    (d / "text.npz").write_text("not a zip")
    f["text"] = d / "text.npz"
    for name, extra in (("pipe", "fifo"), ("bomb", "bomb"), ("notimg", "junk"), ("noimgs", None)):
        root = d / name
        for c in ("a", "b"):
            for i in range(6):
                png(root / c / f"{i}.png")
        if extra == "fifo" and hasattr(os, "mkfifo"):
            os.mkfifo(root / "a" / "x.png")
        elif extra == "bomb":  # more pixels than PIL's 2 x MAX_IMAGE_PIXELS: a DecompressionBombError
            Image.new("L", (1, 1)).save(root / "a" / "big.png")
            with open(root / "a" / "big.png", "r+b") as fh:  # the IHDR says 20000 x 20000
                fh.seek(16)
                fh.write((20000).to_bytes(4, "big") * 2)
        elif extra == "junk":
            (root / "a" / "junk.png").write_text("not a png")
        elif extra is None:
            for p in (root / "b").iterdir():
                p.unlink()
        f[name] = root
    from compare.metrics.inception import InceptionV3FID
    state = InceptionV3FID().state_dict()
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(state, d / "inception.pth")
    next(iter(state.values())).view(-1)[0] = float("nan")
    torch.save(state, d / "nan_inception.pth")
    f["inception"], f["nan_inception"] = d / "inception.pth", d / "nan_inception.pth"
    for name, sigma in (("asym", np.triu(np.ones((2048, 2048)))), ("negdef", -100 * np.eye(2048))):
        np.savez(d / f"{name}.npz", mu=np.zeros(2048), sigma=sigma)
        f[name] = d / f"{name}.npz"
    for name, text in (("vocab", b"[arms.var.overrides]\nvocab_size = 64\n"), ("utf", b"\xff\xfe[run]"),
                       ("unknown", b"[run]\nsedd = 1\n"),
                       ("labels", b'[arms.var]\nsamplers = [["cfg 0", {cfg_scale = 0.0}], ["cfg_0", {cfg_scale = 0.5}]]\n')):
        (d / f"{name}.toml").write_bytes(text)
        f[name] = d / f"{name}.toml"
    (d / "a=b").mkdir()
    (d / "a=b" / "s.toml").write_bytes(b"[run]\nseeds = 0\n")
    f["eq"] = d / "a=b" / "s.toml"
    f.update(resource_files(d))
    f.update(outputs_files(d))
    return f


def command_cases(f: dict) -> list[tuple[str, str, list[str]]]:
    c = []
    for v in ("nan", "inf", "-1"):
        c += [("var", f"--cfg-scale {v}", ["--cfg-scale", v]), ("flowar", f"--cfg-scale {v}", ["--cfg-scale", v])]
    c += [("var", f"--temperature {v}", ["--temperature", v]) for v in ("1e-45", "0", "-1", "nan")]
    c += [("var", f"--top-k {v}", ["--top-k", v]) for v in ("0", "-1")]
    c += [("var", f"--top-p {v}", ["--top-p", v]) for v in ("0", "1.5", "nan")]
    c += [("var", "--vocab-size 1", ["--vocab-size", "1"])]
    c += [("flowar", f"--sample-steps {v}", ["--sample-steps", v]) for v in ("0", "100000000")]
    c += [("flowar", "--solver shortcut without a few-step head", ["--solver", "shortcut"])]
    for cmd in ("var", "flowar", "compare"):
        c += [(cmd, f"--device {d!r}", ["--device", d]) for d in DEVICES]
        c += [(cmd, f"--seed {v}", ["--seed", v]) for v in ("-1", str(10**15))]
        c += [(cmd, f"--side {v}", ["--side", v]) for v in ("0", "-4", "4096")]
        c += [(cmd, f"--data {k}", ["--data", str(f[k])]) for k in ("nan", "empty", "neg", "odd", "text", "pipe",
                                                                       "bomb", "notimg", "noimgs")]
        c += [(cmd, "--data missing.npz", ["--data", "missing.npz"]), (cmd, "--out ''", ["--out", ""]),
              (cmd, "--out <a file>", ["--out", str(f["text"])])]
        if cmd != "compare":  # compare sets the backbone in its run spec
            c += [(cmd, "--width 0", ["--width", "0"])]
    c += [("var", "--per-class 10**9", ["--per-class", str(10**9)]), ("flowar", "--per-class 10**9",
                                                                        ["--per-class", str(10**9)])]
    c += [("var", f"--{k} 0", [f"--{k}", "0"]) for k in ("steps", "tokenizer-steps", "batch-size", "per-class")]
    c += [("flowar", f"--{k} 0", [f"--{k}", "0"]) for k in ("steps", "ae-steps", "batch-size")]
    c += [("flowar", f"--side {v} (one-scale doubling schedule)", ["--side", v]) for v in ("6", "10", "14")]
    c += [("flowar", "--data 26x26 .npz (one-scale schedule)", ["--data", str(f["side26"])])]
    c += [("compare", f"--samples {v}", ["--samples", v]) for v in ("1", "2", "3", "5", str(10**9))]
    c += [("compare", f"--{k} 0", [f"--{k}", "0"]) for k in ("seeds", "sample-batch", "head-width")]
    c += [("compare", "--seed 2**31-1 --seeds 2", ["--seed", str(2**31 - 1), "--seeds", "2"]),
          ("compare", "--side 6", ["--side", "6"]), ("compare", "--arms foo", ["--arms", "foo"]),
          ("compare", "--arms ''", ["--arms", ""]), ("compare", "--arms var,var", ["--arms", "var,var"]),
          ("compare", "--inception missing", ["--inception", "missing.pth"]),
          ("compare", "--inception NaN weight", ["--inception", str(f["nan_inception"])]),
          ("compare", "--reference-stats without --inception", ["--reference-stats", str(f["asym"])])]
    c += [("compare", f"--reference-stats {k} sigma", ["--inception", str(f["inception"]),
                                                        "--reference-stats", str(f[k])]) for k in ("asym", "negdef")]
    c += [("compare", f"--config {k}", ["--config", str(f[k])]) for k in ("vocab", "utf", "unknown", "labels", "eq")]
    c += resource_command_cases(f)
    c += outputs_command_cases(f)
    return c


WORKS = ("--data pipe",)  # legal inputs: the run must finish


def run_command(cmd: str, argv: list[str], timeout: float, works: bool = False) -> str:
    with tempfile.TemporaryDirectory() as out:
        full = [sys.executable, "-m", cmd, *([] if cmd in NO_OUT else ["--out", str(Path(out) / "run")]), *TINY[cmd],
                *argv]
        try:
            r = subprocess.run(full, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "hang"
        trained = any((Path(out) / "run" / "checkpoints").glob("*.pt"))
        err = [ln for ln in r.stderr.strip().splitlines()  # ours, or argparse's "python -m var: error: ..."
               if ln.startswith("error:") or ln.startswith(f"python -m {cmd}: error:")]
    if "Traceback" in r.stderr:
        return "traceback"
    if r.returncode == 0:
        return "handled" if works else "silent"
    if r.returncode == 2 and len(err) == 1:
        return "late" if trained else "handled"
    return "traceback"


def library_cases() -> list[tuple[str, callable]]:
    """(what, call): a call raising ValueError, or returning True for a right result, is handled."""
    import torch

    from compare.config import CompareConfig
    from flowar.model import FlowARConfig
    from nextscale.data import load_dataset
    from nextscale.train import pick_device

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_flowar_model import CFG, make
    from test_var_model import model as var_model

    flow, var = make(CFG), var_model()
    y = torch.tensor([1, 2])
    x8, x16 = torch.rand(2, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    m8, m16 = (torch.zeros(2, 1, s, s, dtype=torch.bool).index_fill_(3, torch.arange(s // 2), True) for s in (8, 16))

    def finite(out):
        return bool(torch.isfinite(out[0]).all())

    return [
        ("FlowAR.sample(cfg_scale=inf)", lambda: finite(flow.sample(y, seed=0, cfg_scale=float("inf")))),
        ("FlowAR.sample(sde_noise=inf)", lambda: finite(flow.sample(y, seed=0, solver="euler_maruyama",
                                                                    sde_noise=float("inf")))),
        ("FlowAR.sample(use_cache='no')", lambda: flow.sample(y, seed=0, use_cache="no") and False),
        ("FlowAR.sample(per_sample='yes')", lambda: flow.sample(y, seed=0, per_sample="yes") and False),
        ("FlowAR.sample(steps=10**8)", lambda: flow.sample(y, seed=0, steps=10**8) and False),
        ("FlowAR.inpaint(float64 images)", lambda: finite(flow.inpaint(x8.double(), m8, y, seed=0))),
        ("FlowAR.inpaint([0, 255] images)", lambda: flow.inpaint(x8 * 0 + 255, m8, y, seed=0) and False),
        ("VAR.sample(temperature=1e-45)", lambda: var.sample(y, seed=0, temperature=1e-45) and False),
        ("VAR.sample(cfg_scale=inf)", lambda: var.sample(y, seed=0, cfg_scale=float("inf")) and False),
        ("VAR.inpaint(float64 images)", lambda: finite(var.inpaint(x16.double(), m16, y, seed=0))),
        ("VAR.inpaint([0, 255] images)", lambda: var.inpaint(x16 * 0 + 255, m16, y, seed=0) and False),
        ("FlowARConfig(prev_noise_std=1e300)", lambda: FlowARConfig(prev_noise_std=1e300) and False),
        ("load_dataset(side=4096)", lambda: load_dataset("digits", side=4096) and False),
        ("CompareConfig(device='meta')", lambda: CompareConfig(device="meta") and False),
        ("CompareConfig(seed=10**15)", lambda: CompareConfig(seed=10**15) and False),
        ("pick_device('gpu')", lambda: pick_device("gpu") and False),
    ] + resource_library_cases() + outputs_library_cases()


# ----------------------------------------------------------------------------- issue 33: resources (sizes, files,
# hangs, metric sets): `--only resource:` runs these. Sizes that cannot fit (one memory estimate from the
# configs), an .npz inflating to 12 GB, an adaptive solve at tolerances float32 cannot meet, a checkpoint config
# that expands without end, metric sets smaller than their k.
TINY.update({"compare.bench": ["--quick", "--repeats", "1"], "compare.evaluate": []})
NO_OUT = ("compare.bench", "compare.evaluate")  # no output folder: compare.evaluate's --out is a JSON file
RESOURCE_SPECS = {"width": "[backbone]\nwidth = 4000000\nheads = 4\n", "depth": "[backbone]\ndepth = 1000000\n",
                  "head_width": "[arms.flowar.overrides]\nhead_width = 10000000\n",
                  "throughput_batch": "[eval]\nthroughput_batch = 100000000\n",
                  "tolerance": '[arms.flowar]\nsamplers = [{label = "tight", solver = "dopri5", rtol = 1e-13, '
                               'atol = 1e-13}]\n'}


def resource_files(d: Path) -> dict:
    import zipfile

    f = {}
    for name, text in RESOURCE_SPECS.items():
        (d / f"resource_{name}.toml").write_text(text)
        f[f"resource_{name}"] = d / f"resource_{name}.toml"
    rng = np.random.default_rng(0)
    np.savez(d / "two_by_ten.npz", x=rng.integers(0, 256, (20, 8, 8), dtype=np.uint8), y=np.arange(20) % 2)
    for name, n in (("ref40", 40), ("s3", 3), ("s5", 5)):
        np.savez(d / f"{name}.npz", arr_0=rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    # 3,000 zero 1000x1000 images, a few MB deflated: 3 GB as uint8, 12 GB as the float32 the loader makes
    with zipfile.ZipFile(d / "inflates.npz", "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False,
                                                      "shape": (3000, 1000, 1000)})
            chunk = bytes(2**26)
            for _ in range(3 * 10**9 // 2**26):
                fh.write(chunk)
            fh.write(bytes(3 * 10**9 % 2**26))
        with z.open("y.npy", "w") as fh:
            np.lib.format.write_array(fh, np.arange(3000) % 2)
    f.update({k: d / f"{k}.npz" for k in ("two_by_ten", "ref40", "s3", "s5", "inflates")})
    return f


def resource_command_cases(f: dict) -> list[tuple[str, str, list[str]]]:
    c = [("compare", f"resource: {k} = {v}", ["--config", str(f[f"resource_{k}"])]) for k, v in
         (("width", "4,000,000"), ("depth", "1,000,000"), ("head_width", "10,000,000"),
          ("throughput_batch", "100,000,000"), ("tolerance", "rtol = atol = 1e-13 (dopri5 row)"))]
    c += [("var", "resource: --vocab-size 2**40", ["--vocab-size", str(2**40)]),
          ("flowar", "resource: --width 4,000,000", ["--width", "4000000"]),
          ("compare.bench", "resource: --batch 10**9", ["--batch", str(10**9)]),
          ("compare", "resource: --data 2 classes x 10 images (k-NN k > test split)",
           ["--data", str(f["two_by_ten"]), "--samples", "20"])]
    c += [(cmd, "resource: --data .npz inflating to 12 GB", ["--data", str(f["inflates"])])
          for cmd in ("var", "flowar", "compare")]
    c += [("compare.evaluate", f"resource: {n} samples (k-NN k, IS splits)",
           [str(f[f"s{n}"]), "--reference", str(f["ref40"]), "--inception", str(f["inception"])]) for n in (3, 5)]
    return c


def resource_library_cases() -> list[tuple[str, callable]]:
    import tempfile

    import torch

    from compare.metrics.evaluate import check_metric_inputs
    from flowar.sampling import FlowSampling
    from nextscale.backbone import BackboneConfig
    from nextscale.cost import memory_estimate
    from var.model import VARConfig

    def dag_checkpoint():
        from nextscale.data import load_digits
        from nextscale.train import TrainConfig, load_trained, train
        from toy import Toy

        d8 = load_digits(side=8)
        with tempfile.TemporaryDirectory() as tmp:
            ck = Path(tmp) / "m.pt"
            train(Toy(), d8.x_train, d8.y_train, TrainConfig(steps=1, batch_size=8, progress=False), ckpt_path=ck,
                  device="cpu")
            raw, dag = torch.load(ck, weights_only=True), [1]
            for _ in range(12):
                dag = [dag] * 8
            raw["config"]["backbone"]["schedule"] = dag  # 8^12 values once expanded
            torch.save(raw, ck)
            return load_trained(Toy(), ck) and False

    return [
        ("resource: memory_estimate(width 4,000,000).check()",
         lambda: memory_estimate([VARConfig(backbone=BackboneConfig(width=4_000_000, heads=4))], 32).check() and False),
        ("resource: FlowSampling(dopri5, rtol = atol = 1e-13)",
         lambda: FlowSampling(solver="dopri5", rtol=1e-13, atol=1e-13) and False),
        ("resource: load_trained(checkpoint config of 8^12 values)", dag_checkpoint),
        ("resource: check_metric_inputs(reference of 4 images)", lambda: check_metric_inputs(100, 4, {}) and False),
    ]
# ----------------------------------------------------------------------------- end of issue 33: resources


# ----------------------------------------------------------------------------- issue 33: outputs (paths a command
# writes, files a rerun trusts, the run spec): `--only outputs:` runs these. Every path checked before any work
# (nextscale.cli.out_folder), an output that is an input, unreadable cached files set aside
# (nextscale.cache.read_cached), the released batch key, a spec bounded in size and depth, spec values that give
# way to --quick / --preset named in one line.
TINY.update({"compare.released": []})
LONG = "x" * 300  # a path component or label longer than NAME_MAX (255)


def outputs_files(d: Path) -> dict:
    f = {}
    for name, inside, folder in (("ckfile", "checkpoints", False), ("resdir", "results.json", True),
                                 ("metdir", "metrics.json", True)):
        (d / name).mkdir()
        (d / name / inside).mkdir() if folder else (d / name / inside).write_text("")
        f[f"out_{name}"] = d / name
    rng = np.random.default_rng(0)
    for name in ("S", "R", "S_own", "R_own"):  # *_own: the inputs an --out-is-an-input case would overwrite
        np.savez(d / f"{name}.npz", arr_0=rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8))
        f[name] = d / f"{name}.npz"
    for name, text in (("deep", "[run]\nseeds = " + "[" * 3000 + "]" * 3000 + "\n"),
                       ("big", ("# " + "x" * 98 + "\n") * 20000),
                       ("label", f'[arms.var]\nsamplers = [{{label = "{LONG}", cfg_scale = 1.0}}]\n')):
        (d / f"{name}.toml").write_text(text)
        f[f"spec_{name}"] = d / f"{name}.toml"
    return f


def outputs_command_cases(f: dict) -> list[tuple[str, str, list[str]]]:
    under = str(f["text"] / "sub")  # a folder under a regular file
    c = [("var", "outputs: --out with checkpoints a regular file", ["--out", str(f["out_ckfile"])]),
         ("flowar", "outputs: --out with metrics.json a folder", ["--out", str(f["out_metdir"])]),
         ("compare", "outputs: --out with results.json a folder", ["--out", str(f["out_resdir"])]),
         ("compare", "outputs: --out with checkpoints a regular file", ["--out", str(f["out_ckfile"])]),
         ("compare", "outputs: --out with a 300-character component", ["--out", str(f["S"].parent / LONG)]),
         ("compare", "outputs: --out under a regular file", ["--out", under]),
         ("compare", "outputs: a 300-character sampler label", ["--arms", "var", "--config", str(f["spec_label"])]),
         ("compare", "outputs: --config nested 3,000 deep", ["--config", str(f["spec_deep"])]),
         ("compare", "outputs: --config of 2 MB", ["--config", str(f["spec_big"])]),
         ("compare", "outputs: --config /dev/null (a device)", ["--config", "/dev/null"])]
    ev = [str(f["S"]), "--reference", str(f["R"]), "--inception", str(f["inception"]), "--device", "cpu"]
    c += [("compare.evaluate", "outputs: --out is SAMPLES", [str(f["S_own"]), *ev[1:], "--out", str(f["S_own"])]),
          ("compare.evaluate", "outputs: --out is --reference",
           [*ev[:2], str(f["R_own"]), *ev[3:], "--out", str(f["R_own"])]),
          ("compare.evaluate", "outputs: --out under a regular file", [*ev, "--out", under + ".json"]),
          ("compare.evaluate", "outputs: --out with a 300-character name", [*ev, "--out", LONG + ".json"])]
    rel = ["--var", f"{f['text']},{f['text']}", "--reference", str(f["R"]), "--inception", str(f["inception"])]
    c += [("compare.released", "outputs: --out under a regular file", [*rel, "--out", under]),
          ("compare.released", "outputs: --out with a 300-character component", [*rel, "--out", LONG]),
          ("compare.released", "outputs: --out is --reference", [*rel, "--out", str(f["R"])])]
    return c


def outputs_library_cases() -> list[tuple[str, callable]]:
    """Refusals (ValueError) and files a rerun trusts: True where the right thing happened (an unreadable
    cached file set aside and made again, a batch key that changes with --flowar-heads, one note line)."""
    import contextlib
    import io
    import types

    import torch

    from compare.spec import load_spec
    from nextscale.cli import out_file, out_folder

    def tmp():
        import atexit
        import shutil
        d = Path(tempfile.mkdtemp())
        atexit.register(shutil.rmtree, d, True)
        return d

    def checkpoints_file():
        d = tmp()
        (d / "checkpoints").write_text("")
        return out_folder(d, ["results.json"], ["checkpoints"]) and False

    def results_folder():
        d = tmp()
        (d / "results.json").mkdir()
        return out_folder(d, ["results.json"], ["checkpoints"]) and False

    def under_file():
        d = tmp()
        (d / "f").write_text("")
        return out_folder(d / "f" / "run") and False

    def out_is_input():
        d = tmp()
        (d / "S.npz").write_bytes(b"x")
        return out_file(d / "S.npz", inputs=[d / "S.npz"]) and False

    def released_args(d, *extra):
        from compare.released import parser
        for name in ("a", "b"):
            (d / name).write_bytes(name.encode())
        return parser().parse_args(["--flowar", f"{d}/a,{d}/b", "--reference", "R", "--inception", "W",
                                    "--samples", "6", "--batch", "4", "--out", str(d / "out"), *extra])

    class Fake:
        backbone = types.SimpleNamespace(cfg=types.SimpleNamespace(num_classes=3))
        made = 0

        def sample(self, y, seed, **kw):
            Fake.made += 1
            return torch.zeros(len(y), 3, 4, 4), {}

    def zero_byte_batch():
        from compare.released import draw_samples
        d, m = tmp(), Fake()
        a = released_args(d)
        draw_samples("flowar", m, [d / "a", d / "b"], {}, a, torch.device("cpu"))
        folder, = (d / "out").glob("samples-flowar-*")
        (folder / "000001.npz").write_bytes(b"")
        with contextlib.redirect_stderr(io.StringIO()):
            x, _ = draw_samples("flowar", m, [d / "a", d / "b"], {}, a, torch.device("cpu"))
        return Fake.made == 3 and len(x) == 6 and (folder / "000001.npz.bad").exists()

    def other_heads():
        from compare.released import draw_samples
        d, m = tmp(), Fake()
        for heads in ("2", "4"):
            draw_samples("flowar", m, [d / "a", d / "b"], {}, released_args(d, "--flowar-heads", heads),
                         torch.device("cpu"))
        return len(list((d / "out").glob("samples-flowar-*"))) == 2

    def zero_byte_checkpoint():
        from nextscale.data import load_digits
        from nextscale.train import TrainConfig, train
        from toy import Toy
        d8, ck = load_digits(side=8), tmp() / "m.pt"
        ck.write_bytes(b"")
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                res = train(Toy(), d8.x_train, d8.y_train, TrainConfig(steps=1, batch_size=8, progress=False),
                            ckpt_path=ck, device="cpu")
        except ValueError:  # refused: the rerun stops on a file it made itself
            return False
        return res.steps_run == 1 and ck.with_name("m.pt.bad").exists()

    def quick_note():
        from compare.__main__ import parse
        spec = tmp() / "s.toml"
        spec.write_text("[run]\nseeds = 3\nsamples = 500\n")
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            parse(["--config", str(spec), "--quick"])
        return "run.seeds = 3 (now 2)" in err.getvalue() and "run.samples = 500 (now 100)" in err.getvalue()

    return [
        ("outputs: out_folder(out/checkpoints a regular file)", checkpoints_file),
        ("outputs: out_folder(out/results.json a folder)", results_folder),
        ("outputs: out_folder(under a regular file)", under_file),
        ("outputs: out_folder(a 300-character component)", lambda: out_folder(tmp() / LONG) and False),
        ("outputs: out_file(an input)", out_is_input),
        ("outputs: load_spec(an array nested 3,000 deep)",
         lambda: load_spec("[run]\nseeds = " + "[" * 3000 + "]" * 3000 + "\n") and False),
        ("outputs: load_spec(/dev/null)", lambda: load_spec("/dev/null") and False),
        ("outputs: draw_samples(a zero-byte cached batch)", zero_byte_batch),
        ("outputs: draw_samples(another --flowar-heads, same --out)", other_heads),
        ("outputs: train(a zero-byte checkpoint)", zero_byte_checkpoint),
        ("outputs: --quick over a spec's seeds = 3, samples = 500", quick_note),
    ]
# ----------------------------------------------------------------------------- end of issue 33: outputs


def run_library(call) -> str:
    try:
        ok = call()
    except ValueError:
        return "handled"
    except Exception:  # noqa: BLE001 - any other exception is what this counts
        return "traceback"
    return "handled" if ok is True else "silent"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="run the cases whose label contains this")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a command case counts as a hang")
    a = p.parse_args()
    counts, t0 = Counter(), time.time()
    with tempfile.TemporaryDirectory() as d:
        f = files(Path(d))
        cases = [(f"{cmd} {label}", lambda cmd=cmd, argv=argv, w=label in WORKS: run_command(cmd, argv, a.timeout, w))
                 for cmd, label, argv in command_cases(f)]
        cases += [(f"library {label}", lambda call=call: run_library(call)) for label, call in library_cases()]
        for label, case in cases:
            if a.only in label:
                outcome = case()
                counts[outcome] += 1
                print(f"{outcome:9s} {label}", flush=True)
    kinds = ("handled", "late", "traceback", "silent", "hang")
    print(f"\n{sum(counts.values())} tries in {time.time() - t0:.0f} s: "
          + ", ".join(f"{k} {counts[k]}" for k in kinds))


if __name__ == "__main__":
    main()
