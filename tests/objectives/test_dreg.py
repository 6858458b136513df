"""DReG gradients: exact for the generative model, unbiased for the proposal."""

import torch

from mvae_dist.models import MVAE
from mvae_dist.models.linear_gaussian import exact_experts, linear_modalities, random_params
from mvae_dist.objectives import log_joint


def _model():
    params = random_params([3, 2], 2, generator=torch.Generator().manual_seed(0))
    mods = linear_modalities(params)
    exact_experts(mods, params)
    model = MVAE(mods, 2, family="normal").double()
    with torch.no_grad():  # an imperfect proposal, so the proposal gradient is not zero
        for mod in model.modalities:
            mod.encoder.log_scale.add_(0.5)
            mod.encoder.lin.bias.add_(0.3)
    xs, _ = params.sample(1, torch.Generator().manual_seed(1))
    return model, xs


def _grads(model, xs, K, dreg, eps):
    model.zero_grad()
    log_joint(model, xs, K, "iwae", dreg=dreg, eps=eps).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_dreg_value_and_decoder_gradient_equal_iwae():
    model, xs = _model()
    eps = model.draw_eps(5, 1, torch.Generator().manual_seed(2))
    v1 = log_joint(model, xs, 5, "iwae", eps=eps)
    v2 = log_joint(model, xs, 5, "iwae", dreg=True, eps=eps)
    torch.testing.assert_close(v1, v2)
    g_iwae, g_dreg = _grads(model, xs, 5, False, eps), _grads(model, xs, 5, True, eps)
    for n in g_iwae:
        if ".decoder." in n:
            torch.testing.assert_close(g_dreg[n], g_iwae[n], rtol=1e-10, atol=1e-12)


def test_dreg_encoder_gradient_is_unbiased_and_lower_variance():
    model, xs = _model()
    K, R = 4, 3000
    xs_rep = [x.expand(R, -1).contiguous() for x in xs]  # R independent estimates of one item
    eps = model.draw_eps(K, R, torch.Generator().manual_seed(3))

    def per_rep(dreg):
        out = []
        for r in range(0, R, 300):
            model.zero_grad()
            log_joint(model, [x[r:r + 300] for x in xs_rep], K, "iwae", dreg=dreg,
                      eps=eps[:, r:r + 300]).sum().backward()
            out.append(torch.cat([p.grad.flatten() for n, p in model.named_parameters()
                                  if ".encoder." in n]) / 300)
        return torch.stack(out)  # [10, P]: means over blocks of 300 estimates

    a, b = per_rep(False), per_rep(True)
    mean_a, mean_b = a.mean(0), b.mean(0)
    se = ((a.var(0) + b.var(0)) / a.shape[0]).sqrt()
    assert bool(((mean_a - mean_b).abs() <= 4 * se + 1e-6).all()), (mean_a, mean_b, se)
    assert mean_a.abs().max() > 0.1  # the proposal gradient is not trivially zero
    assert b.var(0).sum() < a.var(0).sum()  # DReG's point: lower variance
