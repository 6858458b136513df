"""Estimates of log p(x_1..M) and log p(x_m) from a model, one value per item."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..models.base import MultimodalVAE
from ..models.distributions import log_prob_sum, standard_noise
from .estimators import check_estimator, dreg_iwae, estimate


def check_K(K: int) -> int:
    """K must be an integer >= 1."""
    if isinstance(K, bool) or not isinstance(K, int) or K < 1:
        raise ValueError(f"K must be an integer >= 1, got {K!r}")
    return K


def log_joint(model: MultimodalVAE, xs: list[Tensor], K: int, estimator: str = "iwae", *,
              dreg: bool = False, eps: Tensor | None = None) -> Tensor:
    """Estimate of log p(x_1..M) per item with the model's joint posterior as proposal: [B].

    estimator: "elbo" (mean log w), "iwae" (log mean w), "cubo" (½ log mean w²). For MMVAE the
    M*K stratified weights are pooled in one log-sum-exp. ``dreg`` gives IWAE DReG gradients.
    ``eps``: the standard noise to use (``model.noise_shape(K, B)``); drawn if None.
    """
    check_estimator(estimator)
    check_K(K)
    if dreg and estimator != "iwae":
        raise ValueError(f"dreg gradients apply to the 'iwae' estimator, got {estimator!r}")
    state = model.prepare(xs, K, eps, detach_q=dreg)
    if dreg:
        return dreg_iwae(state.log_w, state.z)
    return estimate(state.log_w, estimator)


def log_marginal(model: MultimodalVAE, x: Tensor, m: int, K: int, *,
                 eps: Tensor | None = None) -> Tensor:
    """IWAE estimate of log p(x_m) with the model's unimodal posterior q(z | x_m): [B].

    x: [B, *event_m]; m: the modality's index; eps: [K, B, L] noise (drawn if None).
    """
    check_K(K)
    if not (isinstance(m, int) and 0 <= m < model.M):
        raise ValueError(f"modality index m must be in [0, {model.M}), got {m!r}")
    loc, scale = model.unimodal_posterior(x, m)
    if eps is None:
        eps = standard_noise(model.family, (K, *loc.shape), device=loc.device, dtype=loc.dtype)
    z = loc + scale * eps  # [K, B, L]
    mod = model.modalities[m]
    log_w = model.log_prior(z) + mod.log_lik(x, mod.decode(z)) - log_prob_sum(model.family, z, loc, scale)
    return torch.logsumexp(log_w, 0) - math.log(K)
