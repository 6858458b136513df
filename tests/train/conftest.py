"""Shared services for training tests: a local Ray cluster and a tiny prepared data set."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray instance shared by the session's training tests (2 CPUs)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # faster report round trips
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False,
                 configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """The embedded set with one pair per instance (4000 train / 1000 test pairs), local shards."""
    from mvae_dist.data import prepare

    out = tmp_path_factory.mktemp("data") / "embedded"
    prepare("embedded", str(out), dm=1, shard_size=500, progress=False)
    return str(out)
