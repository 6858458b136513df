"""Pointwise mutual information from a trained model: the relatedness score of a pair."""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.base import MultimodalVAE
from ..objectives.joint import log_joint, log_marginal


def pmi(model: MultimodalVAE, xs: list[Tensor], K: int) -> Tensor:
    """PMI(x_1..M) = log p(x_1..M) - Σ_m log p(x_m), each by IWAE with K samples: [B].

    The joint term uses the model's joint posterior, each marginal its unimodal posterior.
    """
    with torch.no_grad():
        joint = log_joint(model, xs, K, estimator="iwae")
        return joint - sum(log_marginal(model, x, m, K) for m, x in enumerate(xs))
