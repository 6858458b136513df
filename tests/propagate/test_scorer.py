"""ShardScorer without Ray: a shard's PMI equals in-process PMI, select writes exactly the pairs at
or above the threshold as a valid shard, copy is byte for byte."""

import numpy as np
import pytest
import torch

from mvae_dist.data.manifest import open_manifest
from mvae_dist.data.stream import raw_shard_samples
from mvae_dist.propagate.pools import shard_url
from mvae_dist.propagate.relatedness import score_pmi
from mvae_dist.propagate.scorer import ShardScorer
from mvae_dist.trained import load_trained

K = 2


@pytest.fixture(scope="module")
def scorer_and_model(untrained_checkpoint):
    trained = load_trained(checkpoint=untrained_checkpoint)
    state = {k: v.detach().clone() for k, v in trained.model.state_dict().items()}
    before = torch.get_num_threads()
    try:
        yield ShardScorer((trained.config.model, state), K=K, batch_size=16, seed=0, threads=1), trained.model
    finally:
        torch.set_num_threads(before)


def test_score_select_and_copy_one_shard(scorer_and_model, tiny_pools, tmp_path):
    from mvae_dist.data import make_loader

    scorer, model = scorer_and_model
    manifest = open_manifest(tiny_pools)
    entry = manifest["splits"]["fm"]["shards"][0]
    url = shard_url(tiny_pools, entry)
    got = scorer.score(url, entry, 2)
    # the reference: the same pairs through the loader, scored in this process
    batches = make_loader(tiny_pools, "fm", 64, shuffle=False, drop_last=False)
    ref = score_pmi(model, batches, K, seed=0)
    want = dict(zip(ref.keys, ref.scores))
    assert len(got["keys"]) == entry["count"]
    np.testing.assert_allclose(got["scores"], [want[k] for k in got["keys"]], atol=2e-3)

    threshold = float(np.median(got["scores"]))
    out = str(tmp_path / "out")
    sel = scorer.select(url, entry, 2, threshold, out, "train/shard-000000.tar")
    assert (sel["found"] == (sel["scores"] >= threshold)).all() and 0 < sel["found"].sum() < entry["count"]
    written = [s["__key__"] for s in raw_shard_samples(f"{out}/train/shard-000000.tar", sel["entry"])]
    assert written == [k for k, f in zip(sel["keys"], sel["found"]) if f]
    assert sel["entry"]["count"] == int(sel["found"].sum())

    copied = scorer.copy(url, entry, out, "test/shard-000000.tar")
    with open(f"{out}/test/shard-000000.tar", "rb") as f, open(url, "rb") as g:
        assert f.read() == g.read()
    assert copied == {**entry, "path": "test/shard-000000.tar"}
