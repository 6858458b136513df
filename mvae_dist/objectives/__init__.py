"""Estimators, log-likelihood estimates and the contrastive objective (pure PyTorch)."""

from .contrastive import contrastive_loss, negative_tuples, sample_negatives
from .estimators import cubo, dreg_iwae, elbo, estimate, iwae
from .joint import log_joint, log_marginal
from .loss import training_loss

__all__ = [
    "contrastive_loss", "cubo", "dreg_iwae", "elbo", "estimate", "iwae", "log_joint",
    "log_marginal", "negative_tuples", "sample_negatives", "training_loss",
]
