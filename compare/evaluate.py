"""Scoring samples: the feature spaces (the domain classifier's, Inception's) with the real reference's
features and statistics, and FID / KID / precision-recall / class accuracy in each."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from nextscale.data import ImageData

from .classifier import class_accuracy
from .distributed import rank, shard_map
from .fid import frechet_distance, gaussian_stats, load_stats, save_stats
from .kid import kid
from .prdc import precision_recall


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


def evaluate_samples(images, labels, spaces: list[FeatureSpace], classifier, seed: int) -> dict:
    """FID (against the space's reference statistics), KID and precision/recall (against its reference
    features) in every feature space, and the classifier's accuracy on the intended labels."""
    out = {"class_acc": None if labels is None else class_accuracy(classifier, images, labels)}
    for sp in spaces:
        feats, real = sharded_features(sp.net, images), sp.real_feats
        kid_mean, kid_std = kid(real, feats, subset_size=min(len(feats), len(real), 1000), num_subsets=50, seed=seed)
        pr = precision_recall(real, feats)
        out.update({f"{k}{sp.suffix}": v for k, v in (
            ("fid", frechet_distance(sp.mu, sp.sigma, *gaussian_stats(feats))), ("kid", kid_mean),
            ("kid_std", kid_std), ("precision", pr["precision"]), ("recall", pr["recall"]))})
    return out


def feature_spaces(cfg, data: ImageData, clf, inception, out: Path) -> list[FeatureSpace]:
    """The classifier's space and, with weights, Inception's; the reference split's features and statistics
    in each (written as pytorch-fid .npz files beside the results; ``reference_stats`` replaces Inception's)."""
    x = data.x_test if cfg.reference == "test" else data.x_train
    spaces = []
    for name, net in (("classifier", clf), ("inception", inception)):
        if net is None:
            continue
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


def metric_names(spaces: list[FeatureSpace]) -> tuple[str, ...]:
    """The per-seed quality numbers of a row that get a mean and an interval."""
    return ("class_acc",) + tuple(f"{k}{sp.suffix}" for sp in spaces for k in ("fid", "kid", "precision", "recall"))

