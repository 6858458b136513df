"""Cheaper negatives for MVAE and JMVAE (objective.neg_samples / neg_K).

The reused-sample weights equal a straightforward reference (every sample decoded again for its
tuple); on the linear-Gaussian model, whose log p(x, y') is exact, every option is a lower bound
of the negative pair's log p that tightens with the number of samples, and the fresh path with
the exact posterior is exact for any K'.
"""

import math

import pytest
import torch

from mvae_dist.models import MVAE, build_model
from mvae_dist.models.distributions import log_prob_sum, standard_noise
from mvae_dist.models.linear_gaussian import exact_experts, linear_modalities, random_params
from mvae_dist.objectives import contrastive_loss, negative_tuples, sample_negatives
from mvae_dist.objectives.estimators import iwae

L, DIMS, B = 2, [3, 4], 12


def _reference(model, state, xs, tuples):
    """log w [M*K, P] of each tuple's mixture proposal, by brute force: component e's K samples
    are item tuples[p, e]'s positives, decoded again here for the tuple's own members."""
    M, K, P = model.M, state.z.shape[0], tuples.shape[0]
    out = torch.empty(M, K, P, dtype=state.z.dtype)
    for p in range(P):
        items = tuples[p].tolist()
        posts = [model.joint_posterior([x[i:i + 1] for x in xs]) for i in items]
        target = [xs[m][i:i + 1] for m, i in enumerate(items)]
        for e in range(M):
            z = state.z[:, items[e]:items[e] + 1]  # [K, 1, L]
            log_pxz = model.log_prior(z) + sum(mod.log_lik(target[m], mod.decode(z))
                                               for m, mod in enumerate(model.modalities))
            lq = torch.stack([log_prob_sum(model.family, z, loc, scale) for loc, scale in posts])
            out[e, :, p] = (log_pxz - (torch.logsumexp(lq, 0) - math.log(M)))[:, 0]
    return out.reshape(M * K, P)


@pytest.mark.parametrize("name,specs", [
    ("mvae", ["vector:5", "vector:3"]),
    ("jmvae", ["vector:5", "vector:3"]),
    ("mvae", ["vector:5", "vector:3", "vector:4"]),  # appendix C's J-tuples: members may coincide
    ("jmvae", ["vector:5", "vector:3", "vector:4"]),
    ("mvae", ["text:9", "vector:3"]),  # a sentence: the categorical pair kernel
])
def test_reused_weights_equal_a_straightforward_reference(name, specs):
    torch.manual_seed(0)
    model = build_model({"name": name, "modalities": specs, "latent_dim": 3, "hidden": 8}).double()
    g = torch.Generator().manual_seed(1)
    xs = [torch.randint(0, int(s.split(":")[1]), (6, 32), generator=g) if s.startswith("text")
          else torch.rand(6, int(s.split(":")[1]), generator=g, dtype=torch.float64) for s in specs]
    state = model.prepare(xs, 3)
    tuples = negative_tuples(sample_negatives(model.M, 6, 2, g))
    tuples = tuples.reshape(-1, model.M)
    torch.testing.assert_close(model.reused_tuple_log_weights(state, tuples),
                               _reference(model, state, xs, tuples), rtol=1e-10, atol=1e-10)


@pytest.fixture(scope="module")
def lg():
    params = random_params(DIMS, L, generator=torch.Generator().manual_seed(0))
    xs, _ = params.sample(B, torch.Generator().manual_seed(1))
    tuples = torch.tensor([[i, b] for b in range(B) for i in range(B) if i != b])  # every (x_i, y_b)
    exact = params.log_joint([xs[0][tuples[:, 0]], xs[1][tuples[:, 1]]])  # [P]
    return params, xs, tuples, exact


def _mvae(params, exact: bool) -> MVAE:
    torch.manual_seed(2)
    mods = linear_modalities(params)
    if exact:
        exact_experts(mods, params)  # the product of experts is the exact posterior
    return MVAE(mods, L, family="normal").double()


@torch.no_grad()
def _gap(model, xs, tuples, exact, K, reuse: bool, reps: int = 60) -> tuple[float, torch.Tensor]:
    """exact - E[IWAE] per tuple, estimated over ``reps`` draws -> (mean gap, slack [P]: how far
    each tuple's mean estimate lies below exact + 4 standard errors, >= 0 for a bound)."""
    torch.manual_seed(5)
    est = []
    for _ in range(reps):
        state = model.prepare(xs, K)
        if reuse:
            lw = model.reused_tuple_log_weights(state, tuples)
        else:
            eps = standard_noise("normal", (K, tuples.shape[0], L), dtype=torch.float64)
            lw = model.tuple_log_weights(state, tuples, eps)
        est.append(iwae(lw))
    est = torch.stack(est)  # [reps, P]
    se = est.std(0) / math.sqrt(reps)
    return float((exact - est.mean(0)).mean()), exact + 4 * se - est.mean(0)


def test_fresh_samples_of_the_exact_posterior_are_exact_for_any_K(lg):
    params, xs, tuples, exact = lg
    model = _mvae(params, exact=True)
    state = model.prepare(xs, 3)
    for k in (1, 5):
        eps = standard_noise("normal", (k, tuples.shape[0], L), dtype=torch.float64)
        torch.testing.assert_close(iwae(model.tuple_log_weights(state, tuples, eps)), exact,
                                   rtol=1e-9, atol=1e-9)


def test_reused_samples_are_a_lower_bound_that_tightens_with_K(lg):
    params, xs, tuples, exact = lg
    model = _mvae(params, exact=True)  # the positives' proposals are exact, the mixture is not
    gaps = {}
    for K in (1, 10, 100):
        gaps[K], slack = _gap(model, xs, tuples, exact, K, reuse=True)
        assert (slack >= 0).all(), (K, slack.min())
    assert gaps[1] > gaps[10] > gaps[100] > 0, gaps


def test_fewer_fresh_samples_are_a_looser_bound(lg):
    params, xs, tuples, exact = lg
    model = _mvae(params, exact=False)  # random experts: an imperfect proposal
    gaps = {}
    for K in (1, 5, 30):
        gaps[K], slack = _gap(model, xs, tuples, exact, K, reuse=False)
        assert (slack >= 0).all(), (K, slack.min())
    assert gaps[1] > gaps[5] > gaps[30] > 0, gaps


def test_the_options_reach_the_loss_and_are_checked():
    torch.manual_seed(0)
    model = build_model({"name": "mvae", "modalities": ["vector:5", "vector:3"], "latent_dim": 3,
                         "hidden": 8}).double()
    xs = [torch.rand(6, 5, dtype=torch.float64), torch.rand(6, 3, dtype=torch.float64)]
    losses = {}
    for kw in ({}, {"neg_samples": "reuse"}, {"neg_K": 1}):
        losses[str(kw)] = contrastive_loss(model, xs, 2.0, 2, 3, generator=torch.Generator().manual_seed(4),
                                           **kw)[0]
    assert len({round(float(v), 12) for v in losses.values()}) == 3  # three different estimates
    with pytest.raises(ValueError, match="neg_K applies to negatives with fresh samples"):
        contrastive_loss(model, xs, 2.0, 2, 3, neg_samples="reuse", neg_K=1)
    with pytest.raises(ValueError, match="impl='loop' is the reference of fresh negatives"):
        contrastive_loss(model, xs, 2.0, 2, 3, neg_samples="reuse", impl="loop")
    mmvae = build_model({"name": "mmvae", "modalities": ["vector:5", "vector:3"], "latent_dim": 3,
                         "hidden": 8}).double()
    with pytest.raises(ValueError, match="neg_K applies to negatives with fresh samples"):
        contrastive_loss(mmvae, xs, 2.0, 2, 3, neg_K=1)
