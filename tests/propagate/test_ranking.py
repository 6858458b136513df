"""Ranking measures of a relatedness score (ROC-AUC, average precision) and the report that sets
them beside the calibrated threshold: checked against brute force (and scikit-learn where it is
installed)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mvae_dist.propagate.relatedness import (
    average_precision,
    choose_threshold,
    relatedness_report,
    relatedness_scores,
    roc_auc,
)


def _auc_brute(s, r) -> float:
    """P(score of a related pair > score of an unrelated one), ties one half: every pair of pairs."""
    pos, neg = s[r], s[~r]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def _ap_brute(s, r) -> float:
    """sum over distinct thresholds t (high to low) of (recall(t) - recall(previous t)) * precision(t)."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(s.tolist()), reverse=True):
        pred = s >= t
        tp = float(np.sum(pred & r))
        recall = tp / r.sum()
        ap += (recall - prev_recall) * tp / pred.sum()
        prev_recall = recall
    return ap


def _case(seed: int, n: int = 60, ties: bool = False):
    rng = np.random.default_rng(seed)
    r = rng.random(n) < 0.4
    r[:2] = [True, False]
    s = rng.normal(size=n) + 1.2 * r
    if ties:
        s = np.round(s, 0)
    return s, r


@pytest.mark.parametrize("seed, ties", [(0, False), (1, True), (2, True), (3, False)])
def test_auc_and_ap_match_brute_force(seed, ties):
    s, r = _case(seed, ties=ties)
    assert roc_auc(s, r) == pytest.approx(_auc_brute(s, r), abs=1e-12)
    assert average_precision(s, r) == pytest.approx(_ap_brute(s, r), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_auc_and_ap_match_scikit_learn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    s, r = _case(seed, ties=seed > 0)
    assert roc_auc(s, r) == pytest.approx(metrics.roc_auc_score(r, s), abs=1e-12)
    assert average_precision(s, r) == pytest.approx(metrics.average_precision_score(r, s), abs=1e-12)


def test_closed_cases():
    r = np.array([True, True, False, False])
    assert roc_auc([4.0, 3.0, 2.0, 1.0], r) == 1.0 and average_precision([4.0, 3.0, 2.0, 1.0], r) == 1.0
    assert roc_auc([1.0, 2.0, 3.0, 4.0], r) == 0.0
    assert roc_auc([1.0, 1.0, 1.0, 1.0], r) == 0.5 and average_precision([1.0] * 4, r) == 0.5  # share related
    # one related pair ranked 2nd of 3: AP = 1/2
    assert average_precision([3.0, 2.0, 1.0], [False, True, False]) == 0.5
    with pytest.raises(ValueError, match="related and unrelated"):
        roc_auc([1.0, 2.0], [True, True])
    with pytest.raises(ValueError, match="needs a related pair"):
        average_precision([1.0, 2.0], [False, False])


def test_the_report_separates_ranking_from_calibration():
    """A pool whose scores rank perfectly but sit 10 below the calibration set's: AUC 1 and a best
    F1 of 1 (the upper bound) while the calibrated threshold predicts nothing related (F1 0)."""
    cs, cr = np.array([5.0, 4.0, 1.0, 0.0]), np.array([True, True, False, False])
    ps, pr = cs - 10.0, cr.copy()
    rep = relatedness_report((cs, cr), (ps, pr))
    assert rep["threshold"] == choose_threshold(cs, cr) == 2.5
    assert (rep["cal_auc"], rep["cal_ap"], rep["cal_f1"]) == (1.0, 1.0, 1.0)
    assert (rep["auc"], rep["ap"], rep["best_f1"]) == (1.0, 1.0, 1.0)
    assert rep["f1"] == 0.0 and rep["n_pred_related"] == 0
    assert rep["best_threshold"] == choose_threshold(ps, pr)
    s, r = _case(7)
    rep = relatedness_report((s[:30], r[:30]), (s[30:], r[30:]))
    t = choose_threshold(s[:30], r[:30])
    assert rep["f1"] == relatedness_scores(s[30:] >= t, r[30:])["f1"] <= rep["best_f1"]
    assert rep["auc"] == roc_auc(s[30:], r[30:]) and rep["cal_ap"] == average_precision(s[:30], r[:30])
    only = relatedness_report((s[:30], r[:30]), None)
    assert "auc" not in only and only["threshold"] == t
    assert math.isnan(relatedness_report(([1.0, 2.0], [True, True]), None)["cal_auc"])
