"""Each model learns a tiny synthetic task: its training loss falls (baseline and contrastive).

The task is in the paper's regime: bounded observations in [0, 1] with sigmoid decoders and a
fixed-scale Laplace likelihood, so that log p of unrelated pairs is bounded below. (With
unbounded Gaussian likelihoods term 2 of eq. 4 has no lower bound and training diverges.)
"""

import pytest
import torch
from torch import nn

from mvae_dist.models import JMVAE, MMVAE, MVAE, ConcatJointEncoder, Modality
from mvae_dist.models.networks import MLPDecoder, MLPEncoder
from mvae_dist.objectives import training_loss

DIMS, L, CLASSES, SIZE = (16, 12), 4, 10, 512


def _task():
    g = torch.Generator().manual_seed(0)
    templates = [torch.rand(CLASSES, d, generator=g) for d in DIMS]
    labels = torch.randint(0, CLASSES, (SIZE,), generator=g)
    return [(t[labels] + 0.1 * torch.randn(SIZE, d, generator=g)).clamp(0, 1)
            for t, d in zip(templates, DIMS)]


def _model(name):
    mods = [Modality(f"v{i}", MLPEncoder(d, L, (32,)), MLPDecoder(L, (d,), (32,), scale=0.1), "laplace")
            for i, d in enumerate(DIMS)]
    if name == "mmvae":
        return MMVAE(mods, L, "laplace")
    if name == "mvae":
        return MVAE(mods, L, "normal")
    joint = ConcatJointEncoder([nn.Sequential(nn.Linear(d, 32), nn.ReLU()) for d in DIMS], [32] * 2, L, 32)
    return JMVAE(mods, L, joint, "normal")


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
@pytest.mark.parametrize("objective,estimator", [("baseline", "iwae"), ("contrastive", "iwae"),
                                                 ("contrastive", "cubo")])
def test_loss_falls(name, objective, estimator):
    torch.manual_seed(0)
    data, model = _task(), _model(name)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(2)
    hist = []
    for _ in range(200):
        idx = torch.randint(0, SIZE, (32,), generator=g)
        loss, stats = training_loss(model, [d[idx] for d in data], objective=objective, K=4, N=3,
                                    estimator=estimator, gamma=2.0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append({k: float(v) for k, v in stats.items() if v.dim() == 0})
    first, last = hist[:20], hist[-20:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 10.0
    assert mean(last, "log_joint") > mean(first, "log_joint") + 5.0
    if objective == "contrastive":  # related pairs end far likelier than unrelated ones
        assert mean(last, "log_joint") > mean(last, "log_joint_neg") + 5.0
