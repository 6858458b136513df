"""Reparameterised Normal / Laplace densities and the product / mixture of experts.

Everything is a function of tensors so that the estimators can evaluate any density on any
sample (the contrastive loss scores samples under *other* items' posteriors and likelihoods).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

Family = Literal["normal", "laplace"]
FAMILIES: tuple[str, ...] = ("normal", "laplace")

_LOG_2PI = math.log(2.0 * math.pi)
_LOG_2 = math.log(2.0)


def check_family(family: str, what: str = "family") -> str:
    """Return ``family`` if it is a known density family, else raise ValueError naming it."""
    if family not in FAMILIES:
        raise ValueError(f"unknown {what} {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def log_density(family: str, x: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Elementwise log-density of ``x`` under Normal/Laplace(loc, scale); shapes broadcast."""
    if family == "normal":
        return -0.5 * ((x - loc) / scale) ** 2 - torch.log(scale) - 0.5 * _LOG_2PI
    if family == "laplace":
        return -(x - loc).abs() / scale - torch.log(scale) - _LOG_2
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def standard_noise(
    family: str, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw eps with loc 0, scale 1 of the family, so that z = loc + scale * eps."""
    if family == "normal":
        return torch.randn(shape, generator=generator, device=device, dtype=dtype)
    if family == "laplace":
        # Inverse CDF of Laplace(0, 1) on u in (-1/2, 1/2); clamp keeps log1p finite.
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype) - 0.5
        u = u.clamp(-0.5 + 1e-7, 0.5 - 1e-7)
        return -torch.sign(u) * torch.log1p(-2.0 * u.abs())
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def log_prob_sum(family: str, z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log q(z) summed over the last (latent) dimension; shapes broadcast, [..., L] -> [...]."""
    return log_density(family, z, loc, scale).sum(-1)


def poe_normal(locs: Tensor, scales: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Product of Gaussian experts with the standard-normal prior expert included.

    locs, scales: [E, B, L] (E experts); mask: [E, B] booleans of present experts (None: all).
    Returns (loc, scale) of the product, each [B, L]. Precisions add; the prior adds precision 1.
    """
    precision = scales.pow(-2)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    total = 1.0 + precision.sum(0)  # the prior expert N(0, 1) contributes precision 1, mean 0
    loc = (locs * precision).sum(0) / total
    return loc, total.rsqrt()


def kl_normal(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """KL(N(loc_q, scale_q) || N(loc_p, scale_p)) summed over the last dimension. [..., L] -> [...]."""
    var_ratio = (scale_q / scale_p) ** 2
    t1 = ((loc_q - loc_p) / scale_p) ** 2
    return 0.5 * (var_ratio + t1 - 1.0 - var_ratio.log()).sum(-1)


def kl_laplace(loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """KL(Laplace(loc_q, scale_q) || Laplace(loc_p, scale_p)) summed over the last dimension."""
    d = (loc_q - loc_p).abs()
    kl = torch.log(scale_p / scale_q) + d / scale_p + scale_q / scale_p * torch.exp(-d / scale_q) - 1
    return kl.sum(-1)


def kl_divergence(family: str, loc_q: Tensor, scale_q: Tensor, loc_p: Tensor, scale_p: Tensor) -> Tensor:
    """Closed-form KL between two members of the same family, summed over the last dimension."""
    if family == "normal":
        return kl_normal(loc_q, scale_q, loc_p, scale_p)
    if family == "laplace":
        return kl_laplace(loc_q, scale_q, loc_p, scale_p)
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
