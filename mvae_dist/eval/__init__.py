"""Evaluation: PMI, digit classifiers and the paper's metrics (§4.2), image grids in ``images``."""

from .classifiers import (
    ClassifierRecord,
    list_classifier_versions,
    load_classifier_records,
    load_classifiers,
    train_classifier,
    train_classifiers,
)
from .metrics import (
    EvalReport,
    NotApplicable,
    cross_coherence,
    evaluate_model,
    joint_coherence,
    latent_accuracy,
    marginal_log_likelihood,
    synergy_coherence,
)
from .pmi import pmi

__all__ = [
    "ClassifierRecord", "EvalReport", "NotApplicable", "cross_coherence", "evaluate_model",
    "joint_coherence", "latent_accuracy", "list_classifier_versions", "load_classifier_records",
    "load_classifiers", "marginal_log_likelihood", "pmi", "synergy_coherence", "train_classifier",
    "train_classifiers",
]
