"""``mvae-dist evaluate``: the paper's metrics, likelihoods and image grids of a trained model.

A launcher: a trained model (``trained.py``) evaluated and logged by
``eval.evaluation.evaluate_and_log`` (what training also calls every ``train.eval_every``
epochs), once, for a checkpoint or a run; it prints the table.

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
from dataclasses import dataclass

from ..config import load_storage_options
from ..eval.evaluation import evaluate_and_log, load_eval_classifiers, logged_metrics, metric_name

__all__ = ["EvaluateResult", "evaluate_and_log", "evaluate_command", "load_eval_classifiers",
           "logged_metrics", "metric_name"]


@dataclass
class EvaluateResult:
    run_id: str
    tracking_uri: str
    metrics: dict[str, float]
    table: str
    source: str

    def lines(self) -> list[str]:
        from ..tracking import ui_command

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
    from ..tracking import Tracker, default_tracking_uri, find_runs, get_run
    from ..trained import load_trained

    uri = tracking_uri or default_tracking_uri()
    trained = load_trained(checkpoint=checkpoint, run_id=run_id, tracking_uri=uri,
                           storage_options=storage_options, device=device)
    cfg = trained.config
    given = {"seeds": seeds, "ll_K": K, "ll_n": n_ll, "n_test": n_test, "n_latent_train": n_train,
             "classifiers": classifiers}
    ev = cfg.eval.replace(**{k: v for k, v in given.items() if v is not None})  # validated
    data_cfg = cfg.data.replace(url=data) if data else cfg.data
    cfg = cfg.replace(eval=ev, data=data_cfg)
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
