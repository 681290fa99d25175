"""Evaluation: FID/KID/precision/recall/density/coverage on images, mode coverage on the 2-D grid.

``evaluate_sets`` is the one entry point for image (or vector) sets;
``grid_metrics`` the one for samples of the 25-Gaussian grid. Importing this
package registers our feature extractors with torch-fidelity.
"""

from vegan.metrics.classifiers import TrainingRows
from vegan.metrics.fidelity import evaluate_sets, extract_features, feature_space, reference_features, tensor_hash
from vegan.metrics.inception import InceptionWeightsError, default_inception_path
from vegan.metrics.modes import grid_metrics
from vegan.metrics.prdc import prdc
from vegan.metrics.registry import DOMAIN, INCEPTION_TF_OFFLINE, SELFSUP, choose_extractor, register_extractors

__all__ = [
    "DOMAIN",
    "INCEPTION_TF_OFFLINE",
    "SELFSUP",
    "TrainingRows",
    "InceptionWeightsError",
    "choose_extractor",
    "default_inception_path",
    "evaluate_sets",
    "extract_features",
    "feature_space",
    "grid_metrics",
    "prdc",
    "reference_features",
    "register_extractors",
    "tensor_hash",
]
