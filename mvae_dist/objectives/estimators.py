"""Estimators of log p from log importance weights log_w [S, B] -> [B], all in log space.

S is the number of samples per item (K, or M*K for the MMVAE's stratified mixture).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Estimator = Literal["elbo", "iwae", "cubo"]
ESTIMATORS: tuple[str, ...] = ("elbo", "iwae", "cubo")


def check_estimator(estimator: str) -> str:
    """Return ``estimator`` if known, else raise ValueError naming it."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; expected one of {', '.join(ESTIMATORS)}")
    return estimator


def elbo(log_w: Tensor) -> Tensor:
    """Evidence lower bound, per item: mean_k log w_k. log_w: [S, B] -> [B]."""
    return log_w.mean(0)


def iwae(log_w: Tensor) -> Tensor:
    """Importance-weighted bound, per item: log mean_k w_k. log_w: [S, B] -> [B]."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def cubo(log_w: Tensor) -> Tensor:
    """χ²-upper bound, n=2, per item: ½·log mean_k w_k². log_w: [S, B] -> [B]."""
    return 0.5 * (torch.logsumexp(2.0 * log_w, 0) - math.log(log_w.shape[0]))


def estimate(log_w: Tensor, estimator: str) -> Tensor:
    """Dispatch by name: "elbo" | "iwae" | "cubo". log_w: [S, B] -> [B]."""
    return _REGISTRY[check_estimator(estimator)](log_w)


_REGISTRY = {"elbo": elbo, "iwae": iwae, "cubo": cubo}


def iwae_looser(log_w: Tensor, groups: int) -> Tensor:
    """Per-expert IWAE averaged over experts (the MMVAE paper's training bound).

    log_w: [groups*K, B] expert-major -> [B]: mean_e log mean_k w_ek. Looser than ``iwae``.
    """
    S, B = log_w.shape
    return iwae(log_w.reshape(groups, S // groups, B).transpose(0, 1).reshape(S // groups, groups * B)
                ).reshape(groups, B).mean(0)


def dreg_iwae(log_w: Tensor, z: Tensor, groups: int = 1) -> Tensor:
    """IWAE value with doubly-reparameterised gradients (Tucker et al., 2019), per item.

    log_w: [S, B] computed with the proposal's parameters detached (``detach_q=True``), so
    the proposal's parameters reach log_w only through the samples z (any leading layout whose
    dims flatten to [S, B], then L). groups = 1: the value is ``iwae``, the gradient
    Σ_k w̃_k ∇ log w_k for the generative parameters and Σ_k w̃_k² ∂log w_k/∂z ∂z/∂φ for the
    proposal's (w̃: normalised weights). groups = G (S = G·K, expert-major): the same per group,
    averaged over groups, with weights normalised within each group; the value is
    ``iwae_looser`` (the official MMVAE code's ``m_dreg_looser``). -> [B]
    """
    S, B = log_w.shape
    w_tilde = torch.softmax(log_w.reshape(groups, S // groups, B), 1).reshape(S, B).detach()
    if z.requires_grad:
        lead = z.shape[:-1]
        z.register_hook(lambda g: g * w_tilde.reshape(lead).unsqueeze(-1))
    surrogate = (w_tilde * log_w).sum(0) / groups
    return iwae_looser(log_w, groups).detach() + surrogate - surrogate.detach()
