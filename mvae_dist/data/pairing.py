"""Pairing as index maths: labels and a seed in, integer index arrays out. No images, no I/O.

Conventions: a multimodal data set of M modalities is described by one label array per
modality (``labels[m]``: int [N_m]); a set of pairs (tuples, for M > 2) is an int64 array
``pairs`` [P, M] whose column m indexes into modality m. Every function is a pure function of
its arguments: the same labels and seed give the same arrays on every machine.

The pairing follows the official MMVAE code (``make_mnist_svhn_idx`` /
``rand_match_on_idx``): per digit, n = min(count in each modality, max_d) instances of each
modality take part and, dm times over, the n instances of every modality are matched in an
independent random order. Every participating instance therefore appears in exactly dm pairs,
each with a random same-digit partner; max_d caps the participating instances per class, so a
class contributes at most dm * max_d pairs (MNIST-SVHN: about 1.7 M training pairs).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from mvae_dist.errors import ConfigError, DataError

DM = 30  # partners per instance (paper §4.1)
MAX_D = 10_000  # participating instances per class (official code)


def _rng(seed: int, purpose: str) -> np.random.Generator:
    # One independent stream per purpose, so that changing e.g. the S_r fraction does not
    # reshuffle the pairs themselves.
    return np.random.default_rng([int(seed), zlib.crc32(purpose.encode())])


def stratified_subset(labels: np.ndarray, fraction: float, seed: int, purpose: str = "subset") -> np.ndarray:
    """Sorted indices [n] of a class-stratified random ``fraction`` of ``labels`` [N].

    Per class, round(fraction * count) instances, at least one while fraction > 0.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction must be in (0, 1], got {fraction}")
    labels = np.asarray(labels)
    if fraction == 1.0:
        return np.arange(labels.size)
    rng = _rng(seed, purpose)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, int(round(fraction * idx.size)))
        keep.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def pair_by_label(
    labels: Sequence[np.ndarray], *, dm: int = DM, max_d: int = MAX_D, seed: int = 0
) -> np.ndarray:
    """Same-label tuples across M modalities -> pairs int64 [P, M], in random order.

    P = dm * sum_c min(max_d, min_m count_m(c)) over the classes present in every modality.
    The rows are shuffled so that consecutive pairs (and hence shards) mix classes.
    """
    if dm < 1 or max_d < 1:
        raise ConfigError(f"dm and max_d must be >= 1, got dm={dm}, max_d={max_d}")
    if len(labels) < 2:
        raise ConfigError(f"pairing needs at least 2 modalities, got {len(labels)}")
    labels = [np.asarray(lab) for lab in labels]
    rng = _rng(seed, "pair")
    common = sorted(set.intersection(*(set(np.unique(lab).tolist()) for lab in labels)))
    blocks = []
    for c in common:
        members = [np.flatnonzero(lab == c) for lab in labels]
        n = min(max_d, *(m.size for m in members))
        chosen = [rng.choice(m, size=n, replace=False) for m in members]  # [M][n]
        for _ in range(dm):
            blocks.append(np.stack([ch[rng.permutation(n)] for ch in chosen], axis=1))  # [n, M]
    if not blocks:
        raise DataError("no class occurs in every modality: nothing to pair")
    pairs = np.concatenate(blocks)  # [P, M], grouped by class
    return pairs[rng.permutation(len(pairs))]


def make_pairs(
    labels: Sequence[np.ndarray],
    *,
    fraction: float = 1.0,
    dm: int = DM,
    max_d: int = MAX_D,
    seed: int = 0,
) -> np.ndarray:
    """Take a stratified ``fraction`` of EACH unimodal set first, then pair -> int64 [P, M].

    Indices refer to the full unimodal arrays (not to the subsets). This is the paper's
    data-efficiency construction (§4.4): the pairs of a 20% set relate 20% of the MNIST
    images to 20% of the SVHN images, each still in dm pairs.
    """
    subsets = [stratified_subset(lab, fraction, seed, f"fraction-{m}") for m, lab in enumerate(labels)]
    local = pair_by_label(
        [np.asarray(lab)[s] for lab, s in zip(labels, subsets)], dm=dm, max_d=max_d, seed=seed
    )
    return np.stack([s[local[:, m]] for m, s in enumerate(subsets)], axis=1)


def pair_labels(pairs: np.ndarray, labels: Sequence[np.ndarray]) -> np.ndarray:
    """Labels of each member of each pair: int64 [P, M]."""
    return np.stack([np.asarray(lab)[pairs[:, m]] for m, lab in enumerate(labels)], axis=1)


def is_related(pairs: np.ndarray, labels: Sequence[np.ndarray]) -> np.ndarray:
    """Ground-truth relatedness bool [P]: every member carries the same digit."""
    pl = pair_labels(pairs, labels)
    return np.all(pl == pl[:, :1], axis=1)


def mix_pairs(
    pairs: np.ndarray,
    labels: Sequence[np.ndarray],
    *,
    unrelated_fraction: float = 0.5,
    seed: int = 0,
    purpose: str = "mix",
) -> tuple[np.ndarray, np.ndarray]:
    """A mixed pool from related pairs -> (pairs int64 [P, M], related bool [P]).

    round(unrelated_fraction * P) random rows keep their anchor (column 0) and get, in every
    other column m, a random instance of a DIFFERENT digit drawn from the instances that
    column m of ``pairs`` uses (a random unrelated match within the same pool); the other rows
    stay as they are. ``related`` is the ground truth, for evaluation only.
    """
    if not 0.0 <= unrelated_fraction <= 1.0:
        raise ConfigError(f"unrelated_fraction must be in [0, 1], got {unrelated_fraction}")
    rng = _rng(seed, purpose)
    out = pairs.copy()
    n_unrelated = int(round(unrelated_fraction * len(pairs)))
    rows = np.sort(rng.choice(len(pairs), size=n_unrelated, replace=False))
    anchor = np.asarray(labels[0])[pairs[rows, 0]]  # [U]
    for m in range(1, pairs.shape[1]):
        pool = np.unique(pairs[:, m])
        pool_lab = np.asarray(labels[m])[pool]
        order = np.argsort(pool_lab, kind="stable")
        pool, pool_lab = pool[order], pool_lab[order]
        classes, starts, counts = np.unique(pool_lab, return_index=True, return_counts=True)
        if classes.size < 2 and n_unrelated:
            raise DataError("cannot build unrelated pairs: the pool holds a single digit")
        # a uniformly random class other than the anchor's, then a uniform instance of it
        pos = np.searchsorted(classes, anchor)
        pos = np.where((pos < classes.size) & (classes[np.minimum(pos, classes.size - 1)] == anchor), pos, -1)
        shift = rng.integers(1, classes.size, size=rows.size)
        other = np.where(
            pos >= 0, (pos + shift) % classes.size, rng.integers(0, classes.size, size=rows.size)
        )
        pick = starts[other] + (rng.random(rows.size) * counts[other]).astype(np.int64)
        out[rows, m] = pool[pick]
    return out, is_related(out, labels)


def propagation_pools(
    pairs: np.ndarray,
    labels: Sequence[np.ndarray],
    *,
    sr_fraction: float,
    unrelated_fraction: float = 0.5,
    seed: int = 0,
    calibration_fraction: float | None = None,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Label-propagation pools (paper §4.5) from the full related pairs F_r [P, M].

    Returns {"sr": S_r, "fm": F_m, "sm": S_m} and, with ``calibration_fraction``, "sc": S_c, each
    (pairs [*, M], related bool [*]):
    - S_r: a random ``sr_fraction`` of the rows of F_r (all related), less S_c's share;
    - F_m: the other rows, mixed: ``unrelated_fraction`` of them re-matched at random;
    - S_m: S_r mixed the same way, matching only instances of S_r, for choosing the PMI
      threshold on known ground truth (the paper's protocol: pairs the model trained on);
    - S_c (held-out calibration): a random ``calibration_fraction`` of the S_r draw, kept out of
      S_r (never trained on) and mixed the same way, matching only its own instances: a
      threshold chosen there is chosen on pairs as new to the model as F_m's.
    Without ``calibration_fraction`` S_r, F_m and S_m are exactly as before it existed.
    """
    if not 0.0 < sr_fraction < 1.0:
        raise ConfigError(f"sr_fraction must be in (0, 1), got {sr_fraction}")
    if calibration_fraction is not None and not 0.0 < calibration_fraction < 1.0:
        raise ConfigError(f"calibration_fraction must be in (0, 1), got {calibration_fraction}")
    rng = _rng(seed, "sr")
    n_sr = max(1, int(round(sr_fraction * len(pairs))))
    perm = rng.permutation(len(pairs))
    sr, rest = pairs[np.sort(perm[:n_sr])], pairs[np.sort(perm[n_sr:])]
    out = {}
    if calibration_fraction is not None:
        n_c = int(round(calibration_fraction * len(sr)))
        if not 2 <= n_c <= len(sr) - 1:
            raise ConfigError(f"calibration_fraction {calibration_fraction} of {len(sr)} S_r pairs leaves "
                              f"{n_c} for calibration and {len(sr) - n_c} for training; both need pairs")
        cperm = _rng(seed, "sc").permutation(len(sr))
        sc, sr = sr[np.sort(cperm[:n_c])], sr[np.sort(cperm[n_c:])]
        out["sc"] = mix_pairs(sc, labels, unrelated_fraction=unrelated_fraction, seed=seed, purpose="sc")
    fm = mix_pairs(rest, labels, unrelated_fraction=unrelated_fraction, seed=seed, purpose="fm")
    sm = mix_pairs(sr, labels, unrelated_fraction=unrelated_fraction, seed=seed, purpose="sm")
    return {"sr": (sr, is_related(sr, labels)), "fm": fm, "sm": sm, **out}
