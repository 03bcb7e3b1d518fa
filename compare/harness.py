"""The comparison: VAR and FlowAR on the same backbone config, the same data and the same seeds.

Arms (the ``model`` of every row): ``var`` (VAR, Tian et al. 2024), ``flowar`` (FlowAR as
published, Ren et al. 2025: :func:`flowar.pipeline.flowar_paper_configs`, transformer head),
``flowar-mlp`` (the same recipe with MAR's per-token MLP head) and, opt-in, ``flowar-fewstep`` (the
same recipe with a shortcut head, sampled in 1, 2 or 4 steps per scale). All share the backbone's width,
depth and heads and the training recipe; each keeps its paper's scale schedule (VAR's for ``var``,
FlowAR's doubling one for the FlowAR arms), and the FlowAR arms share one autoencoder.

Stages: data -> domain classifier (feature net) -> VQ tokenizer + VAR -> AE + FlowAR (x2 heads) -> for every
sampler setting: N class-balanced samples, FID / KID / precision-recall / class accuracy against the
held-out real split, and the step cost of one sampling call. The real-train-vs-real-test distance
with the same N is the floor no model can beat. Checkpoints are keyed by everything that shapes the
weights, so a second run with the same config trains nothing.
"""
from __future__ import annotations

import platform
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

import nextscale
from nextscale.backbone import BackboneConfig
from nextscale.checkpoint import keyed_stage_paths
from nextscale.cli import out_folder, out_lock
from nextscale.config import check_choice, check_float, check_int, config_to_dict
from nextscale.cost import count_flops, count_params, count_train_flops
from nextscale.data import ImageData, load_dataset
from nextscale.train import TrainConfig, pick_device, setup_distributed
from nextscale.scales import default_schedule, latent_side_of
from nextscale.viz import save_grid

from flowar.pipeline import PAPER_SAMPLING

from .classifier import class_accuracy, train_classifier
from .cost import measure_cost
from .fid import frechet_distance, gaussian_stats, load_stats, save_stats
from .kid import kid
from .prdc import precision_recall
from .stats import paired_difference, t_interval

# (label, sampling kwargs). VAR: CFG strength and top-k/top-p; FlowAR: ODE solver and steps per scale.
VAR_SAMPLERS = (
    ("cfg 0", dict(cfg_scale=0.0)),
    ("cfg 1.5", dict(cfg_scale=1.5)),
    ("cfg 3", dict(cfg_scale=3.0)),
    ("cfg 1.5, top-k 64, top-p 0.95", dict(cfg_scale=1.5, top_k=64, top_p=0.95)),
)
# FlowAR rows: steps per scale; "euler x24" is FlowAR's own sampler (the release's 25-point two-segment grid). Every FlowAR row uses
# FlowAR's guidance (linear ramp from 0 at scale 1, off for t < 0.1) at CompareConfig.flowar_cfg unless
# the row sets its own cfg_scale.
FLOWAR_SAMPLERS = (
    ("euler x1", dict(solver="euler", steps=1)),
    ("euler x2", dict(solver="euler", steps=2)),
    ("euler x4", dict(solver="euler", steps=4)),
    ("euler x8", dict(solver="euler", steps=8)),
    ("euler x24", dict(solver="euler", steps=24, time_grid="two_segment")),
    ("euler_maruyama x8", dict(solver="euler_maruyama", steps=8)),
    ("euler_maruyama x24", dict(solver="euler_maruyama", steps=24, time_grid="two_segment")),
)
# The few-step arm (FlowAR's recipe with a shortcut head): 1, 2, 4 shortcut steps per scale at guidance
# w = 0.5 (a few large steps keep less diversity than the flow at FlowAR's w = 1: on seed 0, 1 step gave
# recall 0.35 at w = 0.5 and 0.23 at w = 1, both with class accuracy >= 0.998), the same at FlowAR's
# w for reference, and the same model's flow (d = 0) under FlowAR's own sampler.
FEWSTEP_SAMPLERS = (
    ("shortcut x1, w 0.5", dict(solver="shortcut", steps=1, cfg_scale=0.5)),
    ("shortcut x2, w 0.5", dict(solver="shortcut", steps=2, cfg_scale=0.5)),
    ("shortcut x4, w 0.5", dict(solver="shortcut", steps=4, cfg_scale=0.5)),
    ("shortcut x1", dict(solver="shortcut", steps=1)),
    ("shortcut x2", dict(solver="shortcut", steps=2)),
    ("euler x24", dict(solver="euler", steps=24, time_grid="two_segment")),
)
QUICK_FLOWAR = ("euler x2", "euler_maruyama x8", "shortcut x1, w 0.5", "shortcut x2, w 0.5")
QUICK_VAR = ("cfg 0", "cfg 1.5")
ARMS = ("var", "flowar", "flowar-mlp", "flowar-fewstep")
REFERENCES = ("test", "train")
PRECISIONS = ("fp32", "bf16")
DEFAULT_ARMS = ("var", "flowar", "flowar-mlp")  # the few-step arm is opt-in (--arms): it adds ~12 minutes here


# Named settings for common data (``--preset``). cifar32: 32x32 RGB (e.g. a CIFAR-10 image folder): latent
# 16x16x16, VAR's schedule (1, 2, 3, 4, 6, 8, 12, 16) (L = 530) and FlowAR's (1, 2, 4, 8, 16) (L = 341), a
# 384-wide depth-8 backbone, samples scored against the train split as CIFAR-10 papers do. Sized for one
# GPU (see the README's "Your own data"); with --quick only its data keys (PRESET_DATA_KEYS) apply.
PRESETS = {
    "cifar32": dict(side=32, latent_channels=16, width=384, depth=8, heads=6, batch_size=64, ae_batch_size=64,
                    tokenizer_steps=5000, ae_steps=5000, var_steps=20000, flowar_steps=20000,
                    classifier_steps=3000, samples=10000, sample_batch=500, cost_batch=64, reference="train"),
}
PRESET_DATA_KEYS = ("side", "latent_channels", "reference")


@dataclass(frozen=True)
class CompareConfig:
    dataset: str = "digits"
    out: str = "runs/compare"
    seed: int = 0                 # first training / sampling seed; seed i of N is seed + i
    seeds: int = 3                # training seeds: every arm is trained and sampled once per seed
    split_seed: int = 0           # the data split and the feature network, the same for every seed
    samples: int = 500            # generated images per model, sampler and seed (class-balanced)
    tokenizer_steps: int = 300
    var_steps: int = 600
    ae_steps: int = 300
    flowar_steps: int = 600
    classifier_steps: int = 400
    batch_size: int = 32          # generator training batch (the same for VAR and FlowAR)
    ae_batch_size: int = 64       # tokenizer / autoencoder training batch
    sample_batch: int = 250       # sampling batch for the quality metrics
    cost_batch: int = 50          # batch of the per-seed timed cost measurement
    cost_repeats: int = 1         # timed calls per seed (the sampling just before is the warm-up)
    throughput_batch: int = 256   # largest batch tried for throughput (halved on CUDA out-of-memory)
    flowar_cfg: float = 1.0       # CFG scale for every FlowAR solver setting
    head_width: int | None = None  # FlowAR arms' head width (None: the backbone's, as the paper's S model)
    width: int = 128
    depth: int = 4
    heads: int = 4
    latent_channels: int = 8
    side: int | None = None       # image side (default: 16 for digits, 32 for folders, native for npz)
    device: str | None = None
    inception: str | None = None  # path of pytorch-fid's InceptionV3 weights: adds the Inception feature space
    reference: str = "test"       # the real images samples are scored against: "test" split or "train" (CIFAR-10's)
    reference_stats: str | None = None  # Inception mu/sigma .npz (pytorch-fid's format) for the Inception FID
    arms: tuple[str, ...] = DEFAULT_ARMS
    # {arm: ((label, sampling kwargs), ...)}: replaces that arm's built-in sampler sweep (see _samplers)
    samplers: dict | None = None
    # {arm: {field: value}}: overrides of the arm's generator config (FlowARConfig / VARConfig fields)
    arm_overrides: dict | None = None
    precision: str = "fp32"       # "bf16": autocast for sampling and feature extraction (metrics in float32)
    compile: bool = False         # torch.compile the backbone blocks and the head for sampling
    quick: bool = False

    def __post_init__(self):
        arms = tuple(self.arms) if isinstance(self.arms, (list, tuple)) else ()
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be a non-empty list of distinct arms from {ARMS}, got {self.arms!r}")
        object.__setattr__(self, "arms", arms)
        for name in ("samplers", "arm_overrides"):
            table = getattr(self, name)
            if table is not None and (not isinstance(table, dict) or any(a not in ARMS for a in table)):
                raise ValueError(f"{name} must map arms from {ARMS} to their settings, got {table!r}")
        for arm, rows in (self.samplers or {}).items():
            labels = [r[0] for r in rows] if isinstance(rows, (list, tuple)) and all(
                isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], dict)
                for r in rows) else None
            if not labels or len(set(labels)) != len(labels):
                raise ValueError(f"samplers.{arm} must be a non-empty list of (distinct label, settings dict) pairs, "
                                 f"got {rows!r}")
        check_choice("precision", self.precision, PRECISIONS)
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        check_int("seed", self.seed, 0)
        check_int("seeds", self.seeds, 1)
        check_int("split_seed", self.split_seed, 0)
        check_int("samples", self.samples, 2)
        for name in ("tokenizer_steps", "var_steps", "ae_steps", "flowar_steps", "classifier_steps",
                     "batch_size", "ae_batch_size", "sample_batch", "cost_batch", "cost_repeats",
                     "throughput_batch", "width", "depth", "heads", "latent_channels"):
            check_int(name, getattr(self, name), 1)
        if self.head_width is not None:
            check_int("head_width", self.head_width, 1)
        check_float("flowar_cfg", self.flowar_cfg, 0)
        check_choice("reference", self.reference, REFERENCES)
        if self.reference_stats is not None and self.inception is None:
            raise ValueError("reference_stats are Inception statistics: give the Inception weights too (inception)")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @staticmethod
    def quick_config(**overrides) -> "CompareConfig":
        """The reduced run the tests use (< 3 minutes on 2 CPU cores, 2 seeds)."""
        base = dict(seeds=2, samples=100, tokenizer_steps=60, var_steps=80, ae_steps=60, flowar_steps=80,
                    classifier_steps=150, cost_batch=10, throughput_batch=20, width=64, depth=2, heads=2, quick=True)
        return CompareConfig(**{**base, **overrides})


class Progress:
    """One overall line for the whole run (stage i of n, elapsed, estimated time left) above the per-stage
    bars on a terminal; plain log lines otherwise. The estimate assumes the remaining stages take as long
    as the finished ones on average."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.done, self.t0, self.enabled = total, 0, time.perf_counter(), enabled
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, position=0, desc="overall", bar_format="{desc} {n}/{total} {postfix}")

    def stage(self, msg: str):
        elapsed = time.perf_counter() - self.t0
        left = "?" if self.done == 0 else _clock(elapsed / self.done * (self.total - self.done))
        line = f"stage {self.done + 1}/{self.total}, {_clock(elapsed)} elapsed, ~{left} left: {msg}"
        if self.bar is not None:
            self.bar.n = self.done
            self.bar.set_postfix_str(line, refresh=True)
        elif self.enabled:
            print(f"== {line}", file=sys.stderr, flush=True)
        self.done += 1

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m}:{s:02d}"


def _stage(msg: str):
    print(f"== {msg}", file=sys.stderr, flush=True)


def precision_context(cfg: CompareConfig, dev: torch.device):
    """bf16 autocast for sampling and feature extraction (``precision="bf16"``); metrics stay float32/64."""
    from contextlib import nullcontext

    return torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.precision == "bf16" else nullcontext()


def compile_for_sampling(model):
    """Wrap every backbone block's forward and the head's evaluation (``velocity``, or VAR's linear head's
    ``forward``) with ``torch.compile``, in place; returns the model. The block is the compute of a
    KV-cached step; ``Backbone.step`` itself is bookkeeping (input checks, the scale counter) that
    dynamic-shape tracing cannot follow (it fails on the check of which scale is fed)."""
    for blk in model.backbone.blocks:
        blk.forward = torch.compile(blk.forward, dynamic=True)
    head = model.head
    name = "velocity" if hasattr(head, "velocity") else "forward"
    setattr(head, name, torch.compile(getattr(head, name), dynamic=True))
    return model


@torch.no_grad()
def generate(model, labels_N: torch.Tensor, batch: int, seed: int, **kw) -> tuple[torch.Tensor, dict]:
    """Samples for ``labels`` in batches; batch i uses seed + i. Returns images (CPU) and the first stats."""
    from tqdm import tqdm

    chunks = list(enumerate(torch.split(labels_N, batch)))
    bar = tqdm(total=len(chunks), leave=False, disable=not sys.stderr.isatty() or _rank() > 0, desc="sampling")

    def one(item):
        i, y = item
        imgs, st = model.sample(y.to(_device(model)), seed=seed + i, **kw)
        bar.update(_world())
        return imgs.float().cpu(), st
    done = shard_map(one, chunks)  # under torchrun: batch i on rank i % world, gathered in order
    bar.close()
    return torch.cat([imgs for imgs, _ in done]), done[0][1]


def check_samplers(cfg: CompareConfig, data: ImageData, backbone: BackboneConfig, dev: torch.device) -> None:
    """Refuse bad sampler settings of a run spec before any training: every row samples one image with
    the arm's untrained model (milliseconds)."""
    for name in cfg.arms:
        if not (cfg.samplers and name in cfg.samplers):
            continue
        model = build_arm(name, *arm_configs(name, data, backbone, cfg)).to(dev).eval()
        for label, kw in _samplers(name, cfg):
            try:
                model.sample(torch.zeros(1, dtype=torch.long, device=dev), seed=0, **kw)
            except (TypeError, ValueError) as e:
                raise ValueError(f"samplers.{name} [{label}]: {e}") from None


def _device(model) -> torch.device:
    return next(model.parameters()).device


def backbone_flops_per_scale(model, batch: int = 1) -> list[int]:
    """FLOPs of each KV-cached backbone step (one image): the pyramid's growing attention cost."""
    bb = model.backbone
    y = torch.zeros(batch, dtype=torch.long, device=_device(model))
    cache, cond, flops = bb.new_cache(), bb.class_emb(y), []
    for k, side in enumerate(bb.cfg.schedule):
        x = None if k == 0 else torch.zeros(batch, side * side, bb.cfg.in_dim, device=cond.device)
        flops.append(count_flops(bb.step, x, cond, cache) // batch)
    return flops


@dataclass
class FeatureSpace:
    """A feature network with the real reference's features and Gaussian statistics in its space.
    Metrics in the classifier space keep plain names (fid, kid, ...); others get a suffix (fid_inception)."""
    name: str
    net: object
    real_feats: torch.Tensor
    mu: np.ndarray
    sigma: np.ndarray
    weights: str  # weights_key(net)

    @property
    def suffix(self) -> str:
        return "" if self.name == "classifier" else f"_{self.name}"


def evaluate_samples(images, labels, spaces: list[FeatureSpace], classifier, seed: int) -> dict:
    """FID (against the space's reference statistics), KID and precision/recall (against its reference
    features) in every feature space, and the classifier's accuracy on the intended labels."""
    out = {"class_acc": None if labels is None else class_accuracy(classifier, images, labels)}
    for sp in spaces:
        feats, real = sharded_features(sp.net, images), sp.real_feats
        kid_mean, kid_std = kid(real, feats, subset_size=min(len(feats), len(real), 1000), num_subsets=50, seed=seed)
        pr = precision_recall(real, feats, k=3)
        out.update({f"{k}{sp.suffix}": v for k, v in (
            ("fid", frechet_distance(sp.mu, sp.sigma, *gaussian_stats(feats))), ("kid", kid_mean),
            ("kid_std", kid_std), ("precision", pr["precision"]), ("recall", pr["recall"]))})
    return out


def feature_spaces(cfg: "CompareConfig", data: ImageData, clf, inception, out: Path) -> list[FeatureSpace]:
    """The classifier's space and, with weights, Inception's; the reference split's features and statistics
    in each (written as pytorch-fid .npz files beside the results; ``reference_stats`` replaces Inception's)."""
    x = data.x_test if cfg.reference == "test" else data.x_train
    spaces = []
    for name, net in (("classifier", clf), ("inception", inception)):
        if net is None:
            continue
        feats, key = sharded_features(net, x), weights_key(net)
        mu, sigma = gaussian_stats(feats)
        if _rank() == 0:  # keyed by the data, the split and the feature network's weights
            save_stats(out / f"reference_{name}_{cfg.reference}_{data.fingerprint()}_{key}.npz", mu, sigma)
        if name == "inception" and cfg.reference_stats is not None:
            mu, sigma = load_stats(cfg.reference_stats, dim=net.dim)
        spaces.append(FeatureSpace(name, net, feats, mu, sigma, key))
    return spaces


def weights_key(net) -> str:
    """A short hash of a network's weights (names, shapes and values)."""
    import hashlib

    h = hashlib.sha1()
    for k, v in net.state_dict().items():
        h.update(k.encode())
        h.update(str(tuple(v.shape)).encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def metric_names(spaces: list[FeatureSpace]) -> tuple[str, ...]:
    """The per-seed quality numbers of a row that get a mean and an interval."""
    return ("class_acc",) + tuple(f"{k}{sp.suffix}" for sp in spaces for k in ("fid", "kid", "precision", "recall"))


# per-seed cost numbers of a row that get a mean and an interval
COST_METRICS = ("head_nfe", "flops_per_image", "ms_per_image", "peak_mem_bytes")


def run(cfg: CompareConfig) -> dict:
    """The whole comparison. Under ``torchrun --nproc_per_node N -m compare``, every stage trains
    data-parallel (the shared loop's DDP), sampling and feature extraction are sharded over the ranks and
    gathered, and rank 0 alone writes files; the samples and metrics equal one process's on the same
    weights (a sampling batch is seeded by its index, whichever rank draws it)."""
    import contextlib
    import os

    t_start = time.perf_counter()
    out = out_folder(cfg.out)
    rank = int(os.environ.get("RANK", 0))
    with out_lock(out) if rank == 0 else contextlib.nullcontext():
        try:
            return _run(cfg, out, t_start)
        finally:
            if _world() > 1:
                torch.distributed.barrier()  # no rank tears the group down while another still uses it
                torch.distributed.destroy_process_group()


def _world() -> int:
    d = torch.distributed
    return d.get_world_size() if d.is_available() and d.is_initialized() else 1


def _rank() -> int:
    d = torch.distributed
    return d.get_rank() if d.is_available() and d.is_initialized() else 0


def shard_map(fn, items: list) -> list:
    """``[fn(x) for x in items]`` with item i computed by rank i % world and gathered on every rank."""
    world = _world()
    if world == 1:
        return [fn(x) for x in items]
    mine = [(i, fn(x)) for i, x in enumerate(items) if i % world == _rank()]
    gathered = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return [r for _, r in sorted((p for part in gathered for p in part), key=lambda p: p[0])]


def sharded_features(net, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``net.features(images)``, chunks spread over the ranks."""
    return torch.cat(shard_map(net.features, list(images.split(chunk))))


def _run(cfg: CompareConfig, out: Path, t_start: float) -> dict:
    dev = pick_device(cfg.device)
    setup_distributed(dev)  # under torchrun: one process group for training, sampling and features
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}

    def timed(name, fn, *a, **kw):
        t = time.perf_counter()
        r = fn(*a, **kw)
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t, 2)
        return r

    _stage(f"data: {cfg.dataset} (split seed {cfg.split_seed})")
    data: ImageData = load_dataset(cfg.dataset, side=cfg.side, seed=cfg.split_seed)
    fp = data.fingerprint()
    # every config is built (and so validated) before any training
    backbone = BackboneConfig(schedule=default_schedule(latent_side_of(data.side)), in_dim=cfg.latent_channels,
                              num_classes=data.num_classes, width=cfg.width, depth=cfg.depth, heads=cfg.heads)
    for name in cfg.arms:
        arm_configs(name, data, backbone, cfg)
    check_samplers(cfg, data, backbone, dev)
    inception = None
    if cfg.inception is not None:
        from .inception import load_inception
        try:
            inception = load_inception(cfg.inception, device=dev)
        except FileNotFoundError as e:
            raise ValueError(f"inception: {e}") from None
    if cfg.reference_stats is not None:
        load_stats(cfg.reference_stats, dim=2048)  # a bad file is refused before any training

    progress = Progress(1 + cfg.seeds * sum(1 + len(_samplers(a, cfg)) for a in cfg.arms), enabled=_rank() == 0)
    progress.stage("feature network: domain classifier on the real train split")
    clf = timed("classifier", train_classifier, data, seed=cfg.split_seed, cache_dir=out / "checkpoints",
                steps=cfg.classifier_steps, device=dev)
    spaces = timed("reference_features", feature_spaces, cfg, data, clf, inception, out)
    quality = metric_names(spaces)
    n_floor = min(cfg.samples, len(data.x_train))
    floor_seeds = []
    for s in cfg.seed_list:  # a fresh subset of real train images per seed, the same N as the samples
        pick = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(s))[:n_floor]
        floor_seeds.append(evaluate_samples(data.x_train[pick], data.y_train[pick], spaces, clf, s))
    floor = {k: t_interval([f[k] for f in floor_seeds]) for k in quality}
    floor["test_class_acc"] = class_accuracy(clf, data.x_test, data.y_test)

    labels = torch.arange(cfg.samples) % data.num_classes
    models: dict[str, dict] = {}
    rows: dict[tuple[str, str], dict] = {}

    for i, seed in enumerate(cfg.seed_list):
        for name in cfg.arms:
            progress.stage(f"seed {seed} ({i + 1}/{cfg.seeds}) {name}: autoencoder, then the generator")
            model, info = timed(f"train_{name}", _train_model, name, data, backbone, cfg, out, fp, dev, seed)
            arm = models.setdefault(name, {k: v for k, v in info.items() if k not in _PER_SEED_INFO})
            arm.setdefault("per_seed", []).append({k: info[k] for k in _PER_SEED_INFO})
            if i == 0:
                arm["backbone_flops_per_scale"] = backbone_flops_per_scale(model)
                arm["train_flops_per_image"] = train_flops_per_image(model, data, cfg.batch_size, dev)
            if cfg.compile:
                compile_for_sampling(model)
            for label, kw in _samplers(name, cfg):
                progress.stage(f"seed {seed} {name} [{label}]: {cfg.samples} samples, metrics, cost")
                t = time.perf_counter()
                with precision_context(cfg, dev):
                    images, stats = generate(model, labels, cfg.sample_batch, seed, **kw)
                    one = evaluate_samples(images, labels, spaces, clf, seed)
                if _rank() > 0:  # cost is measured and files are written on rank 0 alone
                    continue
                sample_fn = _sample_fn(model, labels, seed, kw, dev, cfg)
                one.update(measure_cost(sample_fn, batch_size=min(cfg.cost_batch, cfg.samples),
                                        repeats=cfg.cost_repeats, warmup=0, device=dev, seed=seed, flops=i == 0))
                row = rows.setdefault((name, label), {"model": name, "sampler": label, "settings": kw,
                                                      "per_seed": []})
                if i == 0:  # cost as users measure it, on the first seed's weights (fixed-step: weight-independent)
                    row["flops_per_image_exact"] = one["flops_per_image"]
                    row.update(latency_and_throughput(sample_fn, cfg.throughput_batch, dev, seed))
                    grid = out / f"samples_{_slug(name)}_{_slug(label)}.png"
                    save_grid(_grid_images(images, labels, data.num_classes, 8), grid, nrow=8)
                    row["grid"] = grid.name
                    row.update({k: stats[k] for k in ("backbone_forwards", "head_nfe_per_scale", "cfg_per_scale",
                                                      "guided") if k in stats})
                one["flops_per_image"] = row["flops_per_image_exact"]
                one["sample_seconds"] = round(time.perf_counter() - t, 2)
                row["per_seed"].append({k: v for k, v in one.items() if k in quality + COST_METRICS
                                        or k.startswith("kid_std") or k == "sample_seconds"})
            del model
    progress.close()
    if _rank() > 0:
        return {}

    for arm in models.values():
        arm["train_seconds"] = t_interval([p["train_seconds"] for p in arm["per_seed"]])
    result_rows = []
    for row in rows.values():
        row.update({k: t_interval([p[k] for p in row["per_seed"]]) for k in quality + COST_METRICS})
        result_rows.append(row)
    results = {"models": models, "rows": result_rows, "seeds": cfg.seed_list, "interval": INTERVAL_METHOD}
    results["comparisons"] = paired_comparisons(result_rows)
    results.update({
        "config": asdict(cfg),
        "backbone": config_to_dict(backbone),
        "versions": {"nextscale": nextscale.__version__, "torch": torch.__version__,
                     "python": platform.python_version(), "numpy": np.__version__},
        "device": str(dev),
        "device_name": device_name(dev),
        "precision": cfg.precision,
        "compiled": cfg.compile,
        "seed": cfg.seed,
        "data": {"name": data.name, "fingerprint": fp, "split_seed": cfg.split_seed, "train": len(data.x_train),
                 "test": len(data.x_test), "side": data.side, "channels": data.channels,
                 "classes": data.num_classes, "class_names": data.class_names},
        "feature_spaces": [{"name": sp.name, "dim": int(sp.mu.shape[0]), "weights": sp.weights,
                            "reference": cfg.reference_stats if sp.name == "inception" and cfg.reference_stats
                            else f"{cfg.reference} split ({len(sp.real_feats)} images)"} for sp in spaces],
        "floor": floor,
        "floor_per_seed": floor_seeds,
        "floor_samples": n_floor,
        "timings_s": timings,
    })
    results["timings_s"]["total"] = round(time.perf_counter() - t_start, 2)
    from .report import write_report
    write_report(results, out)
    return results


INTERVAL_METHOD = ("Student t-interval over training seeds (95%): mean +- t_{0.975, n-1} std / sqrt(n); each seed "
                   "retrains every arm and draws its own samples; paired differences use the same seeds")
_PER_SEED_INFO = ("seed", "reused_checkpoints", "train_seconds", "ae_train_seconds", "checkpoints", "train_loss",
                  "test_loss")


def best_row(rows: list[dict], model: str) -> dict:
    """The row of ``model`` with the lowest mean FID."""
    return min((r for r in rows if r["model"] == model), key=lambda r: r["fid"]["mean"])


def paired_comparisons(rows: list[dict]) -> list[dict]:
    """FID and recall differences, paired over seeds: every arm's best row against every other arm's best
    row, and VAR's best row against each FlowAR arm's row nearest to it in head NFE and in ms/img."""
    import math

    models = list(dict.fromkeys(r["model"] for r in rows))
    best = {m: best_row(rows, m) for m in models}
    pairs = [("best vs best", best[a], best[b]) for i, a in enumerate(models) for b in models[i + 1:]]
    if "var" in best:
        v = best["var"]
        for m in models:
            if m == "var":
                continue
            mine = [r for r in rows if r["model"] == m]
            near = {what: min(mine, key=lambda r: abs(math.log(r[key]["mean"] / v[key]["mean"])))
                    for key, what in (("head_nfe", "matched head NFE"), ("ms_per_image", "matched ms/img"))}
            if near["matched head NFE"] is near["matched ms/img"]:
                pairs.append(("matched head NFE and ms/img", v, near["matched head NFE"]))
            else:
                pairs += [(what, v, r) for what, r in near.items()]
    out = []
    for what, a, b in pairs:
        out.append({"what": what, "a": {"model": a["model"], "sampler": a["sampler"]},
                    "b": {"model": b["model"], "sampler": b["sampler"]},
                    **{f"{k}_diff": paired_difference(a[k]["values"], b[k]["values"])
                       for k in ("fid", "recall", "ms_per_image")}})
    return out


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _sample_fn(model, labels, seed, kw, dev, cfg: CompareConfig):
    def sample(b):
        y = labels[torch.arange(b) % len(labels)]
        with precision_context(cfg, dev):
            return model.sample(y.to(dev), seed=seed, **kw)
    return sample


def latency_and_throughput(sample_fn, max_batch: int, dev: torch.device, seed: int) -> dict:
    """ms/img at batch 1 (latency: median of 3 after a warm-up) and at the largest batch up to
    ``max_batch`` that fits (throughput: one timed call; on CUDA the batch is halved on out-of-memory)."""
    lat = measure_cost(sample_fn, batch_size=1, repeats=3, warmup=1, device=dev, seed=seed, flops=False)
    b = max_batch
    while True:
        try:
            thr = measure_cost(sample_fn, batch_size=b, repeats=1, warmup=int(dev.type == "cuda"), device=dev,
                               seed=seed, flops=False)
            break
        except torch.OutOfMemoryError:
            if b == 1:
                raise
            torch.cuda.empty_cache()
            b //= 2
    return {"latency_ms": lat["ms_per_image"], "throughput_batch": b, "throughput_ms_per_image": thr["ms_per_image"],
            "throughput_img_per_s": 1000 / thr["ms_per_image"]}


def trainable_copy(model):
    """A copy of a trained generator (EMA weights are frozen) whose backbone and head train again, in
    train mode; the autoencoder stays frozen. For measuring training cost without touching ``model``."""
    import copy

    m = copy.deepcopy(model).train()
    m.backbone.requires_grad_(True)
    m.head.requires_grad_(True)
    return m


def build_arm(name: str, ae_cfg, gen_cfg):
    """An untrained model of arm ``name`` from its configs (see :func:`arm_configs`)."""
    if name == "var":
        from var.model import VAR
        from var.tokenizer import MultiScaleVQVAE
        return VAR(gen_cfg, MultiScaleVQVAE(ae_cfg))
    from flowar.autoencoder import ContinuousAE
    from flowar.model import FlowAR
    return FlowAR(gen_cfg, ContinuousAE(ae_cfg))


def train_flops_per_image(model, data: ImageData, batch: int, dev: torch.device) -> int:
    """FLOPs of one training step (forward + backward) per image, on one batch of real data, counted with
    torch's FLOP counter on a trainable copy of the generator (its frozen autoencoder excluded)."""
    m = trainable_copy(model)
    x, y = data.x_train[:batch].to(dev), data.y_train[:batch].to(dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        flops = count_train_flops(lambda: m(x, y)["loss"])
    return flops // len(x)


def _samplers(name: str, cfg: CompareConfig):
    if cfg.samplers and name in cfg.samplers:
        return [(lbl, dict(kw)) for lbl, kw in cfg.samplers[name]]
    if name == "var":
        return [s for s in VAR_SAMPLERS if not cfg.quick or s[0] in QUICK_VAR]
    guidance = {"cfg_scale": cfg.flowar_cfg, "cfg_schedule": PAPER_SAMPLING["cfg_schedule"],
                "cfg_interval": PAPER_SAMPLING["cfg_interval"]}
    table = FEWSTEP_SAMPLERS if name == "flowar-fewstep" else FLOWAR_SAMPLERS
    return [(lbl, {**guidance, **kw}) for lbl, kw in table if not cfg.quick or lbl in QUICK_FLOWAR]


def _train_cfgs(cfg: CompareConfig, ae_steps: int, gen_steps: int, seed: int):
    """The same recipe for every arm: only the model differs."""
    ae = TrainConfig(steps=ae_steps, batch_size=cfg.ae_batch_size, lr=2e-3, warmup_steps=min(20, ae_steps),
                     seed=seed, log_every=max(1, ae_steps // 5))
    gen = TrainConfig(steps=gen_steps, batch_size=cfg.batch_size, lr=1e-3, warmup_steps=min(50, gen_steps),
                      seed=seed, ema_decay=0.99 if gen_steps >= 300 else 0.0,
                      log_every=max(1, gen_steps // 10))
    return ae, gen


def arm_configs(name: str, data: ImageData, backbone: BackboneConfig, cfg: CompareConfig):
    """(autoencoder config, generator config) of one arm; raises ``ValueError`` on a bad combination."""
    if name == "var":
        from var.pipeline import default_configs
        ae_cfg, gen_cfg = default_configs(data, backbone)
        return ae_cfg, _override(name, gen_cfg, cfg)
    from flowar.pipeline import flowar_paper_configs
    ae_cfg, gen_cfg = flowar_paper_configs(data, backbone, head="mlp" if name == "flowar-mlp" else "transformer")
    if name == "flowar-fewstep":
        gen_cfg = replace(gen_cfg, few_step="shortcut")
    if cfg.head_width is not None:
        gen_cfg = replace(gen_cfg, head_width=cfg.head_width)
    return ae_cfg, _override(name, gen_cfg, cfg)


def _override(name: str, gen_cfg, cfg: CompareConfig):
    """The arm's generator config with ``cfg.arm_overrides[name]`` applied (unknown fields named)."""
    import dataclasses

    over = (cfg.arm_overrides or {}).get(name) or {}
    fields = {f.name for f in dataclasses.fields(gen_cfg)}
    for key in over:
        if key not in fields:
            raise ValueError(f"arm_overrides.{name}: unknown field {key!r}; fields: {', '.join(sorted(fields))}")
    return replace(gen_cfg, **over) if over else gen_cfg


def _train_model(name, data, backbone, cfg, out, fp, dev, seed):
    """Train (or reuse) the autoencoder and the generator of one arm with training seed ``seed``;
    returns (model, info)."""
    if name == "var":
        from var.pipeline import train_tokenizer as train_ae, train_var as train_gen
        ae_steps, gen_steps = cfg.tokenizer_steps, cfg.var_steps
    else:
        from flowar.pipeline import train_autoencoder as train_ae, train_flowar as train_gen
        ae_steps, gen_steps = cfg.ae_steps, cfg.flowar_steps
    ae_cfg, gen_cfg = arm_configs(name, data, backbone, cfg)
    family = name.split("-")[0]
    ae_tc, gen_tc = _train_cfgs(cfg, ae_steps, gen_steps, seed)
    ae_ck, gen_ck = keyed_stage_paths(out / "checkpoints", fp, (f"{family}-autoencoder", ae_cfg, ae_tc),
                                      (name, gen_cfg, gen_tc))
    reused = ae_ck.exists() and gen_ck.exists()
    t = time.perf_counter()
    ae = train_ae(data, ae_cfg, ae_tc, ckpt_path=ae_ck, device=dev)
    t_ae = time.perf_counter()
    model = train_gen(data, ae, gen_cfg, gen_tc, ckpt_path=gen_ck, device=dev).eval()
    info = {"seed": seed, "reused_checkpoints": reused, "train_seconds": round(time.perf_counter() - t_ae, 2),
            "ae_train_seconds": round(t_ae - t, 2),
            "params_backbone": count_params(model.backbone),
            "params_head": count_params(model.head),
            "params_generator": count_params(model) - count_params(ae),  # backbone + head (EMA copies are frozen)
            "schedule": list(gen_cfg.backbone.schedule),
            "params_autoencoder": count_params(ae),
            "config": config_to_dict(gen_cfg), "autoencoder_config": config_to_dict(ae_cfg),
            "checkpoints": [ae_ck.name, gen_ck.name]}
    info.update(_holdout_losses(model, data))
    return model, info


@torch.no_grad()
def _holdout_losses(model, data: ImageData, n: int = 256) -> dict:
    """Mean training loss (and its per-scale parts) on fixed train and test subsets, eval mode."""
    out = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(x), generator=g)[:n]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            logs = model(x[idx].to(_device(model)), y[idx].to(_device(model)))
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


def _slug(s: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in s).strip("_").replace("__", "_")
