"""Shared data for training tests: a tiny prepared data set (``ray_cluster`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> str:
    """The embedded set with one pair per instance (4000 train / 1000 test pairs), local shards."""
    from mvae_dist.data import prepare

    out = tmp_path_factory.mktemp("data") / "embedded"
    prepare("embedded", str(out), dm=1, shard_size=500, progress=False)
    return str(out)
