"""The comparison's settings: :class:`CompareConfig` (validated when built) and the named presets."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from nextscale.config import SEED_MAX, check_bool, check_choice, check_float, check_int, check_seed
from nextscale.train import pick_device

from .arms import ARMS, CODERS, DEFAULT_ARMS, STAGES, budgets
from .metrics.evaluate import NETWORKS
from .metrics.prdc import PR_K

REFERENCES = ("test", "train")
PRECISIONS = ("fp32", "bf16")
CODER_NAMES = tuple(CODERS)


# Named settings for common data (``--preset``). cifar32: 32x32 RGB (e.g. a CIFAR-10 image folder): latent
# 16x16x16, VAR's schedule (1, 2, 3, 4, 6, 8, 12, 16) (L = 530) and FlowAR's (1, 2, 4, 8, 16) (L = 341), a
# 384-wide depth-8 backbone, samples scored against the train split as CIFAR-10 papers do. Sized for one
# GPU (see the README's "Your own data"); with --quick only its data keys (PRESET_DATA_KEYS) apply.
# imagenet256: 256x256 RGB class folders (ImageNet's layout) on the releases' ldm coder (stride 16, latent
# 16x16x16 as MAR's KL-16), a 768-wide depth-12 backbone (VAR-d12, FlowAR-S's width); give --inception.
# A preset's train_steps (autoencoder, generator) are every family's (:func:`preset`).
PRESETS = {
    "cifar32": dict(side=32, latent_channels=16, width=384, depth=8, heads=6, batch_size=64, ae_batch_size=64,
                    train_steps=(5000, 20000), classifier_steps=3000, samples=10000, sample_batch=500, cost_batch=64,
                    reference="train"),
    "imagenet256": dict(side=256, latent_channels=16, coder="ldm", width=768, depth=12, heads=12, batch_size=64,
                        ae_batch_size=32, train_steps=(50000, 200000), classifier_steps=5000, samples=50000,
                        sample_batch=250, cost_batch=64, reference="train"),
}
PRESET_DATA_KEYS = ("side", "latent_channels", "coder", "reference")
# CompareConfig fields that are mappings of registry entries (a family's budget, a feature network's weights):
# settings are layered into them entry by entry (:func:`layered`)
MAPPINGS = ("train_steps", "networks")


def option(default=None, help: str = "", factory=None):
    """A CompareConfig field with its one description, from which the run spec's comment and the
    command's ``--help`` are written (:func:`describe`); ``factory`` makes a default read when built."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def every_budget(ae_steps: int, gen_steps: int) -> dict:
    """``train_steps`` giving every family's budget ``ae_steps`` and ``gen_steps``."""
    return {name: dict(zip(STAGES, (ae_steps, gen_steps))) for name in budgets()}


def _budget_steps(which: str) -> dict:
    return {name: dict(zip(STAGES, getattr(b, which))) for name, b in budgets().items()}


def preset(name: str) -> dict:
    """CompareConfig keywords of preset ``name``, its training steps given to every family."""
    kw = dict(PRESETS[name])
    if "train_steps" in kw:
        kw["train_steps"] = every_budget(*kw["train_steps"])
    return kw


def layered(*layers: dict) -> dict:
    """CompareConfig keywords: each layer's over the ones before, the :data:`MAPPINGS` entry by entry (a
    budget stage by stage), so a later layer replaces only what it gives."""
    out: dict = {}
    for layer in layers:
        for k, v in layer.items():
            out[k] = _merged(out[k], v) if k in MAPPINGS and isinstance(v, dict) and isinstance(out.get(k), dict) \
                else v
    return out


def _merged(a: dict, b: dict) -> dict:
    """``b`` over ``a``, nested dicts merged key by key."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def changed(kw: dict) -> dict:
    """The CompareConfig keywords in ``kw`` that differ from the defaults, the :data:`MAPPINGS` entry by
    entry (a budget stage left at its default is not a change, so it does not undo a preset's)."""
    default = CompareConfig()
    out = {k: _changed(v, getattr(default, k)) if k in MAPPINGS else v for k, v in kw.items()}
    return {k: v for k, v in out.items() if v is not _SAME and (k in MAPPINGS or v != getattr(default, k))}


_SAME = object()


def _changed(value, default):
    """``value`` less what equals ``default``, nested dicts key by key (:data:`_SAME`: nothing differs)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: c for k, v in value.items() if (c := _changed(v, default.get(k))) is not _SAME}
        return out or _SAME
    return _SAME if value == default else value


def _checked_steps(given) -> dict:
    """``train_steps`` holding every family's budget, a stage not given at its default; each count an int
    >= 1, named by its run-spec key."""
    known = budgets()
    if not isinstance(given, dict) or any(name not in known or not isinstance(v, dict) or set(v) - set(STAGES)
                                          for name, v in given.items()):
        raise ValueError(f"train_steps must map budgets from {tuple(known)} to {{autoencoder: steps, generator: "
                         f"steps}}, got {given!r}")
    out = {}
    for name, budget in known.items():
        out[name] = {**dict(zip(STAGES, budget.default)), **given.get(name, {})}
        for key, stage in zip(budget.keys, STAGES):
            check_int(key, out[name][stage], 1)
    return out


def _checked_networks(given) -> dict:
    """``networks`` in :data:`NETWORKS`' order, the ones given None left out."""
    if not isinstance(given, dict) or any(n not in NETWORKS or not isinstance(p, (str, type(None)))
                                          for n, p in given.items()):
        raise ValueError(f"networks must map feature networks from {tuple(NETWORKS)} to weight files, got {given!r}")
    return {n: given[n] for n in NETWORKS if given.get(n) is not None}


@dataclass(frozen=True)
class CompareConfig:
    dataset: str = option("digits", "'digits' (embedded, no download), an .npz file (x images, y labels) or an "
                          "image folder (one sub-folder per class)")
    out: str = option("runs/compare", "output folder: results.json, report.md, plots, checkpoints")
    seed: int = option(0, "first training seed; seed i of N is seed + i")
    seeds: int = option(3, "training seeds: every arm is trained and sampled once per seed (>= 1)")
    split_seed: int = option(0, "seed of the train/test split and of the domain classifier (the same for every "
                             "training seed)")
    samples: int = option(500, "generated images per model, sampler setting and seed, class-balanced (>= 4, and "
                          ">= the number of classes)")
    train_steps: dict = option(help="{family: {autoencoder: steps, generator: steps}}: each family's training "
                               "budget (compare.arms.budgets(); a family not given trains on its default)",
                               factory=lambda: _budget_steps("default"))
    classifier_steps: int = option(400, "training steps of the domain classifier (the default feature network)")
    batch_size: int = option(32, "generator training batch (the same for every arm)")
    ae_batch_size: int = option(64, "tokenizer / autoencoder training batch")
    sample_batch: int = option(250, "sampling batch for the quality metrics; batch i is seeded by i and, under "
                               "torchrun, drawn by rank i % N")
    cost_batch: int = option(50, "batch of the per-seed timed cost measurement")
    cost_repeats: int = option(1, "timed calls per seed (the sampling just before is the warm-up)")
    throughput_batch: int = option(256, "largest batch tried for throughput (halved on CUDA out-of-memory)")
    flowar_cfg: float = option(1.0, "guidance strength w of every FlowAR sampler row that sets none (FlowAR's "
                               "cfg 1 + w)")
    head_width: int | None = option(None, "width of the FlowAR arms' velocity heads (none: the backbone's, as "
                                    "the released S model; smaller matches parameters)")
    width: int = option(128, "backbone channels (>= 1, a multiple of heads)")
    depth: int = option(4, "backbone transformer blocks")
    heads: int = option(4, "backbone attention heads")
    latent_channels: int = option(8, "channels of the latent every autoencoder / tokenizer makes (the "
                                  "backbone's input width)")
    coder: str = option("conv", "the autoencoders' coder: 'conv' (small, this project's) or 'ldm' (the "
                        "latent-diffusion coder of the VAR and FlowAR releases: ResNet blocks, GroupNorm, attention)")
    side: int | None = option(None, "image side to resize to (none: 16 for digits, 32 for folders, native for "
                              ".npz)")
    device: str | None = option(None, "cpu, cuda, cuda:1 ... (none: CUDA when available)")
    networks: dict = option(help="{network: weights file}: the feature networks scored in beside the domain "
                            "classifier (compare.metrics.evaluate.NETWORKS; none given: the classifier alone)",
                            factory=dict)
    reference: str = option("test", "the real images the samples are scored against: the held-out 'test' split "
                            "or 'train' (CIFAR-10 papers' convention)")
    reference_stats: str | None = option(None, "precomputed Inception statistics (.npz with mu, sigma: "
                                         "pytorch-fid's format) for the Inception FID; needs inception (none: "
                                         "computed from the reference split and written to out)")
    arms: tuple[str, ...] = option(DEFAULT_ARMS, "arms to train and compare (compare.arms.ARMS)")
    samplers: dict | None = option(None, "{arm: ((label, sampling keywords), ...)}: replaces that arm's "
                                   "built-in sampler sweep")
    arm_overrides: dict | None = option(None, "{arm: {field: value}}: overrides of the arm's generator config")
    quantize: bool = option(True, "round real and generated images to 8 bits before feature extraction, as saved "
                            "PNGs (pytorch-fid's and the ADM evaluator's protocol); false: score floats")
    kid_subset_size: int | None = option(None, "KID subset size (100 subsets; none: min(1000, real images, "
                                         "samples); larger than either set is refused)")
    precision: str = option("fp32", "'fp32' or 'bf16' (autocast for sampling; features of real and generated "
                            "images alike in float32)")
    compile: bool = option(False, "torch.compile the backbone blocks and the head for sampling (slow to start)")
    quick: bool = option(False, "the reduced run the tests use: small models, 2 seeds, the quick sampler rows")

    def __post_init__(self):
        arms = tuple(self.arms) if isinstance(self.arms, (list, tuple)) else ()
        if not arms or any(a not in ARMS for a in arms) or len(set(arms)) != len(arms):
            raise ValueError(f"arms must be a non-empty list of distinct arms from {tuple(ARMS)}, got {self.arms!r}")
        object.__setattr__(self, "arms", arms)
        for name in ("samplers", "arm_overrides"):
            table = getattr(self, name)
            if table is not None and (not isinstance(table, dict) or any(a not in ARMS for a in table)):
                raise ValueError(f"{name} must map arms from {tuple(ARMS)} to their settings, got {table!r}")
        for arm, rows in (self.samplers or {}).items():
            labels = [r[0] for r in rows] if isinstance(rows, (list, tuple)) and all(
                isinstance(r, (list, tuple)) and len(r) == 2 and isinstance(r[0], str) and isinstance(r[1], dict)
                for r in rows) else None
            if not labels or len(set(labels)) != len(labels):
                raise ValueError(f"samplers.{arm} must be a non-empty list of (distinct label, settings dict) pairs, "
                                 f"got {rows!r}")
            slugs = [slug(lbl) for lbl in labels]
            same = sorted({lbl for lbl, s in zip(labels, slugs) if slugs.count(s) > 1})
            if same:
                raise ValueError(f"samplers.{arm}: labels {same} name the same sample-grid file "
                                 f"(samples_<arm>_{slugs[labels.index(same[0])]}.png); make them differ in a "
                                 f"letter or digit")
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("coder", self.coder, CODER_NAMES)
        check_bool("compile", self.compile)
        check_bool("quantize", self.quantize)
        if self.kid_subset_size is not None:
            check_int("kid_subset_size", self.kid_subset_size, 2)
        check_seed("seed", self.seed)
        check_int("seeds", self.seeds, 1, SEED_MAX - self.seed + 1)  # the seeds are seed .. seed + seeds - 1
        check_seed("split_seed", self.split_seed)
        check_int("samples", self.samples, PR_K + 1)  # k-NN precision/recall needs more than k samples
        object.__setattr__(self, "train_steps", _checked_steps(self.train_steps))
        object.__setattr__(self, "networks", _checked_networks(self.networks))
        for name in ("classifier_steps", "batch_size", "ae_batch_size", "sample_batch", "cost_batch", "cost_repeats",
                     "throughput_batch", "width", "depth", "heads", "latent_channels"):
            check_int(name, getattr(self, name), 1)
        if self.head_width is not None:
            check_int("head_width", self.head_width, 1)
        check_float("flowar_cfg", self.flowar_cfg, 0)
        check_choice("reference", self.reference, REFERENCES)
        if self.device is not None:
            pick_device(self.device)
        if self.reference_stats is not None and "inception" not in self.networks:
            raise ValueError("reference_stats are Inception statistics: give the Inception weights too (inception)")

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @staticmethod
    def quick_config(**overrides) -> "CompareConfig":
        """The reduced run the tests use (about 75 s on 2 CPU cores for the three published arms, 2 seeds):
        small models trained only to beat their untrained selves, not to compare arms (FlowAR's flow loss
        needs twice VAR's steps for that)."""
        base = dict(seeds=2, samples=100, train_steps=_budget_steps("quick"), batch_size=16, ae_batch_size=32,
                    classifier_steps=150, cost_batch=10, throughput_batch=20, width=64, depth=2, heads=2, quick=True)
        return CompareConfig(**layered(base, overrides))


def slug(s: str) -> str:
    """A label as it appears in a file name: letters and digits, runs of anything else as one '_'."""
    return "".join(ch if ch.isalnum() else "_" for ch in s).strip("_").replace("__", "_")


def describe(name: str) -> str:
    """The one description of CompareConfig's field ``name``."""
    return _HELP[name]


_HELP = {f.name: f.metadata["help"] for f in fields(CompareConfig)}
