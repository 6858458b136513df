"""Label propagation (paper §4.5): relatedness from PMI and the Siamese baseline.

Public API::

    choose_threshold(scores, related) -> float                       # max F1 on S_m
    relatedness_scores(pred, related) -> {precision, recall, f1, accuracy, n, n_pred_related, n_related}
    roc_auc(scores, related) -> float; average_precision(scores, related) -> float   # ranking only
    relatedness_report((cal_scores, cal_related), (pool_scores, pool_related) | None) -> dict
    ranking_report((cal_scores, cal_related), (pool_scores, pool_related)) -> dict | None
    score_pmi(model, batches, K, device="cpu", seed=0, *, progress=False) -> Scored
    train_siamese(url, split="sr", *, epochs=10, seed=0, storage_options=None, ...) -> SiameseModel
    siamese_scores(model, url, split, *, batch_size=256, storage_options=None) -> Scored
    siamese_baseline(url, *, train_split="sr", calibrate="sm", pool="fm", ...) -> SiameseResult

Scoring a whole pool on Ray workers (``mvae-dist propagate``) is a launcher:
``mvae_dist.launch.propagate.run_propagate``. Names resolve lazily: importing this package pulls
in neither Ray nor webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "choose_threshold": ".relatedness",
    "relatedness_scores": ".relatedness",
    "roc_auc": ".relatedness",
    "average_precision": ".relatedness",
    "relatedness_report": ".relatedness",
    "ranking_report": ".relatedness",
    "score_pmi": ".relatedness",
    "Scored": ".relatedness",
    "SiameseModel": ".siamese",
    "SiameseResult": ".siamese",
    "train_siamese": ".siamese",
    "siamese_scores": ".siamese",
    "siamese_baseline": ".siamese",
    "ShardScorer": ".scorer",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
