"""The comparison harness: FID, KID, precision/recall, class accuracy and step cost of VAR vs FlowAR."""
from .cost import SAMPLER_STATS, measure_cost
from .metrics.classifier import ClassifierConfig, DomainClassifier, class_accuracy, train_classifier
from .metrics.features import FeatureNet
from .metrics.fid import fid_from_features, frechet_distance, gaussian_stats
from .metrics.inception import FID_WEIGHTS_URL, InceptionV3FID, load_inception
from .metrics.kid import mmd2_polynomial  # kid() stays in compare.metrics.kid
from .metrics.prdc import precision_recall

__all__ = ["ClassifierConfig", "DomainClassifier", "class_accuracy", "train_classifier", "SAMPLER_STATS",
           "measure_cost", "FeatureNet", "fid_from_features", "frechet_distance", "gaussian_stats",
           "FID_WEIGHTS_URL", "InceptionV3FID", "load_inception", "mmd2_polynomial", "precision_recall"]
