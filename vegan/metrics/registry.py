"""Our feature extractors' names: registration with torch-fidelity and the choice behind ``auto``.

torch-fidelity computes FID/KID/precision-recall from the features of a named
extractor; we add three names to its registry: ``inception-tf-offline``
(:mod:`vegan.metrics.inception`), ``vegan-domain`` and ``vegan-selfsup``
(:mod:`vegan.metrics.classifiers`). torch-fidelity's own ``inception-v3-compat``
(downloaded weights) stays usable by name where the internet is reachable.
"""

from __future__ import annotations

from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from vegan.metrics.classifiers import DomainFeatureExtractor, SelfSupFeatureExtractor
from vegan.metrics.inception import InceptionTFOffline

INCEPTION_TF_OFFLINE = "inception-tf-offline"
DOMAIN = "vegan-domain"
SELFSUP = "vegan-selfsup"
AUTO = "auto"

# EvalConfig.extractor accepts these short names besides any registered torch-fidelity name.
ALIASES = {
    "domain": DOMAIN,
    "selfsup": SELFSUP,
    "rotation": SELFSUP,
    "inception-tf": INCEPTION_TF_OFFLINE,
    "inception": INCEPTION_TF_OFFLINE,
}
TRAINED = (DOMAIN, SELFSUP)
"""Extractors trained by the pipeline on the training split (never on the reference)."""


def register_extractors() -> None:
    """Add our extractors to torch-fidelity's registry (idempotent: safe on re-import)."""
    ours = ((INCEPTION_TF_OFFLINE, InceptionTFOffline), (DOMAIN, DomainFeatureExtractor),
            (SELFSUP, SelfSupFeatureExtractor))  # fmt: skip
    for name, cls in ours:
        if name not in FEATURE_EXTRACTORS_REGISTRY:
            register_feature_extractor(name, cls)


def choose_extractor(name: str, has_labels: bool) -> tuple[str, str]:
    """Resolve ``name`` (``auto`` included) to a registered extractor; returns ``(name, why)``.

    ``auto`` is the domain classifier when the training data has labels, else the
    label-free self-supervised one: both train in seconds on CPU and need no download.
    An explicit ``domain`` on data without labels is a ``ValueError`` here, before any work.
    """
    if name == AUTO:
        if has_labels:
            return DOMAIN, "auto: the training data has labels, so a classifier of its classes gives the features"
        return SELFSUP, ("auto: the training data has no labels, so the features come from a network trained "
                         "without labels (rotation prediction) on the training split")  # fmt: skip
    resolved = resolve_extractor_name(name)
    if resolved == DOMAIN and not has_labels:
        raise ValueError(
            "eval.extractor 'domain' trains a classifier on the dataset's labels, but this dataset has none; "
            "use extractor 'auto' or 'selfsup' (trained without labels) or 'inception-tf'"
        )
    return resolved, f"eval.extractor = {name!r}"


def resolve_extractor_name(name: str) -> str:
    """Map a config name (``domain``, ``selfsup``, ``inception-tf``, or any torch-fidelity name) to a
    registered one. ``auto`` depends on the data: see :func:`choose_extractor`."""
    register_extractors()
    if name == AUTO:
        raise ValueError("extractor 'auto' depends on the data: resolve it with choose_extractor(name, has_labels)")
    resolved = ALIASES.get(name, name)
    if resolved not in FEATURE_EXTRACTORS_REGISTRY:
        known = sorted(set(ALIASES) | set(FEATURE_EXTRACTORS_REGISTRY) | {AUTO})
        raise ValueError(f"unknown feature extractor {name!r}; known: {', '.join(known)}")
    return resolved


register_extractors()
