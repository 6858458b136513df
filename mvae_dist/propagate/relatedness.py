"""Relatedness from scores: choose a threshold on S_m, measure predictions, score pairs by PMI.

Paper §4.5: a pair (x, y) is predicted related when its score (the model's PMI
I(x, y) = log p(x, y) - log p(x) - log p(y), or any other relatedness score) is at least a
threshold; the threshold maximises F1 on S_m, a mixed set whose ground truth is known.

Pure functions of arrays (numpy / torch); no Ray, no files.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..models.base import MultimodalVAE
from ..models.distributions import standard_noise
from ..objectives.joint import check_K, log_joint, log_marginal


def _as_numpy(values: Any, name: str, dtype: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(dtype, copy=False)


def _check_pair(scores: Any, related: Any) -> tuple[np.ndarray, np.ndarray]:
    s = _as_numpy(scores, "scores", np.float64)
    r = _as_numpy(related, "related", bool)
    if s.shape != r.shape:
        raise ValueError(f"scores {s.shape} and related {r.shape} differ in length")
    if s.size == 0:
        raise ValueError("cannot choose a threshold from no pairs")
    if np.isnan(s).any():
        raise ValueError(f"{int(np.isnan(s).sum())} scores are NaN")
    return s, r


def relatedness_scores(pred: Any, related: Any) -> dict[str, float | int]:
    """Precision, recall, F1 and accuracy of predicted relatedness against the ground truth.

    pred, related: bool [P]. Returns {precision, recall, f1, accuracy, n, n_pred_related,
    n_related}. Zero divisions give 0 (as scikit-learn's ``zero_division=0``): precision is 0
    when nothing is predicted related, recall is 0 when nothing is related, F1 is 0 when
    precision + recall is 0.
    """
    p = _as_numpy(pred, "pred", bool)
    r = _as_numpy(related, "related", bool)
    if p.shape != r.shape:
        raise ValueError(f"pred {p.shape} and related {r.shape} differ in length")
    tp = int(np.sum(p & r))
    n_pred, n_rel, n = int(p.sum()), int(r.sum()), int(p.size)
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_rel if n_rel else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    accuracy = float(np.mean(p == r)) if n else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "accuracy": accuracy,
            "n": n, "n_pred_related": n_pred, "n_related": n_rel}


def choose_threshold(scores: Any, related: Any) -> float:
    """The threshold t maximising F1 of the prediction ``score >= t`` on a calibration set.

    scores: float [P] (e.g. PMI on S_m); related: bool [P], the ground truth. Every distinct
    score s_k defines one candidate cut (predict related iff score >= s_k); predicting nothing
    related has F1 = 0 and is never chosen while anything is related.

    Ties: among cuts with the same maximal F1 the HIGHEST one is taken (fewest pairs predicted
    related: a false positive pollutes the retraining set, a miss only leaves a pair unused).
    The returned value lies midway between the chosen cut's lowest score and the next lower
    distinct score, so that it generalises symmetrically to unseen pairs; when the chosen cut
    includes every pair, it is the lowest score itself. Equal scores always fall on the same
    side. With no related pair at all, the threshold lies just above the highest score
    (nothing is predicted related; F1 is 0 for every cut). O(P log P).
    """
    s, r = _check_pair(scores, related)
    n_rel = int(r.sum())
    if n_rel == 0:
        return math.nextafter(float(s.max()), math.inf)
    order = np.argsort(-s, kind="stable")
    s_desc, r_desc = s[order], r[order]
    tp = np.cumsum(r_desc)
    # cut k predicts the top k+1 pairs; only the last position of each run of equal scores is a cut
    last = np.append(s_desc[1:] != s_desc[:-1], True)
    k = np.flatnonzero(last)
    f1 = 2.0 * tp[k] / ((k + 1) + n_rel)  # 2TP / (predicted + related)
    best = k[int(np.argmax(f1))]  # argmax takes the first maximum: the highest cut
    if best == len(s_desc) - 1:
        return float(s_desc[best])
    return float(0.5 * (s_desc[best] + s_desc[best + 1]))


# ------------------------------------------------------------------ ranking against calibration
def roc_auc(scores: Any, related: Any) -> float:
    """Area under the ROC curve of ``scores`` for ``related``: the probability that a random
    related pair scores above a random unrelated one, ties counting one half (Mann-Whitney U
    with average ranks). scores: float [P]; related: bool [P], both classes present. O(P log P).
    Independent of any threshold: how well the score RANKS pairs."""
    s, r = _check_pair(scores, related)
    n_pos, n_neg = int(r.sum()), int((~r).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC-AUC needs related and unrelated pairs, got {n_pos} and {n_neg}")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size, dtype=np.float64)
    s_sorted = s[order]
    # average rank (1-based) over each run of equal scores
    starts = np.flatnonzero(np.append(True, s_sorted[1:] != s_sorted[:-1]))
    ends = np.append(starts[1:], s.size)
    avg = 0.5 * (starts + ends - 1) + 1.0
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[r].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def average_precision(scores: Any, related: Any) -> float:
    """Average precision of ``scores`` for ``related``: sum over the distinct score cuts (highest
    first) of (recall gained) * (precision at that cut), as scikit-learn's
    ``average_precision_score``. scores: float [P]; related: bool [P] with a related pair. Chance
    level is the share of related pairs."""
    s, r = _check_pair(scores, related)
    n_rel = int(r.sum())
    if n_rel == 0:
        raise ValueError("average precision needs a related pair")
    order = np.argsort(-s, kind="stable")
    s_desc, r_desc = s[order], r[order]
    last = np.append(s_desc[1:] != s_desc[:-1], True)
    k = np.flatnonzero(last)
    tp = np.cumsum(r_desc)[k]
    precision = tp / (k + 1)
    recall = tp / n_rel
    gained = np.diff(np.append(0.0, recall))
    return float(np.sum(gained * precision))


#: the keys of relatedness_report that measure ranking (and its upper bound), not the calibrated cut
RANKING_KEYS = ("cal_auc", "cal_ap", "auc", "ap", "best_f1", "best_threshold")


def relatedness_report(calibration: tuple[Any, Any], pool: tuple[Any, Any] | None) -> dict[str, float | int]:
    """What a relatedness score does on a calibration set and on a pool, ranking apart from
    calibration. calibration, pool: (scores float [P], related bool [P]); pool may be None.

    -> {threshold (max F1 on calibration), cal_auc, cal_ap, cal_f1, cal_precision, cal_recall,
    and with a pool: auc, ap, f1, precision, recall, accuracy, n, n_pred_related, n_related (at
    the calibration threshold), best_f1 and best_threshold (the F1-maximising threshold on the
    pool itself: an UPPER BOUND that looks at the pool's ground truth, never used to predict)}.
    A calibration set with one class only has no AUC/AP (NaN)."""
    cs, cr = _check_pair(*calibration)
    threshold = choose_threshold(cs, cr)
    cal = relatedness_scores(cs >= threshold, cr)
    both = bool(cr.any() and (~cr).any())
    out: dict[str, float | int] = {
        "threshold": threshold,
        "cal_auc": roc_auc(cs, cr) if both else math.nan,
        "cal_ap": average_precision(cs, cr) if both else math.nan,
        **{f"cal_{k}": cal[k] for k in ("f1", "precision", "recall")},
    }
    if pool is not None:
        ps, pr = _check_pair(*pool)
        out.update(relatedness_scores(ps >= threshold, pr))
        pool_both = bool(pr.any() and (~pr).any())
        out["auc"] = roc_auc(ps, pr) if pool_both else math.nan
        out["ap"] = average_precision(ps, pr) if pool_both else math.nan
        best = choose_threshold(ps, pr)
        out["best_threshold"] = best
        out["best_f1"] = relatedness_scores(ps >= best, pr)["f1"]
    return out


def ranking_report(calibration: tuple[Any, Any], pool: tuple[Any, Any]) -> dict[str, float] | None:
    """The RANKING_KEYS of relatedness_report (floats), or None when the pool's ground truth is
    missing or holds one class only (no ROC-AUC then). calibration, pool: (scores [P], related [P])."""
    related = pool[1]
    if related is None:
        return None
    r = _as_numpy(related, "related", bool)
    if r.all() or not r.any():
        return None
    rep = relatedness_report(calibration, pool)
    return {k: float(rep[k]) for k in RANKING_KEYS}


# ------------------------------------------------------------------------ scoring pairs by PMI
class _ScoredFields(NamedTuple):
    scores: np.ndarray
    related: np.ndarray | None
    ids: np.ndarray
    labels: np.ndarray


class Scored(_ScoredFields):
    """Per-pair scores of a stream of batches, in stream order; unpacks as the 4-tuple
    ``(scores float64 [P], related bool [P] or None (batches without ground truth), ids int64
    [P, M], labels int64 [P, M])``; ``.keys`` holds the samples' keys (list of P strings).
    """

    keys: list[str]

    def __new__(cls, scores: np.ndarray, related: np.ndarray | None, ids: np.ndarray, labels: np.ndarray,
                keys: Iterable[str] = ()) -> Scored:
        self = super().__new__(cls, scores, related, ids, labels)
        self.keys = list(keys)
        return self


def key_seed(seed: int, key: str) -> int:
    """A per-pair seed from the run seed and the sample key (stable across processes)."""
    return zlib.crc32(f"{int(seed)}/{key}".encode())


def pair_noise(model: MultimodalVAE, K: int, keys: list[str], seed: int) -> tuple[Tensor, list[Tensor]]:
    """Noise for PMI estimates that depends only on (seed, key) of each pair.

    -> (eps of the joint pass, shape ``model.noise_shape(K, B)``; M tensors [K, B, L] for the
    marginals), on the CPU. The batch axis is the second last one in every noise shape, so a
    pair's noise, and hence its PMI estimate, is the same in any batch, on any worker, in any
    order. Drawn in the order ``eval.pmi`` draws: the joint pass, then each marginal.
    """
    joint, marg = [], [[] for _ in range(model.M)]
    for key in keys:
        g = torch.Generator().manual_seed(key_seed(seed, key))
        joint.append(standard_noise(model.family, model.noise_shape(K, 1), generator=g))
        for m in range(model.M):
            marg[m].append(standard_noise(model.family, (K, 1, model.latent_dim), generator=g))
    return torch.cat(joint, dim=-2), [torch.cat(e, dim=-2) for e in marg]


def pmi_with_noise(model: MultimodalVAE, xs: list[Tensor], K: int, eps: Tensor,
                   eps_marginal: list[Tensor]) -> Tensor:
    """PMI = log p(x_1..M) - Σ_m log p(x_m) by IWAE with the given noise: [B] (no gradients).

    The same estimate as ``mvae_dist.eval.pmi`` (joint posterior for the joint term, q(z|x_m)
    for each marginal), with the noise passed in instead of drawn.
    """
    with torch.no_grad():
        joint = log_joint(model, xs, K, estimator="iwae", eps=eps)
        return joint - sum(log_marginal(model, x, m, K, eps=e) for m, (x, e) in
                           enumerate(zip(xs, eps_marginal)))


def score_batches(score: Callable[[dict], Tensor], batches: Iterable[dict], *, total: int | None = None,
                  progress: bool = False, desc: str = "scoring pairs") -> Scored:
    """Apply ``score(batch) -> [B]`` to every batch dict (``xs``, optional ``related``, ``ids``,
    ``labels``, ``key``) and concatenate -> Scored. ``total``: pairs expected (progress bar)."""
    from tqdm.auto import tqdm

    out_s, out_r, out_i, out_l, keys = [], [], [], [], []
    has_related = True
    with tqdm(total=total, unit="pair", desc=desc, disable=not progress) as bar:
        for batch in batches:
            B = batch["xs"][0].shape[0]
            values = score(batch)
            if values.shape != (B,):
                raise ValueError(f"score returned shape {tuple(values.shape)}, expected ({B},)")
            out_s.append(values.detach().double().cpu().numpy())
            if "related" in batch and has_related:
                out_r.append(np.asarray(batch["related"], bool))
            else:
                has_related = False
            out_i.append(np.asarray(batch.get("ids", np.full((B, len(batch["xs"])), -1)), np.int64))
            out_l.append(np.asarray(batch.get("labels", np.full((B, len(batch["xs"])), -1)), np.int64))
            keys.extend(batch["key"])
            bar.update(B)
    if not out_s:
        return Scored(np.zeros(0), np.zeros(0, bool), np.zeros((0, 0), np.int64),
                      np.zeros((0, 0), np.int64), [])
    return Scored(np.concatenate(out_s), np.concatenate(out_r) if has_related else None,
                  np.concatenate(out_i), np.concatenate(out_l), keys)


def _with_keys(batches: Iterable[dict]) -> Iterable[dict]:
    """Batches with a ``key`` list; batches without one get their running index as key."""
    offset = 0
    for batch in batches:
        B = batch["xs"][0].shape[0]
        if "key" not in batch:
            batch = {**batch, "key": [str(offset + i) for i in range(B)]}
        offset += B
        yield batch


def score_pmi(model: MultimodalVAE, batches: Iterable[dict], K: int, device: str | torch.device = "cpu",
              seed: int = 0, *, progress: bool = False, total: int | None = None) -> Scored:
    """PMI of every pair of a loader (or any iterable of batch dicts) -> Scored.

    Unpacks as ``(pmi [P], related [P] | None, ids [P, M], labels [P, M])``; ``.keys``: the
    pairs' keys. K: importance samples per IWAE estimate. Each pair's noise is seeded by
    (``seed``, its key), so its PMI does not depend on the batch size, the order or the worker
    that scores it. No gradients; the model is put in eval mode.
    """
    check_K(K)
    model.eval()
    dev = torch.device(device)

    def score(batch: dict) -> Tensor:
        xs = [x.to(dev) for x in batch["xs"]]
        eps, eps_m = pair_noise(model, K, list(batch["key"]), seed)
        return pmi_with_noise(model, xs, K, eps.to(dev), [e.to(dev) for e in eps_m])

    return score_batches(score, _with_keys(batches), total=total, progress=progress, desc="PMI")
