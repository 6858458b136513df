"""``mvae-dist bench learn``: a learning curve of one training config, in one process, no Ray.

The same model, objective, optimiser and shard loader as ``mvae-dist train``, on the global batch
(data.batch_size x train.num_workers items per step, as W Ray workers would see it), evaluated
every ``eval_every`` steps with the paper's metrics (one seed, no likelihood). Each evaluation is
one JSON line: the step, the training wall time so far (evaluation excluded), latent accuracy of
the joint and of each unimodal posterior, the cross coherences, joint coherence and the mean
training loss since the previous line. This is how the training choices of the demo config were
found (docs/results.md, "Learning curves"). With ``relatedness`` pairs (a data set with the
label-propagation pools) each line also holds the PMI's relatedness on F_m: ROC-AUC, average
precision, F1 at the threshold chosen on S_m (and on the held-out S_c where the data set has it),
and F1 at F_m's own best threshold (an upper bound).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ...config import RunConfig, load_storage_options
from ...data import make_loader
from ...errors import ConfigError, DataError
from ...eval.cca import cca_coherence, scorer_for
from ...eval.evaluation import load_eval_classifiers
from ...eval.metrics import evaluate_model, read_pairs
from ...models import build_model
from ...models.compute import configure_compute
from ...train.step import TrainStep, apply_step, make_optimizer, make_scheduler, step_generator

#: the metrics a curve row keeps (the rest of the evaluation report is dropped)
CURVE_KEYS = ("latent_acc", "coherence_cross", "coherence_joint")
#: the demo's targets for the contrastive model on the embedded set (issue 12): street-number
#: latent accuracy, both cross coherences and joint coherence (``bench learn --until-targets``)
DEMO_TARGETS = {"latent_acc_svhn": 0.6, "coherence_cross_mnist_to_svhn": 0.4,
                "coherence_cross_svhn_to_mnist": 0.5, "coherence_joint": 0.2}


def targets_met(row: Mapping[str, Any], targets: Mapping[str, float]) -> bool:
    """Whether every target metric of ``row`` is at least its target (a missing one is not met)."""
    return all(row.get(k) is not None and row[k] >= v for k, v in targets.items())


def _cca_views(url: str, storage_options: dict | None) -> tuple[Any, int, int] | None:
    """(CCA scorer, image index, text index) of a data set with a sentence modality and a stored
    scorer (``mvae-dist cca fit``), else None: the curve then has no cca_* columns."""
    try:
        return scorer_for(url, storage_options)
    except DataError:
        return None


def _row_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    keep = {k: v for k, v in metrics.items()
            if k in CURVE_KEYS or k.startswith(("latent_acc_", "coherence_cross_"))}
    return {k: round(float(v), 4) for k, v in keep.items() if not k.endswith("_std")}


def learning_curve(cfg: RunConfig, *, steps: int, eval_every: int,
                   classifiers: Mapping[str, nn.Module] | None = None, n_test: int = 500,
                   n_train_latent: int = 1000, threads: int | None = None, device: str = "cpu",
                   on_row: Callable[[dict[str, Any]], None] | None = None,
                   until: Mapping[str, float] | None = None, relatedness: int = 0,
                   pmi_K: int = 10) -> list[dict[str, Any]]:
    """Train ``cfg`` for ``steps`` steps on one process -> one row per evaluation (and at step 0).

    classifiers: the digit classifiers per modality (default: those ``eval.classifiers`` names, as
    training and ``mvae-dist evaluate`` resolve them; required). until: target values of row
    metrics (e.g. ``DEMO_TARGETS``): every row then says ``targets_met``, and training stops at
    the first evaluation that meets them all (its ``train_s`` is the time to quality).
    device: where the model trains ("cuda" on a GPU); ``train.precision``, ``train.channels_last``
    and ``train.compile`` apply as in training. relatedness: score this many pairs of each of F_m,
    S_m (and S_c) by PMI (IWAE, ``pmi_K`` samples) at every evaluation: ``pmi_*`` row keys as
    ``studies.relatedness_f1`` gives them (0: none).
    """

    if steps < 1 or eval_every < 1:
        raise ConfigError(f"steps and eval_every must be >= 1, got {steps} and {eval_every}")
    if threads:
        torch.set_num_threads(threads)
    storage_options = load_storage_options(cfg.data.storage_options_file, "data.storage_options_file")
    if classifiers is None:
        classifiers = load_eval_classifiers(cfg, storage_options, required=True)
        if classifiers is None:
            raise ConfigError("bench learn scores coherence with digit classifiers: "
                              "eval.classifiers must not be 'none'")
    torch.manual_seed(cfg.train.seed)
    model = configure_compute(build_model(cfg.model).to(device), precision=cfg.train.precision,
                              channels_last=cfg.train.channels_last, compile=cfg.train.compile)
    module = TrainStep(model, cfg.objective)
    opt = make_optimizer(model.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.amsgrad)
    sched = make_scheduler(opt, cfg.optim.schedule, steps)
    batch = cfg.global_batch
    loader = make_loader(cfg.data.url, cfg.data.train_split, batch, seed=cfg.train.seed,
                         shuffle_buffer=cfg.data.shuffle_buffer, storage_options=storage_options)

    rows: list[dict[str, Any]] = []
    losses: list[float] = []
    train_s = 0.0
    cca = _cca_views(cfg.data.url, storage_options)
    cca_pairs = read_pairs(cfg.data.url, cfg.data.test_split, n_test, seed=0,
                           storage_options=storage_options) if cca else None
    held_out = False
    if relatedness:
        from ...data import open_manifest

        splits = open_manifest(cfg.data.url, storage_options)["splits"]
        if not {"fm", "sm"} <= set(splits):
            raise ConfigError(f"bench learn --relatedness needs the label-propagation pools (fm, sm) in "
                              f"{cfg.data.url}: prepare it with --sr-fraction")
        held_out = "sc" in splits

    def evaluate(step: int) -> None:
        report = evaluate_model(model, cfg.data.url, classifiers, seeds=(0,), n_test=n_test,
                                n_train_latent=n_train_latent, K_ll=0, storage_options=storage_options)
        row = {"bench": "learn", "step": step, "train_s": round(train_s, 1),
               "loss": round(sum(losses) / len(losses), 1) if losses else None,
               **_row_metrics(report.metrics())}
        if cca:
            scorer, image, text = cca
            scores = cca_coherence(model, cca_pairs.xs, scorer, image, text)
            row.update({k: round(v, 4) for k, v in scores.items()})
        if relatedness:
            from .studies import relatedness_f1

            rel = relatedness_f1(model, cfg.data.url, K=pmi_K, max_pairs=relatedness, seed=0,
                                 held_out=held_out, storage_options=storage_options)
            row.update({k: round(v, 4) for k, v in rel.items()})
        if until is not None:
            row["targets_met"] = targets_met(row, until)
        losses.clear()
        model.train()
        rows.append(row)
        if on_row is not None:
            on_row(row)

    evaluate(0)
    if rows[-1].get("targets_met"):
        return rows
    step, epoch = 0, 0
    while step < steps:
        loader.set_epoch(epoch)
        before = step
        for b in loader:
            t0 = time.perf_counter()
            xs = [x.to(device, non_blocking=True) for x in b["xs"]]
            g = step_generator(cfg.train.seed, step, device)
            stats, stepped = apply_step(module, opt, sched, xs, g, None, cfg.optim.grad_clip)
            train_s += time.perf_counter() - t0
            step += 1
            if stepped:
                losses.append(stats["loss"])
            if step % eval_every == 0 or step == steps:
                evaluate(step)
                if rows[-1].get("targets_met"):
                    return rows
            if step >= steps:
                break
        if step == before:
            raise DataError(f"split {cfg.data.train_split!r} of {cfg.data.url} gives no batch of {batch} "
                            "pairs (data.batch_size x train.num_workers): lower the batch size")
        epoch += 1
    return rows
