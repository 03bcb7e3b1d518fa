"""``python -m var --out runs/var --seed 0``: train the VQ tokenizer then VAR on digits, sample, measure.

Writes to ``--out``: ``checkpoints/tokenizer-<key>.pt`` and ``checkpoints/var-<key>.pt``, keyed by the
data and every config that shapes the weights (a second run with the same settings reuses them and
trains nothing; changed settings train anew), ``samples.png`` (one row per class, ``--per-class`` samples each) and
``metrics.json`` (tokenizer reconstruction MSE and codebook usage/perplexity, VAR per-scale
train/test cross-entropy, sampling stats, timings, configs).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import nextscale
from nextscale.autoencoder import CODERS, with_coder
from nextscale.checkpoint import write_text
from nextscale.cli import add_run_args, at_least, data_and_backbone, out_folder, out_lock, run_or_exit
from nextscale.train import pick_device, recipe
from nextscale.config import config_to_dict
from nextscale.cost import memory_estimate
from nextscale.viz import save_grid

from .model import VARSampling
from .pipeline import default_configs, evaluate, train_family


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m var", description=__doc__.splitlines()[0])
    add_run_args(p, out="runs/var")
    p.add_argument("--steps", type=int, default=None, help="VAR training steps (default 600)")
    p.add_argument("--tokenizer-steps", type=int, default=None, help="tokenizer training steps (default 300)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size of both trainings (default: 64 tokenizer, 32 VAR)")
    p.add_argument("--vocab-size", type=int, default=512)
    p.add_argument("--per-class", type=int, default=8, help="samples per class in samples.png")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--cfg-schedule", default="linear", choices=["linear", "constant"])
    p.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens (default: off)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    a = p.parse_args(argv)
    return run_or_exit(run, a)


def run(a: argparse.Namespace) -> dict:
    """Every argument is checked before any training; a bad one raises ``ValueError`` naming it."""
    for name, lo in (("steps", 1), ("tokenizer_steps", 1), ("batch_size", 1), ("per_class", 1), ("vocab_size", 2),
                     ("top_k", 1), ("cfg_scale", 0.0)):
        at_least(name.replace("_", "-"), getattr(a, name), lo)
    VARSampling(**_sampling(a))  # every sampling value is checked here, before training
    pick_device(a.device)
    out = out_folder(a.out, ("metrics.json", "samples.png"), ["checkpoints"], inputs=[a.data])
    with out_lock(out):
        return _run(a, out)


def _sampling(a: argparse.Namespace) -> dict:
    return dict(cfg_scale=a.cfg_scale, cfg_schedule=a.cfg_schedule, top_k=a.top_k, top_p=a.top_p,
                temperature=a.temperature)


def _run(a: argparse.Namespace, out: Path) -> dict:
    data, backbone = data_and_backbone(a)
    vq_cfg, var_cfg = default_configs(data, backbone, vocab_size=a.vocab_size)
    vq_cfg = with_coder(vq_cfg, CODERS[a.coder])  # --coder ldm: VAR's VQVAE design, trained here
    tok_train, var_train = (c.override(batch_size=a.batch_size) for c in recipe(
        seed=a.seed, ae_steps=a.tokenizer_steps, gen_steps=a.steps))

    memory = memory_estimate([vq_cfg, var_cfg], max(t.batch_size for t in (tok_train, var_train)),
                             a.per_class * data.num_classes, "--batch-size", "sampling batch (--per-class x "
                             "classes)").check()  # before anything is built
    print(memory.line(), file=sys.stderr)

    t0 = time.perf_counter()
    trained = train_family(data, vq_cfg, var_cfg, tok_train, var_train, out / "checkpoints", a.device)
    model, (tok_ck, var_ck) = trained.model, trained.checkpoints
    print("evaluating ...", file=sys.stderr, flush=True)
    metrics = evaluate(model.tokenizer, model, data)

    n = a.per_class
    y = torch.arange(data.num_classes).repeat_interleave(n)
    opts = {**_sampling(a), "seed": a.seed}
    t3 = time.perf_counter()
    images, stats = model.sample(y, **opts)
    t4 = time.perf_counter()
    grid = save_grid(images, out / "samples.png", nrow=n)

    metrics.update({
        "sampling": {**opts, **stats, "num_images": len(y), "seconds": t4 - t3},
        "seconds": {"tokenizer_train": trained.ae_seconds, "var_train": trained.gen_seconds,
                    "total": time.perf_counter() - t0},
        "configs": {"tokenizer": config_to_dict(vq_cfg), "var": config_to_dict(var_cfg),
                    "tokenizer_train": config_to_dict(tok_train), "var_train": config_to_dict(var_train)},
        "data": {"name": data.name, "fingerprint": data.fingerprint(), "train": len(data.x_train),
                 "test": len(data.x_test)},
        "seed": a.seed, "library_version": nextscale.__version__, "torch_version": torch.__version__,
        "files": {"samples": grid.name, "tokenizer": f"checkpoints/{tok_ck.name}", "var": f"checkpoints/{var_ck.name}"},
    })
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    t, v = metrics["tokenizer"], metrics["var"]
    print(f"tokenizer: test recon MSE {t['recon_mse_test']:.4f}, codebook usage {t['codebook_usage_train']:.1%}, "
          f"perplexity {t['perplexity_train']:.1f}", file=sys.stderr)
    print("VAR CE per scale (train/test): " + ", ".join(
        f"{a_:.2f}/{b_:.2f}" for a_, b_ in zip(v["ce_train_per_scale"], v["ce_test_per_scale"])), file=sys.stderr)
    print(f"wrote {out / 'samples.png'} and {out / 'metrics.json'}", file=sys.stderr)
    return metrics


if __name__ == "__main__":
    main()
