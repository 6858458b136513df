"""What every study shares: a parent MLflow run, arms trained on Ray Train and evaluated, tables, plots.

An *arm* is one training run of a study (e.g. cI-MMVAE at 20% of the data): a RunConfig built
from the study's base config plus the arm's overrides, trained with ``train.driver.fit`` as a
child MLflow run of the study's parent run, then evaluated with ``evaluate.evaluate_and_log``
(the same code as ``mvae-dist evaluate``) into that child run. A study returns rows (one per arm:
its settings and flat metrics), logged to the parent run as ``results.json`` / ``results.md``
with plots, and written to ``<root>/<study>-<time>/`` as well.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...config import RunConfig, load_train_config
from ...errors import ConfigError
from ...eval.evaluation import evaluate_and_log
from ...eval.images import save_png
from ...plots import render
from ...tables import markdown_table as _markdown
from ...tracking import Tracker, default_tracking_uri
from ...train.driver import fit
from ...trained import load_trained

#: arms of the paper's comparisons: objective overrides
OBJECTIVES: dict[str, dict[str, Any]] = {
    "baseline": {"objective.name": "baseline"},
    "cI": {"objective.name": "contrastive", "objective.estimator": "iwae"},
    "cC": {"objective.name": "contrastive", "objective.estimator": "cubo"},
}

#: columns of the summary tables, when present: (metric key, header)
COLUMNS: list[tuple[str, str]] = [
    ("latent_acc", "latent acc"),
    ("coherence_cross", "cross coh."),
    ("coherence_joint", "joint coh."),
    ("coherence_synergy", "synergy coh."),
    ("log_joint", "log p(x,y)"),
]


def with_overrides(cfg: RunConfig, overrides: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with ``{"section.key": value}`` overrides applied and validated."""
    data = copy.deepcopy(cfg.to_dict())
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        data.setdefault(section, {})[name] = value
    return RunConfig.from_dict(data)


@dataclass
class Study:
    """A study in progress: its parent MLflow run and where its runs and outputs go.

    seeds: evaluation seeds per trained model; train_seeds: how many times each arm is trained
    (train.seed = base seed + 0, 1, ...). ``runs`` holds one row per trained model; ``rows``
    one per arm, over its training seeds (see ``aggregate_seeds``).
    """

    name: str
    base: RunConfig
    root: str
    tracking_uri: str
    parent_run_id: str
    stamp: str
    seeds: int = 1
    ray_address: str | None = None
    train_seeds: int = 1
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.root) / f"{self.name}-{self.stamp}"

    @property
    def rows(self) -> list[dict[str, Any]]:
        return aggregate_seeds(self.runs)


#: row keys that are not measurements: never averaged over training seeds
_NOT_AVERAGED = ("train_seed",)


def aggregate_seeds(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per arm (in first-seen order) from one row per trained model.

    An arm trained once keeps its row as it is (its ``_std`` keys: the spread over evaluation
    seeds). An arm trained with several seeds gets, for every numeric value, the mean over its
    seeds and ``key_std`` = their sample standard deviation (the spread over training seeds,
    replacing the evaluation seeds'); settings are equal across seeds, so they keep their value
    and a zero spread; text keeps the first seed's, and ``run_ids`` lists every seed's run.
    """
    groups: dict[Any, list[Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault(r["arm"], []).append(r)
    out = []
    for rs in groups.values():
        if len(rs) == 1:
            out.append(dict(rs[0]))
            continue
        row: dict[str, Any] = {"train_seeds": len(rs), "run_ids": [r.get("run_id") for r in rs]}
        for key in dict.fromkeys(k for r in rs for k in r):
            if key.endswith("_std") or key in _NOT_AVERAGED:
                continue
            vals = [r.get(key) for r in rs]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
                row[key] = float(np.mean(vals))
                row[f"{key}_std"] = float(np.std(vals, ddof=1))
            else:
                row[key] = vals[0]
        out.append(row)
    return out


def open_study(name: str, config: str | None, overrides: Sequence[str], *, root: str,
               tracking_uri: str | None, params: Mapping[str, Any], seeds: int = 1,
               ray_address: str | None = None, train_seeds: int = 1) -> Study:
    """Resolve the base config and open the parent MLflow run ``<name>-<time>``."""

    base = load_train_config(config, list(overrides))
    uri = tracking_uri or base.tracking.tracking_uri or default_tracking_uri()
    base = with_overrides(base, {"tracking.tracking_uri": uri})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    t = Tracker(uri, base.tracking.experiment)
    if train_seeds < 1:
        raise ConfigError(f"train_seeds must be >= 1, got {train_seeds}")
    parent = t.start(f"{name}-{stamp}", params={"study": name, **params, "train_seeds": train_seeds,
                                                "base": base.to_dict()},
                     tags={"study": name})  # stays RUNNING until finish_study ends it
    return Study(name, base, os.path.abspath(root), uri, parent, stamp, seeds, ray_address, train_seeds)


def run_arm(study: Study, arm: str, overrides: Mapping[str, Any], *, settings: Mapping[str, Any],
            classifiers: Any, evaluate: bool = True, seed: int = 0) -> dict[str, Any]:
    """Train one arm as a child run of the study (training seed ``seed``: train.seed = the base
    config's + seed), evaluate it -> its row (settings + metrics), one of ``study.runs``."""

    label = arm if study.train_seeds == 1 else f"{arm} seed {seed}"
    name = f"{study.name}-{label.replace(' ', '-')}-{study.stamp}"
    cfg = with_overrides(study.base, {**overrides, "train.name": name, "tracking.run_name": label,
                                      "train.seed": study.base.train.seed + seed,
                                      "train.storage_path": str(Path(study.root) / "runs")})
    print(f"== {study.name}: training {label} ({cfg.model.name}, {cfg.objective.name}"
          f"{'/' + cfg.objective.estimator if cfg.objective.name == 'contrastive' else ''}, "
          f"data {cfg.data.url}:{cfg.data.train_split})", flush=True)
    t0 = time.perf_counter()
    res = fit(cfg, ray_address=study.ray_address, parent_run_id=study.parent_run_id,
              tags={"study": study.name, "arm": arm, "train_seed": seed})
    row: dict[str, Any] = {"arm": arm, **settings, "train_seed": seed, "run_id": res.run_id,
                           "train_s": round(time.perf_counter() - t0, 1), "steps": res.metrics.get("step")}
    if evaluate:
        print(f"== {study.name}: evaluating {label}", flush=True)
        trained = load_trained(run_id=res.run_id, tracking_uri=study.tracking_uri)
        t = Tracker(study.tracking_uri, cfg.tracking.experiment)
        t.attach(res.run_id)
        flat, _ = evaluate_and_log(trained.model, cfg, tracker=t, step=max(trained.step, 0),
                                   classifiers=classifiers, seeds=study.seeds, ll_K=cfg.eval.ll_K,
                                   ll_n=cfg.eval.ll_n, storage_options=None, progress=False)
        row.update(flat)
    study.runs.append(row)
    return row


def markdown_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
                   headers: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` over ``keys``; means with their spread (``key_std``) as ``m ± s``."""
    return _markdown(list(headers or keys), ([_cell(r, k) for k in keys] for r in rows))


def _cell(row: Mapping[str, Any], key: str) -> str:
    v = row.get(key)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        if v == round(v, 2) and abs(v) < 1e6:  # a setting (10 %, gamma 1.5), not a measurement
            text = f"{v:g}"
        else:
            text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        std = row.get(f"{key}_std")
        if isinstance(std, float) and std > 0 and not math.isnan(std):
            text += f" ± {std:.3f}" if abs(std) < 100 else f" ± {std:.1f}"
        return text
    return str(v)


def metric_columns(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """The summary COLUMNS that some row has, then the CCA coherences of data sets with sentences
    (``cca_cross_<a>_to_<b>`` as "CCA a->b", ``cca_joint``)."""
    cols = [(k, h) for k, h in COLUMNS if any(k in r for r in rows)]
    keys = {k for r in rows for k in r}
    cross = sorted(k for k in keys if k.startswith("cca_cross_") and not k.endswith("_std"))
    cols += [(k, "CCA " + k[len("cca_cross_"):].replace("_to_", "->")) for k in cross]
    if "cca_joint" in keys:
        cols.append(("cca_joint", "CCA joint"))
    return cols


def line_plot(rows: Sequence[Mapping[str, Any]], x: str, y: str, by: str, *, title: str,
              reference: float | None = None, reference_label: str = "", log_x: bool = False) -> np.ndarray:
    """uint8 [H, W, 3]: ``y`` against ``x``, one line per value of ``by`` (± its spread)."""

    def draw(ax: Any) -> None:
        for group in dict.fromkeys(r[by] for r in rows):
            pts = sorted((r[x], r[y], r.get(f"{y}_std", 0.0)) for r in rows if r[by] == group and y in r
                         and r[y] is not None and not (isinstance(r[y], float) and math.isnan(r[y])))
            if pts:
                xs, ys, es = zip(*pts)
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=str(group))
        if reference is not None and not math.isnan(reference):
            ax.axhline(reference, color="tab:cyan", linestyle="--", label=reference_label)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.set_title(title)
        ax.legend(fontsize=8)

    return render(draw)


#: row keys that are settings or bookkeeping, not measurements (not logged as parent metrics)
_SETTINGS = ("train_seed", "train_seeds", "percent", "gamma", "steps", "train_s")


def metric_key(label: str) -> str:
    """An arm's label as an MLflow metric-key prefix (MLflow allows letters, digits, ``_-. /:``):
    ``"cI@20%"`` -> ``"cI 20pct"``, ``"cI gamma=1.1"`` -> ``"cI gamma1.1"``."""
    text = label.replace("%", "pct").replace("@", " ").replace("=", "")
    return re.sub(r"[^A-Za-z0-9_\-. /:]", "_", text).strip()


def study_metrics(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """The compared numbers of a study as the parent run's metrics, so MLflow's charts and compare
    view show them: ``<arm>/<metric>`` for every measurement of every arm (means over training
    seeds), ``<arm>/<metric>_std`` their spread when an arm was trained more than once."""
    out: dict[str, float] = {}
    for r in rows:
        several = int(r.get("train_seeds", 1)) > 1
        prefix = metric_key(str(r["arm"]))
        for k, v in r.items():
            base = k[:-4] if k.endswith("_std") else k
            if base in _SETTINGS or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if k.endswith("_std") and not several:
                continue
            if isinstance(v, float) and math.isnan(v):
                continue
            out[f"{prefix}/{k}"] = float(v)
    return out


def finish_study(study: Study, table: str, plots: Mapping[str, np.ndarray],
                 extra: Mapping[str, Any] | None = None, failed: bool = False,
                 metrics: Mapping[str, float] | None = None) -> Path:
    """Log results/plots to the parent run, close it, write the same files locally -> the folder.
    metrics: more parent-run metrics beside ``study_metrics(study.rows)``."""

    t = Tracker(study.tracking_uri, study.base.tracking.experiment)
    t.attach(study.parent_run_id)
    results = {"study": study.name, "rows": study.rows, "runs": study.runs, **(extra or {})}
    t.log_metrics({**study_metrics(study.rows), **(metrics or {})}, step=0)
    t.log_dict(results, "results.json")
    t.log_text(table, "results.md")
    for name, img in plots.items():
        t.log_image(img, f"plots/{name}.png")
    t.end("FAILED" if failed else "FINISHED")
    final = study.out_dir
    tmp = final.with_name(f".{final.name}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if plots:  # no empty plots/ folder for a study that draws none (the demo)
        (tmp / "plots").mkdir(exist_ok=True)
    (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (tmp / "results.md").write_text(table)
    for name, img in plots.items():
        save_png(img, tmp / "plots" / f"{name}.png")
    os.replace(tmp, final)
    return final
