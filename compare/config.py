"""The comparison's settings: :class:`CompareConfig` (validated when built) and the named presets."""
from __future__ import annotations

from dataclasses import dataclass

from nextscale.config import check_choice, check_float, check_int

from .arms import ARMS, DEFAULT_ARMS

REFERENCES = ("test", "train")
PRECISIONS = ("fp32", "bf16")


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

