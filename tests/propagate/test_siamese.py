"""The Siamese-network baseline: its pieces, and that it predicts relatedness above chance."""

from __future__ import annotations

import pytest
import torch

from mvae_dist.errors import ConfigError
from mvae_dist.propagate.relatedness import average_precision, roc_auc
from mvae_dist.propagate.siamese import (
    SiameseModel,
    contrastive_pair_loss,
    rematch,
    siamese_baseline,
    train_siamese,
)


def test_rematch_is_a_seeded_derangement_keeping_the_anchor():
    xs = [torch.arange(8.0), torch.arange(8.0) + 100]
    a = rematch(xs, torch.Generator().manual_seed(0))
    b = rematch(xs, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], xs[0]) and torch.equal(a[1], b[1])
    assert sorted(a[1].tolist()) == xs[1].tolist()  # a permutation of the partners
    assert (a[1] - 100 != xs[0]).all()  # nobody meets their own partner


def test_contrastive_loss_is_hadsell():
    d_pos, d_neg = torch.tensor([0.5, 1.5]), torch.tensor([0.2, 3.0])
    want = 0.5 * ((0.25 + 2.25) / 2 + ((1.0 - 0.2) ** 2 + 0.0) / 2)
    assert contrastive_pair_loss(d_pos, d_neg, 1.0).item() == pytest.approx(want)


def test_model_scores_are_negative_distances():
    torch.manual_seed(0)
    m = SiameseModel([(1, 28, 28), (3, 32, 32), (7,)]).eval()
    xs = [torch.rand(5, 1, 28, 28), torch.rand(5, 3, 32, 32), torch.rand(5, 7)]
    emb = m.embed(xs)
    assert [e.shape for e in emb] == [(5, 16)] * 3
    assert torch.allclose(emb[1].norm(dim=-1), torch.ones(5), atol=1e-5)
    want = -((emb[0] - emb[1]).norm(dim=-1) + (emb[0] - emb[2]).norm(dim=-1)) / 2
    assert torch.allclose(m(xs), want, atol=1e-5)


def test_sentences_get_a_token_net_of_their_vocabulary():
    """A sentence modality (token ids [T] with a vocabulary): a bag of word embeddings, so ids
    given as floats score the same, and the score depends on which words, not their order."""
    torch.manual_seed(0)
    m = SiameseModel([(1, 28, 28), (32,)], vocab_sizes=[None, 23]).eval()
    assert m.nets[1][0].embedding.num_embeddings == 23
    tokens = torch.randint(0, 23, (5, 32))
    x0 = torch.rand(5, 1, 28, 28)
    s = m([x0, tokens])
    assert torch.allclose(m([x0, tokens.float()]), s)
    assert torch.allclose(m([x0, tokens.flip(1)]), s, atol=1e-6)
    assert not torch.allclose(m([x0, (tokens + 1) % 23]), s)
    with pytest.raises(ConfigError, match="vocabulary sizes given for 2 modalities"):
        SiameseModel([(1, 28, 28), (32,)], vocab_sizes=[23])
    with pytest.raises(ConfigError, match="token net needs sentences"):
        SiameseModel([(1, 28, 28), (1, 28, 28)], nets=["mlp", "tokens"])


def test_bad_input(tiny_pools):
    with pytest.raises(ConfigError, match="split 'nope' not in data set"):
        train_siamese(tiny_pools, "nope")
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        train_siamese(tiny_pools, epochs=0)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine two threads slow training down many times."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_siamese_predicts_relatedness_clearly_above_chance(siamese_pools, one_thread):
    """Trained on S_r (2000 related pairs), threshold on S_m, F1 measured on F_m (half related).

    Chance: predicting every pair related gives F1 = 2/3 on a half-related pool, a random guess
    1/2. Measured with 8 epochs: F1 0.774 / 0.740 / 0.740 (seeds 0 / 1 / 2; precision 0.64-0.70,
    recall 0.86-0.87); 10 epochs: 0.78-0.82.
    """
    res = siamese_baseline(siamese_pools, epochs=8, seed=0)
    print("\n".join(res.lines()), res.seconds)
    assert res.pool["n"] == 2000 and res.pool["n_related"] == 1000
    assert res.pool["f1"] > 0.72  # chance: 0.667
    assert res.pool["precision"] > 0.6 and res.pool["accuracy"] > 0.65
    assert res.calibration["f1"] > 0.72 and res.model.threshold == res.threshold
    # its ranking, apart from the threshold: the same scores' AUC and the pool's best-cut F1
    rel = res.pool_scores.related
    assert res.ranking["auc"] == roc_auc(res.pool_scores.scores, rel) > 0.7  # chance 0.5
    assert res.ranking["ap"] == average_precision(res.pool_scores.scores, rel) > 0.6  # chance 0.5
    assert res.ranking["best_f1"] >= res.pool["f1"] and 0.5 < res.ranking["cal_auc"] <= 1.0
    assert any(ln.startswith("siamese ranking: ROC-AUC ") for ln in res.lines())


def test_siamese_on_three_modalities_with_captions(text_pools, one_thread):
    """M = 3 (MNIST, street numbers, SYNTHETIC captions): one net per modality, the caption's a
    token net; trained on S_r, F1 on F_m. Measured with 8 epochs: F1 0.806 / 0.812 (seeds 0 / 1;
    precision 0.77-0.78); chance 0.667."""
    res = siamese_baseline(text_pools, epochs=8, seed=0)
    print("\n".join(res.lines()), res.seconds)
    assert [type(n[0]).__name__ for n in res.model.nets] == ["Flatten", "Standardize", "TokenEmbedding"]
    assert res.pool["n"] == 2000 and res.pool["n_related"] == 1000
    assert res.pool["f1"] > 0.74 and res.pool["precision"] > 0.65
