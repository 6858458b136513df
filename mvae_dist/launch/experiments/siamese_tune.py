"""The Siamese baseline tuned as carefully as the generative models, on the same data.

The paper's relatedness claim compares the PMI of a contrastive model with a Siamese network. A
fair comparison gives the Siamese network its strength: here a grid of its training settings
(epochs, learning rate, convolution width, embedding size) is trained on S_r, each with several
seeds, and the setting is chosen by the ROC-AUC on the held-out calibration split S_c: nothing
looks at F_m, whose numbers are only reported. ``mvae-dist experiment siamese-tune``.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...propagate import siamese_baseline
from ...tracking import Tracker
from .common import aggregate_seeds, finish_study, markdown_table, open_study

#: the settings tried by default: train_siamese's keyword -> values (its defaults: epochs 10,
#: lr 2e-3, width 8, embed_dim 16)
DEFAULT_GRID: dict[str, tuple[Any, ...]] = {"epochs": (10, 30), "lr": (1e-3, 3e-3), "width": (8, 16)}
#: the keywords a grid may set
TUNABLE = ("epochs", "lr", "width", "embed_dim", "batch_size", "margin", "shift")


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order -> [{keyword: value}]."""
    unknown = sorted(set(grid) - set(TUNABLE))
    if unknown:
        raise ConfigError(f"siamese grid: unknown setting(s) {', '.join(unknown)} "
                          f"(tunable: {', '.join(TUNABLE)})")
    if any(len(v) == 0 for v in grid.values()):
        raise ConfigError("siamese grid: every setting needs at least one value")
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(grid[k] for k in keys))]


def parse_grid(text: str) -> dict[str, tuple[Any, ...]]:
    """``"epochs=10,30;lr=1e-3,3e-3"`` -> {"epochs": (10, 30), "lr": (0.001, 0.003)}; a ConfigError
    names what is wrong."""
    grid: dict[str, tuple[Any, ...]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, values = part.partition("=")
        if not sep or not values.strip():
            raise ConfigError(f"siamese grid: {part!r} is not key=v1,v2,...")
        try:
            grid[key.strip()] = tuple(json.loads(v) for v in values.split(","))
        except ValueError:
            raise ConfigError(f"siamese grid: {part!r} has a value that is not a number") from None
    grid_points(grid)  # known keys, non-empty
    return grid


def parse_setting(text: str) -> dict[str, Any]:
    """One Siamese setting, ``"epochs=100;lr=0.003;width=8"`` (as siamese-tune's table prints
    its choice, with ``;``) -> train_siamese keywords; a ConfigError names what is wrong."""
    grid = parse_grid(text)
    several = [k for k, v in grid.items() if len(v) != 1]
    if several:
        raise ConfigError(f"siamese setting: one value each, not several for {', '.join(several)}")
    return {k: v[0] for k, v in grid.items()}


def label(point: Mapping[str, Any]) -> str:
    """A grid point as a short row label: ``epochs=10 lr=0.001 width=8``."""
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def choose(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The aggregated row (one per setting) with the highest mean ROC-AUC on S_c; on ties the
    earlier (cheaper, as the grid lists them) setting."""
    return max(enumerate(rows), key=lambda ir: (ir[1].get("cal_auc", -math.inf), -ir[0]))[1]


def siamese_tuning(config: str | None = None, overrides: Sequence[str] = (), *,
                   grid: Mapping[str, Sequence[Any]] | None = None, train_seeds: int = 3, dm: int = 5,
                   sr_fraction: float = 0.1, calibration_fraction: float = 0.2, root: str = "experiments",
                   dataset: str = "embedded", tracking_uri: str | None = None,
                   data_options: dict | None = None, progress: bool = True) -> Path:
    """Train the Siamese network on S_r at every grid point with ``train_seeds`` seeds, calibrate
    each on the held-out S_c, score F_m; choose the setting by the mean ROC-AUC on S_c. Prints and
    logs (parent MLflow run ``siamese-tune-<time>``) a table of every setting (S_c AUC, F_m AUC,
    F1 at S_c's threshold, F1 at F_m's best threshold) and the chosen one -> the results folder."""
    from .studies import ensure_data, study_config

    points = grid_points(grid or DEFAULT_GRID)
    if not 0 < calibration_fraction < 1:
        raise ConfigError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    study = open_study("siamese-tune", config or study_config(dataset), overrides, root=root,
                       tracking_uri=tracking_uri, train_seeds=train_seeds,
                       params={"grid": json.dumps({k: list(v) for k, v in (grid or DEFAULT_GRID).items()}),
                               "dm": dm, "sr_fraction": sr_fraction,
                               "calibration_fraction": calibration_fraction, "dataset": dataset})
    tracker = Tracker(study.tracking_uri, study.base.tracking.experiment)
    tracker.attach(study.parent_run_id)
    rows: list[dict[str, Any]] = []
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, dm=dm, sr_fraction=sr_fraction, data_options=data_options,
                          calibration_fraction=calibration_fraction, progress=progress)
        for i, point in enumerate(points):
            for seed in range(train_seeds):
                t0 = time.perf_counter()
                sia = siamese_baseline(url, seed=study.base.train.seed + seed, calibrate="sc", **point)
                row = {"arm": label(point), "train_seed": seed, **point, **(sia.pool or {}),
                       **(sia.ranking or {}), "train_s": round(time.perf_counter() - t0, 1)}
                rows.append(row)
                shown = ", ".join(f"{name} {row.get(k, math.nan):.3f}" for k, name in
                                  (("cal_auc", "S_c AUC"), ("auc", "F_m AUC"), ("f1", "F1")))
                print(f"   [{i + 1}/{len(points)}] {label(point)} seed {seed}: {shown} ({row['train_s']} s)",
                      flush=True)
                tracker.log_metrics({f"siamese {i}/{k}": float(row[k]) for k in ("cal_auc", "auc", "f1")
                                     if k in row}, step=seed)
        failed = False
    finally:
        summary = aggregate_seeds(rows)
        best = choose(summary) if summary else {}
        ordered = sorted(summary, key=lambda r: -r.get("cal_auc", -math.inf))
        table = markdown_table(ordered, ["arm", "cal_auc", "auc", "f1", "best_f1", "train_s"],
                               ["setting", "ROC-AUC on S_c (chooses)", "ROC-AUC on F_m",
                                "F1 on F_m, threshold on S_c", "F1 at F_m's best threshold (bound)",
                                "train s"])
        keys = ("cal_auc", "auc", "f1", "best_f1")
        metrics = {f"chosen/{k}": float(v) for k, v in best.items()
                   if k in keys or k.removesuffix("_std") in keys}
        chosen = {k: best[k] for k in ("arm", *TUNABLE) if k in best}
        out = finish_study(study, table, {}, extra={"rows": rows, "summary": summary, "chosen": chosen},
                           failed=failed, metrics=metrics)
    print(table)
    if best:
        print(f"chosen on S_c: {best['arm']} (F_m ROC-AUC {best.get('auc', math.nan):.3f}, "
              f"F1 {best.get('f1', math.nan):.3f})")
    print(f"results: {out}")
    return out


__all__ = ["DEFAULT_GRID", "TUNABLE", "choose", "grid_points", "label", "parse_grid", "parse_setting",
           "siamese_tuning"]
