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

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...config import shipped_config
from ...data import make_loader, prepare
from ...data.manifest import open_manifest
from ...data.sources.street import RENDERER as STREET_RENDERER
from ...errors import ConfigError, DataError
from ...eval.cca import fit_and_store, load_cca_scorer, text_modalities
from ...eval.classifiers import list_classifier_versions, load_classifier_records, train_classifiers
from ...propagate import siamese_baseline
from ...propagate.relatedness import relatedness_report, score_pmi
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
    metric_key,
    open_study,
    run_arm,
    study_metrics,
    with_overrides,
)

#: importance samples per PMI estimate (the paper's K)
RELATEDNESS_K = 30
#: relatedness prediction by PMI (threshold on S_m, scored on F_m), as study table columns
PMI_COLUMNS = (("pmi_precision", "PMI precision"), ("pmi_recall", "PMI recall"), ("pmi_f1", "PMI F1"),
               ("pmi_auc", "PMI ROC-AUC"), ("pmi_best_f1", "PMI F1 at F_m's best threshold (bound)"))
#: the same at the threshold chosen on the held-out calibration split S_c (with calibration_fraction)
HELD_OUT_COLUMNS = (("pmi_sc_f1", "PMI F1, threshold on held-out S_c"),)
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
                data_options: dict | None = None, calibration_fraction: float | None = None) -> str:
    """Build (or reuse) ``dataset`` (embedded or embedded-text) at ``<root>/data/...`` -> its URL.
    data_options: more ``prepare`` options (e.g. ``street_per_class`` for small test builds);
    calibration_fraction: hold that share of S_r out as the calibration split "sc"."""

    study_config(dataset)  # a known data set
    name = (f"{dataset}-{STREET_RENDERER}-dm{dm}-f{fraction:g}" + (f"-sr{sr_fraction:g}" if sr_fraction
                                                                    else "")
            + (f"-c{calibration_fraction:g}" if calibration_fraction else ""))
    url = str(Path(root).resolve() / "data" / name)
    opts: dict[str, Any] = {"dm": dm, "shard_size": 500, **(data_options or {})}
    if sr_fraction:
        opts["sr_fraction"] = sr_fraction
    if calibration_fraction:
        opts["calibration_fraction"] = calibration_fraction
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


def _check_arms(arms: Sequence[str]) -> None:
    unknown = [a for a in arms if a not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown arm {unknown[0]!r}; choose from {', '.join(OBJECTIVES)}")


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
    _check_arms(arms)
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
def relatedness_f1(model: Any, url: str, *, K: int, max_pairs: int, seed: int = 0,
                   held_out: bool = False, storage_options: dict | None = None) -> dict[str, float]:
    """PMI relatedness prediction on F_m (<= max_pairs pairs of each split) with the threshold
    chosen on S_m (the paper's protocol) -> {pmi_threshold, pmi_precision, pmi_recall, pmi_f1
    (at that threshold), pmi_auc, pmi_ap, pmi_best_f1 (F1 at F_m's own best threshold: an upper
    bound), pmi_cal_auc, pmi_cal_f1 (on S_m)}; held_out: also the same with the threshold chosen
    on the held-out calibration split S_c, as pmi_sc_{threshold, precision, recall, f1, cal_auc}."""

    def scored(split: str):
        loader = make_loader(url, split, 128, shuffle=False, drop_last=False, storage_options=storage_options)
        return score_pmi(model, _take(loader, max_pairs), K=K, seed=seed)[:2]

    fm = scored("fm")
    rep = relatedness_report(scored("sm"), fm)
    out = {"pmi_threshold": float(rep["threshold"]), **{f"pmi_{k}": float(rep[k]) for k in
           ("precision", "recall", "f1", "auc", "ap", "best_f1", "cal_auc", "cal_f1")}}
    if held_out:
        sc = relatedness_report(scored("sc"), fm)
        out.update({f"pmi_sc_{k}": float(sc[k])
                    for k in ("threshold", "precision", "recall", "f1", "cal_auc")})
    return out


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
                   pmi_K: int = RELATEDNESS_K, dataset: str = "embedded",
                   calibration_fraction: float | None = None, train_on: str = "train") -> Path:
    """cI-MMVAE at each gamma, with the baseline as a reference line: generation quality and PMI F1.
    fraction: train on this share of each modality (cut before pairing), as data-efficiency does;
    pmi_K: IWAE samples per log-likelihood in the PMI estimate; calibration_fraction: hold that
    share of S_r out as S_c and report F1 at S_c's threshold beside S_m's; train_on: "train" (all
    related pairs: F_m's related pairs were trained on) or "sr" (S_r only: F_m is held out)."""
    _check_gammas(gammas)
    _check_fractions([fraction])
    if train_on not in ("train", "sr"):
        raise ConfigError(f"--train-on must be train or sr, got {train_on!r}")
    default = study_config(dataset)  # a known data set, before anything starts
    study = open_study("gamma", config or default, overrides, root=root,
                       tracking_uri=tracking_uri, seeds=seeds, ray_address=ray_address,
                       train_seeds=train_seeds,
                       params={"gammas": list(gammas), "dm": dm, "sr_fraction": sr_fraction,
                               "fraction": fraction, "pmi_K": pmi_K, "dataset": dataset,
                               "calibration_fraction": calibration_fraction, "train_on": train_on})
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, fraction=fraction, dm=dm, sr_fraction=sr_fraction,
                          data_options=data_options, calibration_fraction=calibration_fraction)
        # the coherences are scored by classifiers of the whole training set (as data-efficiency's)
        full = url if fraction == 1 else ensure_data(root, dataset=dataset, dm=dm, data_options=data_options)
        clfs = ensure_classifiers(full)
        arms = [("baseline", None), *(("cI", g) for g in gammas)]
        for seed in range(train_seeds):
            for arm, g in arms:
                over = {**OBJECTIVES[arm], "data.url": url, "eval.classifiers": full,
                        "data.train_split": train_on}
                if g is not None:
                    over["objective.gamma"] = g
                row = run_arm(study, arm if g is None else f"cI gamma={g:g}", over,
                              settings={"objective": arm, "gamma": g}, classifiers=clfs, seed=seed)
                row.update(_relatedness_of(study, row, url, relatedness_pairs, K=pmi_K,
                                           held_out=calibration_fraction is not None))
        failed = False
    finally:
        base = next((r for r in study.rows if r["objective"] == "baseline"), {})
        rows = [r for r in study.rows if r["objective"] == "cI"]
        keys = [k for k, _ in metric_columns(study.rows)] + ["pmi_f1", "pmi_auc", "pmi_best_f1"]
        table = _summary(study, ["objective", "gamma"], ["objective", "gamma"],
                         PMI_COLUMNS + (HELD_OUT_COLUMNS if calibration_fraction is not None else ()))
        plots = {f"{k}_vs_gamma": line_plot(rows, "gamma", k, "objective", title=k, log_x=True,
                                            reference=base.get(k, math.nan), reference_label="MMVAE")
                 for k in keys if any(k in r for r in rows)}
        out = finish_study(study, table, plots, failed=failed)
    print(table)
    print(f"results: {out}")
    return out


def _relatedness_of(study: Study, row: dict, url: str, max_pairs: int, *, K: int,
                    held_out: bool = False) -> dict[str, float]:

    trained = load_trained(run_id=row["run_id"], tracking_uri=study.tracking_uri)
    rel = relatedness_f1(trained.model, url, K=K, max_pairs=max_pairs,
                         seed=trained.config.train.seed, held_out=held_out)
    t = Tracker(study.tracking_uri, study.base.tracking.experiment)
    t.attach(row["run_id"])
    t.log_metrics({f"eval/{k}": v for k, v in rel.items()}, step=max(trained.step, 0))
    return rel


# ------------------------------------------------------------------------------ label propagation
def _compared(compared: dict[str, dict]) -> dict[str, float]:
    """{split: report} of thresholds chosen elsewhere -> flat row keys ``f1_<split>`` etc."""
    return {f"{k}_{split}": float(rep[k]) for split, rep in compared.items()
            for k in ("f1", "precision", "recall", "threshold")}


def _propagation_round(study: Study, url: str, clfs: Any, arms: Sequence[str], pct: str,
                       relatedness: list[dict[str, Any]], *, workers: int, K: int,
                       ray_address: str | None, seed: int, held_out: bool = False,
                       siamese_kw: dict[str, Any] | None = None) -> None:
    """One training seed of section 4.5: the Siamese baseline, MMVAE on F_r, and per arm: train
    on S_r, propagate by PMI, retrain on S_r + found. Appends to ``relatedness`` and study.runs.
    held_out: thresholds are chosen on the held-out S_c (and what S_m's would give is reported
    beside, as ``f1_sm`` / ``precision_sm`` / ``recall_sm``); else on S_m, as the paper does.
    siamese_kw: the Siamese network's training settings (train_siamese keywords)."""

    calibrate, compare = ("sc", ("sm",)) if held_out else ("sm", ())
    print(f"== label-propagation: Siamese baseline on S_r ({pct})", flush=True)
    sia = siamese_baseline(url, seed=study.base.train.seed + seed, calibrate=calibrate,
                           compare_calibrations=compare, **(siamese_kw or {}))
    relatedness.append({"arm": "Siamese", "predictor": "Siamese", **(sia.pool or {}), **(sia.ranking or {}),
                        **_compared(sia.compared), "threshold": sia.threshold})
    run_arm(study, "MMVAE on F_r", {**OBJECTIVES["baseline"], "data.url": url, "eval.classifiers": url},
            settings={"objective": "baseline", "stage": "F_r (all related)"}, classifiers=clfs, seed=seed)
    for arm in arms:
        on_sr = {**OBJECTIVES[arm], "data.url": url, "data.train_split": "sr", "eval.classifiers": url}
        row = run_arm(study, f"{arm} on S_r", on_sr,
                      settings={"objective": arm, "stage": f"S_r ({pct})"}, classifiers=clfs, seed=seed)
        out = str(Path(study.out_dir.parent) / "propagated" / f"{arm}-s{seed}-{study.stamp}")
        print(f"== label-propagation: PMI propagation with {arm} -> {out}", flush=True)
        prop = run_propagate(run_id=row["run_id"], data=url, pool="fm", calibrate=calibrate, out=out,
                             compare_calibrations=compare, workers=workers, K=K,
                             tracking_uri=study.tracking_uri, ray_address=ray_address, extra_train=("sr",),
                             copy_splits=("test",), progress=False)
        for line in prop.lines():
            print("   " + line, flush=True)
        predictor = f"{arm}-MMVAE PMI"
        relatedness.append({"arm": predictor, "predictor": predictor, **prop.scores, **(prop.ranking or {}),
                            **_compared(prop.compared), "threshold": prop.threshold})
        row.update({f"pmi_{k}": prop.scores[k] for k in ("precision", "recall", "f1")})
        row.update({f"pmi_{k}": (prop.ranking or {}).get(k, math.nan) for k in ("auc", "best_f1")})
        # scored by the source set's stored scorers (classifiers, CCA): the propagated set has none
        run_arm(study, f"{arm} on S_r + found", {**OBJECTIVES[arm], "data.url": out, "eval.classifiers": url},
                settings={"objective": arm, "stage": f"S_r ({pct}) + propagated"}, classifiers=clfs,
                seed=seed)



def label_propagation(config: str | None = None, overrides: Sequence[str] = (), *, sr_fraction: float = 0.1,
                      arms: Sequence[str] = ("baseline", "cI", "cC"), dm: int = 5, root: str = "experiments",
                      tracking_uri: str | None = None, seeds: int = 1, workers: int = 2,
                      K: int = RELATEDNESS_K, ray_address: str | None = None,
                      data_options: dict | None = None, train_seeds: int = 1,
                      dataset: str = "embedded", calibration_fraction: float | None = None,
                      siamese: dict[str, Any] | None = None) -> Path:
    """Section 4.5: train on S_r, choose the PMI threshold on S_m, classify F_m, add the pairs
    found related to S_r, retrain; the Siamese baseline on the same S_r; MMVAE on all of F_r as
    the reference. Reports relatedness precision / recall / F1, ROC-AUC and average precision,
    and the metrics before and after, over ``train_seeds`` repetitions of the whole procedure.
    calibration_fraction: hold that share of S_r out of training as S_c and choose every threshold
    there (F1 at S_m's threshold, the paper's protocol, is reported beside). siamese: the Siamese
    network's training settings (train_siamese keywords, e.g. the setting ``experiment
    siamese-tune`` chose; default 10 epochs), logged as the study's ``siamese`` param."""
    if not 0 < sr_fraction < 1:
        raise ConfigError(f"--sr-fraction must be in (0, 1), got {sr_fraction}")
    _check_arms(arms)
    siamese_kw = {"epochs": 10, **(siamese or {})}
    default = study_config(dataset)  # a known data set, before anything starts
    study = open_study("label-propagation", config or default, overrides, root=root,
                       tracking_uri=tracking_uri, seeds=seeds, ray_address=ray_address,
                       train_seeds=train_seeds,
                       params={"sr_fraction": sr_fraction, "arms": list(arms), "dm": dm, "K": K,
                               "dataset": dataset, "calibration_fraction": calibration_fraction,
                               "siamese": json.dumps(siamese_kw)})
    relatedness: list[dict[str, Any]] = []
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, dm=dm, sr_fraction=sr_fraction, data_options=data_options,
                          calibration_fraction=calibration_fraction)
        clfs = ensure_classifiers(url)
        pct = f"{sr_fraction * 100:g}%"
        for seed in range(train_seeds):
            _propagation_round(study, url, clfs, arms, pct, relatedness, workers=workers, K=K,
                               ray_address=ray_address, seed=seed, held_out=calibration_fraction is not None,
                               siamese_kw=siamese_kw)
        failed = False
    finally:
        table = _summary(study, ["objective", "stage"], ["objective", "trained on"], PMI_COLUMNS)
        cal = "S_c (held out)" if calibration_fraction is not None else "S_m"
        rel_keys = ["predictor", "precision", "recall", "f1", "auc", "ap", "best_f1", "cal_auc",
                    "n_pred_related", "n"]
        rel_heads = ["predictor of relatedness on F_m", "precision", "recall", f"F1 (threshold on {cal})",
                     "ROC-AUC", "average precision", "F1 at F_m's best threshold (bound)",
                     f"ROC-AUC on {cal}", "predicted related", "pairs"]
        if calibration_fraction is not None:
            rel_keys.insert(4, "f1_sm")
            rel_heads.insert(4, "F1 (threshold on S_m, the paper's)")
        rel_rows = aggregate_seeds(relatedness)
        rel_table = markdown_table(rel_rows, rel_keys, rel_heads)
        rel_metrics = {f"relatedness/{k}": v for k, v in study_metrics(rel_rows).items()}
        out_dir = finish_study(study, table + "\n" + rel_table, {}, extra={"relatedness": relatedness},
                               failed=failed, metrics=rel_metrics)
    print(rel_table)
    print(table)
    print(f"results: {out_dir}")
    return out_dir


# ------------------------------------------------------------------------ relatedness curves
#: the curves' relatedness keys -> their titles (pmi_sc_f1 only with a held-out S_c)
CURVE_PLOTS = {"pmi_auc": "ROC-AUC of the PMI on F_m (held out)",
               "pmi_sc_f1": "F1 on F_m, threshold chosen on held-out S_c",
               "pmi_f1": "F1 on F_m, threshold chosen on S_m (the paper's)",
               "pmi_best_f1": "F1 on F_m at its own best threshold (bound)"}
#: the Siamese network's value drawn as the reference line of each curve
_SIAMESE_REF = {"pmi_auc": "auc", "pmi_sc_f1": "f1", "pmi_f1": "f1_sm", "pmi_best_f1": "best_f1"}


def relatedness_curves(config: str | None = None, overrides: Sequence[str] = (), *,
                       arms: Sequence[str] = ("baseline", "cI"), steps: int = 3000, eval_every: int = 250,
                       pairs: int = 2000, pmi_K: int = 10, dm: int = 5, sr_fraction: float = 0.1,
                       calibration_fraction: float = 0.2, root: str = "experiments",
                       tracking_uri: str | None = None, train_seeds: int = 1, siamese_epochs: int = 10,
                       dataset: str = "embedded", threads: int | None = None,
                       data_options: dict | None = None, progress: bool = True,
                       siamese: dict[str, Any] | None = None) -> Path:
    """Held-out relatedness against training steps (issue: relating by contrasting): each arm
    trained on S_r in one process (``bench learn``, no Ray), evaluated every ``eval_every`` steps
    by the PMI's ROC-AUC and F1 on F_m (``pairs`` pairs, IWAE with ``pmi_K``) at thresholds chosen
    on the held-out S_c and on S_m; the Siamese network trained on the same S_r and calibrated on
    S_c as the reference line. Per-step metrics go to the study's MLflow run (``<arm> seed<k>/<key>``
    at each step: MLflow's charts draw the curves); its table reports each arm at the step chosen
    on S_c and at its last step; plots and rows also go to ``<root>/relatedness-curve-<time>/``.
    siamese: the Siamese network's training settings (train_siamese keywords, e.g. the setting
    ``experiment siamese-tune`` chose; its ``epochs`` wins over ``siamese_epochs``)."""
    import time

    from .curve import learning_curve

    _check_arms(arms)
    siamese_kw = {"epochs": siamese_epochs, **(siamese or {})}
    if not 0 < calibration_fraction < 1:
        raise ConfigError(f"--calibration-fraction must be in (0, 1), got {calibration_fraction}")
    study = open_study("relatedness-curve", config or study_config(dataset), overrides, root=root,
                       tracking_uri=tracking_uri, train_seeds=train_seeds,
                       params={"arms": list(arms), "steps": steps, "eval_every": eval_every, "pairs": pairs,
                               "pmi_K": pmi_K, "dm": dm, "sr_fraction": sr_fraction,
                               "calibration_fraction": calibration_fraction, "dataset": dataset,
                               "siamese": json.dumps(siamese_kw)})
    tracker = Tracker(study.tracking_uri, study.base.tracking.experiment)
    tracker.attach(study.parent_run_id)
    curves: list[dict[str, Any]] = []
    siamese_rows: list[dict[str, Any]] = []
    failed = True
    try:
        url = ensure_data(root, dataset=dataset, dm=dm, sr_fraction=sr_fraction, data_options=data_options,
                          calibration_fraction=calibration_fraction, progress=progress)
        ensure_classifiers(url, progress=progress)
        for seed in range(train_seeds):
            print(f"== relatedness-curve: Siamese on S_r (seed {seed})", flush=True)
            t0 = time.perf_counter()
            sia = siamese_baseline(url, seed=study.base.train.seed + seed, calibrate="sc",
                                   compare_calibrations=("sm",), progress=progress, **siamese_kw)
            row = {"arm": "Siamese", "train_seed": seed, **(sia.pool or {}), **(sia.ranking or {}),
                   **_compared(sia.compared), "train_s": round(time.perf_counter() - t0, 1)}
            siamese_rows.append(row)
            print("   " + "; ".join(sia.lines()), flush=True)
            for arm in arms:
                cfg = with_overrides(study.base, {**OBJECTIVES[arm], "data.url": url, "eval.classifiers": url,
                                                  "data.train_split": "sr",  # F_m and S_c held out
                                                  "train.seed": study.base.train.seed + seed})
                label = arm if train_seeds == 1 else f"{arm} seed {seed}"
                print(f"== relatedness-curve: {label} on S_r, {steps} steps", flush=True)

                def on_row(r: dict[str, Any], arm: str = arm, seed: int = seed) -> None:
                    curves.append({"arm": arm, "train_seed": seed, **r})
                    keep = ("pmi_", "latent_acc", "coherence")
                    tracker.log_metrics({f"{metric_key(arm)} seed{seed}/{k}": v for k, v in r.items()
                                         if k.startswith(keep) and v is not None}, step=int(r["step"]))
                    print("   " + json.dumps({k: r[k] for k in ("step", "train_s", *CURVE_PLOTS) if k in r}),
                          flush=True)

                learning_curve(cfg, steps=steps, eval_every=eval_every, threads=threads, on_row=on_row,
                               relatedness=pairs, pmi_K=pmi_K)
        failed = False
    finally:
        sia_mean = aggregate_seeds(siamese_rows)[0] if siamese_rows else {}
        plots = {f"{k}_vs_step": _curve_plot(curves, k, title, sia_mean.get(_SIAMESE_REF[k]))
                 for k, title in CURVE_PLOTS.items() if any(k in r for r in curves)}
        picks = _curve_picks(curves)
        table = markdown_table(aggregate_seeds([*siamese_rows, *picks]),
                               ["arm", "step", "auc", "f1", "f1_sm", "best_f1"],
                               ["predictor", "step", "ROC-AUC on F_m", "F1, threshold on S_c",
                                "F1, threshold on S_m", "F1 at F_m's best threshold (bound)"])
        out = finish_study(study, table, plots,
                           extra={"curves": curves, "siamese": siamese_rows, "picks": picks}, failed=failed,
                           metrics={f"Siamese/{k}": v for k, v in sia_mean.items()
                                    if isinstance(v, float) and not math.isnan(v)})
    print(table)
    print(f"results: {out}")
    return out


def _curve_picks(curves: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two rows per arm and training seed, as the Siamese rows' keys (auc, f1 = at S_c's threshold,
    f1_sm, best_f1): the evaluation chosen on the held-out S_c (highest PMI ROC-AUC on S_c, the
    earlier step on ties: model choice that never looks at F_m), and the last one."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in curves):
        for seed in dict.fromkeys(r["train_seed"] for r in curves if r["arm"] == arm):
            rows = [r for r in curves if r["arm"] == arm and r["train_seed"] == seed]
            chosen = max(rows, key=lambda r: (r.get("pmi_sc_cal_auc", -1.0), -r["step"]))
            for label, r in ((f"{arm} (step chosen on S_c)", chosen), (f"{arm} (last step)", rows[-1])):
                out.append({"arm": label, "train_seed": seed, "step": r["step"], "auc": r.get("pmi_auc"),
                            "f1": r.get("pmi_sc_f1"), "f1_sm": r.get("pmi_f1"),
                            "best_f1": r.get("pmi_best_f1")})
    return out


def _curve_plot(rows: Sequence[dict[str, Any]], key: str, title: str, reference: float | None) -> Any:
    """``key`` against step, one line per arm (mean ± std over training seeds), the Siamese's value
    as the reference line."""
    by_step: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r.get(key) is not None:
            by_step.setdefault((r["arm"], int(r["step"])), []).append(float(r[key]))
    points = [{"arm": a, "step": s, key: float(np.mean(v)),  # sample std, as aggregate_seeds' tables
               f"{key}_std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
              for (a, s), v in by_step.items()]
    return line_plot(points, "step", key, "arm", title=title,
                     reference=math.nan if reference is None else reference, reference_label="Siamese")
