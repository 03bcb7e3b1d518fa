"""The comparison harness: FID, KID, precision/recall, class accuracy and step cost of VAR vs FlowAR."""
from .classifier import ClassifierConfig, DomainClassifier, class_accuracy, train_classifier
from .cost import SAMPLER_STATS, measure_cost
from .features import FeatureNet
from .fid import fid_from_features, frechet_distance, gaussian_stats
from .inception import FID_WEIGHTS_URL, InceptionV3FID, load_inception
from .kid import mmd2_polynomial  # kid() stays in compare.kid: re-exporting it would shadow the module
from .prdc import precision_recall

__all__ = ["ClassifierConfig", "DomainClassifier", "class_accuracy", "train_classifier", "SAMPLER_STATS",
           "measure_cost", "FeatureNet", "fid_from_features", "frechet_distance", "gaussian_stats",
           "FID_WEIGHTS_URL", "InceptionV3FID", "load_inception", "mmd2_polynomial", "precision_recall"]
