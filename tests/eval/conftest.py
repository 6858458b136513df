"""Data sets for the evaluation tests, built once per session (treat them as read-only).

``small_data``: the embedded set with 20 / 10 street images per digit and dm=2 (400 train /
200 test pairs over 200 / 100 distinct images per modality), a few seconds to build.
``embedded_data``: the whole embedded set, one pair per image (4 000 train / 1 000 test
pairs), for the classifier accuracy targets (~10 s to build).
"""

from __future__ import annotations

import pytest

SMALL = dict(dm=2, street_per_class=(20, 10), shard_size=64, progress=False)


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> str:
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("eval-small") / "ds")
    prepare("embedded", out, **SMALL)
    return out


@pytest.fixture(scope="session")
def embedded_data(tmp_path_factory) -> str:
    from mvae_dist.data import prepare

    out = str(tmp_path_factory.mktemp("eval-embedded") / "ds")
    prepare("embedded", out, dm=1, shard_size=500, progress=False)
    return out
