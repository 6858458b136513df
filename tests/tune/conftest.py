"""Sweep tests: a data set small enough that a trial's epoch is a dozen steps."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sweep_data(tmp_path_factory) -> str:
    """The embedded set with 20 / 10 street images per digit, one pair each: 200 train pairs
    (12 steps of 16 per epoch, so tune/tiny.yaml's 36 steps are 3 epochs = 3 Tune iterations)
    and 100 test pairs."""
    from mvae_dist.data import prepare

    out = tmp_path_factory.mktemp("sweep-data") / "embedded"
    prepare("embedded", str(out), dm=1, street_per_class=(20, 10), shard_size=64, progress=False)
    return str(out)
