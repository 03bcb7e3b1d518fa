"""Scoring samples: the feature spaces (the domain classifier's, Inception's) with the real reference's
features and statistics, and in each FID (and FID extrapolated to infinite n), KID, precision/recall,
density/coverage, the Inception Score where the network has class logits, and class accuracy. Real and
generated images go through one :class:`Protocol` (8-bit rounding, KID subsets, k of the k-NN metrics)."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nextscale.checkpoint import write_text
from nextscale.cli import out_file, run_or_exit
from nextscale.config import check_bool, check_int, check_seed
from nextscale.data import ImageData
from nextscale.distributed import rank, shard_map
from nextscale.train import pick_device

from .classifier import class_accuracy
from .dinov2 import load_dinov2
from .features import FeatureNet, to_8bit
from .fid import fid_infinity, frechet_distance, gaussian_stats, load_stats, save_stats
from .inception import inception_score, load_inception
from .kid import kid
from .prdc import DC_K, PR_K, density_coverage, precision_recall
from .sample_files import features, read_set

@dataclass(frozen=True)
class Network:
    """A feature network loaded from a local weight file, beside the domain classifier: ``load(path,
    device) -> FeatureNet``; ``doc`` names the weights (their file) and what the network's space adds."""
    load: Callable[..., FeatureNet]
    doc: str


# name -> Network: each entry is an entry of CompareConfig.networks, a run-spec key run.<name> and a
# --<name> PATH flag of python -m compare, compare.evaluate and compare.released (:func:`add_network_flags`);
# metrics in its space carry its name (fid_inception; fid_dinov2 is FD-DINOv2).
NETWORKS = {
    "inception": Network(load_inception, "pytorch-fid's InceptionV3 weights (pt_inception-2015-12-05-6726825d.pth): "
                                         "adds FID/KID/precision/recall in Inception pool3 space"),
    "dinov2": Network(load_dinov2, "DINOv2 ViT-L/14 weights (dinov2_vitl14_pretrain.pth): adds FD-DINOv2 "
                                   "(fid_dinov2), KID, precision/recall, density/coverage in its space, as dgm-eval"),
}
KID_SUBSETS = 100  # torch-fidelity's default
KID_MAX_SUBSET = 1000  # torch-fidelity's default subset size, the largest used when none is given
IS_SPLITS = 10  # the Inception Score's splits (torch-fidelity's): it needs at least this many images
# What each metric needs of the two sets: (k, metric, whether the generated set needs it too): a k-NN radius
# is the distance to a point's k-th nearest neighbour in its own set, so the set needs more than k points.
KNN_NEEDS = ((PR_K, "precision/recall", True), (DC_K, "density/coverage", False))


def check_metric_inputs(n_fake: int, reference, nets: dict, fake: str = "samples",
                        real: str = "the reference") -> None:
    """Refuse, where a run is configured (before any image is generated or any feature extracted), sets the
    metrics cannot score: ``n_fake`` generated images (``fake`` names them) against ``reference``, the number
    of real images or their statistics (mu, sigma) (then FID alone, in the one network of ``nets``, whose
    feature dimension they must have); each k-NN metric's k (:data:`KNN_NEEDS`) must be below the size of
    the sets it draws radii from, and a network with class logits needs :data:`IS_SPLITS` generated images
    for the Inception Score. ``nets``: {name: FeatureNet}. Every command that scores calls this first."""
    if isinstance(reference, tuple):
        if len(nets) != 1:
            raise ValueError(f"{real} statistics hold one network's features: give exactly one of "
                             + ", ".join(f"--{n}" for n in NETWORKS))
        (name, net), = nets.items()
        if len(reference[0]) != net.dim:
            raise ValueError(f"{real} holds {len(reference[0])}-d statistics; {name} gives {net.dim}-d features")
        if n_fake < 2:
            raise ValueError(f"{fake} ({n_fake} images) must be at least 2: FID needs a covariance")
        return
    for k, metric, both in KNN_NEEDS:
        for n, what in ((reference, real),) + (((n_fake, fake),) if both else ()):
            if n <= k:
                raise ValueError(f"{what} ({n} images) must be more than {k}: {metric}'s k-NN radii (k = {k}) "
                                 f"need {k} other images in the same set")
    logits = [name for name, net in nets.items() if net.class_logits(torch.zeros(1, net.dim)) is not None]
    if logits and n_fake < IS_SPLITS:
        raise ValueError(f"{fake} ({n_fake} images) must be at least {IS_SPLITS}: the Inception Score ({logits[0]}) "
                         f"splits them in {IS_SPLITS}")


@dataclass(frozen=True)
class Protocol:
    """How images become numbers, the same for real and generated images: ``quantize`` rounds them to 8
    bits first (as saved PNGs, what pytorch-fid and the ADM evaluator score; off: floats), KID uses
    ``KID_SUBSETS`` subsets of ``kid_subset_size`` (None: min(1000, n real, n generated))."""
    quantize: bool = True
    kid_subset_size: int | None = None

    def __post_init__(self):
        check_bool("quantize", self.quantize)
        if self.kid_subset_size is not None:
            check_int("kid_subset_size", self.kid_subset_size, 2)

    def kid_size(self, n_real: int, n_fake: int) -> int:
        return self.kid_subset_size or min(KID_MAX_SUBSET, n_real, n_fake)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        return to_8bit(images) if self.quantize else images

    def line(self, spaces: list["FeatureSpace"], n_fake: int, side: int, reference: str) -> str:
        """The protocol of one row, as report.md prints it."""
        nets = ", ".join(f"{sp.name} (weights {sp.weights})" for sp in spaces)
        n_real = len(spaces[0].real_feats) if spaces else 0
        return (f"features: {nets}; {n_real} real ({reference}) vs {n_fake} generated; {side}x{side} images"
                f"{', rounded to 8 bits' if self.quantize else ', scored as floats'}; {self.sets(n_real, n_fake)}")

    def sets(self, n_real: int, n_fake: int) -> str:
        """How the metrics drawn from the two feature sets are made (KID subsets, k of the k-NN metrics)."""
        return (f"KID {KID_SUBSETS} subsets of {self.kid_size(n_real, n_fake)}; precision/recall k = {PR_K}; "
                f"density/coverage k = {DC_K}")


def sharded_features(net, images: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """``net.features(images)``, chunks spread over the ranks."""
    return torch.cat(shard_map(net.features, list(images.split(chunk))))


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


def evaluate_samples(images, labels, spaces: list[FeatureSpace], classifier, seed: int,
                     protocol: Protocol = Protocol()) -> dict:
    """Every metric in every feature space (FID against the space's reference statistics, the others
    against its reference features) and the classifier's accuracy on the intended labels."""
    images = protocol.prepare(images)
    out = {"class_acc": None if labels is None else class_accuracy(classifier, images, labels)}
    for sp in spaces:
        out.update({f"{k}{sp.suffix}": v for k, v in space_metrics(sp, sharded_features(sp.net, images),
                                                                     seed, protocol).items()})
    return out


def space_metrics(sp: FeatureSpace, feats: torch.Tensor, seed: int, protocol: Protocol) -> dict:
    """The metrics of generated features ``feats`` in one space."""
    real = sp.real_feats
    kid_mean, kid_std = kid(real, feats, subset_size=protocol.kid_size(len(real), len(feats)),
                            num_subsets=KID_SUBSETS, seed=seed)
    out = {"fid": frechet_distance(sp.mu, sp.sigma, *gaussian_stats(feats)), "kid": kid_mean, "kid_std": kid_std,
           **precision_recall(real, feats), **density_coverage(real, feats)}
    if has_fid_inf(len(feats), sp.net.dim):
        out["fid_inf"] = fid_infinity(sp.mu, sp.sigma, feats, seed=seed)
    logits = sp.net.class_logits(feats)
    if logits is not None:
        out["is"], out["is_std"] = inception_score(logits, splits=IS_SPLITS)
    return out


def add_network_flags(p: argparse.ArgumentParser) -> None:
    """A ``--<name> PATH`` flag per :data:`NETWORKS` entry (not given: the parser's argument default)."""
    for name, net in NETWORKS.items():
        p.add_argument(f"--{name}", metavar="PATH", help=net.doc + " (default: none)")


def network_files(a: argparse.Namespace) -> dict[str, str]:
    """{network: weights file} of the :func:`add_network_flags` flags given; none given is a ``ValueError``."""
    files = {n: getattr(a, n) for n in NETWORKS if getattr(a, n, None) is not None}
    if not files:
        raise ValueError("give the weights of a feature network: " + " and/or ".join(f"--{n} PATH" for n in NETWORKS))
    return files


def load_networks(files: dict[str, str], device) -> dict:
    """The :data:`NETWORKS` of ``files`` ({network: weights file}), loaded in the registry's order (a bad
    file is a ``ValueError``)."""
    nets = {}
    for name, net in NETWORKS.items():
        if files.get(name) is not None:
            try:
                nets[name] = net.load(files[name], device=device)
            except FileNotFoundError as e:
                raise ValueError(f"{name}: {e}") from None
    return nets


def feature_spaces(cfg, data: ImageData, clf, nets: dict, out: Path) -> list[FeatureSpace]:
    """The classifier's space and each loaded network's; the reference split's features and statistics
    in each (written as pytorch-fid .npz files beside the results; ``reference_stats`` replaces Inception's)."""
    x = protocol_of(cfg).prepare(data.x_test if cfg.reference == "test" else data.x_train)
    spaces = []
    for name, net in (("classifier", clf), *nets.items()):
        feats, key = sharded_features(net, x), weights_key(net)
        mu, sigma = gaussian_stats(feats)
        if rank() == 0:  # keyed by the data, the split and the feature network's weights
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


def has_fid_inf(n: int, dim: int) -> bool:
    """FID_inf is computed from n samples of dim-d features only where n >= dim: below it every subset's
    covariance is rank-deficient and FID does not follow the 1/n law the extrapolation assumes."""
    return n >= dim


def protocol_of(cfg) -> Protocol:
    return Protocol(cfg.quantize, cfg.kid_subset_size)


def metric_names(spaces: list[FeatureSpace], n: int) -> tuple[str, ...]:
    """The per-seed quality numbers of a row of ``n`` samples that get a mean and an interval."""
    def names(sp):
        return (("fid",) + (("fid_inf",) if has_fid_inf(n, sp.net.dim) else ())
                + ("kid", "precision", "recall", "density", "coverage")
                + (("is",) if sp.net.class_logits(sp.real_feats[:1]) is not None else ()))
    return ("class_acc",) + tuple(f"{k}{sp.suffix}" for sp in spaces for k in names(sp))


# ----------------------------------------------------------------------------- the standalone evaluator
# ``python -m compare.evaluate SAMPLES --reference REF [--inception W] [--dinov2 W] [--out F.json]``: images
# made anywhere (the VAR or FlowAR releases, another codebase) scored with these metrics and this protocol
# in each named network's space; REF may be statistics (then FID alone, in the one network given). Bad
# inputs: one ``error:`` line, exit 2, before any feature is extracted.

def score_sets(samples, reference, nets: dict, seed: int = 0, protocol: Protocol = Protocol()) -> dict:
    """Every metric of ``samples`` (uint8 NHWC) against ``reference`` (uint8 NHWC, or (mu, sigma) with one
    network) in each network's space, named ``<metric>_<network>``."""
    out = {}
    for name, net in nets.items():
        fake = features(net, samples)
        if isinstance(reference, tuple):
            out[f"fid_{name}"] = frechet_distance(*reference, *gaussian_stats(fake))
            out["skipped"] = "KID, precision/recall, density/coverage, FID_inf and IS need reference images"
            continue
        real = features(net, reference)
        space = FeatureSpace(name, net, real, *gaussian_stats(real), weights_key(net))
        out.update({f"{k}_{name}": v for k, v in space_metrics(space, fake, seed, protocol).items()})
    return out


def protocol_line(files: dict, samples, reference, protocol: Protocol) -> str:
    """How the numbers were made, in one line (as report.md's rows)."""
    line = "features: " + ", ".join(f"{n} ({f})" for n, f in files.items()) + "; "
    if isinstance(reference, tuple):
        line += "reference statistics (FID only)"
    else:
        line += f"{len(reference)} real ({reference.shape[1]}x{reference.shape[2]})"
    line += f" vs {len(samples)} generated ({samples.shape[1]}x{samples.shape[2]}); 8-bit images"
    if not isinstance(reference, tuple):
        line += f"; {protocol.sets(len(reference), len(samples))}"
    return line


def _check_sets(a: argparse.Namespace, samples, reference, nets: dict) -> None:
    if isinstance(samples, tuple):
        raise ValueError("SAMPLES must be images (a folder or an .npz of images), not statistics")
    check_metric_inputs(len(samples), reference if isinstance(reference, tuple) else len(reference), nets,
                        "SAMPLES", "--reference")
    if not isinstance(reference, tuple) and a.kid_subset_size is not None \
            and a.kid_subset_size > min(len(samples), len(reference)):
        raise ValueError(f"--kid-subset-size ({a.kid_subset_size}) must be at most {min(len(samples), len(reference))}"
                         f" (the smaller of {len(samples)} samples and {len(reference)} reference images)")


def run(a: argparse.Namespace) -> dict:
    check_seed("--seed", a.seed)
    protocol = Protocol(kid_subset_size=a.kid_subset_size)
    dev = pick_device(a.device)
    if a.out is not None:  # before any work: creatable, not a folder, not one of the inputs it would replace
        out_file(a.out, inputs=[a.samples, a.reference, *(getattr(a, n, None) for n in NETWORKS)])
    files = network_files(a)
    nets = load_networks(files, dev)
    samples, reference = read_set(a.samples, "SAMPLES"), read_set(a.reference, "--reference")
    _check_sets(a, samples, reference, nets)
    result = {"metrics": score_sets(samples, reference, nets, a.seed, protocol),
              "protocol": protocol_line(files, samples, reference, protocol),
              "samples": str(a.samples), "reference": str(a.reference), "seed": a.seed}
    if a.out is not None:
        write_text(Path(a.out), json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m compare.evaluate", description="Score images made anywhere "
                                "against real images or statistics: FID, FID_inf, KID, precision/recall, "
                                "density/coverage (and IS) in InceptionV3's and/or DINOv2's space, with the "
                                "protocol line.")
    p.add_argument("samples", help="generated images: a folder or an .npz (arr_0 (N, H, W, C) uint8, or x)")
    p.add_argument("--reference", required=True, help="real images (as SAMPLES) or a statistics .npz (mu, sigma)")
    add_network_flags(p)
    p.add_argument("--out", default=None, metavar="JSON", help="also write the result here (default: print only)")
    p.add_argument("--kid-subset-size", type=int, default=None, help="default: min(1000, n samples, n reference)")
    p.add_argument("--seed", type=int, default=0, help="seed of KID's subsets and FID_inf's subsets")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    result = run_or_exit(run, p.parse_args(argv))
    for k, v in result["metrics"].items():
        print(f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}")
    print(f"protocol: {result['protocol']}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
