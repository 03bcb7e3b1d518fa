"""``python -m flowar --out runs/flowar --head transformer``: train the autoencoder then FlowAR (the
published recipe, :func:`flowar.pipeline.flowar_paper_configs`) on digits, sample, measure.

Writes to ``--out``: ``checkpoints/autoencoder-<key>.pt`` and ``checkpoints/flowar-<key>.pt``, keyed by
the data and every config that shapes the weights (a second run with the same settings reuses them
and trains nothing; a changed setting trains anew), ``samples.png`` (one row per class,
``--per-class`` samples each, FlowAR's sampler unless ``--solver``/``--sample-steps`` say otherwise),
``samples_<sampler>.png`` for every measured sampler, ``inpaint.png`` (rows: originals, the kept left
half, inpainted right half) and ``metrics.json`` (autoencoder reconstruction MSE, flow loss per scale
on train and test, and per sampler the head NFE per image and per scale, backbone forwards, seconds;
the checkpoint files it measured).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

import nextscale
from nextscale.autoencoder import CODERS, with_coder
from nextscale.checkpoint import write_text
from nextscale.cli import add_run_args, at_least, data_and_backbone, out_folder, out_lock, remove_stale, run_or_exit
from nextscale.train import pick_device, recipe
from nextscale.config import config_to_dict
from nextscale.cost import memory_estimate
from nextscale.viz import save_grid

from .heads import HEADS
from .pipeline import flow_losses, flowar_paper_configs, recon_mse, train_family
from .model import FEW_STEP
from .sampling import PAPER_GUIDANCE, PAPER_SOLVER, FlowSampling
from .solvers import METHODS, SOLVERS

SAMPLERS = (("euler x2", dict(solver="euler", steps=2)), ("euler x4", dict(solver="euler", steps=4)),
            ("euler x8", dict(solver="euler", steps=8)), ("euler x24", PAPER_SOLVER),
            ("euler_maruyama x8", dict(solver="euler_maruyama", steps=8)),
            ("euler_maruyama x24", {**PAPER_SOLVER, "solver": "euler_maruyama"}),
            ("rk4 x2", dict(solver="rk4", steps=2)), ("dopri5", dict(solver="dopri5", rtol=1e-3, atol=1e-3)))
# a few-step head (--few-step shortcut) is also sampled in 1, 2 and 4 of its steps per scale
SHORTCUT_SAMPLERS = tuple((f"shortcut x{n}", dict(solver="shortcut", steps=n)) for n in (1, 2, 4))
FILES = ("metrics.json", "samples.png", "inpaint.png")  # and a grid per sampler row (grid_name)


def grid_name(label: str) -> str:
    return "samples_" + label.replace(" ", "_") + ".png"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m flowar", description=__doc__.splitlines()[0])
    add_run_args(p, out="runs/flowar")
    p.add_argument("--steps", type=int, default=None, help="FlowAR training steps (default 600)")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of both trainings (default: 64 autoencoder, 32 FlowAR)")
    p.add_argument("--head", default="transformer", choices=HEADS,
                   help="velocity head: FlowAR's transformer (default) or MAR's per-token mlp")
    p.add_argument("--few-step", default=None, choices=[f for f in FEW_STEP if f],
                   help="a step-size-conditioned head trained for few-step sampling (not FlowAR's; default: none)")
    p.add_argument("--per-class", type=int, default=8, help="samples per class in the PNGs")
    p.add_argument("--solver", default=PAPER_SOLVER["solver"], choices=METHODS, help="sampler of samples.png")
    p.add_argument("--sample-steps", type=int, default=PAPER_SOLVER["steps"],
                   help="steps per scale of samples.png (fixed-step solvers; Euler and Euler-Maruyama on FlowAR's "
                        "two-segment grid from 2 steps)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="w in v = v_c + w (v_c - v_u); 0 = no guidance")
    p.add_argument("--cfg-schedule", default=PAPER_GUIDANCE["cfg_schedule"], choices=["linear", "constant"])
    a = p.parse_args(argv)
    return run_or_exit(run, a)


def run(a: argparse.Namespace) -> dict:
    """Every argument is checked before any training; a bad one raises ``ValueError`` naming it."""
    for name, lo in (("steps", 1), ("ae_steps", 1), ("batch_size", 1), ("per_class", 1), ("sample_steps", 1),
                     ("cfg_scale", 0.0)):
        at_least(name.replace("_", "-"), getattr(a, name), lo)
    if SOLVERS[a.solver].step_aware and a.few_step is None:
        raise ValueError(f"--solver {a.solver} needs a few-step head: add --few-step shortcut")
    FlowSampling(**_main_sampling(a))  # every sampling value is checked here, before training
    pick_device(a.device)
    out = out_folder(a.out, FILES + tuple(grid_name(label) for label, _ in SAMPLERS + SHORTCUT_SAMPLERS),
                     ["checkpoints"], inputs=[a.data])
    with out_lock(out):
        return _run(a, out)


def _main_sampling(a: argparse.Namespace) -> dict:
    """The sampling keywords of samples.png and inpaint.png (FlowAR's guidance at ``--cfg-scale``)."""
    kw = dict(solver=a.solver, steps=a.sample_steps, cfg_scale=a.cfg_scale, cfg_schedule=a.cfg_schedule,
              cfg_interval=PAPER_GUIDANCE["cfg_interval"])
    if a.sample_steps >= 2 and SOLVERS[a.solver].two_segment:
        kw["time_grid"] = PAPER_SOLVER["time_grid"]
    return kw


def _run(a: argparse.Namespace, out: Path) -> dict:
    data, backbone = data_and_backbone(a)
    ae_cfg, fl_cfg = (with_coder(c, CODERS[a.coder]) for c in flowar_paper_configs(data, backbone, head=a.head))
    if a.few_step is not None:
        fl_cfg = replace(fl_cfg, few_step=a.few_step)
    ae_train, fl_train = (c.override(batch_size=a.batch_size) for c in recipe(
        seed=a.seed, ae_steps=a.ae_steps, gen_steps=a.steps))

    memory = memory_estimate([ae_cfg, fl_cfg], max(t.batch_size for t in (ae_train, fl_train)),
                             a.per_class * data.num_classes, "--batch-size", "sampling batch (--per-class x "
                             "classes)").check()  # before anything is built
    print(memory.line(), file=sys.stderr)

    t0 = time.perf_counter()
    trained = train_family(data, ae_cfg, fl_cfg, ae_train, fl_train, out / "checkpoints", a.device)
    ae, model, (ae_ck, fl_ck) = trained.autoencoder, trained.model, trained.checkpoints
    print("evaluating ...", file=sys.stderr, flush=True)
    metrics = {
        "autoencoder": {"recon_mse_train": recon_mse(ae, data.x_train), "recon_mse_test": recon_mse(ae, data.x_test),
                        "scale_factor": float(ae.scale_factor)},
        "flowar": {"flow_loss_train": flow_losses(model, data.x_train, data.y_train, seed=a.seed),
                   "flow_loss_test": flow_losses(model, data.x_test, data.y_test, seed=a.seed)},
    }

    n = a.per_class
    y = torch.arange(data.num_classes).repeat_interleave(n)
    main_kw = _main_sampling(a)
    guidance = {k: main_kw[k] for k in ("cfg_scale", "cfg_schedule", "cfg_interval")}
    samplers = {}
    for label, kw in SAMPLERS + (SHORTCUT_SAMPLERS if a.few_step else ()):
        images, stats = model.sample(y, seed=a.seed, **kw, **guidance)
        name = grid_name(label)
        save_grid(images, out / name, nrow=n)
        samplers[label] = {**kw, **stats, "file": name}
        print(f"{label}: head NFE {stats['head_nfe']} per image ({stats['head_nfe_per_scale']} per scale), "
              f"{stats['seconds']:.2f} s for {len(y)} images", file=sys.stderr)
    images, stats = model.sample(y, seed=a.seed, **main_kw)
    grid = save_grid(images, out / "samples.png", nrow=n)

    x, yx = data.x_test[:n], data.y_test[:n]
    mask = torch.zeros(len(x), 1, data.side, data.side, dtype=torch.bool)
    mask[..., : data.side // 2] = True
    filled, inpaint_stats = model.inpaint(x, mask, yx, seed=a.seed, **main_kw)
    save_grid(torch.cat([x, torch.where(mask, x, torch.zeros_like(x)), filled.cpu()]), out / "inpaint.png", nrow=n)

    metrics.update({
        "sampling": {"main": {**main_kw, **stats, "num_images": len(y)}, "samplers": samplers,
                     "inpaint": {"kept": "left half", **inpaint_stats}},
        "seconds": {"autoencoder_train": trained.ae_seconds, "flowar_train": trained.gen_seconds,
                    "total": time.perf_counter() - t0},
        "configs": {"autoencoder": config_to_dict(ae_cfg), "flowar": config_to_dict(fl_cfg),
                    "autoencoder_train": config_to_dict(ae_train), "flowar_train": config_to_dict(fl_train)},
        "data": {"name": data.name, "fingerprint": data.fingerprint(), "train": len(data.x_train),
                 "test": len(data.x_test)},
        "seed": a.seed, "library_version": nextscale.__version__, "torch_version": torch.__version__,
        "files": {"samples": grid.name, "inpaint": "inpaint.png",
                  "autoencoder": f"checkpoints/{ae_ck.name}", "flowar": f"checkpoints/{fl_ck.name}"},
    })
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    # the shortcut rows' grids of an earlier --few-step run would sit beside this run's metrics as if its
    remove_stale(out, [grid_name(label) for label, _ in SAMPLERS + SHORTCUT_SAMPLERS],
                 [s["file"] for s in samplers.values()])
    fl = metrics["flowar"]
    print(f"autoencoder: test recon MSE {metrics['autoencoder']['recon_mse_test']:.5f}", file=sys.stderr)
    print("FlowAR flow loss per scale (train/test): " + ", ".join(
        f"{fl['flow_loss_train'][k]:.3f}/{fl['flow_loss_test'][k]:.3f}"
        for k in fl["flow_loss_test"] if k.startswith("flow_s")), file=sys.stderr)
    print(f"wrote {grid} and {out / 'metrics.json'}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
