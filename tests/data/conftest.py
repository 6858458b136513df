"""A small embedded data set, built once per session, shared by the data tests.

Sizes are chosen to be fast and to exercise uneven shards: with 20 / 10 street images per
digit and dm=2, train has 20*10*2 = 400 pairs (shard_size 64: 6 full shards + one of 16)
and test 200 pairs (3 full shards + one of 8).
"""

from __future__ import annotations

import pytest

SMALL = dict(dm=2, street_per_class=(20, 10), shard_size=64, progress=False)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> str:
    """Local path of a small embedded data set (treat as read-only)."""
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("small") / "ds")
    prepare("embedded", out, **SMALL)
    return out


@pytest.fixture(scope="session")
def small_source():
    """The unimodal arrays the small data set was built from (for exact comparisons)."""
    from mvae_dist.data.sources import load_source

    return load_source("embedded", None, 0, street_per_class=SMALL["street_per_class"])


@pytest.fixture
def small_copy(small_dataset, tmp_path) -> str:
    """A private copy of the small data set, for tests that damage it."""
    import shutil

    dst = tmp_path / "ds"
    shutil.copytree(small_dataset, dst)
    return str(dst)
