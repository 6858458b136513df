"""Estimators on log-weights: definitions, ordering and stability."""

import math

import pytest
import torch

from mvae_dist.objectives.estimators import cubo, elbo, estimate, iwae, iwae_looser


def test_definitions_against_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    log_w = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    w = log_w.exp()
    torch.testing.assert_close(elbo(log_w), log_w.mean(0))
    torch.testing.assert_close(iwae(log_w), w.mean(0).log())
    torch.testing.assert_close(cubo(log_w), 0.5 * (w**2).mean(0).log())


def test_ordering_elbo_iwae_cubo_per_item():
    # Jensen / power means: mean log w <= log mean w <= ½ log mean w², for any weights.
    g = torch.Generator().manual_seed(1)
    log_w = torch.randn(30, 200, generator=g) * 5 - 100
    assert bool((elbo(log_w) <= iwae(log_w) + 1e-5).all())
    assert bool((iwae(log_w) <= cubo(log_w) + 1e-5).all())


def test_log_space_is_stable_far_from_zero():
    log_w = torch.tensor([[-1e4, -1e4 + math.log(3.0)], [-1e4, -1e4 + math.log(3.0)]])
    assert torch.isfinite(iwae(log_w)).all() and torch.isfinite(cubo(log_w)).all()
    torch.testing.assert_close(iwae(log_w), torch.tensor([-1e4, -1e4 + math.log(3.0)]))
    torch.testing.assert_close(cubo(torch.full((5, 1), 1e4)), torch.tensor([1e4]))


def test_looser_averages_per_expert_bounds():
    g = torch.Generator().manual_seed(2)
    log_w = torch.randn(2 * 6, 3, generator=g, dtype=torch.float64)
    want = 0.5 * (iwae(log_w[:6]) + iwae(log_w[6:]))
    torch.testing.assert_close(iwae_looser(log_w, 2), want)
    assert bool((iwae_looser(log_w, 2) <= iwae(log_w) + 1e-12).all())


def test_unknown_estimator_is_named():
    with pytest.raises(ValueError, match="'iwea'"):
        estimate(torch.zeros(2, 2), "iwea")
