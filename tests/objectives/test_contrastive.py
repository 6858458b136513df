"""The contrastive loss (eq. 4 / appendix C): fused reuse path against the plain loop."""

import pytest
import torch

from mvae_dist.models import build_model
from mvae_dist.objectives import (
    contrastive_loss,
    log_joint,
    negative_tuples,
    sample_negatives,
)
from mvae_dist.objectives.estimators import estimate


def _batch(specs, B, g):
    out = []
    for s in specs:
        if s == "mnist":
            out.append(torch.rand(B, 1, 28, 28, generator=g, dtype=torch.float64))
        elif s == "svhn":
            out.append(torch.rand(B, 3, 32, 32, generator=g, dtype=torch.float64))
        elif s.startswith("text:"):  # token ids, some 0 (unknown words, not scored)
            out.append(torch.randint(0, int(s.split(":")[1]), (B, 32), generator=g))
        else:
            out.append(torch.randn(B, int(s.split(":")[1]), generator=g, dtype=torch.float64))
    return out


IMAGES, VECTORS = ("mnist", "svhn"), ("vector:5", "vector:3", "vector:4")
# The paper's image networks (float64 convolutions are slow on CPU) with one estimator each; the
# three-modality vector models with both.
CASES = [
    ("mmvae", IMAGES, "iwae"), ("mvae", IMAGES, "cubo"), ("jmvae", IMAGES, "iwae"),
    *[(name, VECTORS, est) for name in ("mmvae", "mvae", "jmvae") for est in ("iwae", "cubo")],
    # a sentence modality (categorical likelihood, its own pair kernel), M = 2 and 3
    ("mmvae", ("vector:5", "text:12"), "iwae"), ("mvae", ("text:12", "vector:3", "vector:4"), "cubo"),
    ("jmvae", ("vector:5", "text:12"), "iwae"),
]


@pytest.mark.parametrize("name,specs,estimator", CASES)
def test_fused_equals_loop_values_and_gradients(name, specs, estimator, monkeypatch):
    monkeypatch.setattr("mvae_dist.models.modality._PAIR_CHUNK_ELEMENTS", 4096)
    torch.manual_seed(0)
    likelihood = "normal" if specs[0].startswith(("vector", "text")) and name == "mvae" else "laplace"
    model = build_model({"name": name, "modalities": list(specs), "latent_dim": 4, "hidden": 16,
                         "likelihood": likelihood}).double()
    B, N, K = (4, 2, 3) if specs == IMAGES else (6, 3, 4)
    xs = _batch(specs, B, torch.Generator().manual_seed(1))
    negatives = sample_negatives(model.M, B, N, torch.Generator().manual_seed(2))
    results = {}
    for impl in ("fused", "loop"):
        g = torch.Generator().manual_seed(3)
        model.zero_grad()
        loss, stats = contrastive_loss(model, xs, 2.5, N, K, estimator, negatives, generator=g, impl=impl)
        loss.backward()
        results[impl] = (loss.detach(), stats, {n: p.grad.clone() for n, p in model.named_parameters()
                                                 if p.grad is not None})
    (lf, sf, gf), (ll, sl, gl) = results["fused"], results["loop"]
    torch.testing.assert_close(lf, ll, rtol=1e-10, atol=1e-8)
    for k in ("term1", "term2", "log_joint_neg"):
        torch.testing.assert_close(sf[k], sl[k], rtol=1e-10, atol=1e-8)
    assert gf.keys() == gl.keys()
    for n in gf:
        torch.testing.assert_close(gf[n], gl[n], rtol=1e-8, atol=1e-9, msg=lambda m, n=n: f"{n}: {m}")


def test_loss_is_equation_4_from_log_joint():
    # Term by term from the public log_joint on explicitly built negative pairs (M = 2).
    torch.manual_seed(0)
    model = build_model({"name": "mvae", "modalities": ["vector:3", "vector:2"], "latent_dim": 2,
                         "hidden": 8, "likelihood": "normal"}).double()
    B, N, K, gamma = 5, 2, 3, 3.0
    xs = _batch(["vector:3", "vector:2"], B, torch.Generator().manual_seed(1))
    neg = sample_negatives(2, B, N, torch.Generator().manual_seed(2))
    eps = model.draw_eps(K, B, torch.Generator().manual_seed(5))
    eps_neg = model.draw_eps(K, 2 * B * N, torch.Generator().manual_seed(6))
    loss, stats = contrastive_loss(model, xs, gamma, N, K, "cubo", neg, eps=eps, eps_neg=eps_neg)
    t1 = -gamma * log_joint(model, xs, K, "iwae", eps=eps)
    en = eps_neg.reshape(K, 2, B, N, -1)
    lx = torch.stack([log_joint(model, [xs[0][neg[0, :, i]], xs[1]], K, "cubo", eps=en[:, 0, :, i])
                      for i in range(N)], -1)  # log p(x'_i, y)
    ly = torch.stack([log_joint(model, [xs[0], xs[1][neg[1, :, i]]], K, "cubo", eps=en[:, 1, :, i])
                      for i in range(N)], -1)  # log p(x, y'_i)
    t2 = 0.5 * (torch.logsumexp(lx, -1) + torch.logsumexp(ly, -1))
    torch.testing.assert_close(loss, (t1 + t2).mean(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(stats["term1"], t1.mean())
    torch.testing.assert_close(stats["term2"], t2.mean())


def test_negatives_exclude_the_anchor_and_are_distinct():
    neg = sample_negatives(3, 7, 6, torch.Generator().manual_seed(0))
    assert neg.shape == (3, 7, 6)
    for m in range(3):
        for b in range(7):
            row = neg[m, b].tolist()
            assert b not in row and len(set(row)) == 6
    t = negative_tuples(sample_negatives(2, 4, 2, torch.Generator().manual_seed(1)))
    assert t.shape == (2, 8, 2)
    assert (t[0, :, 1] == torch.arange(4).repeat_interleave(2)).all()  # group 0 keeps y_b
    assert (t[1, :, 0] == torch.arange(4).repeat_interleave(2)).all()  # group 1 keeps x_b


def test_gradients_reach_every_parameter():
    from mvae_dist.objectives import training_loss
    for name in ("mmvae", "mvae", "jmvae"):
        torch.manual_seed(0)
        model = build_model({"name": name, "modalities": ["mnist", "svhn"], "latent_dim": 4, "hidden": 16})
        xs = [torch.rand(6, 1, 28, 28), torch.rand(6, 3, 32, 32)]
        loss, _ = training_loss(model, xs, objective="contrastive", K=2, N=2, estimator="cubo")
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, f"{name}: no gradient for {missing}"
        assert torch.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"gamma": 1.0}, "gamma must be > 1, got 1.0"),
        ({"gamma": 0.5}, "gamma must be > 1, got 0.5"),
        ({"N": 0}, "N must be an integer >= 1, got 0"),
        ({"N": 4}, "N must be < batch size 4"),
        ({"K": 0}, "K must be an integer >= 1, got 0"),
        ({"estimator": "iwea"}, "unknown estimator 'iwea'"),
        ({"negatives": torch.zeros(2, 4, 2, dtype=torch.long)}, "anchor"),
        ({"negatives": torch.ones(2, 4, 3, dtype=torch.long)}, "shape"),
    ],
)
def test_invalid_arguments_raise_clear_errors(kwargs, match):
    model = build_model({"name": "mmvae", "modalities": ["vector:3", "vector:2"], "latent_dim": 2})
    xs = [torch.randn(4, 3), torch.randn(4, 2)]
    args = {"gamma": 2.0, "N": 2, "K": 3, "estimator": "iwae", "negatives": None} | kwargs
    with pytest.raises(ValueError, match=match):
        contrastive_loss(model, xs, args["gamma"], args["N"], args["K"], estimator=args["estimator"],
                         negatives=args["negatives"])


def test_unknown_model_name_is_named():
    with pytest.raises(ValueError, match="'vae'"):
        build_model({"name": "vae"})


def test_contrastive_on_k1_mmvae_runs():
    model = build_model({"name": "mmvae", "modalities": ["vector:3", "vector:2"], "latent_dim": 2})
    xs = [torch.randn(4, 3), torch.randn(4, 2)]
    loss, stats = contrastive_loss(model, xs, 2.0, 1, 1)
    assert torch.isfinite(loss) and stats["log_joint_items"].shape == (4,)
    # CUBO(n=2) of K equal weights w = 1: 1/2 (logsumexp(2 log w) - log K) = 1/2 (log K - log K) = 0
    torch.testing.assert_close(estimate(torch.zeros(2, 4), "cubo"), torch.zeros(4))
    # and of weights 1 and e: 1/2 (log(1 + e^2) - log 2)
    lw = torch.tensor([[0.0], [1.0]])
    torch.testing.assert_close(estimate(lw, "cubo"), 0.5 * (torch.log(1 + torch.exp(torch.tensor([2.0])))
                                                            - torch.log(torch.tensor(2.0))))
