"""mvae_dist/data/pairing.py: invariants of the index maths."""

from __future__ import annotations

import numpy as np
import pytest

from mvae_dist.data import pairing
from mvae_dist.errors import ConfigError


def _labels(counts: list[int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.permutation(np.repeat(np.arange(len(counts)), counts))


def test_pairs_share_labels_and_each_instance_has_dm_partners():
    a, b = _labels([30, 50, 20], 1), _labels([40, 10, 25], 2)
    pairs = pairing.pair_by_label([a, b], dm=7, max_d=10_000, seed=0)
    assert pairs.dtype == np.int64 and pairs.shape[1] == 2
    assert np.all(a[pairs[:, 0]] == b[pairs[:, 1]])
    # per class n = min(count_a, count_b): 30, 10, 20 instances, each in exactly dm pairs
    assert len(pairs) == 7 * (30 + 10 + 20)
    for col, lab in ((0, a), (1, b)):
        ids, times = np.unique(pairs[:, col], return_counts=True)
        assert np.all(times == 7)
        assert np.array_equal(np.bincount(lab[ids], minlength=3), [30, 10, 20])


def test_max_d_caps_instances_per_class():
    a, b = _labels([50, 50]), _labels([60, 5])
    pairs = pairing.pair_by_label([a, b], dm=3, max_d=12, seed=0)
    per_class = np.bincount(a[pairs[:, 0]], minlength=2)
    assert per_class.tolist() == [3 * 12, 3 * 5]  # min(50, 60, 12) and min(50, 5, 12)


def test_pairs_are_shuffled_and_deterministic():
    a, b = _labels([100] * 10), _labels([100] * 10, 3)
    p1 = pairing.pair_by_label([a, b], dm=2, seed=5)
    assert np.array_equal(p1, pairing.pair_by_label([a, b], dm=2, seed=5))
    assert not np.array_equal(p1, pairing.pair_by_label([a, b], dm=2, seed=6))
    # classes are interleaved, not blocked: the first 50 rows cover several digits
    assert len(np.unique(a[p1[:50, 0]])) > 5


def test_three_modalities_pair_by_label():
    labs = [_labels([10, 20]), _labels([15, 8]), _labels([30, 30])]
    pairs = pairing.pair_by_label(labs, dm=4, seed=0)
    assert pairs.shape == (4 * (10 + 8), 3)
    pl = pairing.pair_labels(pairs, labs)
    assert np.all(pl == pl[:, :1])


def test_class_missing_from_one_modality_is_left_out():
    pairs = pairing.pair_by_label([np.array([0, 0, 1, 2]), np.array([0, 1, 1])], dm=2, seed=0)
    assert len(pairs) == 2 * (1 + 1)


def test_stratified_subset_sizes():
    lab = _labels([100, 33, 7])
    idx = pairing.stratified_subset(lab, 0.2, seed=0)
    assert np.bincount(lab[idx]).tolist() == [20, 7, 1]
    assert np.all(np.diff(idx) > 0)
    assert np.array_equal(pairing.stratified_subset(lab, 1.0, 0), np.arange(lab.size))
    with pytest.raises(ConfigError, match="fraction"):
        pairing.stratified_subset(lab, 0.0, 0)


def test_fraction_is_taken_from_each_unimodal_set_before_pairing():
    a, b = _labels([100] * 10, 1), _labels([200] * 10, 2)
    pairs = pairing.make_pairs([a, b], fraction=0.1, dm=30, seed=0)
    # 10% of each set first: 10 MNIST-like and 20 SVHN-like instances per class, so 10 pair
    # per class per round; subsampling AFTER pairing would touch nearly every instance.
    assert len(pairs) == 30 * 10 * 10
    assert np.all(a[pairs[:, 0]] == b[pairs[:, 1]])
    for col, lab in ((0, a), (1, b)):
        used = np.unique(pairs[:, col])
        assert np.bincount(lab[used]).tolist() == [10] * 10
    # indices refer to the full arrays: the modality-1 instances come from its own 10% subset
    subset_b = pairing.stratified_subset(b, 0.1, 0, "fraction-1")
    assert set(np.unique(pairs[:, 1])) <= set(subset_b.tolist())


def test_mix_pairs_flags_and_sizes():
    a, b = _labels([50] * 10, 1), _labels([50] * 10, 2)
    pairs = pairing.pair_by_label([a, b], dm=3, seed=0)
    mixed, related = pairing.mix_pairs(pairs, [a, b], unrelated_fraction=0.3, seed=1)
    n_unrel = round(0.3 * len(pairs))
    assert (~related).sum() == n_unrel
    assert np.array_equal(mixed[:, 0], pairs[:, 0])  # anchors kept
    assert np.array_equal(related, a[mixed[:, 0]] == b[mixed[:, 1]])
    assert np.array_equal(mixed[related], pairs[related])  # related rows untouched
    assert set(mixed[:, 1]) <= set(pairs[:, 1])  # re-matched within the pool


def test_propagation_pools():
    a, b = _labels([40] * 10, 1), _labels([40] * 10, 2)
    fr = pairing.pair_by_label([a, b], dm=5, seed=0)
    pools = pairing.propagation_pools(fr, [a, b], sr_fraction=0.1, unrelated_fraction=0.5, seed=0)
    (sr, sr_rel), (fm, fm_rel), (sm, sm_rel) = pools["sr"], pools["fm"], pools["sm"]
    n_sr = round(0.1 * len(fr))
    assert len(sr) == n_sr and sr_rel.all()
    assert len(fm) == len(fr) - n_sr and len(sm) == n_sr
    assert (~fm_rel).sum() == round(0.5 * len(fm)) and (~sm_rel).sum() == round(0.5 * n_sr)
    # S_r and F_m partition F_r (as multisets of rows; F_m's anchors are F_r's other anchors)
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert rows(np.concatenate([sr[:, :1], fm[:, :1]])) == rows(fr[:, :1])
    # S_m only matches instances of S_r
    assert set(sm[:, 0]) <= set(sr[:, 0]) and set(sm[:, 1]) <= set(sr[:, 1])
    with pytest.raises(ConfigError, match="sr_fraction"):
        pairing.propagation_pools(fr, [a, b], sr_fraction=1.0)


def test_a_held_out_calibration_split_leaves_the_paper_pools_alone_without_it():
    """S_c is carved out of the S_r draw (never trained on, mixed like S_m from its own instances);
    F_m is unchanged by it, and without it the pools are exactly the paper's."""
    a, b = _labels([40] * 10, 1), _labels([40] * 10, 2)
    fr = pairing.pair_by_label([a, b], dm=5, seed=0)
    paper = pairing.propagation_pools(fr, [a, b], sr_fraction=0.1, seed=0)
    held = pairing.propagation_pools(fr, [a, b], sr_fraction=0.1, seed=0, calibration_fraction=0.25)
    assert set(paper) == {"sr", "fm", "sm"} and set(held) == {"sr", "fm", "sm", "sc"}
    assert all(np.array_equal(x, y) for x, y in zip(paper["fm"], held["fm"]))  # F_m: the same pool
    (sr, sr_rel), (sc, sc_rel), (sm, _) = held["sr"], held["sc"], held["sm"]
    n_draw = round(0.1 * len(fr))
    assert len(sc) == round(0.25 * n_draw) and len(sr) == n_draw - len(sc) and sr_rel.all()
    assert (~sc_rel).sum() == round(0.5 * len(sc)) and len(sm) == len(sr)
    # S_r + S_c's anchors are the paper's S_r; S_c's related rows are disjoint from S_r
    rows = lambda x: sorted(map(tuple, x.tolist()))  # noqa: E731
    assert rows(np.concatenate([sr[:, :1], sc[:, :1]])) == rows(paper["sr"][0][:, :1])
    assert not set(map(tuple, sc[sc_rel].tolist())) & set(map(tuple, sr.tolist()))
    # S_m matches only instances of the S_r trained on; S_c only instances of the S_r draw
    assert set(sm[:, 0]) <= set(sr[:, 0]) and set(sm[:, 1]) <= set(sr[:, 1])
    assert set(sc[:, 1]) <= set(paper["sr"][0][:, 1])
    with pytest.raises(ConfigError, match="calibration_fraction must be in"):
        pairing.propagation_pools(fr, [a, b], sr_fraction=0.1, calibration_fraction=1.0)
    with pytest.raises(ConfigError, match="both need pairs"):
        pairing.propagation_pools(fr, [a, b], sr_fraction=0.1, calibration_fraction=0.001)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="dm"):
        pairing.pair_by_label([np.zeros(3), np.zeros(3)], dm=0)
    with pytest.raises(ConfigError, match="2 modalities"):
        pairing.pair_by_label([np.zeros(3)])
