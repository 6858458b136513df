"""Every model answers joint_posterior (the paper's: MVAE = the product of the unimodal experts
and the prior expert, MMVAE = the uniform mixture, JMVAE = its joint encoder)."""

from __future__ import annotations

import pytest
import torch

from mvae_dist.models import build_model
from mvae_dist.models.base import MultimodalVAE

SPECS = ["vector:5", "vector:3"]


def _xs(B: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, 5, generator=g), torch.randn(B, 3, generator=g)]


def test_mvae_is_the_product_of_the_experts_and_the_prior():
    torch.manual_seed(0)
    model = build_model({"name": "mvae", "modalities": SPECS, "latent_dim": 2, "hidden": 8})
    xs = _xs()
    loc, scale = model.joint_posterior(xs)
    (l1, s1), (l2, s2) = model.encode(xs)
    precision = 1 + s1.pow(-2) + s2.pow(-2)  # the prior expert N(0, 1) and the two experts
    torch.testing.assert_close(scale, precision.rsqrt())
    torch.testing.assert_close(loc, (l1 * s1.pow(-2) + l2 * s2.pow(-2)) / precision)
    torch.testing.assert_close(model.joint_posterior_mean(xs), loc)


def test_mmvae_is_a_mixture_whose_mean_averages_the_experts():
    torch.manual_seed(0)
    model = build_model({"name": "mmvae", "modalities": SPECS, "latent_dim": 2, "hidden": 8})
    xs = _xs()
    assert model.joint_posterior(xs) is None
    (l1, _), (l2, _) = model.encode(xs)
    torch.testing.assert_close(model.joint_posterior_mean(xs), (l1 + l2) / 2)


def test_jmvae_is_its_joint_encoder():
    torch.manual_seed(0)
    model = build_model({"name": "jmvae", "modalities": SPECS, "latent_dim": 2, "hidden": 8})
    xs = _xs()
    loc, scale = model.joint_posterior(xs)
    want = model.joint_encoder(xs)
    torch.testing.assert_close(loc, want[0]) and torch.testing.assert_close(scale, want[1])
    assert loc.shape == scale.shape == (4, 2) and (scale > 0).all()


def test_a_model_without_one_says_so():
    model = build_model({"name": "mvae", "modalities": SPECS, "latent_dim": 2, "hidden": 8})
    with pytest.raises(NotImplementedError, match="must define joint_posterior"):
        MultimodalVAE.joint_posterior(model, _xs())
