"""Data and models for the label-propagation tests (session fixtures; treat them as read-only).

``tiny_pools``: the embedded set with dm=1 and sr_fraction=0.1 but only 50 / 10 street images
per digit, so the pools are small (train 500, sr 50, fm 450 (225 related), sm 50 (25 related),
test 100; 25 pairs per shard): quick to score by PMI on Ray workers.
``siamese_pools``: the dm=1 embedded set (4000 training pairs; a small test split) with
sr_fraction=0.5 (sr, fm, sm of 2000 pairs): enough related pairs for the Siamese baseline to
learn (with sr_fraction=0.1, S_r = 400 pairs, it stays at chance).
``text_pools``: the same on the M = 3 embedded-text set (MNIST, street numbers, captions).
The Ray cluster is ``ray_cluster`` from tests/conftest.py.
"""

from __future__ import annotations

import pytest

TINY = dict(dm=1, sr_fraction=0.1, street_per_class=(50, 10), shard_size=25, progress=False)


@pytest.fixture(scope="session")
def tiny_pools(tmp_path_factory) -> str:
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("propagate") / "tiny")
    prepare("embedded", out, **TINY)
    return out


@pytest.fixture(scope="session")
def siamese_pools(tmp_path_factory) -> str:
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("propagate") / "half")
    prepare("embedded", out, dm=1, sr_fraction=0.5, street_per_class=(400, 10), shard_size=500,
            progress=False)
    return out


@pytest.fixture(scope="session")
def text_pools(tmp_path_factory) -> str:
    """The M = 3 embedded-text set (MNIST, street numbers, captions) with siamese_pools' sizes:
    sr, fm, sm of 2000 triples each."""
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("propagate") / "text-half")
    prepare("embedded-text", out, dm=1, sr_fraction=0.5, street_per_class=(400, 10), shard_size=500,
            progress=False)
    return out


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory, tiny_pools) -> str:
    """A checkpoint directory of an untrained MMVAE (latent 8) whose config points at tiny_pools."""
    import torch

    from mvae_dist.config import RunConfig
    from mvae_dist.models import build_model
    from mvae_dist.train.checkpoint import Position, save_checkpoint

    cfg = RunConfig.from_dict({"model": {"name": "mmvae", "modalities": ["mnist", "svhn"], "latent_dim": 8},
                                 "data": {"url": tiny_pools}})
    torch.manual_seed(0)
    model = build_model(cfg.model)
    d = tmp_path_factory.mktemp("propagate") / "ckpt"
    save_checkpoint(d, model=model, optimizer=torch.optim.Adam(model.parameters()), scheduler=None,
                    position=Position(step=7), config=cfg.to_dict())
    return str(d)
