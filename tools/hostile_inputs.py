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
    return c


WORKS = ("--data pipe",)  # legal inputs: the run must finish


def run_command(cmd: str, argv: list[str], timeout: float, works: bool = False) -> str:
    with tempfile.TemporaryDirectory() as out:
        full = [sys.executable, "-m", cmd, "--out", str(Path(out) / "run"), *TINY[cmd], *argv]
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
    ]


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
