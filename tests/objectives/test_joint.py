"""log_joint / log_marginal / PMI against the exact marginals of a linear-Gaussian model."""

import pytest
import torch

from mvae_dist.eval import pmi
from mvae_dist.models import JMVAE, MMVAE, MVAE
from mvae_dist.models.linear_gaussian import (
    exact_experts,
    exact_posteriors,
    linear_modalities,
    random_params,
)
from mvae_dist.objectives import log_joint, log_marginal

L, DIMS = 2, [3, 4]


@pytest.fixture(scope="module")
def lg():
    torch.manual_seed(0)
    params = random_params(DIMS, L, generator=torch.Generator().manual_seed(0))
    xs, _ = params.sample(64, torch.Generator().manual_seed(1))
    return params, xs


class ExactJointEncoder(torch.nn.Module):
    """The exact posterior p(z | x, y) of the linear-Gaussian model, as a joint encoder."""

    def __init__(self, params):
        super().__init__()
        A = torch.cat(params.A)
        s2 = torch.cat([s**2 for s in params.s])
        prec = torch.eye(L, dtype=A.dtype) + A.T @ (A / s2[:, None])
        self.cov = torch.linalg.inv(prec)
        self.W = self.cov @ (A / s2[:, None]).T
        self.a = torch.cat(params.a)
        self.cov_diag_ok = torch.allclose(self.cov, torch.diag(self.cov.diagonal()))

    def forward(self, xs):
        loc = (torch.cat(xs, -1) - self.a) @ self.W.T
        return loc, self.cov.diagonal().sqrt().expand_as(loc)


def _mvae(params, exact=True):
    mods = linear_modalities(params)
    if exact:
        exact_experts(mods, params)
    return MVAE(mods, L, family="normal").double()


def test_exact_proposal_makes_every_estimator_exact(lg):
    params, xs = lg
    exact = params.log_joint(xs)
    model = _mvae(params)
    for est in ("elbo", "iwae", "cubo"):
        torch.testing.assert_close(log_joint(model, xs, K=3, estimator=est), exact, rtol=1e-9, atol=1e-9)
    # PoE(prior, expert m) is the exact p(z | x_m), so log p(x_m) is exact too.
    for m, x in enumerate(xs):
        torch.testing.assert_close(log_marginal(model, x, m, K=2), params.log_marginal(x, m),
                                   rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(pmi(model, xs, K=2), params.pmi(xs), rtol=1e-8, atol=1e-8)

    enc = ExactJointEncoder(params)
    assert enc.cov_diag_ok
    jm = JMVAE(linear_modalities(params), L, enc, family="normal").double()
    torch.testing.assert_close(log_joint(jm, xs, K=2, estimator="iwae"), exact, rtol=1e-9, atol=1e-9)


def _bounds(model, xs, K, reps=20):
    torch.manual_seed(3)
    out = {e: torch.stack([log_joint(model, xs, K, estimator=e) for _ in range(reps)]).mean(0)
           for e in ("elbo", "iwae", "cubo")}
    return out


@pytest.mark.parametrize("kind", ["mvae", "mmvae"])
def test_bounds_order_around_exact_with_imperfect_proposal(lg, kind):
    params, xs = lg
    exact = params.log_joint(xs)
    if kind == "mvae":
        model = _mvae(params)
        with torch.no_grad():  # widen and shift the experts: an imperfect proposal
            for mod in model.modalities:
                mod.encoder.log_scale.add_(0.4)
                mod.encoder.lin.bias.add_(0.2)
    else:
        mods = linear_modalities(params)
        exact_posteriors(mods, params)  # each expert is p(z | x_m): a mixture, not p(z | x, y)
        model = MMVAE(mods, L, family="normal").double()
    with torch.no_grad():
        b = _bounds(model, xs, K=500, reps=4)
        elbo_gap = (exact - b["elbo"]).mean()
        assert elbo_gap > 0.05, "the proposal should be imperfect for this test to mean anything"
        assert bool((b["elbo"] <= b["iwae"] + 1e-6).all())
        # IWAE_K <= log p up to Monte-Carlo error, and close to it at K=500.
        assert (b["iwae"] - exact).mean() < 0.01
        assert (exact - b["iwae"]).mean() < 0.1 * elbo_gap
        # CUBO >= log p on average (here with large K).
        assert (b["cubo"] - exact).mean() > 0
        # IWAE rises towards the exact value as K grows with a fixed proposal.
        gaps = [float((exact - _bounds(model, xs, K, reps=10)["iwae"]).mean()) for K in (1, 5, 50)]
        assert gaps[0] > gaps[1] > gaps[2] > -0.01, gaps
        if kind == "mvae":  # one sample: IWAE_1 is the ELBO (MMVAE's K=1 is already M samples)
            torch.testing.assert_close(gaps[0], float(elbo_gap), rtol=0.1, atol=0.05)


def test_pmi_estimate_near_exact(lg):
    params, xs = lg
    mods = linear_modalities(params)
    exact_posteriors(mods, params)
    model = MMVAE(mods, L, family="normal").double()
    torch.manual_seed(4)
    est = pmi(model, xs, K=1000)
    want = params.pmi(xs)
    assert (est - want).abs().mean() < 0.05
    # and it ranks related above unrelated pairs the way the exact PMI does
    shuffled = [xs[0], xs[1].roll(1, 0)]
    assert pmi(model, shuffled, K=1000).mean() < est.mean()


def test_log_marginal_rejects_bad_modality(lg):
    params, xs = lg
    with pytest.raises(ValueError, match="modality index m"):
        log_marginal(_mvae(params), xs[0], 2, K=3)
