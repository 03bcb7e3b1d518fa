"""``python -m compare.released``: the released VAR and FlowAR checkpoints, sampled with their releases'
settings, scored with the harness's metrics and costed on this machine.

    python -m compare.released --var VAE.pth,VAR.pth --flowar FLOWAR.pth,KL16.ckpt \\
        --reference REF --inception pt_inception-2015-12-05-6726825d.pth --samples 50000 --out runs/released

Each model draws ``--samples`` class-balanced images (label i mod classes) with its preset (VAR: cfg 1.5 ramped,
top-k 900, top-p 0.96; FlowAR: its size's evaluation command), in batches of ``--batch``, batch i seeded
``--seed`` + i. Batches are written to ``OUT/samples-<model>-<key>/`` as they finish, the key covering the
files' contents, the preset and every flag but those that change no sample (:data:`UNKEYED`), so a killed run
resumes where it stopped and never reuses batches made otherwise; a batch file that cannot be read is set
aside (``.bad``) with one warning line and made again. Under ``torchrun`` batch i is made by rank i mod world
and rank 0 scores. Metrics: :func:`compare.metrics.evaluate.score_sets` in every feature network given (FID,
FID_inf, KID, precision/recall, density/coverage, IS) against REF (images, or statistics for FID alone).
Cost: ms/img at batch 1 and 64 (``--cost-batches``), images/s, NFE, GFLOPs per image, peak memory, device
and dtype named.
``--save-samples`` also writes ``OUT/<model>_samples.npz`` in the ADM evaluator's layout (``arr_0`` uint8
(N, H, W, 3), ``arr_1`` labels). Results: ``OUT/results.json`` and ``OUT/report.md``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flowar import release as flowar_release
from nextscale.cache import Unreadable, read_cached
from nextscale.checkpoint import atomic_path, write_text
from nextscale.cli import out_folder, out_lock, remove_stale, run_or_exit
from nextscale.config import check_int, check_seed
from nextscale.distributed import rank, world
from nextscale.train import pick_device, setup_distributed
from var import release as var_release

from .cost import measure_cost
from .metrics.evaluate import (NETWORKS, Protocol, add_network_flags, load_networks, network_files, protocol_line,
                               check_metric_inputs, score_sets)
from .metrics.sample_files import read_set
from .sampling import device_name, precision_context

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Release:
    """A released model: its flag's two files, the loader taking them (and the parsed flags), its preset
    sampling settings, and the other flags that change only this model (left out of the others' batch keys)."""
    files: tuple[str, str]
    load: Callable  # (file, file, map_location, args) -> model
    preset: Callable  # model -> the sampler's keyword arguments
    flags: tuple[str, ...] = ()


RELEASES = {
    "var": Release(("VAE.pth", "VAR.pth"), lambda vae, var, loc, a: var_release.load(vae, var, loc),
                   lambda model: asdict(var_release.RELEASE_SAMPLING)),
    "flowar": Release(("FLOWAR.pth", "KL16.ckpt"),
                      lambda fl, vae, loc, a: flowar_release.load(fl, vae, loc, heads=a.flowar_heads),
                      flowar_release.sampling_for, flags=("flowar_heads",)),
}
# flags (parsed names) that change no sample: scoring, timing, where files go and whether they are kept. Every
# other flag is in the key of the batch files (batch_key), so a flag added later is keyed unless named here.
UNKEYED = ("reference", *NETWORKS, "cost_batches", "out", "save_samples", "clean")


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def to_uint8(images_BCHW: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] as uint8 (B, H, W, C): the 8-bit levels a saved PNG holds."""
    x = ((images_BCHW.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def _save_array(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def batch_key(name: str, files: list[Path], kw: dict, a) -> str:
    """The key of model ``name``'s batch files: its files' contents, its preset ``kw`` and every parsed flag
    but :data:`UNKEYED`, the models' file flags (keyed by content) and the flags of the other models."""
    others = {f for n, r in RELEASES.items() if n != name for f in r.flags}
    flags = {k: v for k, v in sorted(vars(a).items()) if k not in (*UNKEYED, *RELEASES, *others)}
    key = json.dumps([[file_digest(f) for f in files], kw, flags], sort_keys=True, default=str)
    return hashlib.sha256(key.encode()).hexdigest()[:12]


def _read_batch(path: Path, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """A batch file's images and labels; one that is not the batch of labels ``y`` is :class:`Unreadable`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x, labels = z["x"], z["y"]
    except Exception as e:  # empty, torn, not an .npz, arrays missing: all unusable
        raise Unreadable(str(e) or type(e).__name__) from None
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) != len(y) or not np.array_equal(labels, y.numpy()):
        raise Unreadable(f"holds {x.dtype} {x.shape} images of labels {labels[:4].tolist()}..., not this batch's")
    return x, labels


def draw_samples(name: str, model, files: list[Path], kw: dict, a, dev) -> tuple[np.ndarray, np.ndarray]:
    """``a.samples`` class-balanced samples (uint8 NHWC) and their labels, batch by batch, resumable (see the
    module doc); every rank makes its batches, rank 0 returns the whole set (other ranks: empty arrays). A
    batch file that cannot be read is set aside and made again (:func:`nextscale.cache.read_cached`). With
    ``a.clean`` the batch files are deleted once read."""
    from tqdm import tqdm

    classes = model.backbone.cfg.num_classes
    labels = torch.arange(a.samples) % classes
    folder = Path(a.out) / f"samples-{name}-{batch_key(name, files, kw, a)}"
    folder.mkdir(parents=True, exist_ok=True)
    batches = list(enumerate(torch.split(labels, a.batch)))
    got, done = {}, set()  # rank 0 keeps the (images, labels) it reads or makes here; done: readable on disk
    for i, y in batches:
        path = folder / f"{i:06d}.npz"
        if i % world() == rank() and path.is_file():
            one = read_cached(path, lambda p, y=y: _read_batch(p, y), f"cached batch of {name}")
            if one is not None:
                done.add(i)
                got.update({i: one} if rank() == 0 else {})
    mine = [(i, y) for i, y in batches if i % world() == rank() and i not in done]
    for i, y in tqdm(mine, desc=f"sampling {name}", leave=False, disable=not sys.stderr.isatty() or rank() > 0):
        with torch.no_grad(), precision_context(a, dev):
            images, _ = model.sample(y.to(dev), seed=a.seed + i, **kw)
        one = to_uint8(images), y.numpy()
        _save_array(folder / f"{i:06d}.npz", x=one[0], y=one[1])
        got.update({i: one} if rank() == 0 else {})
    if world() > 1:
        torch.distributed.barrier()
    if rank() > 0:
        return np.zeros((0,), np.uint8), np.zeros((0,), np.int64)
    xs, ys = [], []
    for i, y in batches:  # the other ranks' batches, written (or checked) by them just now
        x, yy = got[i] if i in got else _read_batch(folder / f"{i:06d}.npz", y)
        xs.append(x)
        ys.append(yy)
    if a.clean:
        for i, _ in batches:
            (folder / f"{i:06d}.npz").unlink()
        folder.rmdir()
    return np.concatenate(xs), np.concatenate(ys)


def cost(model, kw: dict, a, dev) -> dict:
    """Per image at each batch of ``a.cost_batches``: ms (median of 3 at batch 1, else one timed call after a
    warm-up), images/s and peak memory; GFLOPs, head NFE and backbone forwards (at the first batch), at the
    run's precision."""
    def sample(b):
        y = torch.arange(b, device=dev) % model.backbone.cfg.num_classes
        with precision_context(a, dev):
            return model.sample(y, seed=a.seed, **kw)
    out = {"batches": {}}
    for i, b in enumerate(a.cost_batches):
        m = measure_cost(sample, batch_size=b, repeats=3 if b == 1 else 1, warmup=1, device=dev, seed=a.seed,
                         flops=i == 0)
        out["batches"][b] = {"ms_per_image": m["ms_per_image"], "images_per_s": 1000 / m["ms_per_image"],
                             "peak_mem_mb": m["peak_mem_bytes"] / 2**20, "peak_mem_method": m["peak_mem_method"]}
        if i == 0:
            out.update(gflops_per_image=m["flops_per_image"] / 1e9, head_nfe=m["head_nfe"],
                       backbone_forwards=m["backbone_forwards"])
    return out


def device_line(dev: torch.device, precision: str) -> str:
    return f"{device_name(dev)}, {precision}, torch {torch.__version__}"


def check_args(a) -> dict[str, list[Path]]:
    """The models asked for (name -> its two files) after every check that needs no model loaded."""
    check_int("--samples", a.samples, 2)
    check_int("--batch", a.batch, 1)
    check_seed("--seed", a.seed)
    try:
        a.cost_batches = tuple(int(b) for b in str(a.cost_batches).split(","))
    except ValueError:
        raise ValueError(f"--cost-batches must be comma-separated batch sizes, got {a.cost_batches!r}") from None
    for b in a.cost_batches:
        check_int("--cost-batches", b, 1)
    if a.precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {PRECISIONS}, got {a.precision!r}")
    models = {}
    for name, rel in RELEASES.items():
        given = getattr(a, name)
        if given is None:
            continue
        parts = [p for p in given.split(",") if p]
        if len(parts) != 2:
            raise ValueError(f"--{name} takes two files, {','.join(rel.files)}; got {given!r}")
        for p, what in zip(parts, rel.files):
            if not Path(p).is_file():
                raise ValueError(f"--{name}: no file at {p} (its {what})")
        models[name] = [Path(p) for p in parts]
    if not models:
        raise ValueError("give at least one released model: " + " and/or ".join(
            f"--{n} {','.join(r.files)}" for n, r in RELEASES.items()))
    weights = network_files(a)  # at least one feature network
    out_folder(a.out, ["results.json", "report.md", *(f"{n}_samples.npz" for n in models)],
               inputs=[a.reference, *weights.values(), *(f for fs in models.values() for f in fs)])
    return models


def run(a: argparse.Namespace) -> dict:
    models = check_args(a)
    dev = pick_device(a.device)
    weights = network_files(a)
    nets = load_networks(weights, dev)
    reference = read_set(a.reference, "--reference")
    check_metric_inputs(a.samples, reference if isinstance(reference, tuple) else len(reference), nets, "--samples",
                        "--reference")  # each metric's k, IS splits, the statistics' dimension: before sampling
    loaded = {name: RELEASES[name].load(*files, "cpu", a) for name, files in models.items()}  # refuse first
    setup_distributed(dev)
    out = Path(a.out)
    result = {"device": device_line(dev, a.precision), "samples": a.samples, "seed": a.seed,
              "reference": str(a.reference),
              "models": {}}
    with out_lock(out) if rank() == 0 else nullcontext():
        for name, model in loaded.items():
            model = model.to(dev).eval()
            kw = RELEASES[name].preset(model)
            samples, labels = draw_samples(name, model, models[name], kw, a, dev)
            if rank() > 0:
                continue
            if a.save_samples:
                _save_array(out / f"{name}_samples.npz", arr_0=samples, arr_1=labels)
            result["models"][name] = {"files": [str(f) for f in models[name]], "sampling": kw,
                                      "metrics": score_sets(samples, reference, nets, a.seed, Protocol()),
                                      "protocol": protocol_line(weights, samples, reference, Protocol()),
                                      "cost": cost(model, kw, a, dev)}
        if rank() == 0:
            write_text(out / "results.json", json.dumps(result, indent=2, default=str))
            write_text(out / "report.md", report(result))
            # an earlier run's sample files (another model, or --save-samples then) are not this report's
            remove_stale(out, [f"{n}_samples.npz" for n in RELEASES],
                         [f"{n}_samples.npz" for n in result["models"]] if a.save_samples else [])
    return result


def report(result: dict) -> str:
    metrics = sorted({k for m in result["models"].values() for k in m["metrics"] if k != "skipped"})
    lines = [f"# Released models\n\n{result['samples']} samples per model, seed {result['seed']}, reference "
             f"{result['reference']}; {result['device']}.\n", "| model | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for name, m in result["models"].items():
        lines.append(f"| {name} | " + " | ".join(f"{m['metrics'].get(k, float('nan')):.4g}" for k in metrics) + " |")
    batches = next(iter(result["models"].values()))["cost"]["batches"]
    lines += ["", "| model | " + " | ".join(f"ms/img, images/s, peak MB at batch {b}" for b in batches)
              + " | head NFE | backbone forwards | GFLOPs/img |", "|---" * (len(batches) + 4) + "|"]
    for name, m in result["models"].items():
        c = m["cost"]
        per = " | ".join(f"{v['ms_per_image']:.2f}, {v['images_per_s']:.1f}, {v['peak_mem_mb']:.0f}"
                         for v in c["batches"].values())
        lines.append(f"| {name} | {per} | {c['head_nfe']} | {c['backbone_forwards']} | {c['gflops_per_image']:.2f} |")
    lines += [""] + [f"- {name}: sampling {m['sampling']}; {m['protocol']}" for name, m in result["models"].items()]
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compare.released", description=__doc__.split("\n\n")[0])
    for name, rel in RELEASES.items():
        p.add_argument(f"--{name}", metavar=",".join(rel.files), help=f"the released {name} files, comma-separated")
    p.add_argument("--flowar-heads", type=int, default=None, help="the FlowAR AR transformer's heads, for a width "
                   "the release does not have (S, L, H: read from the width)")
    p.add_argument("--reference", required=True, help="real images (a folder or an .npz) or statistics (mu, sigma)")
    add_network_flags(p)
    p.add_argument("--samples", type=int, default=50_000, help="samples per model (default 50000; not --n, "
                   "which torchrun's own flags would take for theirs)")
    p.add_argument("--batch", type=int, default=64, help="sampling batch (default 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost-batches", default="1,64", help="batches to time sampling at (default 1,64)")
    p.add_argument("--precision", default="fp32", help=f"one of {PRECISIONS}")
    p.add_argument("--device", default=None, help="default: cuda if available")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--save-samples", action="store_true", help="also write each model's samples in the ADM layout")
    p.add_argument("--clean", action="store_true", help="delete the per-batch sample files once scored")
    return p


def main(argv: list[str] | None = None) -> dict:
    return run_or_exit(run, parser().parse_args(argv))


if __name__ == "__main__":
    main()
