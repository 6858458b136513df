"""The paper's studies on the embedded sets: data efficiency (Fig. 6), the gamma ablation (App. E),
label propagation (section 4.5), and the demo that ``make demo`` runs.

Each study runs on ``embedded`` (M = 2: MNIST, street numbers) or ``embedded-text`` (M = 3: the
same plus a SYNTHETIC caption of each MNIST digit; appendix C's objective, PMI of triples, the
Siamese baseline with a token net, CCA coherence). It builds the data sets it needs (``data
prepare`` is idempotent: an existing build with the same config is reused), makes sure the
scorers exist for the full data set (digit classifiers, and for a data set with sentences the
CCA scorer; trained once and stored beside the data), trains its arms on Ray Train as child
MLflow runs of one parent run, evaluates them, and logs a table and plots.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...config import shipped_config
from ...data import make_loader, prepare
from ...data.manifest import open_manifest
from ...data.sources.street import RENDERER as STREET_RENDERER
from ...errors import ConfigError, DataError
from ...eval.cca import fit_and_store, load_cca_scorer, text_modalities
from ...eval.classifiers import list_classifier_versions, load_classifier_records, train_classifiers
from ...propagate import siamese_baseline
from ...propagate.relatedness import choose_threshold, relatedness_scores, score_pmi
from ...tracking import Tracker
from ...trained import load_trained
from ..propagate import run_propagate
from .common import (
    OBJECTIVES,
    Study,
    aggregate_seeds,
    finish_study,
    line_plot,
    markdown_table,
    metric_columns,
    open_study,
    run_arm,
)

#: importance samples per PMI estimate (the paper's K)
RELATEDNESS_K = 30
#: relatedness prediction by PMI (threshold on S_m, scored on F_m), as study table columns
PMI_COLUMNS = (("pmi_precision", "PMI precision"), ("pmi_recall", "PMI recall"), ("pmi_f1", "PMI F1"))
#: the data sets the studies run on -> their default base config
STUDY_CONFIGS = {"embedded": "embedded/demo.yaml", "embedded-text": "embedded-text/study.yaml"}
DEFAULT_CONFIG = shipped_config(STUDY_CONFIGS["embedded"])


def study_config(dataset: str) -> str:
    """The shipped base config of the studies on ``dataset`` (a path)."""
    if dataset not in STUDY_CONFIGS:
        raise ConfigError(f"the studies run on {' or '.join(STUDY_CONFIGS)}, not {dataset!r}")
    return shipped_config(STUDY_CONFIGS[dataset])


def ensure_data(root: str, *, dataset: str = "embedded", fraction: float = 1.0, dm: int = 5,
                sr_fraction: float | None = None, progress: bool = True,
                data_options: dict | None = None) -> str:
    """Build (or reuse) ``dataset`` (embedded or embedded-text) at ``<root>/data/...`` -> its URL.
    data_options: more ``prepare`` options (e.g. ``street_per_class`` for small test builds)."""

    study_config(dataset)  # a known data set
    name = f"{dataset}-{STREET_RENDERER}-dm{dm}-f{fraction:g}" + (f"-sr{sr_fraction:g}" if sr_fraction
                                                                   else "")
    url = str(Path(root).resolve() / "data" / name)
    opts: dict[str, Any] = {"dm": dm, "shard_size": 500, **(data_options or {})}
    if sr_fraction:
        opts["sr_fraction"] = sr_fraction
    prepare(dataset, url, fraction=fraction, progress=progress, **opts)
    return url


def ensure_classifiers(url: str, progress: bool = True) -> dict:
    """The latest classifiers stored with the data set at ``url``, trained first if there are none;
    for a data set with a sentence modality also its CCA scorer, fit first if there is none."""

    if not list_classifier_versions(url):
        print(f"== training digit classifiers on {url}", flush=True)
        train_classifiers(url, progress=progress)
    records = load_classifier_records(url)
    for name, r in records.items():
        print(f"   classifier {name}: test accuracy {r.test_accuracy:.4f} (v{r.version})", flush=True)
    if text_modalities(open_manifest(url)):
        try:
            scorer = load_cca_scorer(url)
        except DataError:
            print(f"== fitting the CCA scorer on {url}", flush=True)
            fit_and_store(url)
            scorer = load_cca_scorer(url)
        print(f"   CCA scorer {scorer.image} / {scorer.text}: top correlation "
              f"{float(scorer.correlations[0]):.3f}", flush=True)
    return {name: r.model for name, r in records.items()}


def _check_gammas(gammas: Sequence[float]) -> None:
    bad = [g for g in gammas if not g > 1]
    if bad:
        raise ConfigError(f"gamma must be > 1 (the loss collapses to noise at gamma <= 1), got {bad[0]}")


def _check_fractions(fractions: Sequence[float]) -> None:
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"data fractions must be in (0, 1], got {bad[0]}")


def _summary(study: Study, keys: Sequence[str], headers: Sequence[str],
             extra: Sequence[tuple[str, str]] = ()) -> str:
    """The study's table: its settings, the evaluation's metric columns, then ``extra`` (key, header)."""
    cols = [*metric_columns(study.rows), *extra]
    return markdown_table(study.rows, [*keys, *(k for k, _ in cols)], [*headers, *(h for _, h in cols)])


# ------------------------------------------------------------------------------ data efficiency
def data_efficiency(config: str | None = None, overrides: Sequence[str] = (), *,
                    fractions: Sequence[float] = (0.1, 0.2, 0.5, 1.0),
                    arms: Sequence[str] = ("baseline", "cI", "cC"), dm: int = 5, root: str = "experiments",
                    tracking_uri: str | None = None, seeds: int = 1, ray_address: str | None = None,
                    data_options: dict | None = None, train_seeds: int = 1,
                    dataset: str = "embedded") -> Path:
    """MMVAE vs cI-MMVAE vs cC-MMVAE at n% of the data (each unimodal set cut before pairing),
    each arm trained ``train_seeds`` times (the table: mean ± std over them)."""
    _check_fractions(fractions)
    unknown = [a for a in arms if a not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    default = study_config(dataset)  # a known data set, before anything starts
    study = open_study("data-efficiency", config or default, overrides, root=root,
                       tracking_uri=tracking_uri, seeds=seeds, ray_address=ray_address,
                       train_seeds=train_seeds,
                       params={"fractions": list(fractions), "arms": list(arms), "dm": dm,
                               "dataset": dataset})
    failed = True
    try:
        full = ensure_data(root, dataset=dataset, dm=dm, data_options=data_options)
        clfs = ensure_classifiers(full)
        urls = {f: ensure_data(root, dataset=dataset, fraction=f, dm=dm, data_options=data_options)
                for f in fractions}
        for seed in range(train_seeds):  # seeds outermost: an interrupted study has whole tables
            for f, url in urls.items():
                for arm in arms:
                    run_arm(study, f"{arm}@{f * 100:g}%", {**OBJECTIVES[arm], "data.url": url,
                                                           "eval.classifiers": full},
                            settings={"objective": arm, "percent": f * 100}, classifiers=clfs, seed=seed)
        failed = False
    finally:
        table = _summary(study, ["objective", "percent"], ["objective", "data %"])
        plots = {f"{k}_vs_percent": line_plot(study.rows, "percent", k, "objective", title=h)
                 for k, h in metric_columns(study.rows)}
        out = finish_study(study, table, plots, failed=failed)
    print(table)
    print(f"results: {out}")
    return out


# ------------------------------------------------------------------------------ gamma ablation
def relatedness_f1(model: Any, url: str, *, K: int, max_pairs: int, seed: int = 0) -> dict[str, float]:
    """PMI relatedness prediction: threshold chosen on S_m, precision/recall/F1 on F_m (<= max_pairs)."""

    def scored(split: str):
        loader = make_loader(url, split, 128, shuffle=False, drop_last=False)
        return score_pmi(model, _take(loader, max_pairs), K=K, seed=seed)

    pmi_sm, rel_sm = scored("sm")[:2]
    threshold = choose_threshold(pmi_sm, rel_sm)
    pmi_fm, rel_fm = scored("fm")[:2]
    scores = relatedness_scores(pmi_fm >= threshold, rel_fm)
    return {"pmi_threshold": float(threshold), "pmi_precision": scores["precision"],
            "pmi_recall": scores["recall"], "pmi_f1": scores["f1"]}


def _take(loader: Any, max_pairs: int):
    n = 0
    for batch in loader:
        if n >= max_pairs:
            return
        yield batch
        n += batch["xs"][0].shape[0]


def gamma_ablation(config: str | None = None, overrides: Sequence[str] = (), *,
                   gammas: Sequence[float] = (1.1, 1.5, 2.0, 5.0, 10.0), dm: int = 5,
                   sr_fraction: float = 0.1, fraction: float = 1.0,
                   root: str = "experiments", tracking_uri: str | None = None, seeds: int = 1,
                   relatedness_pairs: int = 2000, ray_address: str | None = None,
                   data_options: dict | None = None, train_seeds: int = 1,
                   pmi_K: int = RELATEDNESS_K, dataset: str = "embedded") -> Path:
    """cI-MMVAE at each gamma, with the baseline as a reference line: generation quality and PMI F1.
    fraction: train on this share of each modality (cut before pairing), as data-efficiency does;
    pmi_K: IWAE samples per log-likelihood in the PMI estimate."""
    _check_gammas(gammas)
    _check_fractions([fraction])
    default = study_config(dataset)  # a known data set, before anything starts
    study = open_study("gamma", config or default, overrides, root=root,
                       tracking_uri=tracking_uri, seeds=seeds, ray_address=ray_address,
                       train_seeds=train_seeds,
                       params={"gammas": list(gammas), "dm": dm, "sr_fraction": sr_fraction,
                               "fraction": fraction, "pmi_K": pmi_K, "dataset": dataset})
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, fraction=fraction, dm=dm, sr_fraction=sr_fraction,
                          data_options=data_options)
        # the coherences are scored by classifiers of the whole training set (as data-efficiency's)
        full = url if fraction == 1 else ensure_data(root, dataset=dataset, dm=dm, data_options=data_options)
        clfs = ensure_classifiers(full)
        arms = [("baseline", None), *(("cI", g) for g in gammas)]
        for seed in range(train_seeds):
            for arm, g in arms:
                over = {**OBJECTIVES[arm], "data.url": url, "eval.classifiers": full}
                if g is not None:
                    over["objective.gamma"] = g
                row = run_arm(study, arm if g is None else f"cI gamma={g:g}", over,
                              settings={"objective": arm, "gamma": g}, classifiers=clfs, seed=seed)
                row.update(_relatedness_of(study, row, url, relatedness_pairs, K=pmi_K))
        failed = False
    finally:
        base = next((r for r in study.rows if r["objective"] == "baseline"), {})
        rows = [r for r in study.rows if r["objective"] == "cI"]
        keys = [k for k, _ in metric_columns(study.rows)] + ["pmi_f1"]
        table = _summary(study, ["objective", "gamma"], ["objective", "gamma"], PMI_COLUMNS)
        plots = {f"{k}_vs_gamma": line_plot(rows, "gamma", k, "objective", title=k, log_x=True,
                                            reference=base.get(k, math.nan), reference_label="MMVAE")
                 for k in keys if any(k in r for r in rows)}
        out = finish_study(study, table, plots, failed=failed)
    print(table)
    print(f"results: {out}")
    return out


def _relatedness_of(study: Study, row: dict, url: str, max_pairs: int, *, K: int) -> dict[str, float]:

    trained = load_trained(run_id=row["run_id"], tracking_uri=study.tracking_uri)
    rel = relatedness_f1(trained.model, url, K=K, max_pairs=max_pairs,
                         seed=trained.config.train.seed)
    t = Tracker(study.tracking_uri, study.base.tracking.experiment)
    t.attach(row["run_id"])
    t.log_metrics({f"eval/{k}": v for k, v in rel.items()}, step=max(trained.step, 0))
    return rel


# ------------------------------------------------------------------------------ label propagation
def _propagation_round(study: Study, url: str, clfs: Any, arms: Sequence[str], pct: str,
                       relatedness: list[dict[str, Any]], *, workers: int, K: int,
                       ray_address: str | None, seed: int) -> None:
    """One training seed of section 4.5: the Siamese baseline, MMVAE on F_r, and per arm: train
    on S_r, propagate by PMI, retrain on S_r + found. Appends to ``relatedness`` and study.runs."""

    print(f"== label-propagation: Siamese baseline on S_r ({pct})", flush=True)
    sia = siamese_baseline(url, seed=study.base.train.seed + seed)
    relatedness.append({"arm": "Siamese", "predictor": "Siamese", **(sia.pool or {}),
                        "threshold": sia.threshold})
    run_arm(study, "MMVAE on F_r", {**OBJECTIVES["baseline"], "data.url": url, "eval.classifiers": url},
            settings={"objective": "baseline", "stage": "F_r (all related)"}, classifiers=clfs, seed=seed)
    for arm in arms:
        on_sr = {**OBJECTIVES[arm], "data.url": url, "data.train_split": "sr", "eval.classifiers": url}
        row = run_arm(study, f"{arm} on S_r", on_sr,
                      settings={"objective": arm, "stage": f"S_r ({pct})"}, classifiers=clfs, seed=seed)
        out = str(Path(study.out_dir.parent) / "propagated" / f"{arm}-s{seed}-{study.stamp}")
        print(f"== label-propagation: PMI propagation with {arm} -> {out}", flush=True)
        prop = run_propagate(run_id=row["run_id"], data=url, pool="fm", calibrate="sm", out=out,
                             workers=workers, K=K, tracking_uri=study.tracking_uri,
                             ray_address=ray_address, extra_train=("sr",), copy_splits=("test",),
                             progress=False)
        for line in prop.lines():
            print("   " + line, flush=True)
        predictor = f"{arm}-MMVAE PMI"
        relatedness.append({"arm": predictor, "predictor": predictor, **prop.scores,
                            "threshold": prop.threshold})
        row.update({f"pmi_{k}": prop.scores[k] for k in ("precision", "recall", "f1")})
        # scored by the source set's stored scorers (classifiers, CCA): the propagated set has none
        run_arm(study, f"{arm} on S_r + found", {**OBJECTIVES[arm], "data.url": out, "eval.classifiers": url},
                settings={"objective": arm, "stage": f"S_r ({pct}) + propagated"}, classifiers=clfs,
                seed=seed)



def label_propagation(config: str | None = None, overrides: Sequence[str] = (), *, sr_fraction: float = 0.1,
                      arms: Sequence[str] = ("baseline", "cI", "cC"), dm: int = 5, root: str = "experiments",
                      tracking_uri: str | None = None, seeds: int = 1, workers: int = 2,
                      K: int = RELATEDNESS_K, ray_address: str | None = None,
                      data_options: dict | None = None, train_seeds: int = 1,
                      dataset: str = "embedded") -> Path:
    """Section 4.5: train on S_r, choose the PMI threshold on S_m, classify F_m, add the pairs
    found related to S_r, retrain; the Siamese baseline on the same S_r; MMVAE on all of F_r as
    the reference. Reports relatedness precision / recall / F1 and the metrics before and after,
    over ``train_seeds`` repetitions of the whole procedure."""
    if not 0 < sr_fraction < 1:
        raise ConfigError(f"--sr-fraction must be in (0, 1), got {sr_fraction}")
    unknown = [a for a in arms if a not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")
    default = study_config(dataset)  # a known data set, before anything starts
    study = open_study("label-propagation", config or default, overrides, root=root,
                       tracking_uri=tracking_uri, seeds=seeds, ray_address=ray_address,
                       train_seeds=train_seeds,
                       params={"sr_fraction": sr_fraction, "arms": list(arms), "dm": dm, "K": K,
                               "dataset": dataset})
    relatedness: list[dict[str, Any]] = []
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, dm=dm, sr_fraction=sr_fraction, data_options=data_options)
        clfs = ensure_classifiers(url)
        pct = f"{sr_fraction * 100:g}%"
        for seed in range(train_seeds):
            _propagation_round(study, url, clfs, arms, pct, relatedness, workers=workers, K=K,
                               ray_address=ray_address, seed=seed)
        failed = False
    finally:
        table = _summary(study, ["objective", "stage"], ["objective", "trained on"], PMI_COLUMNS)
        rel_keys = ["predictor", "precision", "recall", "f1", "n_pred_related", "n"]
        rel_table = markdown_table(aggregate_seeds(relatedness), rel_keys,
                                   ["predictor of relatedness on F_m", "precision", "recall", "F1",
                                    "predicted related", "pairs"])
        out_dir = finish_study(study, table + "\n" + rel_table, {}, extra={"relatedness": relatedness},
                               failed=failed)
    print(rel_table)
    print(table)
    print(f"results: {out_dir}")
    return out_dir
