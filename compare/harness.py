"""The comparison: every arm of :data:`compare.arms.ARMS` asked for, on the same backbone config, the same
data and the same seeds.

Stages: data -> domain classifier (the feature net) -> per seed and arm: its autoencoder, then its
generator -> for every sampler setting of the arm: N class-balanced samples, FID / KID /
precision-recall / class accuracy against the held-out real split, and the step cost of one sampling
call. The real-train-vs-reference distance with the same N is the floor no model can be expected to
beat. Checkpoints are keyed by everything that shapes the weights, so a second run with the same
config trains nothing.
"""
from __future__ import annotations

import contextlib
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

import nextscale
from nextscale.backbone import BackboneConfig
from nextscale.cli import out_folder, out_lock, remove_stale
from nextscale.config import config_to_dict
from nextscale.cost import count_params
from nextscale.data import ImageData, check_images_fit, load_dataset
from nextscale.distributed import rank, world
from nextscale.train import pick_device, recipe, setup_distributed
from nextscale.viz import save_grid

from .arms import ANCHOR, ARMS, FACTORS, TOTAL, arm_configs, arms_memory, build_arm, sampler_rows, steps_of
from .config import CompareConfig, slug
from .cost import measure_cost
from .metrics.classifier import class_accuracy, train_classifier
from .metrics.evaluate import (KID_SUBSETS, FeatureSpace, check_metric_inputs, evaluate_samples, feature_spaces,
                               load_networks, metric_names, protocol_of)
from .metrics.fid import load_stats
from .metrics.prdc import DC_K, PR_K
from .progress import Progress, note
from .sampling import (backbone_flops_per_scale, check_samplers, compile_arm, device_name, generate,
                       latency_and_throughput, model_device, precision_context, sample_fn, train_flops_per_image)
from .stats import attribution, paired_comparisons, t_interval

# per-seed cost numbers of a row that get a mean and an interval
COST_METRICS = ("head_nfe", "flops_per_image", "ms_per_image", "peak_mem_bytes")
INTERVAL_METHOD = ("Student t-interval over training seeds (95%): mean +- t_{0.975, n-1} std / sqrt(n); each seed "
                   "retrains every arm and draws its own samples; paired differences use the same seeds")
_PER_SEED_INFO = ("seed", "reused_checkpoints", "train_seconds", "ae_train_seconds", "checkpoints", "train_loss",
                  "test_loss")


def run(cfg: CompareConfig) -> dict:
    """The whole comparison. Under ``torchrun --nproc_per_node N -m compare``, every stage trains
    data-parallel (the shared loop's DDP), sampling and feature extraction are sharded over the ranks and
    gathered, and rank 0 alone writes files; the samples and metrics equal one process's on the same
    weights (a sampling batch is seeded by its index, whichever rank draws it)."""
    t_start = time.perf_counter()
    files, folders = outputs(cfg)
    out = out_folder(cfg.out, files, folders, inputs=(cfg.dataset, cfg.reference_stats, *cfg.networks.values()))
    with out_lock(out) if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext():
        try:
            return _run(cfg, out, t_start)
        finally:
            if world() > 1:
                torch.distributed.barrier()  # no rank tears the group down while another still uses it
                torch.distributed.destroy_process_group()


def grid_name(arm: str, label: str) -> str:
    """The sample grid of arm ``arm``'s sampler row ``label``."""
    return f"samples_{slug(arm)}_{slug(label)}.png"


def outputs(cfg: CompareConfig) -> tuple[list[str], list[str]]:
    """(files, folders) a run of ``cfg`` writes in its output folder, checked before the run
    (:func:`nextscale.cli.out_folder`); the reference statistics and checkpoints have bounded keyed names."""
    from .report import REPORT_FILES

    return [*REPORT_FILES, *(grid_name(a, label) for a in cfg.arms for label, _ in sampler_rows(a, cfg))], \
        ["checkpoints"]


@dataclass
class Run:
    """What every stage of one run reads: its settings, data and device, the feature spaces, the
    results so far and the wall-clock time spent per stage."""
    cfg: CompareConfig
    out: Path
    dev: torch.device
    data: ImageData
    backbone: BackboneConfig
    progress: Progress
    spaces: list[FeatureSpace] = field(default_factory=list)
    clf: object = None
    models: dict = field(default_factory=dict)   # arm -> its info and per-seed training numbers
    rows: dict = field(default_factory=dict)     # (arm, sampler label) -> the row
    timings: dict = field(default_factory=dict)

    def timed(self, name, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t, 2)
        return r

    @property
    def quality(self) -> tuple[str, ...]:
        return metric_names(self.spaces, self.cfg.samples)


def _run(cfg: CompareConfig, out: Path, t_start: float) -> dict:
    r = _prepare(cfg, out)
    floor, floor_seeds = _floor(r)
    labels = torch.arange(cfg.samples) % r.data.num_classes
    for i, seed in enumerate(cfg.seed_list):
        for name in cfg.arms:
            _arm_seed(r, name, i, seed, labels)
    r.progress.close()
    if rank() > 0:
        return {}
    results = _assemble(r, floor, floor_seeds)
    results["timings_s"]["total"] = round(time.perf_counter() - t_start, 2)
    from .report import write_report
    write_report(results, out)
    # an earlier run's grids (other arms or sampler rows) would sit beside this report as if they were its
    remove_stale(out, [f"samples_{slug(a)}_*.png" for a in ARMS], [row["grid"] for row in results["rows"]])
    return results


def _prepare(cfg: CompareConfig, out: Path) -> Run:
    """Check everything that can be checked before training (data, every arm's configs, sampler rows,
    feature-network files), then train (or reuse) the domain classifier and score the reference."""
    dev = pick_device(cfg.device)
    setup_distributed(dev)  # under torchrun: one process group for training, sampling and features
    torch.manual_seed(cfg.seed)
    data = load_dataset(cfg.dataset, side=cfg.side, seed=cfg.split_seed)
    backbone = BackboneConfig.for_images(data.side, data.num_classes, cfg.latent_channels, width=cfg.width,
                                         depth=cfg.depth, heads=cfg.heads)
    nets = load_networks(cfg.networks, dev)
    _check_sizes(cfg, data, nets)
    memory = arms_memory(cfg, data, backbone)  # sizes that cannot fit are refused before any model is built
    for name in cfg.arms:
        with torch.random.fork_rng(devices=[]):  # the constructors check config pairs (vocab vs tokenizer)
            try:
                build_arm(name, *arm_configs(name, data, backbone, cfg))
            except ValueError as e:
                raise ValueError(f"arm {name}: {e}") from None
    check_samplers(cfg, data, backbone, dev)
    if cfg.reference_stats is not None:
        load_stats(cfg.reference_stats, dim=2048)  # a bad file is refused before any training
    note(f"data: {cfg.dataset} (split seed {cfg.split_seed}); every setting checked; the largest arm's {memory.line()}")
    stages = 1 + cfg.seeds * sum(1 + len(sampler_rows(a, cfg)) for a in cfg.arms)
    r = Run(cfg, out, dev, data, backbone, Progress(stages, enabled=rank() == 0))
    r.progress.stage("feature network: domain classifier on the real train split")
    r.clf = r.timed("classifier", train_classifier, data, seed=cfg.split_seed, cache_dir=out / "checkpoints",
                    steps=cfg.classifier_steps, device=dev)
    r.spaces = r.timed("reference_features", feature_spaces, cfg, data, r.clf, nets, out)
    return r


def _check_sizes(cfg: CompareConfig, data, nets: dict | None = None) -> None:
    """Sizes that would fail only after training: too few samples or real images for the metrics (in the
    feature networks ``nets`` too), more samples than memory holds, training batches that the torchrun
    processes cannot share."""
    if cfg.samples < data.num_classes:
        raise ValueError(f"samples ({cfg.samples}) must be at least the number of classes ({data.num_classes}): "
                         f"the samples of a row are class-balanced")
    ref, floor = (len(getattr(data, f"x_{s}")) for s in (cfg.reference, floor_split(cfg)))
    for n, what in ((cfg.samples, "samples"), (min(cfg.samples, floor), f"the floor's {floor_split(cfg)} split")):
        check_metric_inputs(n, ref, nets or {}, what, f"the reference ({cfg.reference} split)")
    check_images_fit("samples", cfg.samples, data.channels, data.side, "use fewer samples")
    smallest = min(cfg.samples, ref, floor)
    if cfg.kid_subset_size is not None and cfg.kid_subset_size > smallest:
        raise ValueError(f"kid_subset_size ({cfg.kid_subset_size}) must be at most {smallest}: the samples "
                         f"({cfg.samples}), the reference ({cfg.reference} split, {ref}) and the floor's split "
                         f"({floor}) are the sets KID subsets are drawn from")
    for name in ("batch_size", "ae_batch_size"):
        if getattr(cfg, name) % world():
            raise ValueError(f"{name} ({getattr(cfg, name)}) must be divisible by the number of torchrun processes "
                             f"({world()})")


def floor_split(cfg: CompareConfig) -> str:
    """The real split the floor draws from: the one the samples are not scored against, so the floor's
    images are independent of the reference (drawn from the reference itself, its FID came out about half
    an independent sample's in simulation, its precision exactly 1)."""
    return "test" if cfg.reference == "train" else "train"


def _floor(r: Run) -> tuple[dict, list[dict]]:
    """Real images disjoint from the reference scored like samples: a fresh subset per seed, the same N as
    the samples (or the whole floor split when it is smaller)."""
    per_seed = [evaluate_samples(*_floor_images(r, s), r.spaces, r.clf, s, protocol_of(r.cfg))
                for s in r.cfg.seed_list]
    floor = {k: t_interval([f[k] for f in per_seed]) for k in r.quality if k in per_seed[0]}  # n may be smaller
    floor["test_class_acc"] = class_accuracy(r.clf, r.data.x_test, r.data.y_test)
    return floor, per_seed


def _floor_images(r: Run, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The floor's real images (and labels) at ``seed``: a fresh subset of the floor split."""
    x, y = (r.data.x_test, r.data.y_test) if floor_split(r.cfg) == "test" else (r.data.x_train, r.data.y_train)
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:min(r.cfg.samples, len(x))]
    return x[pick], y[pick]


def _ceiling(r: Run, name: str, model, seed: int) -> None:
    """The arm's autoencoder ceiling at ``seed``: its reconstructions of the floor's images, scored like
    samples (a generator can at best match them), and their pixel MSE."""
    x, y = _floor_images(r, seed)
    recon = ARMS[name].family.reconstruct(model)
    with torch.no_grad():
        xr = torch.cat([recon(b.to(r.dev)).float().cpu() for b in x.split(r.cfg.sample_batch)])
    one = evaluate_samples(xr, y, r.spaces, r.clf, seed, protocol_of(r.cfg))
    one["recon_mse"] = float((xr.clamp(-1, 1) - x).pow(2).mean())
    r.models[name].setdefault("ceiling_per_seed", []).append({k: one[k] for k in r.quality + ("recon_mse",)
                                                              if k in one})


def _arm_seed(r: Run, name: str, i: int, seed: int, labels: torch.Tensor) -> None:
    """Train (or reuse) arm ``name`` at training seed ``seed`` (the i-th), then score every sampler row."""
    r.progress.stage(f"seed {seed} ({i + 1}/{r.cfg.seeds}) {name}: autoencoder, then the generator")
    model, info = r.timed(f"train_{name}", train_arm, name, r.data, r.backbone, r.cfg, r.out, r.dev, seed)
    arm = r.models.setdefault(name, {k: v for k, v in info.items() if k not in _PER_SEED_INFO})
    arm.setdefault("per_seed", []).append({k: info[k] for k in _PER_SEED_INFO})
    if i == 0:
        arm["backbone_flops_per_scale"] = backbone_flops_per_scale(model)
        arm["train_flops_per_image"] = train_flops_per_image(model, r.data, r.cfg.batch_size, r.dev)
    _ceiling(r, name, model, seed)
    if r.cfg.compile:
        compile_arm(name, model)
    for label, kw in sampler_rows(name, r.cfg):
        r.progress.stage(f"seed {seed} {name} [{label}]: {r.cfg.samples} samples, metrics, cost")
        _score_row(r, model, name, label, kw, i, seed, labels)


def _score_row(r: Run, model, name: str, label: str, kw: dict, i: int, seed: int, labels: torch.Tensor) -> None:
    """One sampler row at one seed: samples and their metrics (all ranks), then cost and the sample grid
    (rank 0 alone)."""
    cfg, t = r.cfg, time.perf_counter()
    with precision_context(cfg, r.dev):
        images, stats = generate(model, labels, cfg.sample_batch, seed, **kw)
    # features of samples in float32, as the reference's and the floor's: one protocol for real and generated
    one = evaluate_samples(images, labels, r.spaces, r.clf, seed, protocol_of(cfg))
    if rank() > 0:
        return
    sample = sample_fn(model, labels, seed, kw, r.dev, cfg)
    one.update(measure_cost(sample, batch_size=min(cfg.cost_batch, cfg.samples), repeats=cfg.cost_repeats,
                            warmup=0, device=r.dev, seed=seed, flops=i == 0))
    row = r.rows.setdefault((name, label), {"model": name, "sampler": label, "settings": kw, "per_seed": []})
    if i == 0:  # cost as users measure it, on the first seed's weights (fixed-step: weight-independent)
        row["flops_per_image_exact"] = one["flops_per_image"]
        row.update(latency_and_throughput(sample, cfg.throughput_batch, r.dev, seed))
        grid = r.out / grid_name(name, label)
        save_grid(_grid_images(images, labels, r.data.num_classes, 8), grid, nrow=8)
        row["grid"] = grid.name
        row.update({k: stats[k] for k in ("backbone_forwards", "head_nfe_per_scale", "cfg_per_scale", "guided")
                    if k in stats})
    one["flops_per_image"] = row["flops_per_image_exact"]
    one["sample_seconds"] = round(time.perf_counter() - t, 2)
    row["per_seed"].append({k: v for k, v in one.items() if k in r.quality + COST_METRICS
                            or k.startswith(("kid_std", "is_std")) or k == "sample_seconds"})


def _assemble(r: Run, floor: dict, floor_seeds: list[dict]) -> dict:
    """results.json's content: every row with its per-seed values and intervals, the paired comparisons,
    the floor, and what produced them (configs, versions, device, data, feature spaces)."""
    cfg, data = r.cfg, r.data
    for arm in r.models.values():
        arm["train_seconds"] = t_interval([p["train_seconds"] for p in arm["per_seed"]])
        arm["ceiling"] = {k: t_interval([c[k] for c in arm["ceiling_per_seed"]]) for k in arm["ceiling_per_seed"][0]}
    rows = [{**row, "protocol": _protocol_line(r, row["settings"]),
             **{k: t_interval([p[k] for p in row["per_seed"]]) for k in r.quality + COST_METRICS}}
            for row in r.rows.values()]
    return {
        "models": r.models, "rows": rows, "seeds": cfg.seed_list, "interval": INTERVAL_METHOD,
        "comparisons": paired_comparisons(rows, ANCHOR),
        "attribution": attribution(rows, FACTORS, TOTAL),
        "config": asdict(cfg), "backbone": config_to_dict(r.backbone),
        "versions": {"nextscale": nextscale.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "numpy": np.__version__},
        "device": str(r.dev), "device_name": device_name(r.dev), "precision": cfg.precision, "compiled": cfg.compile,
        "seed": cfg.seed,
        "data": {"name": data.name, "fingerprint": data.fingerprint(), "split_seed": cfg.split_seed,
                 "train": len(data.x_train), "test": len(data.x_test), "side": data.side,
                 "channels": data.channels, "classes": data.num_classes, "class_names": data.class_names},
        "feature_spaces": [_space_record(sp, cfg) for sp in r.spaces],
        "floor": floor, "floor_per_seed": floor_seeds, "floor_split": floor_split(cfg),
        "protocol": {**asdict(protocol_of(cfg)), "kid_subsets": KID_SUBSETS, "pr_k": PR_K, "dc_k": DC_K},
        "floor_samples": min(cfg.samples, len(data.x_test if floor_split(cfg) == "test" else data.x_train)),
        "timings_s": dict(r.timings),
    }


def _protocol_line(r: Run, settings: dict | None) -> str:
    """How a row's numbers were made, in one line: feature networks and weights, n real / n generated,
    image size and rounding, KID subsets, k, the reference (and a statistics file), the sampler settings."""
    cfg = r.cfg
    line = protocol_of(cfg).line(r.spaces, cfg.samples, r.data.side, f"{cfg.reference} split")
    if cfg.reference_stats:
        line += f"; Inception FID against {cfg.reference_stats}"
    if settings is not None:
        line += "; sampler " + ", ".join(f"{k}={v}" for k, v in settings.items())
    return line


def _space_record(sp: FeatureSpace, cfg: CompareConfig) -> dict:
    """A feature space as results.json records it, with the reference each metric is measured against:
    a --reference-stats file feeds the Inception FID only; KID and precision/recall need the images."""
    split = f"{cfg.reference} split ({len(sp.real_feats)} images)"
    fid_ref = cfg.reference_stats if sp.name == "inception" and cfg.reference_stats else split
    return {"name": sp.name, "dim": int(sp.mu.shape[0]), "weights": sp.weights, "reference": fid_ref,
            "reference_per_metric": {"fid": fid_ref, "kid": split, "precision_recall": split}}


def train_arm(name: str, data: ImageData, backbone: BackboneConfig, cfg: CompareConfig, out: Path,
              dev: torch.device, seed: int):
    """Train (or reuse) the autoencoder and the generator of arm ``name`` with training seed ``seed``, on
    the one recipe (:func:`nextscale.train.recipe`) and the family's budget, through the family's
    ``train_family``; returns (model, info). A family's arms share its autoencoder checkpoint, and a family
    built on another's autoencoder shares that one's."""
    family = ARMS[name].family
    ae_cfg, gen_cfg = arm_configs(name, data, backbone, cfg)
    ae_tc, gen_tc = _recipe(cfg, family, seed)
    base = {} if family.base is None else {"base_train": _recipe(cfg, family.base, seed)[0],
                                           "base_name": f"{family.base.name}-autoencoder"}
    trained = family.train(data, ae_cfg, gen_cfg, ae_tc, gen_tc, out / "checkpoints", dev,
                           (f"{family.name}-autoencoder", name), **base)
    model, ae = trained.model, trained.autoencoder
    info = {"seed": seed, "reused_checkpoints": trained.reused, "train_seconds": round(trained.gen_seconds, 2),
            "ae_train_seconds": round(trained.ae_seconds, 2),
            "params_backbone": count_params(model.backbone),
            "params_head": count_params(model.head),
            "params_generator": count_params(model) - count_params(ae),  # backbone + head (EMA copies are frozen)
            "schedule": list(gen_cfg.backbone.schedule),
            "params_autoencoder": count_params(ae),
            "config": config_to_dict(gen_cfg), "autoencoder_config": config_to_dict(ae_cfg),
            "checkpoints": [p.name for p in trained.checkpoints]}
    info.update(_holdout_losses(model, data))
    return model, info


def _recipe(cfg: CompareConfig, family, seed: int):
    """(autoencoder, generator) training configs of ``family`` in this run: its budget, the run's batches."""
    return recipe(seed, *steps_of(cfg, family), ae_batch=cfg.ae_batch_size, gen_batch=cfg.batch_size)


@torch.no_grad()
def _holdout_losses(model, data: ImageData, n: int = 256) -> dict:
    """Mean training loss (and its per-scale parts) on fixed train and test subsets, eval mode."""
    out, dev = {}, model_device(model)
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            logs = model(x[idx].to(dev), y[idx].to(dev))
        out[f"{split}_loss"] = {k: float(v) for k, v in logs.items()}
    return out


def _grid_images(images, labels, num_classes: int, per_class: int) -> torch.Tensor:
    """Rows = classes, columns = the first ``per_class`` samples of that class."""
    rows = []
    for c in range(num_classes):
        got = images[labels == c][:per_class]
        pad = torch.ones(per_class - len(got), *images.shape[1:])
        rows.append(torch.cat([got, pad]))
    return torch.cat(rows)
