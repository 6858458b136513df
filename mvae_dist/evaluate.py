"""``mvae-dist evaluate``: the paper's metrics, likelihoods and image grids of a trained model.

Glue between a trained model (``trained.py``), the digit classifiers and metrics
(``eval/classifiers.py``, ``eval/metrics.py``), the image grids (``eval/images.py``) and MLflow
(``tracking.py``). Training calls ``evaluate_and_log`` every ``train.eval_every`` epochs and at
the end; the command calls it once for a checkpoint or a run and prints the table.

Where an evaluation is logged:
- ``--run RUN_ID``: into that run (reopened, then closed with the status it had);
- ``--checkpoint URI``: into the training run that wrote the checkpoint (found by its tag
  ``ray_run_path``), else into a new run ``evaluate-<train.name>`` tagged with the URI.
Artifacts: ``eval/metrics_<step>.json`` and ``eval/metrics_<step>.md`` (the table), and
``images/{reconstruction,cross_generation,joint_generation}_<step>.png``; metrics as
``eval/<name>`` (mean over seeds) and ``eval/<name>_std``.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch

from .config import EvalConfig, TrainConfig, load_storage_options
from .errors import DataError
from .models.base import MultimodalVAE


def load_eval_classifiers(cfg: TrainConfig, storage_options: dict | None, *, required: bool,
                        device: str | torch.device = "cpu") -> dict[str, torch.nn.Module] | None:
    """The classifiers ``cfg.eval.classifiers`` names, or None ("none", or "auto" without a store
    when not ``required``). A missing store is a DataError naming the command that trains one."""
    from .eval.classifiers import load_classifiers

    where = cfg.eval.classifiers
    if where == "none":
        return None
    url = cfg.data.url if where == "auto" else where
    try:
        return load_classifiers(url, storage_options=storage_options, device=device)
    except DataError:
        if required or where != "auto":
            raise
        return None


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


def evaluate_and_log(model: MultimodalVAE, cfg: TrainConfig, *, tracker: Any, step: int,
                     classifiers: dict[str, torch.nn.Module] | None, seeds: int, ll_K: int, ll_n: int,
                     storage_options: dict | None, device: str | torch.device | None = None,
                     progress: bool = False) -> tuple[dict[str, float], str]:
    """Evaluate ``model`` on ``cfg.data``'s test split, log everything to ``tracker`` at ``step``.

    -> (flat metrics {name: mean over seeds, name_std: spread}, the Markdown table). The
    likelihood is also given as ``log_joint`` (whatever its K). Without classifiers only the
    likelihood is computed (and the table says so).
    """
    from .eval import images
    from .eval.metrics import EvalReport, evaluate_model, marginal_log_likelihood, read_pairs

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
    flat = report.metrics()
    ll_key = f"test_log_joint_K{ll_K}"
    if ll_key in flat:
        flat["log_joint"], flat["log_joint_std"] = flat[ll_key], flat.get(f"{ll_key}_std", 0.0)
    table = report.to_markdown()
    tracker.log_metrics(logged_metrics(flat, seeds, ll_key), step=step)
    tracker.log_dict(report.to_dict(), f"eval/metrics_{step:07d}.json")
    tracker.log_text(table, f"eval/metrics_{step:07d}.md")
    xs = _first_test_batch(cfg, storage_options, next(model.parameters()).device)
    grids = images.readable_grids(model, xs, n=min(8, xs[0].shape[0]), n_joint=32, seed=cfg.train.seed)
    for name, img in grids.items():
        tracker.log_image(img, f"images/{name}_{step:07d}.png")
    return flat, table


def _first_test_batch(cfg: TrainConfig, storage_options: dict | None,
                      device: str | torch.device) -> list[torch.Tensor]:
    from .data import make_loader

    loader = make_loader(cfg.data.url, cfg.data.test_split, 16, shuffle=False, drop_last=False,
                         storage_options=storage_options)
    batch = next(iter(loader))
    return [x.to(device) for x in batch["xs"]]


@dataclass
class EvaluateResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    table: str
    source: str

    def lines(self) -> list[str]:
        from .tracking import ui_command

        return [f"evaluation of {self.source}", "", self.table.rstrip(), "",
                f"logged to MLflow run {self.run_id}; open the UI with:",
                f"  {ui_command(self.tracking_uri)}"]


def evaluate_command(*, checkpoint: str | None, run_id: str | None, tracking_uri: str | None,
                     storage_options: dict | None = None, seeds: int | None = None,
                     K: int | None = None, n_ll: int | None = None, n_test: int | None = None,
                     n_train: int | None = None,
                     classifiers: str | None = None, data: str | None = None,
                     device: str = "cpu", progress: bool = True) -> EvaluateResult:
    """Load a trained model, evaluate it with its own config's eval section (overridden by the
    arguments), log to MLflow (see the module docstring) and return the table."""
    from .tracking import Tracker, default_tracking_uri, find_runs, get_run
    from .trained import load_trained

    uri = tracking_uri or default_tracking_uri()
    trained = load_trained(checkpoint=checkpoint, run_id=run_id, tracking_uri=uri,
                           storage_options=storage_options, device=device)
    cfg = trained.config
    given = {"seeds": seeds, "ll_K": K, "ll_n": n_ll, "n_test": n_test, "n_latent_train": n_train,
             "classifiers": classifiers}
    ev = replace(cfg.eval, **{k: v for k, v in given.items() if v is not None})
    data_cfg = replace(cfg.data, url=data) if data else cfg.data
    cfg = replace(cfg, eval=EvalConfig(**vars(ev)).validate(), data=data_cfg)
    data_options = storage_options or load_storage_options(cfg.data.storage_options_file,
                                                           "data.storage_options_file")
    clfs = load_eval_classifiers(cfg, data_options, required=cfg.eval.classifiers != "none", device=device)

    target, status = trained.run_id, None
    if target is None and checkpoint is not None:
        parent = checkpoint.rstrip("/").rsplit("/", 1)[0]
        runs = find_runs(cfg.tracking.experiment, f"tags.ray_run_path = '{parent}'", tracking_uri=uri)
        target = runs[0].run_id if runs else None
    tracker = Tracker(uri, cfg.tracking.experiment)
    if target is not None:
        status = get_run(target, uri).status
        tracker.continue_run(target)
    else:
        tracker.start(f"evaluate-{cfg.train.name}", params=cfg.to_dict(),
                      tags={"checkpoint": checkpoint, "evaluation": "true"})
    run = tracker.run_id
    step = max(trained.step, 0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flat, table = evaluate_and_log(trained.model, cfg, tracker=tracker, step=step, classifiers=clfs,
                                           seeds=cfg.eval.seeds, ll_K=cfg.eval.ll_K, ll_n=cfg.eval.ll_n,
                                           storage_options=data_options, progress=progress)
    except BaseException:
        tracker.end(status if status in ("FINISHED", "FAILED", "KILLED") else "FAILED")
        raise
    tracker.end(status if status in ("FINISHED", "FAILED", "KILLED") else "FINISHED")
    return EvaluateResult(run, uri, flat, table, trained.source)
