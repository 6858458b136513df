"""choose_threshold / relatedness_scores against brute force; PMI scoring with per-pair noise."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from mvae_dist.config import ModelConfig
from mvae_dist.eval import pmi
from mvae_dist.models import build_model
from mvae_dist.propagate.relatedness import (
    choose_threshold,
    key_seed,
    relatedness_scores,
    score_batches,
    score_pmi,
)


def brute_scores(pred: np.ndarray, rel: np.ndarray) -> dict:
    tp = sum(1 for p, r in zip(pred, rel) if p and r)
    fp = sum(1 for p, r in zip(pred, rel) if p and not r)
    fn = sum(1 for p, r in zip(pred, rel) if not p and r)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    acc = sum(1 for p, r in zip(pred, rel) if p == r) / len(pred)
    return {"precision": prec, "recall": rec, "f1": f1, "accuracy": acc}


@pytest.mark.parametrize("seed", range(5))
def test_relatedness_scores_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    pred, rel = rng.random(57) < 0.4, rng.random(57) < 0.5
    got = relatedness_scores(pred, rel)
    for k, v in brute_scores(pred, rel).items():
        assert got[k] == pytest.approx(v)
    assert (got["n"], got["n_pred_related"], got["n_related"]) == (57, pred.sum(), rel.sum())
    assert relatedness_scores(torch.tensor(pred), torch.tensor(rel)) == got  # tensors too


def test_relatedness_scores_edge_cases():
    none, every = np.zeros(4, bool), np.ones(4, bool)
    assert relatedness_scores(every, every) == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0,
                                                "n": 4, "n_pred_related": 4, "n_related": 4}
    # zero divisions are 0, as scikit-learn's zero_division=0
    s = relatedness_scores(none, none)
    assert (s["precision"], s["recall"], s["f1"], s["accuracy"]) == (0.0, 0.0, 0.0, 1.0)
    s = relatedness_scores(every, none)
    assert (s["precision"], s["recall"], s["f1"], s["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    s = relatedness_scores(none, every)
    assert (s["precision"], s["recall"], s["f1"], s["accuracy"]) == (0.0, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        relatedness_scores(every, none[:3])


def brute_threshold(scores: np.ndarray, rel: np.ndarray) -> tuple[float, int]:
    """(best F1, fewest pairs predicted related among the best cuts) over every cut s >= v."""
    best, fewest = -1.0, None
    for v in sorted(set(scores.tolist()), reverse=True):
        pred = scores >= v
        f1 = brute_scores(pred, rel)["f1"]
        if f1 > best + 1e-12:
            best, fewest = f1, int(pred.sum())
    return best, fewest


@pytest.mark.parametrize("seed", range(8))
def test_choose_threshold_maximises_f1_highest_cut_on_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    rel = rng.random(n) < rng.uniform(0.2, 0.8)
    # overlapping classes, rounded so that many scores tie (also across classes)
    scores = np.round(rng.normal(rel * 1.0, 1.0), 1)
    t = choose_threshold(scores, rel)
    best, fewest = brute_threshold(scores, rel)
    pred = scores >= t
    assert brute_scores(pred, rel)["f1"] == pytest.approx(best)
    assert pred.sum() == fewest  # ties: the highest cut
    # midway between the cut's lowest score and the next lower distinct score
    below = scores[scores < t]
    if below.size:
        assert t == pytest.approx((scores[pred].min() + below.max()) / 2)
    else:
        assert t == scores.min()


def test_choose_threshold_oracle_scores_give_f1_one():
    rng = np.random.default_rng(0)
    rel = rng.random(200) < 0.5
    scores = np.where(rel, rng.normal(5, 1, 200), rng.normal(-5, 1, 200))  # separable: a perfect PMI
    t = choose_threshold(scores, rel)
    assert scores[~rel].max() < t < scores[rel].min()
    assert t == pytest.approx((scores[~rel].max() + scores[rel].min()) / 2)
    assert relatedness_scores(scores >= t, rel)["f1"] == 1.0


def test_choose_threshold_all_related_and_none_related():
    scores = np.array([0.3, -1.0, 2.0, 0.3])
    t = choose_threshold(scores, np.ones(4, bool))
    assert t == -1.0 and (scores >= t).all()  # every pair predicted related: F1 = 1
    t = choose_threshold(scores, np.zeros(4, bool))
    assert t > 2.0 and not (scores >= t).any()  # nothing related: predict nothing
    assert choose_threshold([1.5], [True]) == 1.5


def test_choose_threshold_bad_input():
    with pytest.raises(ValueError, match="no pairs"):
        choose_threshold([], [])
    with pytest.raises(ValueError, match="NaN"):
        choose_threshold([0.0, float("nan")], [True, False])
    with pytest.raises(ValueError, match="differ in length"):
        choose_threshold([0.0, 1.0], [True])
    with pytest.raises(ValueError, match="1-D"):
        choose_threshold(np.zeros((2, 2)), np.zeros((2, 2), bool))


# ----------------------------------------------------------------------------- PMI scoring
def small_model(name: str):
    torch.manual_seed(0)
    return build_model(ModelConfig(name=name, modalities=("vector:5", "vector:3"), latent_dim=2, hidden=16))


def vector_batches(n: int, batch_size: int, order: np.ndarray | None = None):
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(n, 5, generator=g), torch.randn(n, 3, generator=g)
    keys = [f"k-{i}" for i in range(n)]
    idx = np.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        j = idx[s:s + batch_size]
        yield {"xs": [x0[j], x1[j]], "related": torch.tensor(j % 2 == 0), "key": [keys[i] for i in j],
               "ids": torch.tensor(np.stack([j, j], 1)),
               "labels": torch.tensor(np.stack([j % 10, j % 10], 1))}


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_score_pmi_is_eval_pmi_with_per_pair_noise(name):
    model = small_model(name)
    K, seed = 4, 3
    scored = score_pmi(model, vector_batches(10, 4), K, seed=seed)
    values, related, ids, labels = scored  # the documented 4-tuple
    assert values.shape == (10,) and related.tolist() == [i % 2 == 0 for i in range(10)]
    assert ids.shape == labels.shape == (10, 2) and scored.keys[:2] == ["k-0", "k-1"]
    assert pickle.loads(pickle.dumps(scored)).keys == scored.keys
    for b, batch in enumerate(vector_batches(10, 1)):
        torch.manual_seed(key_seed(seed, batch["key"][0]))  # eval.pmi draws from the global generator
        assert scored.scores[b] == pytest.approx(pmi(model, batch["xs"], K).item(), abs=1e-5)


@pytest.mark.parametrize("name", ["mmvae", "mvae", "jmvae"])
def test_score_pmi_of_triples_with_a_sentence(name):
    """M = 3 with a sentence modality (token ids [B, 32]): PMI = log p(x, y, s) - Σ log p(.),
    each pair's estimate that of eval.pmi with its own noise, whatever the batching."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, modalities=("vector:5", "vector:3", "text:11"), latent_dim=2,
                                    hidden=16))
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(6, 5, generator=g), torch.randn(6, 3, generator=g),
          torch.randint(0, 11, (6, 32), generator=g)]
    keys = [f"t-{i}" for i in range(6)]

    def batches(size):
        for s in range(0, 6, size):
            yield {"xs": [x[s:s + size] for x in xs], "key": keys[s:s + size]}

    K, seed = 3, 5
    scored = score_pmi(model, batches(4), K, seed=seed)
    assert scored.scores.shape == (6,) and np.isfinite(scored.scores).all()
    np.testing.assert_allclose(score_pmi(model, batches(1), K, seed=seed).scores, scored.scores, rtol=1e-5,
                               atol=1e-4)
    for i in range(6):
        torch.manual_seed(key_seed(seed, keys[i]))
        want = pmi(model, [x[i:i + 1] for x in xs], K).item()
        assert scored.scores[i] == pytest.approx(want, abs=1e-4)


def test_score_pmi_does_not_depend_on_batching_or_order():
    model = small_model("mmvae")
    a = score_pmi(model, vector_batches(23, 5), 3, seed=0)
    order = np.random.default_rng(0).permutation(23)
    b = score_pmi(model, vector_batches(23, 7, order), 3, seed=0)
    np.testing.assert_allclose(b.scores, a.scores[order], rtol=1e-5, atol=1e-5)
    c = score_pmi(model, vector_batches(23, 5), 3, seed=1)
    assert not np.allclose(c.scores, a.scores)  # the seed matters
    # batches without keys or ground truth: running indices, related None
    plain = ({"xs": bt["xs"]} for bt in vector_batches(6, 4))
    d = score_pmi(model, plain, 3)
    assert d.related is None and d.keys == [str(i) for i in range(6)] and d.scores.shape == (6,)


def test_label_oracle_through_the_loader_gives_f1_one(tiny_pools):
    """An oracle score (1 when the digits agree) calibrated on sm classifies fm perfectly."""
    from mvae_dist.data import make_loader

    def oracle(batch):
        return (batch["labels"][:, 0] == batch["labels"][:, 1]).float()

    def scored(split):
        return score_batches(oracle, make_loader(tiny_pools, split, 64, shuffle=False, drop_last=False))

    sm, fm = scored("sm"), scored("fm")
    t = choose_threshold(sm.scores, sm.related)
    assert 0.0 < t <= 1.0
    s = relatedness_scores(fm.scores >= t, fm.related)
    assert s["f1"] == 1.0 and s["n"] == 450 and s["n_related"] == 225
