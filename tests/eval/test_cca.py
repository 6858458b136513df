"""CCA coherence (eval/cca.py): the CCA itself, the sentence vectors, the stored scorer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvae_dist.errors import DataError
from mvae_dist.eval.cca import (
    cca,
    fit_and_store,
    load_cca_scorer,
    sentence_vectors,
    sif_weights,
    word_vectors,
)


def _two_views(n=4000, seed=0):
    """Two views sharing a 2-d latent s: X = s Wx + noise [n, 6], Y = s Wy + noise [n, 5]."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(n, 2, generator=g, dtype=torch.float64)
    x = s @ torch.randn(2, 6, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 6, generator=g,
                                                                                     dtype=torch.float64)
    y = s @ torch.randn(2, 5, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, 5, generator=g,
                                                                                     dtype=torch.float64)
    return x, y


def test_cca_eigenvalues_are_the_correlations_of_the_projections():
    x, y = _two_views()
    corr, (a, b) = cca([x, y], k=3, ridge=1e-9)
    assert corr.shape == (3,) and a.shape == (6, 3) and b.shape == (5, 3)
    assert corr[0] >= corr[1] >= corr[2]
    assert corr[1] > 0.8 and corr[2] < 0.1  # two shared directions, then noise
    px, py = (x - x.mean(0)) @ a, (y - y.mean(0)) @ b
    for j in range(3):  # each eigenvalue is the Pearson correlation of its pair of projections
        r = torch.corrcoef(torch.stack([px[:, j], py[:, j]]))[0, 1]
        torch.testing.assert_close(r, corr[j], rtol=1e-6, atol=1e-6)
    # an invertible linear map of one view: every canonical correlation is 1
    corr_lin, _ = cca([x, x @ torch.randn(6, 6, generator=torch.Generator().manual_seed(5),
                                          dtype=torch.float64)], k=6, ridge=1e-12)
    torch.testing.assert_close(corr_lin, torch.ones(6, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="k must be"):
        cca([x, y], k=6)


def test_sif_weights_and_sentence_vectors_by_hand():
    # vocab: <exc> 0, <pad> 1, <eos> 2, w3, w4; sentences up to <eos>
    tokens = np.array([[3, 3, 4, 2, 1, 1], [0, 3, 2, 1, 1, 1]])
    w = sif_weights(tokens, 5, a=0.5)
    p = np.array([1, 0, 0, 3, 1]) / 5  # word frequencies before <eos>
    np.testing.assert_allclose(w, 0.5 / (0.5 + p))
    emb = np.arange(10, dtype=np.float64).reshape(5, 2)
    v = sentence_vectors(tokens, emb, w)
    want0 = (w[3] * emb[3] * 2 + w[4] * emb[4] + w[2] * emb[2]) / 4  # <eos> included, pads not
    want1 = (w[0] * emb[0] + w[3] * emb[3] + w[2] * emb[2]) / 3
    np.testing.assert_allclose(v, np.stack([want0, want1]))


def test_word_vectors_have_the_official_special_rows():
    vocab = ["<exc>", "<pad>", "<eos>", "a", "red", "bird", "blue"]
    rows = [[3, 4, 5, 2], [3, 6, 5, 2], [3, 4, 6, 5, 2]] * 20
    tokens = np.array([r + [1] * (8 - len(r)) for r in rows])
    emb = word_vectors(tokens, vocab, dim=8, epochs=2)
    assert emb.shape == (7, 8)
    np.testing.assert_array_equal(emb[:3], np.repeat([[-1.0], [0.0], [1.0]], 8, axis=1))
    assert np.isfinite(emb).all() and np.abs(emb[3:]).sum() > 0


def test_fit_store_load_and_score_the_embedded_text_set(tmp_path, embedded_text_data):
    import shutil

    from mvae_dist.eval.metrics import read_pairs

    url = str(tmp_path / "et")
    shutil.copytree(embedded_text_data, url)  # the scorers are written beside the data
    entry = fit_and_store(url, k=10, n_fit=2000, dim=30, epochs=3)
    assert entry["version"] == 1 and entry["image"] == "mnist" and entry["text"] == "caption"
    index = json.loads((tmp_path / "et" / "cca" / "index.json").read_text())
    assert index["versions"][0]["sha256"] == entry["sha256"]
    scorer = load_cca_scorer(url)
    assert 0.5 < float(scorer.correlations[0]) <= 1.0 + 1e-9
    test = read_pairs(url, "test", 800, seed=0)
    mnist, caption = test.xs[0], test.xs[2]
    matched = scorer.coherence(mnist, caption)
    perm = torch.randperm(len(caption), generator=torch.Generator().manual_seed(0))
    shuffled = scorer.coherence(mnist, caption[perm])
    assert matched > shuffled + 0.2  # the CCA relates a digit to its own caption
    assert fit_and_store(url, k=5, n_fit=500, dim=10, epochs=1)["version"] == 2
    (tmp_path / "et" / "cca" / "v2" / "cca.pt").write_bytes(b"corrupt")
    with pytest.raises(DataError, match="sha256 does not match"):
        load_cca_scorer(url)
    assert load_cca_scorer(url, version=1).correlations.numel() == 10


def test_evaluation_says_how_to_fit_a_missing_scorer_and_skips_sets_without_sentences(embedded_text_data,
                                                                                        small_data):
    from mvae_dist.config import RunConfig
    from mvae_dist.eval.evaluation import _add_cca
    from mvae_dist.eval.metrics import EvalReport
    from mvae_dist.models import build_model

    model = build_model({"name": "mmvae", "modalities": ["mnist", "svhn", "text:23"], "latent_dim": 4})
    for url, expect in ((embedded_text_data, True), (small_data, False)):
        report = EvalReport()
        _add_cca(report, model, RunConfig.build({"data": {"url": url}}), None, seeds=1)
        assert not report.values
        if expect:
            hint = f"no CCA scorer for this data set; fit one with mvae-dist cca fit --data {url}"
            assert report.not_applicable == {"cca_coherence": hint}
        else:
            assert report.not_applicable == {}
