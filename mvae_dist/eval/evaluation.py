"""Evaluate a model and log it to a run: what training (every ``train.eval_every`` epochs) and
``mvae-dist evaluate`` both do. Library code (no launcher imports): the paper's metrics
(``metrics.py``) with the digit classifiers (``classifiers.py``), the labelled image grids
(``images.py``), logged through a ``tracking.Tracker``.

MLflow metrics are ``eval/<name>`` (``logged_metrics``); the artifacts ``eval/metrics_<step>.json``
and ``eval/metrics_<step>.md`` (the table) and ``images/{reconstruction,cross_generation,
joint_generation}_<step>.png``; with a sentence modality also ``text/captions_<step>.md``
(generated sentences, ``captions.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import RunConfig
from ..errors import DataError
from ..models.base import MultimodalVAE


def load_eval_classifiers(cfg: RunConfig, storage_options: dict | None, *, required: bool,
                        device: str | torch.device = "cpu") -> dict[str, torch.nn.Module] | None:
    """The classifiers ``cfg.eval.classifiers`` names, or None ("none", or "auto" without a store
    when not ``required``). A missing store is a DataError naming the command that trains one."""
    from .classifiers import load_classifiers

    where = cfg.eval.classifiers
    if where == "none":
        return None
    url = scorer_store(cfg)
    try:
        return load_classifiers(url, storage_options=storage_options, device=device)
    except DataError:
        if required or where != "auto":
            raise
        return None


def scorer_store(cfg: RunConfig) -> str:
    """Where the stored scorers (digit classifiers, CCA scorer) are read from: the store
    ``eval.classifiers`` names, else (``auto`` / ``none``) the data set's own prefix."""
    where = cfg.eval.classifiers
    return cfg.data.url if where in ("auto", "none") else where


def metric_name(name: str) -> str:
    """MLflow key of an evaluation metric."""
    return f"eval/{name}"


def logged_metrics(flat: dict[str, float], seeds: int, ll_key: str) -> dict[str, float]:
    """The evaluation's MLflow metrics, each value once, as ``eval/<name>``: the likelihood as
    ``eval/log_joint`` only (its K and pair count are in ``eval/metrics_<step>.json``), no
    ``_std`` twin with one seed (it would be 0), and not the digit classifiers' own accuracy
    (``classifier_acc_*``: the same in every run; it stays in the JSON and the table)."""
    out = {}
    for k, v in flat.items():
        base = k[:-4] if k.endswith("_std") else k
        if base == ll_key or base.startswith("classifier_acc_") or (seeds == 1 and k.endswith("_std")):
            continue
        out[metric_name(k)] = v
    return out


def evaluate_and_log(model: MultimodalVAE, cfg: RunConfig, *, tracker: Any, step: int,
                     classifiers: dict[str, torch.nn.Module] | None, seeds: int, ll_K: int, ll_n: int,
                     storage_options: dict | None, device: str | torch.device | None = None,
                     progress: bool = False) -> tuple[dict[str, float], str]:
    """Evaluate ``model`` on ``cfg.data``'s test split, log everything to ``tracker`` at ``step``.

    -> (flat metrics {name: mean over seeds, name_std: spread}, the Markdown table). The
    likelihood is also given as ``log_joint`` (whatever its K). Without classifiers only the
    likelihood is computed (and the table says so).
    """
    from . import images
    from .metrics import EvalReport, evaluate_model, marginal_log_likelihood, read_pairs

    if classifiers:
        report = evaluate_model(model, cfg.data.url, classifiers, seeds=tuple(range(seeds)),
                                n_test=cfg.eval.n_test, n_train_latent=cfg.eval.n_latent_train,
                                n_ll=ll_n, K_ll=ll_K, storage_options=storage_options, progress=progress)
    else:
        report = EvalReport(settings={"model": type(model).__name__, "data": cfg.data.url, "K_ll": ll_K,
                                      "n_ll": ll_n, "seeds": list(range(seeds)), "classifiers": None})
        for seed in range(seeds):
            pairs = read_pairs(cfg.data.url, cfg.data.test_split, ll_n, seed=seed,
                               storage_options=storage_options)
            ll = marginal_log_likelihood(model, pairs.xs, ll_K, generator=torch.Generator().manual_seed(seed))
            report.values.setdefault(f"test_log_joint_K{ll_K}", []).append(float(ll.mean()))
        report.not_applicable["coherences"] = ("no digit classifiers for this data set; train them with "
                                               f"mvae-dist classifiers train --data {cfg.data.url}")
    _add_cca(report, model, cfg, storage_options, seeds)
    flat = report.metrics()
    ll_key = f"test_log_joint_K{ll_K}"
    if ll_key in flat:
        flat["log_joint"], flat["log_joint_std"] = flat[ll_key], flat.get(f"{ll_key}_std", 0.0)
    table = report.to_markdown()
    tracker.log_metrics(logged_metrics(flat, seeds, ll_key), step=step)
    tracker.log_dict(report.to_dict(), f"eval/metrics_{step:07d}.json")
    tracker.log_text(table, f"eval/metrics_{step:07d}.md")
    batch = _first_test_batch(cfg, storage_options)
    xs = [x.to(next(model.parameters()).device) for x in batch["xs"]]
    vocabs = _vocabs(cfg.data.url, storage_options)
    grids = images.readable_grids(model, xs, n=min(8, xs[0].shape[0]), n_joint=32, seed=cfg.train.seed,
                                  vocabs=vocabs)
    for name, img in grids.items():
        tracker.log_image(img, f"images/{name}_{step:07d}.png")
    if vocabs:
        from .captions import caption_report

        text = caption_report(model, xs, vocabs, labels=batch["labels"], seed=cfg.train.seed)
        tracker.log_text(text, f"text/captions_{step:07d}.md")
    return flat, table


def _add_cca(report: Any, model: MultimodalVAE, cfg: RunConfig, storage_options: dict | None,
             seeds: int) -> None:
    """CCA coherences (``cca.py``) into ``report`` for a data set with a sentence modality: with
    the stored CCA scorer of the store ``eval.classifiers`` names (another data set's prefix, as
    for the digit classifiers; else ``data.url``'s own), on the test pairs of each seed; without
    one, N/A saying how to fit it. Data sets without sentences are left alone."""
    from .cca import FIT_HINT, cca_coherence, scorer_for
    from .metrics import read_pairs

    store = scorer_store(cfg)
    try:
        found = scorer_for(store, storage_options)
    except DataError:
        report.not_applicable["cca_coherence"] = ("no CCA scorer for this data set; fit one with "
                                                  + FIT_HINT.format(url=store))
        return
    if found is None:
        return
    scorer, image, text = found
    for seed in range(seeds):
        pairs = read_pairs(cfg.data.url, cfg.data.test_split, cfg.eval.n_test, seed=seed,
                           storage_options=storage_options)
        for k, v in cca_coherence(model, pairs.xs, scorer, image, text, seed=seed).items():
            report.values.setdefault(k, []).append(v)
    report.settings["cca"] = {"image": scorer.image, "text": scorer.text,
                              "k": int(scorer.correlations.numel())}


def _vocabs(url: str, storage_options: dict | None) -> dict[int, list[str]]:
    """{modality index: vocabulary} of the data set's sentence modalities."""
    from ..data.manifest import open_manifest
    from .cca import text_modalities

    mods = open_manifest(url, storage_options)["modalities"]
    return {m: list(mods[m]["vocab"]) for m in text_modalities({"modalities": mods})}


def _first_test_batch(cfg: RunConfig, storage_options: dict | None) -> dict:
    from ..data import make_loader

    loader = make_loader(cfg.data.url, cfg.data.test_split, 16, shuffle=False, drop_last=False,
                         storage_options=storage_options)
    return next(iter(loader))
